//! The mTLS accept loop shared by both daemons: TLS handshake per connection
//! task, the verified peer certificate turned into an [`Identity`] at once,
//! the [`policy`](crate::policy) enforced before any handler runs, and a
//! graceful drain with a bounded grace on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::Identity;
use crate::policy::{Endpoint, authorize};
use crate::wire::ErrorBody;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may drain after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The verified identity of the peer on this connection.
#[derive(Clone, Debug)]
pub struct Peer(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Peer>().cloned().ok_or_else(|| {
            // Invariant: `serve` inserts a Peer into every request; a router
            // run outside it has no identity and gets nothing.
            ErrorBody::response(StatusCode::FORBIDDEN, "no verified peer identity")
        })
    }
}

/// Deny by default: a request reaches a handler only if it addresses an
/// endpoint of the policy table and its peer may call it.
async fn enforce_policy(req: Request, next: Next) -> Response {
    let Some(endpoint) = Endpoint::of(req.method(), req.uri().path()) else {
        return ErrorBody::response(
            StatusCode::NOT_FOUND,
            format!("no endpoint {} {}", req.method(), req.uri().path()),
        );
    };
    let Some(Peer(who)) = req.extensions().get::<Peer>().cloned() else {
        return ErrorBody::response(StatusCode::FORBIDDEN, "no verified peer identity");
    };
    match authorize(&who, endpoint) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            tracing::warn!(peer = %who, ?endpoint, "refused: {why}");
            ErrorBody::response(StatusCode::FORBIDDEN, why)
        }
    }
}

/// Serve `app` over mTLS on `listener` until `shutdown` completes, then
/// drain open connections for at most [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let app = app.layer(axum::middleware::from_fn(enforce_policy));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%remote, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => Identity::from_client_cert(cert),
                // Unreachable with a mandatory client verifier; refuse anyway.
                None => return,
            };
            tracing::debug!(%remote, peer = %identity, "connection");
            let peer = Peer(identity);
            let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                req
            });
            let conn = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("shutdown grace of {SHUTDOWN_GRACE:?} expired with connections still open");
        }
    }
    Ok(())
}

impl ErrorBody {
    /// A JSON error response `{"status":"error","error":…}`.
    pub fn response(code: StatusCode, error: impl Into<String>) -> Response {
        (
            code,
            axum::Json(ErrorBody {
                status: "error".into(),
                error: error.into(),
            }),
        )
            .into_response()
    }
}
