//! The caretaker (issue 11): the tasks that act on the supervision state
//! machine ([`crate::agent::supervise`]). One task per adopted agent waits
//! for its exit and, when it was no deliberate stop, restarts it with
//! backoff, declares a crash loop, or reverts to `prev` through the same
//! journaled [`rollback`](super::rollback::rollback) as `POST /rollback`.
//! One periodic task probes the running release's `health_url` and rotates
//! `agent.spawn.log`. Also `POST /agent/restart`.
//!
//! The caretaker acts only holding the operation guard, so it never races
//! an update or a rollback: an operation in flight owns the agent, and
//! whatever it spawns is a new generation that makes the old exit moot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use pki::wire::{OpResponse, OpStatus};
use tokio::sync::watch;

use super::{OpResult, restart_current};
use crate::agent::Spawned;
use crate::agent::supervise::{Decision, HealthCheck, LOOP_WINDOW, Origin, RESTART_PHASE};
use crate::journal::{entry, record};
use crate::release::ReleaseSpec;
use crate::short;
use crate::state::{Daemon, OpGuard, blocking};

/// How often the running agent is probed (and the spawn log checked).
pub const TICK: Duration = Duration::from_secs(2);
/// How often a waiting caretaker asks for the operation guard.
const GUARD_POLL: Duration = Duration::from_millis(50);
/// How long it waits for an operation in flight to finish.
const GUARD_WAIT: Duration = Duration::from_secs(15 * 60);
/// How often an adopted agent that is not our child is checked in `/proc`.
const PROC_POLL: Duration = Duration::from_millis(200);

/// Watch `spawned`, started from `spec` for probe phase `phase`; returns
/// its generation.
pub fn adopt(d: &Arc<Daemon>, spawned: &Spawned, spec: &ReleaseSpec, phase: &str) -> u64 {
    let check = spec.agent.as_ref().ok().map(|r| HealthCheck {
        url: r.health_url.clone(),
        timeout: r.probe.timeout,
        sha256: spec.sha256().map(str::to_owned),
    });
    let generation = d.watch.adopt(
        spawned.pid,
        Origin::of_phase(phase),
        check,
        spec.rollback_window(),
    );
    tokio::spawn(on_exit(d.clone(), generation, spawned.exited.clone()));
    generation
}

/// At start-up with no reconcile: watch an agent a previous updater left
/// running (it is not our child, so its exit is seen in `/proc`).
pub async fn adopt_running(d: &Arc<Daemon>) {
    let daemon = d.clone();
    let found = blocking(move || {
        let found = daemon.supervisor.find(&daemon.matcher());
        let host = daemon.host_env()?;
        let spec = daemon.spec_on_disk(&daemon.layout.active(), &host);
        Ok((found.first().copied(), spec))
    })
    .await;
    let Ok((Some((pid, start_time)), spec)) = found else {
        return;
    };
    let spawned = watch_foreign(pid, start_time);
    adopt(d, &spawned, &spec, "adopt");
    tracing::info!(pid, "supervising the agent that was already running");
}

/// An agent that is not our child (a previous updater started it): its
/// exit is seen by polling `/proc`.
pub fn watch_foreign(pid: i32, start_time: Option<u64>) -> Spawned {
    let (tx, exited) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(PROC_POLL) => {}
            }
            let gone = tokio::task::spawn_blocking(move || {
                !crate::agent::proc::alive(pid)
                    || (start_time.is_some() && crate::agent::proc::start_time(pid) != start_time)
            })
            .await
            .unwrap_or(false);
            if gone {
                let _ = tx.send(Some("exited (status unknown: not our child)".into()));
                return;
            }
        }
    });
    Spawned { pid, exited }
}

/// Start the periodic probe and log rotation; ends with the runtime.
pub fn start(d: Arc<Daemon>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TICK).await;
            let log = d.spawn_log.clone();
            match blocking(move || Ok(log.rotate_if_big())).await {
                Ok(Ok(true)) => tracing::info!("agent.spawn.log rotated"),
                Ok(Err(e)) => tracing::warn!("rotating agent.spawn.log: {e}"),
                _ => {}
            }
            if d.busy().is_some() {
                continue;
            }
            let Some((generation, check)) = d.watch.probe_target() else {
                continue;
            };
            // One try of the update probe's request, cut at the tick; only
            // a change is logged, not every tick of an unhealthy agent.
            let timeout = check.timeout.min(TICK);
            let healthy = match crate::probe::once(&d.probe_client, &check.url, timeout).await {
                Ok(got) => match (check.sha256.as_deref(), got.sha.as_deref()) {
                    (Some(want), Some(got)) if want != got => Err(format!(
                        "the agent answering reports release {got}, not {want}"
                    )),
                    _ => Ok(()),
                },
                Err(e) => Err(e),
            };
            let was = d.watch.snapshot().and_then(|s| s.healthy);
            match &healthy {
                Err(e) if was != Some(false) => {
                    tracing::warn!(url = %check.url, "the running agent is unhealthy: {e}");
                }
                Ok(()) if was == Some(false) => {
                    tracing::info!("the running agent is healthy again")
                }
                _ => {}
            }
            d.watch.probed(generation, healthy.is_ok());
        }
    });
}

/// Wait for `generation`'s exit and handle it.
async fn on_exit(d: Arc<Daemon>, generation: u64, mut exited: watch::Receiver<Option<String>>) {
    let status = match exited.wait_for(Option::is_some).await {
        Ok(s) => s.clone().unwrap_or_default(),
        Err(_) => "exited (status unknown)".to_owned(),
    };
    let Some(guard) = hold(&d, generation).await else {
        return;
    };
    let Some(decision) = d.watch.exited(generation, &status, Instant::now()) else {
        return;
    };
    match decision {
        Decision::Restart(delay) => {
            tracing::warn!("agent exited unexpectedly ({status}); restarting in {delay:?}");
            drop(guard);
            tokio::time::sleep(delay).await;
            let Some(guard) = hold(&d, generation).await else {
                return;
            };
            let (p, spawned) = restart_current(&d, RESTART_PHASE).await;
            let outcome = if p.healthy { "healthy" } else { "unhealthy" };
            let detail = format!(
                "restarted after an unexpected exit ({status}){}",
                p.error
                    .as_deref()
                    .map_or(String::new(), |e| format!(": {e}"))
            );
            if spawned.is_none()
                && let Some((g, _)) = d.watch.current()
            {
                d.watch.gave_up(g, &detail);
            }
            // Journaled while still holding the worker, so the entries are
            // in the order things happened.
            record(
                &d.journal,
                entry(
                    "restart",
                    "updater",
                    p.release_sha256.as_deref(),
                    outcome,
                    &detail,
                ),
            )
            .await;
            drop(guard);
        }
        Decision::CrashLoop { restarts, revert } => {
            let active = active_sha(&d).await;
            let detail = format!(
                "the agent exited {} times within {}s (last: {status}); not restarting it until the next update, rollback or POST /agent/restart",
                restarts + 1,
                LOOP_WINDOW.as_secs()
            );
            tracing::error!("crash loop: {detail}");
            record(
                &d.journal,
                entry(
                    "crash-loop",
                    "updater",
                    active.as_deref(),
                    "crash-loop",
                    &detail,
                ),
            )
            .await;
            if revert {
                crash_revert(&d, guard, active).await;
            }
        }
    }
}

/// A crash loop soon after going live, with a `prev`: roll back by itself.
async fn crash_revert(d: &Arc<Daemon>, guard: OpGuard, from: Option<String>) {
    let layout = d.layout.clone();
    let has_prev = blocking(move || Ok(layout.prev().is_dir()))
        .await
        .unwrap_or(false);
    if !has_prev {
        return;
    }
    let why = format!(
        "crash loop of {} within its rollback window of going live",
        from.as_deref().map_or("the active release", short)
    );
    tracing::warn!("{why}: reverting to prev");
    d.watch.set_reverting(true);
    let result = super::rollback::rollback(d.clone(), guard, None).await;
    d.watch.set_reverting(false);
    let e = match &result {
        Ok((code, body)) if code.is_success() => entry(
            "revert",
            "updater",
            body.release.as_ref().map(|m| m.sha256.as_str()),
            "rolled-back",
            &format!(
                "{why}: reverted to {}",
                body.release.as_ref().map_or("prev", |m| short(&m.sha256))
            ),
        ),
        Ok((_, body)) => entry(
            "revert",
            "updater",
            body.release.as_ref().map(|m| m.sha256.as_str()),
            "error",
            &format!("{why}: {}", body.error.as_deref().unwrap_or("failed")),
        ),
        Err(e) => entry(
            "revert",
            "updater",
            from.as_deref(),
            "error",
            &format!("{why}: {e}"),
        ),
    };
    record(&d.journal, e).await;
}

/// The operation guard, once no operation runs, if `generation` still is
/// the agent being supervised then (else an operation replaced it).
async fn hold(d: &Arc<Daemon>, generation: u64) -> Option<OpGuard> {
    let deadline = Instant::now() + GUARD_WAIT;
    loop {
        if !d.watch.is_current(generation) {
            return None;
        }
        if let Ok(guard) = d.try_begin("restart") {
            return d.watch.is_current(generation).then_some(guard);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "an operation held the worker for {GUARD_WAIT:?}; not restarting the agent"
            );
            return None;
        }
        tokio::time::sleep(GUARD_POLL).await;
    }
}

async fn active_sha(d: &Arc<Daemon>) -> Option<String> {
    let layout = d.layout.clone();
    blocking(move || Ok(pki::wire::Manifest::read(&layout.active()).map(|m| m.sha256)))
        .await
        .ok()
        .flatten()
}

/// The last lines the most recently started agent printed (for a 409).
pub async fn failed_tail(d: &Arc<Daemon>) -> Vec<String> {
    let log = d.spawn_log.clone();
    blocking(move || Ok(log.failed_tail()))
        .await
        .unwrap_or_default()
}

/// `POST /agent/restart`, holding the worker: restart the agent on
/// `current` and probe it; leaves a crash loop.
pub async fn restart(d: Arc<Daemon>, _guard: OpGuard) -> OpResult {
    let layout = d.layout.clone();
    let active = blocking(move || {
        Ok(layout
            .resolved_current()
            .map(|_| pki::wire::Manifest::read(&layout.active())))
    })
    .await?;
    let Some(release) = active else {
        return Ok((
            StatusCode::NOT_FOUND,
            OpResponse {
                error: Some("no release is active: nothing to restart".into()),
                ..OpResponse::new(OpStatus::Error, None)
            },
        ));
    };
    let (p, _) = restart_current(&d, "agent-restart").await;
    let healthy = p.healthy;
    let log_tail = if healthy {
        Vec::new()
    } else {
        failed_tail(&d).await
    };
    Ok((
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        },
        OpResponse {
            status: if healthy {
                OpStatus::Updated
            } else {
                OpStatus::Error
            },
            release,
            rolled_back: false,
            error: p
                .error
                .clone()
                .map(|e| format!("the restarted agent is unhealthy: {e}")),
            probes: vec![p],
            stderr: None,
            timings: None,
            log_tail,
        },
    ))
}
