//! The operations on the agent's release: [`update`](update::update)
//! (stage → restart → probe → confirm or revert), [`rollback`](rollback::rollback)
//! (swap with `prev` → restart → probe → undo if unhealthy), and the
//! start-up [`reconcile`](reconcile::reconcile), and the [`caretaker`] that
//! restarts, reports and reverts a crashing agent. [`stage`](stage::stage) is
//! the prologue `/update` and `/update-self` share (receive → discard on
//! error → read the previous release → flip). One at a time per worker:
//! each holds the `OpGuard`.
//!
//! `ops` never imports `selfupdate`; `selfupdate` uses [`stage`] and [`hook`].

pub mod caretaker;
pub mod hook;
pub mod materialize;
pub mod reconcile;
pub mod restart;
pub mod rollback;
pub mod stage;
pub mod update;

use std::sync::Arc;

use axum::http::StatusCode;
use pki::wire::{OpResponse, Probe};

use crate::agent::Spawned;
use crate::error::{Result, UpdaterError};
use crate::release::ReleaseSpec;
use crate::state::{Daemon, OpGuard, blocking};

/// An operation's answer: status code and body.
pub type OpResult = Result<(StatusCode, OpResponse)>;

/// Stop whatever agent of ours runs, start `spec`'s from `current`, probe
/// it. The `/proc` scan and the fork run on the blocking pool; nothing is
/// read from the release: `spec` was parsed once, before. With `[agent]
/// listen` the release's sockets are held first (and the ones no running
/// release uses are closed once the old agent is gone); with
/// `start-first` the old agent is stopped only after the new one proved
/// healthy ([`restart::start_first`]). An old agent a failed start-first
/// left serving this very release is taken back instead of restarted.
pub async fn restart_and_probe(
    d: &Arc<Daemon>,
    phase: &str,
    spec: &ReleaseSpec,
) -> (Probe, Option<Spawned>) {
    if let Some(done) = restart::take_kept(d, phase, spec).await {
        return done;
    }
    let url = spec
        .agent
        .as_ref()
        .map_or(d.config.agent_url.as_str(), |a| a.health_url.as_str());
    let failed = |error: String| Probe {
        phase: phase.into(),
        url: url.to_owned(),
        healthy: false,
        attempts: 0,
        elapsed_ms: 0,
        release_sha256: None,
        error: Some(error),
    };
    // Bound before anything is stopped; an address the running agent
    // holds itself (moving to socket activation) only once it has stopped.
    let held = match &spec.agent {
        Ok(run) => d.sockets.ensure(&run.listen),
        Err(_) => Ok(()),
    };
    // A deliberate stop: the exit of what runs now is no crash.
    d.watch.retire();
    let daemon = d.clone();
    let found = blocking(move || Ok(daemon.supervisor.find(&daemon.matcher())))
        .await
        .unwrap_or_else(|e| {
            tracing::error!("looking for the running agent: {e}");
            Vec::new()
        });
    if let Ok(run) = &spec.agent
        && run.start_first()
        && !found.is_empty()
        && held.is_ok()
    {
        return restart::start_first(d, phase, spec, run, found).await;
    }
    if let Err(e) = &held
        && found.is_empty()
    {
        // Nothing was stopped: what runs keeps running.
        return (failed(e.to_string()), None);
    }
    let stopped = d.supervisor.stop_all(found).await;
    for s in &stopped {
        tracing::info!("{}", s.note);
    }
    if let Some(s) = stopped.iter().find(|s| s.survived) {
        return (
            failed(format!(
                "{}; not starting another agent beside it (it may still hold the port)",
                s.note
            )),
            None,
        );
    }
    let run = match &spec.agent {
        Ok(run) => run.clone(),
        Err(e) => {
            return (
                failed(UpdaterError::ReleaseConfig(e.clone()).to_string()),
                None,
            );
        }
    };
    if held.is_err()
        && let Err(e) = d.sockets.ensure(&run.listen)
    {
        return (failed(e.to_string()), None);
    }
    // The old agent is gone: close what the new one does not use before it
    // starts (it may bind such an address itself).
    d.sockets.retain(&run.listen);
    let spawned = match restart::spawn(d, &run).await {
        Ok(s) => s,
        Err(e) => return (failed(e), None),
    };
    let mut p = restart::watch_and_probe(d, &spawned, spec, &run, phase).await;
    if !p.healthy {
        restart::explain(d, &run, &mut p).await;
    }
    (p, Some(spawned))
}

/// Read the release `current` holds (manifest, `swarm.toml`, `.env.local`,
/// on the blocking pool), then [`restart_and_probe`] it.
pub async fn restart_current(d: &Arc<Daemon>, phase: &str) -> (Probe, Option<Spawned>) {
    let daemon = d.clone();
    let spec = blocking(move || {
        let host = daemon.host_env()?;
        Ok(daemon.spec_on_disk(&daemon.layout.active(), &host))
    })
    .await;
    match spec {
        Ok(spec) => restart_and_probe(d, phase, &spec).await,
        Err(e) => (
            Probe {
                phase: phase.into(),
                url: d.config.agent_url.clone(),
                healthy: false,
                attempts: 0,
                elapsed_ms: 0,
                release_sha256: None,
                error: Some(e.to_string()),
            },
            None,
        ),
    }
}

/// The repair of the agent's slots, at start-up and after a failed
/// operation: first kill what is left of an install hook (so nothing
/// writes into staging or a release any more), then
/// [`Layout::repair_pending`](crate::slots::Layout::repair_pending), which
/// leaves an unconfirmed update or rollback for [`reconcile`] to probe.
/// Blocking.
pub fn repair_install(d: &Daemon) -> Result<crate::slots::Repair> {
    hook::reap_hook_leftovers(&d.layout)?;
    d.layout.repair_pending()
}

/// An operation failed half-way through changing the slots: repair the
/// layout as a restart would and, when that leaves an agent to restart or
/// an unconfirmed release to probe, hand `guard` to the reconcile that does it.
pub async fn recover(d: &Arc<Daemon>, guard: OpGuard, what: &str) {
    let daemon = d.clone();
    match blocking(move || repair_install(&daemon)).await {
        Ok(r) => {
            for action in &r.actions {
                tracing::warn!("repair after {what}: {action}");
            }
            if r.unconfirmed || r.restart || r.rollback_unconfirmed {
                tokio::spawn(reconcile::reconcile(d.clone(), guard, (&r).into()));
            }
        }
        Err(e) => tracing::error!(
            "repair after {what}: {e}; the next start of the updater repairs the layout"
        ),
    }
}

/// End the rollback journal, logging a failure.
pub(crate) async fn end_rollback(d: &Daemon) {
    let layout = d.layout.clone();
    if let Err(e) = blocking(move || layout.end_rollback()).await {
        tracing::error!("removing the rollback journal: {e}");
    }
}

#[cfg(test)]
mod tests;
