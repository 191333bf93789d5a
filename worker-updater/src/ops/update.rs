//! `POST /update`: [`stage`] the push, restart and probe its agent, then
//! confirm it (the release it replaced becomes `prev`) or revert (the new
//! one goes to `failed/`, the last good one is restored and re-probed).

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use pki::wire::{OpResponse, OpStatus, Timings};

use super::stage::{Source, StageError, Staged, stage};
use super::{OpResult, recover, restart_and_probe};
use crate::release::Purpose;
use crate::state::{Daemon, OpGuard, blocking};
use crate::store::Store;
use crate::{ms, short};

/// `POST /update`, holding the worker (`guard`). When the layout has to be
/// repaired half-way, the guard passes to the reconcile that follows, so
/// nothing else starts in between.
pub async fn update(d: Arc<Daemon>, source: Source, pushed_by: String, guard: OpGuard) -> OpResult {
    let store = Store::new(d.layout.store());
    let result = push(d, source, pushed_by, guard).await;
    let swept = matches!(&result, Ok((StatusCode::OK, r)) if r.status == OpStatus::Updated);
    if !swept {
        // What a refused or failed push left unlinked (its staging, a
        // pruned failed release): off the request path.
        crate::store::gc::sweep_in_background(store, Vec::new());
    }
    result
}

/// [`update`] itself; a healthy push sweeps what it replaced.
async fn push(d: Arc<Daemon>, source: Source, pushed_by: String, guard: OpGuard) -> OpResult {
    let t0 = Instant::now();
    let mut timings = Timings::default();
    let layout = d.layout.clone();
    let staged = stage(&d, &layout, source, pushed_by, Purpose::Agent, &mut timings).await;
    let Staged { spec, previous } = match staged {
        Ok(s) => s,
        Err(StageError::Before(e)) => return Err(e),
        Err(StageError::Unchanged(m)) => return Ok(unchanged(*m, timings, t0)),
        Err(StageError::Flip(e)) => {
            recover(&d, guard, "a failed flip").await;
            return Err(e);
        }
    };
    let Some(manifest) = spec.manifest.clone() else {
        // stage() flips only a release with a manifest.
        return Err(crate::error::UpdaterError::Internal(
            "staged release without a manifest".into(),
        ));
    };
    tracing::info!(sha256 = %manifest.sha256, "flipped current to the new release");
    crate::crashpoint::at("update-flipped");

    let t = Instant::now();
    let (forward, spawned) = restart_and_probe(&d, "forward", &spec).await;
    timings.probe_ms = forward.elapsed_ms;
    timings.restart_ms = ms(t).saturating_sub(forward.elapsed_ms);
    if forward.healthy {
        crate::crashpoint::at("update-healthy");
        let t = Instant::now();
        let layout = d.layout.clone();
        let trash = blocking(move || layout.confirm_to_trash()).await?;
        timings.confirm_ms = ms(t);
        // The release it replaced can take seconds to delete (a big tree,
        // a busy disk): not the pusher's wait. Kept releases beyond
        // --keep-releases likewise, then the content no release links
        // any more (issue 12).
        let mut trash: Vec<_> = trash.into_iter().collect();
        let layout = d.layout.clone();
        if let Ok(pruned) = blocking(move || Ok(layout.prune_kept())).await {
            if !pruned.is_empty() {
                crate::crashpoint::at("kept-pruned");
            }
            trash.extend(pruned);
        }
        super::materialize::after_push(d.layout.clone(), trash);
        timings.total_ms = ms(t0);
        tracing::info!(sha256 = %manifest.sha256, "update healthy");
        return Ok((
            StatusCode::OK,
            OpResponse {
                probes: vec![forward],
                timings: Some(timings),
                ..OpResponse::new(OpStatus::Updated, Some(manifest))
            },
        ));
    }

    // Unhealthy: record the verdict (a crash from here on reverts, never
    // rolls forward), stop it, put the last good release back.
    crate::crashpoint::at("update-unhealthy");
    let mut why = forward.error.clone().unwrap_or_else(|| "unhealthy".into());
    // With `[agent] listen` the updater itself (and a kept old agent)
    // holds the port by design: no stray to name.
    let holds_sockets = spec.agent.as_ref().is_ok_and(|r| !r.listen.is_empty());
    if !holds_sockets
        && let Some(port) = reqwest::Url::parse(&forward.url)
            .ok()
            .and_then(|u| u.port_or_known_default())
    {
        let agent = spawned.as_ref().map(|s| s.pid);
        let note = blocking(move || Ok(crate::agent::port::stray_note(port, agent))).await;
        if let Ok(Some(note)) = note {
            why.push_str("; ");
            why.push_str(&note);
        }
    }
    let layout = d.layout.clone();
    if let Err(e) = blocking(move || layout.mark_reverting()).await {
        recover(&d, guard, "a failed revert").await;
        return Err(e);
    }
    crate::crashpoint::at("update-marked");
    let log_tail = crate::ops::caretaker::failed_tail(&d).await;
    d.watch.retire();
    if let Some(s) = &spawned {
        tracing::info!(
            "{}",
            d.supervisor
                .stop_pid(s.pid, crate::agent::proc::start_time(s.pid))
                .await
                .note
        );
    }
    let (layout, m) = (d.layout.clone(), manifest.clone());
    let (failed_name, restored) = match blocking(move || layout.revert(&m)).await {
        Ok(r) => r,
        Err(e) => {
            recover(&d, guard, "a failed revert").await;
            return Err(e);
        }
    };
    crate::crashpoint::at("update-reverted");
    let mut probes = vec![forward];
    let previous_manifest = previous.manifest.clone();
    let (release, error) = if restored {
        // The restored release went live long ago: its crash loop is not
        // reverted by itself (its `prev` is older still).
        d.watch.set_reverting(true);
        let (back, _) = restart_and_probe(&d, "rollback", &previous).await;
        d.watch.set_reverting(false);
        let mut error = format!(
            "release {} failed its health probe ({why}); rolled back to {} (the failed tree is in releases/failed/{failed_name})",
            short(&manifest.sha256),
            previous_manifest
                .as_ref()
                .map_or("the previous release", |p| short(&p.sha256)),
        );
        if !back.healthy {
            error.push_str(&format!(
                "; the restored release is unhealthy too: {}",
                back.error.as_deref().unwrap_or("unhealthy")
            ));
        }
        probes.push(back);
        (previous_manifest, error)
    } else {
        (
            None,
            format!(
                "first install of {} failed its health probe ({why}); there was no previous release, so nothing runs and `current` is absent; the tree is in releases/failed/{failed_name}; push a fixed tree",
                short(&manifest.sha256)
            ),
        )
    };
    timings.total_ms = ms(t0);
    tracing::warn!("{error}");
    Ok((
        StatusCode::CONFLICT,
        OpResponse {
            status: OpStatus::RolledBack,
            release,
            rolled_back: restored,
            error: Some(error),
            probes,
            stderr: None,
            timings: Some(timings),
            log_tail,
        },
    ))
}

/// The 200 of a push of the release that already is active: nothing changed.
fn unchanged(
    manifest: pki::wire::Manifest,
    mut timings: Timings,
    t0: Instant,
) -> (StatusCode, OpResponse) {
    timings.total_ms = ms(t0);
    tracing::info!(sha256 = %manifest.sha256, "the pushed release is the active one: unchanged");
    (
        StatusCode::OK,
        OpResponse {
            timings: Some(timings),
            ..OpResponse::new(OpStatus::Unchanged, Some(manifest))
        },
    )
}
