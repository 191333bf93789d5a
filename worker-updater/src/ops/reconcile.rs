//! The start-up reconcile: after the repair and before anything is
//! served, restart the agent on `current` when it must be (re)started, and
//! finish what a crash left undecided: an unconfirmed update is confirmed
//! or reverted (`prev` untouched), an unconfirmed rollback is kept or
//! undone — as the operation would have without the crash.

use std::future::Future;
use std::sync::Arc;

use super::{end_rollback, restart_current};
use crate::agent::Spawned;
use crate::slots::Repair;
use crate::state::{Daemon, OpGuard, blocking};

/// What the reconcile has to decide, from the [`Repair`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Pending {
    /// An update flipped in and never given its verdict.
    pub update: bool,
    /// A rollback swapped in and never given its verdict.
    pub rollback: bool,
    /// The agent runs on sockets a previous updater bound (this one was
    /// restarted, not exec'ed): restart it onto the ones held now.
    pub handover: bool,
}

impl From<&Repair> for Pending {
    fn from(r: &Repair) -> Pending {
        Pending {
            update: r.unconfirmed,
            rollback: r.rollback_unconfirmed,
            handover: false,
        }
    }
}

/// At start-up, after the repair and before anything is served: when
/// the agent has to be (re)started — a crash left an unconfirmed release
/// live, interrupted a revert or a rollback, or no agent of ours runs
/// and `--start-agent` is on — take the worker now and return the
/// reconcile to run, holding it. Requests meanwhile get 409 busy;
/// `/health` answers.
pub async fn start_up(
    d: &Arc<Daemon>,
    repair: &Repair,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let app = d.clone();
    let restart = repair.unconfirmed || repair.restart || repair.rollback_unconfirmed;
    let needed = blocking(move || {
        if app.layout.resolved_current().is_none() {
            return Ok((false, false));
        }
        let running = app.supervisor.running(&app.matcher());
        // The active release's sockets, held before anything starts.
        let host = app.host_env()?;
        let spec = app.spec_on_disk(&app.layout.active(), &host);
        let listen = spec.agent.map(|r| r.listen).unwrap_or_default();
        if let Err(e) = app.sockets.ensure(&listen) {
            tracing::error!("start-up: {e}");
        }
        let handover = running && !listen.is_empty() && !app.sockets.inherited();
        Ok((
            restart || handover || (app.config.start_agent && !running),
            handover,
        ))
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!("start-up: {e}");
        (false, false)
    });
    let (needed, handover) = needed;
    if !needed {
        return None;
    }
    let guard = d.try_begin("start-up").ok()?;
    let mut pending: Pending = repair.into();
    pending.handover = handover;
    Some(reconcile(d.clone(), guard, pending))
}

/// Holding the worker: restart the agent on `current` and probe it, then
/// settle what is `pending`: healthy confirms (an update's replaced release
/// becomes `prev`; a rollback's journal goes), unhealthy reverts the update
/// (it goes to `failed/`, `active.old` comes back, `prev` stays) or undoes
/// the rollback (swap back, restart).
pub async fn reconcile(d: Arc<Daemon>, guard: OpGuard, pending: Pending) {
    let _guard = guard;
    let phase = if pending.rollback {
        "rollback"
    } else if pending.handover && !pending.update {
        // Not a release going live: the revert window is not restarted.
        "handover"
    } else {
        "forward"
    };
    let (p, spawned) = restart_current(&d, phase).await;
    if p.healthy {
        tracing::info!("start-up: agent healthy");
        if pending.update {
            let layout = d.layout.clone();
            match blocking(move || layout.confirm_to_trash()).await {
                Ok(trash) => {
                    tracing::info!("start-up: the unconfirmed update is healthy; confirmed");
                    crate::store::gc::sweep_in_background(
                        crate::store::Store::new(d.layout.store()),
                        trash.into_iter().collect(),
                    );
                }
                Err(e) => tracing::error!("start-up: confirming the update: {e}"),
            }
        }
        if pending.rollback {
            end_rollback(&d).await;
        }
        return;
    }
    tracing::warn!("start-up: agent unhealthy: {:?}", p.error);
    if pending.update {
        revert_unconfirmed(&d, spawned).await;
    } else if pending.rollback {
        undo_rollback(&d, spawned).await;
    }
}

/// The unconfirmed update is unhealthy: record the verdict, stop its
/// agent, revert (the release it replaced comes back, `prev` untouched),
/// restart that one.
async fn revert_unconfirmed(d: &Arc<Daemon>, spawned: Option<Spawned>) {
    crate::crashpoint::at("reconcile-unhealthy");
    let layout = d.layout.clone();
    if let Err(e) = blocking(move || layout.mark_reverting()).await {
        tracing::error!("start-up: marking the update reverting: {e}");
    }
    stop_spawned(d, spawned).await;
    let layout = d.layout.clone();
    let reverted = blocking(move || {
        let Some(m) = layout.pending_update() else {
            return Ok(None);
        };
        layout.revert(&m).map(Some)
    })
    .await;
    match reverted {
        Ok(Some((name, true))) => {
            tracing::warn!(
                "start-up: the unconfirmed release went to failed/{name}; restarting the one it replaced"
            );
            let (p, _) = restart_current(d, "rollback").await;
            tracing::info!(healthy = p.healthy, "start-up: previous release restarted");
        }
        Ok(Some((name, false))) => tracing::warn!(
            "start-up: the unconfirmed first install went to failed/{name}; nothing runs"
        ),
        Ok(None) => tracing::error!("start-up: the update journal vanished; left as it is"),
        Err(e) => tracing::error!("start-up: reverting the unconfirmed release: {e}"),
    }
}

/// The unconfirmed rollback's target is unhealthy: record the verdict,
/// stop its agent, swap back, restart the release that ran before.
async fn undo_rollback(d: &Arc<Daemon>, spawned: Option<Spawned>) {
    let layout = d.layout.clone();
    if let Err(e) = blocking(move || layout.mark_rollback_undo()).await {
        tracing::error!("start-up: marking the rollback for undo: {e}");
    }
    stop_spawned(d, spawned).await;
    let layout = d.layout.clone();
    match blocking(move || layout.swap_prev()).await {
        Ok(()) => {
            tracing::warn!("start-up: the rollback's target is unhealthy; went back");
            let (p, _) = restart_current(d, "rollback-check").await;
            tracing::info!(healthy = p.healthy, "start-up: previous release restarted");
        }
        Err(e) => tracing::error!("start-up: undoing the rollback: {e}"),
    }
    end_rollback(d).await;
}

async fn stop_spawned(d: &Daemon, spawned: Option<Spawned>) {
    // A deliberate stop: no crash for the supervisor.
    d.watch.retire();
    if let Some(s) = spawned {
        let stopped = d
            .supervisor
            .stop_pid(s.pid, crate::agent::proc::start_time(s.pid))
            .await;
        tracing::info!("{}", stopped.note);
    }
}
