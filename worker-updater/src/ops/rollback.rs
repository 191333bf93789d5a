//! `POST /rollback`: swap `active` and `prev` (journaled), restart and
//! probe; if `prev` proves unhealthy, swap back to the release that was
//! running and say so.

use std::sync::Arc;

use axum::http::StatusCode;
use pki::wire::{OpResponse, OpStatus};

use super::{OpResult, end_rollback, recover, restart_and_probe};
use crate::error::{Result, UpdaterError};
use crate::short;
use crate::slots::Layout;
use crate::state::{Daemon, OpGuard, blocking};

/// `POST /rollback`, holding the worker (`guard`). The swap is journaled
/// until the agent on the final release has been probed, so a crash in
/// between is repaired at start-up.
pub async fn rollback(d: Arc<Daemon>, guard: OpGuard, to: Option<String>) -> OpResult {
    if let Some(prefix) = to {
        let layout = d.layout.clone();
        let already = blocking(move || to_kept(&layout, &prefix)).await?;
        if let Some(active) = already {
            return Ok((
                StatusCode::OK,
                OpResponse::new(OpStatus::Unchanged, Some(active)),
            ));
        }
    }
    let daemon = d.clone();
    let (running_spec, target_spec) = blocking(move || {
        let layout = &daemon.layout;
        if !layout.prev().is_dir() || !layout.active().is_dir() {
            return Err(UpdaterError::NoPrevious);
        }
        // Parsed once each, before the swap; both run from `active`.
        let host = daemon.host_env()?;
        Ok((
            daemon.spec_on_disk(&layout.active(), &host),
            daemon.spec_on_disk(&layout.prev(), &host),
        ))
    })
    .await?;
    // The target's `[agent] listen` sockets before anything is swapped.
    if let Ok(run) = &target_spec.agent {
        d.sockets.ensure(&run.listen)?;
    }
    let (running, target) = (running_spec.manifest.clone(), target_spec.manifest.clone());
    let (layout, from, to) = (d.layout.clone(), running.clone(), target.clone());
    let swapped = blocking(move || {
        layout.begin_rollback(from.as_ref(), to.as_ref())?;
        crate::crashpoint::at("rollback-journaled");
        layout.swap_prev()
    })
    .await;
    if let Err(e) = swapped {
        recover(&d, guard, "a failed rollback swap").await;
        return Err(e);
    }
    crate::crashpoint::at("rollback-swapped");
    let (p, spawned) = restart_and_probe(&d, "rollback", &target_spec).await;
    if p.healthy {
        end_rollback(&d).await;
        tracing::info!("rolled back to {:?}", target.as_ref().map(|m| &m.sha256));
        return Ok((
            StatusCode::OK,
            OpResponse {
                rolled_back: true,
                probes: vec![p],
                ..OpResponse::new(OpStatus::RolledBack, target)
            },
        ));
    }
    // The verdict first: a crash from here on finishes the undo.
    crate::crashpoint::at("rollback-unhealthy");
    let layout = d.layout.clone();
    if let Err(e) = blocking(move || layout.mark_rollback_undo()).await {
        recover(&d, guard, "a failed rollback undo").await;
        return Err(e);
    }
    crate::crashpoint::at("rollback-undoing");
    let log_tail = super::caretaker::failed_tail(&d).await;
    // A deliberate stop: no crash for the supervisor.
    d.watch.retire();
    if let Some(s) = &spawned {
        let stopped = d
            .supervisor
            .stop_pid(s.pid, crate::agent::proc::start_time(s.pid))
            .await;
        tracing::info!("{}", stopped.note);
    }
    let layout = d.layout.clone();
    if let Err(e) = blocking(move || layout.swap_prev()).await {
        recover(&d, guard, "a failed swap back after a rollback").await;
        return Err(e);
    }
    crate::crashpoint::at("rollback-undone");
    let (back, _) = restart_and_probe(&d, "rollback-check", &running_spec).await;
    end_rollback(&d).await;
    let mut error = format!(
        "the previous release {} failed its health probe ({}); went back to {}",
        target
            .as_ref()
            .map_or("(no manifest)", |m| short(&m.sha256)),
        p.error.as_deref().unwrap_or("unhealthy"),
        running
            .as_ref()
            .map_or("(no manifest)", |m| short(&m.sha256)),
    );
    if !back.healthy {
        error.push_str(&format!(
            ", which is unhealthy too: {}",
            back.error.as_deref().unwrap_or("unhealthy")
        ));
    }
    tracing::warn!("{error}");
    Ok((
        StatusCode::CONFLICT,
        OpResponse {
            status: OpStatus::Error,
            release: running,
            rolled_back: false,
            error: Some(error),
            probes: vec![p, back],
            stderr: None,
            timings: None,
            log_tail,
        },
    ))
}

/// Make the kept release whose `release_id` starts with `prefix` the
/// rollback target (`prev`), or say it is the live one (`Some(active)`:
/// nothing to do). Unknown: 404; ambiguous: 400; both list the candidates.
fn to_kept(layout: &Layout, prefix: &str) -> Result<Option<pki::wire::Manifest>> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UpdaterError::BadUpload(
            "release_id: give a hex prefix of a kept release's release_id (see GET /releases)"
                .into(),
        ));
    }
    let mut all: Vec<(Option<std::path::PathBuf>, pki::wire::Manifest, &str)> = Vec::new();
    if let Some(m) = pki::wire::Manifest::read(&layout.active()) {
        all.push((None, m, "active"));
    }
    if let Some(m) = pki::wire::Manifest::read(&layout.prev()) {
        all.push((Some(layout.prev()), m, "prev"));
    }
    for (dir, m) in layout.kept_releases() {
        all.push((Some(dir), m, "kept"));
    }
    let candidates = || {
        all.iter()
            .map(|(_, m, slot)| format!("{} ({slot})", short(m.id())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let hits: Vec<_> = all
        .iter()
        .filter(|(_, m, _)| m.id().starts_with(&prefix))
        .collect();
    match hits.as_slice() {
        [] => Err(UpdaterError::NotKept(format!(
            "no kept release has a release_id starting with {prefix}; kept: {}",
            candidates()
        ))),
        [(None, m, _)] => Ok(Some(m.clone())),
        [(Some(dir), _, slot)] => {
            if *slot == "kept" {
                layout.promote_kept(dir)?;
            }
            Ok(None)
        }
        many => Err(UpdaterError::BadUpload(format!(
            "{prefix} is ambiguous: it starts {}; give more digits",
            many.iter()
                .map(|(_, m, slot)| format!("{} ({slot})", m.id()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
