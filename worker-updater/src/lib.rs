//! swarm's updater daemon: receives releases over mTLS, extracts them
//! safely, rotates A/B slots with an atomic flip, restarts and probes the
//! agent, and rolls back on its own when the probe fails.
//!
//! Code map (arrows only downward: `http` → `views` → `ops`/`selfupdate` →
//! `release`, `receive`, `slots`, `agent`, `probe`, `journal`, `logs`;
//! `selfupdate` → `ops::stage`, never the reverse): [`config`] (flags →
//! validated [`Config`], the stash), [`http`] (router, handlers),
//! [`views`] (`/history`, `/logs`, `/agent/restart`, journaling an
//! answer), [`journal`] (the operation journal), [`logs`] (tail, follow
//! and rotation of `agent.spawn.log`), [`state`] (the [`Daemon`] and its operation
//! guard), [`install`] (the install dir's own files), [`receive`]
//! (streamed, validated extraction), [`release`] (a [`release::ReleaseSpec`]
//! parsed once), [`slots`] (slots, flip, journal, repair, filesystem
//! primitives), [`agent`] (supervisor, pidfile, `/proc`, terminate, the
//! supervision state machine), [`probe`] (mTLS health checks), [`ops`]
//! (stage, update, rollback, reconcile, hook, the caretaker), [`selfupdate`] (trial, watchdog, hand-over),
//! [`signing`] (signed releases: `release.pub`, the highest `seq`),
//! [`verify`] (`POST /verify`: the slots re-hashed against their indexes), [`error`],
//! [`crashpoint`] (test-only crash steps, debug builds).
//!
//! Invariants: only this crate touches release symlinks and agent
//! processes; one operation at a time; blocking work never runs on the
//! async runtime's threads, so `/health` answers during an update; a
//! normal `/update` never touches `updater/`, and a self-update never
//! touches the agent's release or restarts the agent.

pub mod agent;
pub mod config;
pub mod crashpoint;
pub mod deny;
pub mod error;
pub mod fetch;
pub mod http;
pub mod install;
pub mod journal;
pub mod logs;
pub mod ops;
pub mod probe;
pub mod receive;
pub mod release;
pub mod renew;
pub mod selfupdate;
pub mod signing;
pub mod slots;
pub mod state;
pub mod store;
pub mod verify;
pub mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;

pub use config::{Args, Config};
pub use http::router;
pub use state::Daemon;
use state::blocking;

/// How long shutdown waits for an operation in flight.
const OP_DRAIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Repair the install dir, then serve on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let own_release = selfupdate::own_release(&slots::Layout::updater(
        &config.install_dir,
        config.failed_keep,
    ));
    let app = Arc::new(Daemon::new(config, own_release)?);
    // The certificate is served through a resolver `POST /renew` can swap.
    let tls = {
        let mut cfg = (*tls).clone();
        cfg.cert_resolver = app.cert.clone();
        Arc::new(cfg)
    };
    // What an agent daemonizes into (a double fork, setsid) is reparented
    // to us rather than to init: the supervisor reaps what it stops.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("PR_SET_CHILD_SUBREAPER: {e}");
    }
    let d = app.clone();
    let repair = blocking(move || ops::repair_install(&d)).await?;
    for action in &repair.actions {
        tracing::warn!("start-up repair: {action}");
    }
    // What a crash left in the content stores (issue 12), off the path.
    for layout in [&app.layout, &app.updater_layout] {
        store::gc::sweep_in_background(store::Store::new(layout.store()), Vec::new());
    }
    // The programs of the releases on disk, for the `/proc` scan.
    let d = app.clone();
    blocking(move || {
        let host = d.host_env()?;
        for dir in [d.layout.active(), d.layout.prev(), d.layout.old()] {
            d.spec_on_disk(&dir, &host);
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| tracing::warn!("reading the releases on disk: {e}"));
    // Takes the worker before the first request can: a push during the
    // start-up restart gets 409 busy instead of racing it.
    if let Some(reconcile) = ops::reconcile::start_up(&app, &repair).await {
        tokio::spawn(reconcile);
    } else {
        ops::caretaker::adopt_running(&app).await;
    }
    ops::caretaker::start(app.clone());
    selfupdate::reap_watchdog(&app.updater_layout);
    // Serve until `shutdown`, or until a self-update asks to hand over:
    // then the server stops accepting and drains its connections (the
    // answer flushed, its connection closed) before the exec. A failed exec
    // returns here and the same address is served again.
    let mut shutdown = std::pin::pin!(shutdown);
    let mut listener = listener;
    loop {
        let stop = async {
            tokio::select! {
                () = &mut shutdown => {}
                () = app.handoff_requested() => {}
            }
        };
        pki::serve_denying(
            listener,
            tls.clone(),
            router(app.clone()),
            stop,
            app.config.serve_limits.clone(),
            app.deny.clone(),
        )
        .await?;
        let Some(exec) = app.take_handoff() else {
            break;
        };
        tracing::info!("connections drained; handing over to the new updater");
        // On this thread, the main one (`run` is driven by `block_on` in
        // main.rs): an exec from a pool thread makes the kernel turn the
        // thread-group leader into a zombie for a moment, which the
        // watchdog reads as "the new updater exited" and reverts a healthy
        // self-update under it.
        tokio::task::block_in_place(exec);
        let addr = app.config.stash.listen().unwrap_or(app.config.listen);
        listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr} again after a failed exec: {e}"))?;
    }
    // Stopping is deliberate: whatever the agent does now is no crash.
    app.watch.retire();
    // An operation in flight runs in its own task: give it a bounded time
    // to finish so a restart does not leave work for the start-up repair.
    let deadline = tokio::time::Instant::now() + OP_DRAIN;
    while let Some(op) = app.busy() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "stopping with {op} still running after {OP_DRAIN:?}; the next start repairs the layout"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The first 12 characters of a sha, for messages.
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
