//! The certificate deny list on the worker (issue 15): `<install>/deny.json`
//! loaded at start (an unreadable one stops the start: the list exists to
//! refuse someone, so it never silently turns empty), and `POST /deny`,
//! which persists the master's whole list atomically and durably before it
//! takes effect. `pki::serve` refuses denied peers; this module only keeps
//! the list.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use pki::{DenyBody, DenyList};
use serde::Serialize;

use crate::error::{AppError, UpdaterError};
use crate::state::{Daemon, blocking};

/// Where the list lives in the install dir.
pub fn path_in(install_dir: &Path) -> PathBuf {
    install_dir.join("deny.json")
}

/// The list persisted in `install_dir`, or an empty one if there is none.
pub fn load(install_dir: &Path) -> anyhow::Result<DenyList> {
    let path = path_in(install_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DenyList::default()),
        Err(e) => anyhow::bail!("reading the deny list {}: {e}", path.display()),
    };
    let body: DenyBody = serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "the deny list {} is unreadable ({e}): restore it, or remove it and decommission the revoked hosts again from the master",
            path.display()
        )
    })?;
    DenyList::from_body(&body).map_err(|e| anyhow::anyhow!("the deny list {}: {e}", path.display()))
}

/// `POST /deny`'s answer.
#[derive(Debug, Serialize)]
pub struct DenyAnswer {
    status: &'static str,
    version: i64,
    denied: usize,
}

/// `POST /deny` (master only, by policy): replace the list with the whole
/// list the master sends, unless it is older than the one held (409).
pub async fn deny(
    State(app): State<Arc<Daemon>>,
    body: Result<Json<DenyBody>, JsonRejection>,
) -> Result<Json<DenyAnswer>, AppError> {
    let Json(body) = body.map_err(|e| {
        UpdaterError::BadUpload(format!(
            "{e}: send JSON {{\"version\": N, \"fingerprints\": [hex, …]}}"
        ))
    })?;
    let set = body
        .parse()
        .map_err(|e| UpdaterError::BadUpload(e.to_string()))?;
    let held = app.deny.version();
    if body.version < held {
        return Err(UpdaterError::StaleDenyList {
            sent: body.version,
            held,
        }
        .into());
    }
    let path = path_in(&app.config.install_dir);
    let stored = body.clone();
    blocking(move || crate::slots::fsx::write_json_durable(&path, &stored)).await?;
    let denied = set.len();
    app.deny.replace(body.version, set);
    tracing::info!(version = body.version, denied, "deny list replaced");
    Ok(Json(DenyAnswer {
        status: "ok",
        version: body.version,
        denied,
    }))
}
