//! The updater's HTTP face: the router, the handlers (each operation runs
//! detached, holding the operation guard), and the `/update-self` answer
//! body that tells the hand-over when it has been sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use pki::wire::{ErrorBody, Releases, UpdaterHealth, VerifyReport};
use pki::{Peer, PeerCert};
use tokio::sync::oneshot;

use crate::error::{AppError, UpdaterError};
use crate::receive::form::{Form, FormRejection};
use crate::state::{Daemon, blocking};
use crate::{ops, selfupdate, views};

/// The updater's routes (the auth policy is applied by [`pki::serve()`]).
pub fn router(app: Arc<Daemon>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/releases", get(releases))
        .route("/update", post(update).layer(DefaultBodyLimit::disable()))
        .route(
            "/update-from-store",
            post(update_from_store).layer(DefaultBodyLimit::max(MAX_STORE_REQUEST)),
        )
        .route("/rollback", post(rollback))
        .route("/history", get(views::history))
        .route("/logs", get(views::logs))
        .route("/agent/restart", post(views::agent_restart))
        .route("/deny", post(crate::deny::deny))
        .route("/renew", post(crate::renew::renew))
        .route("/verify", post(verify))
        .route(
            "/update-self",
            post(update_self).layer(DefaultBodyLimit::disable()),
        )
        .fallback(not_found)
        .with_state(app)
}

async fn health(State(app): State<Arc<Daemon>>) -> Json<UpdaterHealth> {
    Json(UpdaterHealth {
        status: "ok".into(),
        role: "updater".into(),
        host: app.config.host.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        release: app.own_release.clone(),
        pid: std::process::id(),
        busy: app.busy(),
        agent: app.watch.snapshot(),
    })
}

async fn releases(State(app): State<Arc<Daemon>>) -> Result<Json<Releases>, AppError> {
    let layout = app.layout.clone();
    Ok(Json(blocking(move || Ok(layout.releases())).await?))
}

async fn update(
    State(app): State<Arc<Daemon>>,
    Peer(who): Peer,
    cert: PeerCert,
    form: Result<Form, FormRejection>,
) -> Result<Response, AppError> {
    let guard = app.try_begin("update")?;
    let form = form.map_err(|e| {
        UpdaterError::BadUpload(format!(
            "{e}: send multipart/form-data with fields sha256 and tarball"
        ))
    })?;
    // Run detached so a client that hangs up cannot cancel the operation
    // half-way through a rotation.
    let d = app.clone();
    let by = cert.by(&who);
    let run = ops::update::update(d, ops::stage::Source::Form(form), by.clone(), guard);
    let (code, body) = views::detached(&app, "update", by, run).await?;
    Ok((code, Json(body)).into_response())
}

/// Largest `/update-from-store` body: a URL (under 1 KiB) for the release
/// document and one per pack (64 MiB of content each), so 4 MiB is room
/// for thousands of packs.
const MAX_STORE_REQUEST: usize = 4 << 20;

/// `POST /update-from-store` (issue 16): a JSON [`pki::store::StoreUpdate`];
/// the updater downloads what it lacks from the store, then the same path
/// as `/update`.
async fn update_from_store(
    State(app): State<Arc<Daemon>>,
    Peer(who): Peer,
    cert: PeerCert,
    body: Bytes,
) -> Result<Response, AppError> {
    let guard = app.try_begin("update")?;
    let req: pki::store::StoreUpdate = serde_json::from_slice(&body).map_err(|e| {
        UpdaterError::BadUpload(format!(
            "the /update-from-store body is not the JSON the master sends: {}",
            pki::text::sanitize(&e.to_string(), 200)
        ))
    })?;
    let by = cert.by(&who);
    let run = ops::update::update(
        app.clone(),
        ops::stage::Source::Store(Box::new(req)),
        by.clone(),
        guard,
    );
    let (code, body) = views::detached(&app, "update", by, run).await?;
    Ok((code, Json(body)).into_response())
}

/// `POST /verify`: 200 with the report, clean or not (the master decides
/// what a difference means); 409 while another operation runs.
async fn verify(State(app): State<Arc<Daemon>>) -> Result<Json<VerifyReport>, AppError> {
    let guard = app.try_begin("verify")?;
    Ok(Json(crate::verify::verify(app.clone(), guard).await?))
}

/// `POST /rollback`, with an optional JSON body `{"release_id": PREFIX}`
/// (issue 12): to that kept release instead of `prev`.
async fn rollback(
    State(app): State<Arc<Daemon>>,
    Peer(who): Peer,
    cert: PeerCert,
    body: Bytes,
) -> Result<Response, AppError> {
    let guard = app.try_begin("rollback")?;
    let to = rollback_target(&body)?;
    let run = ops::rollback::rollback(app.clone(), guard, to);
    let (code, body) = views::detached(&app, "rollback", cert.by(&who), run).await?;
    Ok((code, Json(body)).into_response())
}

/// `POST /update-self`: answer 200 first, then exec the new updater once the
/// answer has left (see [`selfupdate`]).
async fn update_self(
    State(app): State<Arc<Daemon>>,
    Peer(who): Peer,
    cert: PeerCert,
    form: Result<Form, FormRejection>,
) -> Result<Response, AppError> {
    let guard = app.try_begin("update-self")?;
    let form = form.map_err(|e| {
        UpdaterError::BadUpload(format!(
            "{e}: send multipart/form-data with fields sha256, tarball and confirm_self=true"
        ))
    })?;
    // Detached like `/update`; the guard travels with the operation and
    // then with the exec, so nothing else starts in between.
    let by = cert.by(&who);
    let task = tokio::spawn(async move {
        let result = selfupdate::update_self(app.clone(), form, by.clone()).await;
        let journaled = result
            .as_ref()
            .map(|(body, _)| (StatusCode::OK, body.clone()))
            .map_err(|e| UpdaterError::Internal(e.to_string()));
        views::journal_op(&app, "update-self", &by, &journaled).await;
        let (body, handoff) = result?;
        let (sent, on_sent) = tokio::sync::oneshot::channel();
        handoff.exec_after(app, on_sent, guard);
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
        .body(axum::body::Body::from_stream(NotifyingBody::new(
            json.into(),
            sent,
        )))
        .map_err(|e| AppError(UpdaterError::Internal(format!("building the answer: {e}"))))
}

/// The `release_id` of a `/rollback` body, if it names one.
fn rollback_target(body: &[u8]) -> Result<Option<String>, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct To {
        release_id: Option<String>,
    }
    let to: To = serde_json::from_slice(body).map_err(|e| {
        UpdaterError::BadUpload(format!(
            "the /rollback body is not {{\"release_id\": \"PREFIX\"}}: {e}"
        ))
    })?;
    Ok(to.release_id)
}

async fn not_found() -> Response {
    ErrorBody::response(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The body of the `/update-self` 200: one chunk, then a signal when the
/// connection has taken it all (or dropped it).
pub struct NotifyingBody {
    chunk: Option<Bytes>,
    sent: Option<oneshot::Sender<()>>,
}

impl NotifyingBody {
    pub fn new(chunk: Bytes, sent: oneshot::Sender<()>) -> Self {
        NotifyingBody {
            chunk: Some(chunk),
            sent: Some(sent),
        }
    }
}

impl futures_util::Stream for NotifyingBody {
    type Item = std::result::Result<Bytes, std::convert::Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(c) = self.chunk.take() {
            return Poll::Ready(Some(Ok(c)));
        }
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
        Poll::Ready(None)
    }
}

impl Drop for NotifyingBody {
    fn drop(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}
