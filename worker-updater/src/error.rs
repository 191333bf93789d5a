//! The updater's one error type, and its mapping to HTTP responses
//! (`AppError`): the client's mistakes are 4xx with a message that says what
//! to fix; internal failures are 500 and logged with their cause.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pki::wire::{OpResponse, OpStatus};

/// Everything that can go wrong in the updater.
#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    /// A tar entry our extraction policy refuses.
    #[error("unsafe entry {path:?}: {why}")]
    Unsafe { path: String, why: String },
    /// A configured cap was exceeded.
    #[error("{0}")]
    Cap(String),
    /// The uploaded gzip does not hash to the claimed digest.
    #[error("sha256 mismatch: the form says {claimed} but the upload hashes to {actual}")]
    DigestMismatch { claimed: String, actual: String },
    /// A malformed request: multipart, gzip or tar framing, missing fields.
    #[error("{0}")]
    BadUpload(String),
    /// `swarm.toml` in the pushed tree is unusable.
    #[error("swarm.toml: {0}")]
    ReleaseConfig(String),
    /// The install hook failed or timed out.
    #[error("{message}")]
    Install { message: String, stderr: String },
    /// A new updater binary failed its `--check` run (or could not be
    /// switched to); the updater's slots were put back.
    #[error("{message}")]
    SelfCheck { message: String, stderr: String },
    /// The disk (or quota) is full.
    #[error("no space left on the install filesystem ({path}): {source}")]
    NoSpace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `POST /deny` with a list older than the one held.
    #[error("deny list version {sent} is older than the version {held} this updater holds")]
    StaleDenyList { sent: i64, held: i64 },
    /// `/rollback` with no `releases/prev`.
    #[error("no previous release")]
    NoPrevious,
    /// A delta push whose base this worker does not have (issue 12): 412,
    /// and the master answers with a full push.
    #[error("{0}")]
    NoBase(String),
    /// `POST /rollback` to a release this worker does not keep: 404.
    #[error("{0}")]
    NotKept(String),
    /// A release an updater with `release.pub` refuses (issue 15): 403.
    #[error("{0}")]
    Unsigned(String),
    /// Another operation holds the worker. The answer's `status` already
    /// says `busy` (and the master prints `busy: <error>`): not repeated here.
    #[error("{0} in progress; retry when it is done")]
    Busy(&'static str),
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An `[agent] listen` address cannot be bound (issue 14).
    #[error("{0}")]
    Bind(String),
    /// Starting or stopping the agent failed.
    #[error("agent: {0}")]
    Agent(String),
    /// Anything else internal.
    #[error("{0}")]
    Internal(String),
}

impl UpdaterError {
    /// An I/O error on `path`; ENOSPC and EDQUOT become [`UpdaterError::NoSpace`].
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        let path = path.as_ref().to_owned();
        match source.raw_os_error() {
            Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT => {
                UpdaterError::NoSpace { path, source }
            }
            _ => UpdaterError::Io { path, source },
        }
    }

    /// Shorthand for an unsafe-entry rejection.
    pub fn unsafe_entry(path: impl Into<String>, why: impl Into<String>) -> Self {
        UpdaterError::Unsafe {
            path: path.into(),
            why: why.into(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            UpdaterError::Unsafe { .. }
            | UpdaterError::Cap(_)
            | UpdaterError::DigestMismatch { .. }
            | UpdaterError::BadUpload(_)
            | UpdaterError::ReleaseConfig(_) => StatusCode::BAD_REQUEST,
            UpdaterError::NoPrevious => StatusCode::NOT_FOUND,
            UpdaterError::NoBase(_) => StatusCode::PRECONDITION_FAILED,
            UpdaterError::NotKept(_) => StatusCode::NOT_FOUND,
            UpdaterError::Unsigned(_) => StatusCode::FORBIDDEN,
            UpdaterError::Busy(_) | UpdaterError::StaleDenyList { .. } => StatusCode::CONFLICT,
            UpdaterError::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
            UpdaterError::Install { .. }
            | UpdaterError::SelfCheck { .. }
            | UpdaterError::Io { .. }
            | UpdaterError::Agent(_)
            | UpdaterError::Bind(_)
            | UpdaterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error on its way out of a handler.
#[derive(Debug)]
pub struct AppError(pub UpdaterError);

impl From<UpdaterError> for AppError {
    fn from(e: UpdaterError) -> Self {
        AppError(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let code = self.0.status();
        if code.is_server_error() {
            tracing::error!("{code}: {}", self.0);
        } else {
            tracing::warn!("{code}: {}", self.0);
        }
        let status = match self.0 {
            UpdaterError::Busy(_) => OpStatus::Busy,
            _ => OpStatus::Error,
        };
        let stderr = match &self.0 {
            UpdaterError::Install { stderr, .. } | UpdaterError::SelfCheck { stderr, .. } => {
                Some(stderr.clone())
            }
            _ => None,
        };
        let body = OpResponse {
            status,
            release: None,
            rolled_back: false,
            error: Some(self.0.to_string()),
            probes: Vec::new(),
            stderr,
            timings: None,
            log_tail: Vec::new(),
        };
        (code, Json(body)).into_response()
    }
}

/// Result alias for the crate.
pub type Result<T, E = UpdaterError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_is_said_once() {
        // The master prints `busy: <error>`; the error itself must not
        // start with it again (`busy: busy: update in progress`, issue 9 #7).
        let resp = AppError(UpdaterError::Busy("update")).into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: OpResponse = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.status, OpStatus::Busy);
        let error = body.error.unwrap_or_default();
        assert_eq!(error, "update in progress; retry when it is done");
    }
}
