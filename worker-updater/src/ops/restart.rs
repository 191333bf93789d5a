//! The parts of an agent restart that hold sockets (issue 14): spawning
//! with the held `[agent] listen` sockets, the `start-first` replacement
//! (new agent beside the old on the same sockets; the old one gets SIGTERM
//! only once the new one is healthy, and is never stopped when it is
//! not), taking back an old agent a failed start-first left serving, and
//! the probe failure of an agent that binds its address itself.
//!
//! The probe tells the new agent from the old by the `pid` its `/health`
//! reports (`require_pid`, set for start-first releases): the kernel hands
//! each connection on a shared socket to whichever process accepts first.

use std::net::SocketAddr;
use std::sync::Arc;

use pki::wire::Probe;

use super::caretaker;
use crate::agent::pidfile::PidFile;
use crate::agent::{Spawned, proc};
use crate::probe::probe;
use crate::release::{AgentRun, ReleaseSpec};
use crate::state::{Daemon, Kept, blocking};

/// Watch `spawned` as the live agent of `spec` and probe it: the verdict
/// is the supervisor's too (its `healthy`).
pub(super) async fn watch_and_probe(
    d: &Arc<Daemon>,
    spawned: &Spawned,
    spec: &ReleaseSpec,
    run: &AgentRun,
    phase: &str,
) -> Probe {
    let generation = caretaker::adopt(d, spawned, spec, phase);
    let p = probe(
        &d.probe_client,
        &run.health_url,
        phase,
        spec.sha256(),
        &run.probe,
        Some(spawned),
    )
    .await;
    d.watch.probed(generation, p.healthy);
    p
}

/// Spawn `run`'s agent with its held sockets (a failure is the probe's
/// error). Forks and writes the pidfile on the blocking pool.
pub async fn spawn(d: &Arc<Daemon>, run: &AgentRun) -> Result<Spawned, String> {
    let daemon = d.clone();
    let launch = run.launch.clone();
    blocking(move || {
        if daemon.layout.resolved_current().is_none() {
            return Err(crate::error::UpdaterError::Agent(
                "no current release to start".into(),
            ));
        }
        let fds = daemon.sockets.fds_for(&launch.listen)?;
        // The reaper task it spawns finds the runtime from the blocking pool.
        daemon.supervisor.spawn(&launch, fds)
    })
    .await
    .map_err(|e| match e {
        crate::error::UpdaterError::Agent(e) if e == "no current release to start" => e,
        e => e.to_string(),
    })
}

/// Bind `run`'s new `[agent] listen` addresses before the flip. An
/// address only the running agent of ours holds (it binds it itself: a
/// release without `listen`, moving to socket activation on the same port)
/// is left for the restart, which binds it once that agent has stopped.
/// Any other failure is the error (a 500, nothing rotated).
pub async fn bind_before_flip(d: &Arc<Daemon>, run: &AgentRun) -> crate::error::Result<()> {
    let daemon = d.clone();
    let listen = run.listen.clone();
    blocking(move || {
        if daemon.sockets.ensure(&listen).is_ok() {
            return Ok(());
        }
        let agents: Vec<i32> = daemon
            .supervisor
            .find(&daemon.matcher())
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        for addr in &listen {
            let Err(e) = daemon.sockets.ensure(&[*addr]) else {
                continue;
            };
            let holders = crate::agent::port::holders_of(*addr);
            let ours = !holders.is_empty()
                && holders.iter().all(|h| {
                    agents
                        .iter()
                        .any(|a| h == a || proc::descends_from(*h, *a))
                });
            if !ours {
                return Err(e);
            }
            tracing::info!(%addr, "the running agent binds this address itself; it is bound once that agent has stopped");
        }
        Ok(())
    })
    .await
}

/// `start-first`: spawn the new agent while `old` keeps serving from the
/// same sockets, probe the new one; healthy → stop `old` (sparing the new
/// one); unhealthy → stop the new one, and `old` serves on untouched,
/// recorded in [`Daemon::kept`] for the restore that follows.
pub async fn start_first(
    d: &Arc<Daemon>,
    phase: &str,
    spec: &ReleaseSpec,
    run: &AgentRun,
    old: Vec<(i32, Option<u64>)>,
) -> (Probe, Option<Spawned>) {
    let pidfile = d.supervisor.pidfile.clone();
    let before = blocking(move || Ok(PidFile::read(&pidfile)))
        .await
        .ok()
        .flatten();
    let spawned = match spawn(d, run).await {
        Ok(s) => s,
        Err(e) => {
            keep_old(d, spec, phase, &old, before).await;
            return (failed(phase, run, e), None);
        }
    };
    tracing::info!(
        new = spawned.pid,
        old = ?old.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        "start-first: the new agent starts beside the old one"
    );
    let mut p = watch_and_probe(d, &spawned, spec, run, phase).await;
    if p.healthy {
        for s in d.supervisor.stop_all_but(old, Some(spawned.pid)).await {
            tracing::info!("start-first: {}", s.note);
        }
        d.sockets.retain(&run.listen);
        return (p, Some(spawned));
    }
    explain(d, run, &mut p).await;
    // Unhealthy: the new one goes, the old one was never touched.
    d.watch.retire();
    let note = d
        .supervisor
        .stop_pid(spawned.pid, proc::start_time(spawned.pid))
        .await;
    tracing::info!("start-first: {}", note.note);
    keep_old(d, spec, phase, &old, before).await;
    (p, None)
}

/// The old agent serves on after a failed start-first: its pidfile back,
/// recorded as kept, and watched again at once when it runs `spec`'s
/// release (`POST /agent/restart`); else the restore of its release takes
/// it back ([`take_kept`]).
async fn keep_old(
    d: &Arc<Daemon>,
    spec: &ReleaseSpec,
    phase: &str,
    old: &[(i32, Option<u64>)],
    before: Option<PidFile>,
) {
    let Some(&(pid, start_time)) = old.first() else {
        return;
    };
    let sha256 = before
        .as_ref()
        .filter(|pf| pf.pid == pid)
        .and_then(|pf| pf.sha256.clone());
    if let Some(pf) = before.filter(|pf| pf.pid == pid) {
        let path = d.supervisor.pidfile.clone();
        let _ = blocking(move || pf.write(&path)).await;
    }
    let kept = Kept {
        pid,
        start_time,
        sha256,
    };
    if let Ok(mut k) = d.kept.lock() {
        *k = Some(kept.clone());
    }
    if kept.sha256.is_some() && kept.sha256.as_deref() == spec.sha256() {
        let _ = take_kept(d, phase, spec).await;
    }
}

/// When the agent a failed start-first left serving runs `spec`'s release
/// and is still alive: watch it again and probe it instead of restarting
/// it. `None` when there is no such agent (the kept record is dropped).
pub async fn take_kept(
    d: &Arc<Daemon>,
    phase: &str,
    spec: &ReleaseSpec,
) -> Option<(Probe, Option<Spawned>)> {
    let kept = d.kept.lock().ok()?.take()?;
    let run = spec.agent.as_ref().ok()?;
    if kept.sha256.is_none() || kept.sha256.as_deref() != spec.sha256() {
        return None;
    }
    let (pid, start_time) = (kept.pid, kept.start_time);
    if !blocking(move || Ok(proc::same_process(pid, start_time)))
        .await
        .unwrap_or(false)
    {
        return None;
    }
    let spawned = d
        .supervisor
        .child(pid)
        .unwrap_or_else(|| caretaker::watch_foreign(pid, start_time));
    tracing::info!(pid, "the old agent served on; watching it again");
    let p = watch_and_probe(d, &spawned, spec, run, phase).await;
    d.sockets.retain(&run.listen);
    Some((p, Some(spawned)))
}

/// A failed probe of a release with `listen`: when the agent's output
/// says it could not bind (it ignored `LISTEN_FDS` and bound the address
/// itself, which the held socket refuses), say so.
pub async fn explain(d: &Arc<Daemon>, run: &AgentRun, p: &mut Probe) {
    if run.listen.is_empty() {
        return;
    }
    let tail = caretaker::failed_tail(d).await;
    let Some(line) = tail.iter().rev().find(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("in use") || l.contains("addrinuse")
    }) else {
        return;
    };
    let addrs: Vec<String> = run.listen.iter().map(SocketAddr::to_string).collect();
    let note = format!(
        "the agent bound its address itself and failed ({line:?}): with [agent] listen the updater holds {} and passes them as LISTEN_FDS (systemd socket activation, fds from 3); the agent must take its listener from there instead of binding it",
        addrs.join(", ")
    );
    p.error = Some(match p.error.take() {
        Some(e) => format!("{e}; {note}"),
        None => note,
    });
}

fn failed(phase: &str, run: &AgentRun, error: String) -> Probe {
    Probe {
        phase: phase.into(),
        url: run.health_url.clone(),
        healthy: false,
        attempts: 0,
        elapsed_ms: 0,
        release_sha256: None,
        error: Some(error),
    }
}
