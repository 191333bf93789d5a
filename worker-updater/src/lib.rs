//! swarm's updater daemon: receives releases over mTLS, extracts them
//! safely, rotates A/B slots with an atomic flip, restarts and probes the
//! agent, and rolls back on its own when the probe fails.
//!
//! Code map: [`config`] (flags → validated [`Config`]), [`upload`] +
//! [`extract`] (streamed, validated extraction), [`release`] (`swarm.toml`,
//! `.env.local`, manifests), [`layout`] (slots, flip, repair), [`agent`]
//! (pidfile, `/proc`, signals, spawn), [`probe`] (mTLS health checks),
//! [`ops`] (the operations), [`selfupdate`] (`/update-self`, the re-exec,
//! the trial watchdog, the start-up hand-over), [`error`] (the one error
//! type and `AppError`).
//!
//! Invariants: only this crate touches release symlinks and agent
//! processes; one operation at a time; blocking work never runs on the
//! async runtime's threads, so `/health` answers during an update; a
//! normal `/update` never touches `updater/`, and a self-update never
//! touches the agent's release or restarts the agent.

pub mod agent;
pub mod config;
pub mod error;
pub mod extract;
pub mod layout;
pub mod ops;
pub mod probe;
pub mod release;
pub mod selfupdate;
pub mod upload;

use std::future::Future;
use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pki::Peer;
use pki::wire::{ErrorBody, Releases, UpdaterHealth};
use tokio::net::TcpListener;

pub use config::{Args, Config};
use error::{AppError, UpdaterError};
use ops::{App, blocking};

/// How long shutdown waits for an operation in flight.
const OP_DRAIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Repair the install dir, then serve on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let app = Arc::new(App::new(config)?);
    let layout = app.layout.clone();
    let repair = blocking(move || layout.repair()).await?;
    for action in &repair.actions {
        tracing::warn!("start-up repair: {action}");
    }
    // Takes the worker before the first request can: a push during the
    // start-up restart gets 409 busy instead of racing it.
    if let Some(reconcile) = app.start_up(&repair).await {
        tokio::spawn(reconcile);
    }
    selfupdate::reap_watchdog(&app.updater_layout);
    pki::serve(listener, tls, router(app.clone()), shutdown).await?;
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

/// The updater's routes (the auth policy is applied by [`pki::serve`]).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/releases", get(releases))
        .route("/update", post(update).layer(DefaultBodyLimit::disable()))
        .route("/rollback", post(rollback))
        .route(
            "/update-self",
            post(update_self).layer(DefaultBodyLimit::disable()),
        )
        .fallback(not_found)
        .with_state(app)
}

async fn health(State(app): State<Arc<App>>) -> Json<UpdaterHealth> {
    Json(UpdaterHealth {
        status: "ok".into(),
        role: "updater".into(),
        host: app.config.host.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        release: app.own_release.clone(),
        pid: std::process::id(),
        busy: app.busy(),
    })
}

async fn releases(State(app): State<Arc<App>>) -> Result<Json<Releases>, AppError> {
    let layout = app.layout.clone();
    Ok(Json(blocking(move || Ok(layout.releases())).await?))
}

async fn update(
    State(app): State<Arc<App>>,
    Peer(who): Peer,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, AppError> {
    let guard = app.try_begin("update")?;
    let form = form.map_err(|e| {
        UpdaterError::BadUpload(format!(
            "{e}: send multipart/form-data with fields sha256 and tarball"
        ))
    })?;
    // Run detached so a client that hangs up cannot cancel the operation
    // half-way through a rotation.
    let task = tokio::spawn(async move { app.update(form, who.cn(), guard).await });
    let (code, body) = task
        .await
        .map_err(|e| UpdaterError::Internal(format!("update task: {e}")))??;
    Ok((code, Json(body)).into_response())
}

async fn rollback(State(app): State<Arc<App>>) -> Result<Response, AppError> {
    let guard = app.try_begin("rollback")?;
    let task = tokio::spawn(async move { app.rollback(guard).await });
    let (code, body) = task
        .await
        .map_err(|e| UpdaterError::Internal(format!("rollback task: {e}")))??;
    Ok((code, Json(body)).into_response())
}

/// `POST /update-self`: answer 200 first, then exec the new updater once the
/// answer has left (see [`selfupdate`]).
async fn update_self(
    State(app): State<Arc<App>>,
    Peer(who): Peer,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, AppError> {
    let guard = app.try_begin("update-self")?;
    let form = form.map_err(|e| {
        UpdaterError::BadUpload(format!(
            "{e}: send multipart/form-data with fields sha256, tarball and confirm_self=true"
        ))
    })?;
    // Detached like `/update`; the guard travels with the operation and
    // then with the exec, so nothing else starts in between.
    let task = tokio::spawn(async move {
        let (body, handoff) = app.update_self(form, who.cn()).await?;
        let (sent, on_sent) = tokio::sync::oneshot::channel();
        handoff.exec_after(on_sent, guard);
        Ok::<_, UpdaterError>((body, sent))
    });
    let (body, sent) = task
        .await
        .map_err(|e| UpdaterError::Internal(format!("update-self task: {e}")))??;
    let json = serde_json::to_vec(&body)
        .map_err(|e| UpdaterError::Internal(format!("serializing the answer: {e}")))?;
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        // This process is about to be replaced: no keep-alive.
        .header(axum::http::header::CONNECTION, "close")
        .body(axum::body::Body::from_stream(
            selfupdate::NotifyingBody::new(json.into(), sent),
        ))
        .map_err(|e| AppError(UpdaterError::Internal(format!("building the answer: {e}"))))
}

async fn not_found() -> Response {
    ErrorBody::response(StatusCode::NOT_FOUND, "no such endpoint")
}
