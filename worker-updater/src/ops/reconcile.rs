//! The start-up reconcile: after the repair and before anything is
//! served, restart the agent on `current` when it must be (re)started, and
//! revert an unconfirmed release that proves unhealthy.

use std::future::Future;
use std::sync::Arc;

use pki::wire::Manifest;

use super::{end_rollback, restart_current};
use crate::slots::Repair;
use crate::state::{Daemon, OpGuard, blocking};

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
    let restart = repair.unconfirmed || repair.restart;
    let needed = blocking(move || {
        Ok(app.layout.resolved_current().is_some()
            && (restart || (app.config.start_agent && !app.supervisor.running(&app.matcher()))))
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!("start-up: {e}");
        false
    });
    if !needed {
        return None;
    }
    let guard = d.try_begin("start-up").ok()?;
    Some(reconcile(d.clone(), guard, repair.unconfirmed))
}

/// Holding the worker: restart the agent on `current` and probe it. An
/// `unconfirmed` release (never probed) that is unhealthy goes to
/// `failed/` and `prev` comes back, its agent restarted.
pub async fn reconcile(d: Arc<Daemon>, guard: OpGuard, unconfirmed: bool) {
    let _guard = guard;
    let (p, _) = restart_current(&d, "forward").await;
    if p.healthy {
        tracing::info!("start-up: agent healthy");
        return;
    }
    tracing::warn!("start-up: agent unhealthy: {:?}", p.error);
    if !unconfirmed {
        return;
    }
    let layout = d.layout.clone();
    let reverted = blocking(move || {
        let active = Manifest::read(&layout.active());
        if !layout.prev().is_dir() {
            return Ok(None);
        }
        layout.begin_rollback(active.as_ref(), None)?;
        layout.swap_prev()?;
        layout.fail_prev().map(Some)
    })
    .await;
    match reverted {
        Ok(None) => return,
        Ok(Some(name)) => {
            tracing::warn!(
                "start-up: the unconfirmed release went to failed/{name}; restarting the previous one"
            );
            let (p, _) = restart_current(&d, "rollback").await;
            tracing::info!(healthy = p.healthy, "start-up: previous release restarted");
        }
        Err(e) => tracing::error!("start-up: reverting the unconfirmed release: {e}"),
    }
    end_rollback(&d).await;
}
