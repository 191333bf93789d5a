//! The mTLS accept loop shared by both daemons: TLS handshake per connection
//! task, the verified peer certificate turned into an [`Identity`] at once,
//! the [`policy`](crate::policy) enforced before any handler runs, HTTP/1.1
//! only, every time and connection bound of [`ServeLimits`], and a graceful
//! drain with a bounded grace on shutdown.

mod body;
mod gate;
mod limits;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub use body::BodyTimeout;
pub use limits::{ServeArgs, ServeLimits, parse_duration};

use crate::policy::{Endpoint, authorize};
use crate::wire::ErrorBody;
use crate::{DenyList, Identity};
use gate::Gate;

/// How long open connections may drain after shutdown by default
/// ([`ServeLimits::shutdown_grace`]).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The verified identity of the peer on this connection.
#[derive(Clone, Debug)]
pub struct Peer(pub Identity);

/// What else the verified peer certificate says, beside its [`Peer`]
/// identity: its fingerprint (what a deny list names) and the operator a
/// master-role certificate names (`swarm:operator:NAME`, issue 15).
/// Authority stays with the [`Identity`]; this only says who acted.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub fingerprint: crate::Fingerprint,
    pub operator: Option<crate::OperatorName>,
}

impl PeerCert {
    fn of_der(der: &[u8]) -> PeerCert {
        PeerCert {
            fingerprint: crate::Fingerprint::of_der(der),
            operator: crate::identity::CertInfo::parse(der)
                .ok()
                .and_then(|info| info.operator),
        }
    }

    /// Who acted: `operator:NAME`, or the identity's CN (`master`).
    pub fn by(&self, who: &Identity) -> String {
        who.acted_by(self.operator.as_ref())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerCert {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<PeerCert>().cloned().ok_or_else(|| {
            // Invariant: `serve` inserts a PeerCert beside every Peer.
            ErrorBody::response(StatusCode::FORBIDDEN, "no verified peer certificate")
        })
    }
}

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

/// Marks a request whose peer certificate is on the deny list.
#[derive(Clone, Copy, Debug)]
struct DeniedPeer;

/// Deny by default: a request reaches a handler only if its peer
/// certificate is not denied, it addresses an endpoint of the policy table
/// and its peer may call it.
async fn enforce_policy(req: Request, next: Next) -> Response {
    if req.extensions().get::<DeniedPeer>().is_some() {
        let who = req.extensions().get::<Peer>().map(|p| p.0.to_string());
        tracing::warn!(peer = ?who, "refused: certificate denied");
        return ErrorBody::response(
            StatusCode::FORBIDDEN,
            "this certificate is denied: the master revoked it (swarm decommission / operator remove)",
        );
    }
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

/// Serve `app` over mTLS on `listener` until `shutdown` completes, with the
/// [`ServeLimits`] of the environment ([`ServeLimits::from_env`]: the
/// defaults unless a `SWARM_SERVE_*` variable says otherwise).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let limits = ServeLimits::from_env()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    serve_with(listener, tls, app, shutdown, limits).await
}

/// [`serve`] with explicit limits. On shutdown, open connections drain for
/// at most [`ServeLimits::shutdown_grace`].
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
    limits: ServeLimits,
) -> std::io::Result<()> {
    serve_denying(listener, tls, app, shutdown, limits, DenyList::default()).await
}

/// [`serve_with`] refusing (403, every route) each request whose peer
/// certificate's fingerprint `deny` holds at the time of the request.
pub async fn serve_denying(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
    limits: ServeLimits,
    deny: DenyList,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let acceptor = TlsAcceptor::from(tls);
    let app = app.layer(axum::middleware::from_fn(enforce_policy));
    let gate = Gate::new(&limits);
    // Every connection task holds a receiver; the drain waits until all
    // are dropped (what hyper_util's GracefulShutdown does, plus the first
    // request of a fresh connection, see `drive`).
    let (graceful, _) = tokio::sync::watch::channel(false);
    let mut errors = AcceptErrors::new(&limits);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: the backlog stays readable, so
                    // back off (doubling) instead of spinning.
                    let pause = errors.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        errors.succeeded();
        // Accept first, then decide: a connection over a budget is closed
        // at once instead of waiting in the backlog in front of the master.
        let (slot, evicted) = gate.begin_handshake();
        if evicted {
            tracing::debug!(%remote, "handshake table full: dropped the oldest pending handshake");
        }
        tune_socket(&tcp, &limits);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.subscribe();
        let gate = Arc::clone(&gate);
        let limits = Arc::clone(&limits);
        let deny = deny.clone();
        tokio::spawn(async move {
            let mut slot = slot;
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, "TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                },
                _ = &mut slot.evicted => {
                    tracing::debug!(%remote, "pending handshake evicted by a newer connection");
                    return;
                }
            };
            drop(slot);
            let (identity, cert) = match tls.get_ref().1.peer_certificates().and_then(|c| c.first())
            {
                Some(cert) => (Identity::from_client_cert(cert), PeerCert::of_der(cert)),
                // Unreachable with a mandatory client verifier; refuse anyway.
                None => return,
            };
            let _permit = match gate.admit(&identity) {
                Ok(p) => p,
                Err(why) => {
                    if let Some(unlogged) = gate.note_refusal(limits.accept_error_log_every) {
                        tracing::warn!(
                            %remote, peer = %identity,
                            "connection closed: {why} ({unlogged} more refused since the last report)"
                        );
                    }
                    return;
                }
            };
            tracing::debug!(%remote, peer = %identity, "connection");
            let peer = Peer(identity);
            let peer_cert = cert;
            let body_limits = Arc::clone(&limits);
            let requested = Arc::new(tokio::sync::Notify::new());
            let seen = Arc::clone(&requested);
            let svc = app.map_request(move |req: Request<hyper::body::Incoming>| {
                seen.notify_one();
                let mut req =
                    req.map(|b| axum::body::Body::new(body::TimedBody::new(b, &body_limits)));
                req.extensions_mut().insert(peer.clone());
                if deny.contains(&peer_cert.fingerprint) {
                    req.extensions_mut().insert(DeniedPeer);
                }
                req.extensions_mut().insert(peer_cert.clone());
                req
            });
            // HTTP/1.1 only (ALPN offers nothing else): a client that sends
            // the HTTP/2 preface regardless gets an HTTP/1 error, never h2.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
            if let Err(e) = drive(conn, watcher, &requested, limits.header_read_timeout).await {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    let _ = graceful.send(true);
    tokio::select! {
        () = graceful.closed() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("shutdown grace of {:?} expired with connections still open", limits.shutdown_grace);
        }
    }
    Ok(())
}

/// Serve `conn` until it ends; once `stop` turns true, close it
/// gracefully (the request in flight is answered, keep-alive ends). A
/// connection that has not sent its first request yet gets up to
/// `first_request` for it first: it was accepted before the shutdown (its
/// TLS handshake may have finished just now), and hyper would close it
/// unanswered, failing a client that did nothing wrong — the old agent of
/// a zero-downtime restart drains exactly such connections (issue 14).
async fn drive<C>(
    conn: C,
    mut stop: tokio::sync::watch::Receiver<bool>,
    requested: &tokio::sync::Notify,
    first_request: Duration,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>> + GracefulConn,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = stop.wait_for(|s| *s) => {}
    }
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = tokio::time::timeout(first_request, requested.notified()) => {}
    }
    conn.as_mut().shut_down();
    conn.await
}

/// A connection that can be asked to finish gracefully.
trait GracefulConn {
    fn shut_down(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConn for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// No Nagle, and TCP keepalive so a peer that vanished is noticed.
fn tune_socket(tcp: &TcpStream, limits: &ServeLimits) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(limits.tcp_keepalive)
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!("cannot set TCP keepalive: {e}");
    }
}

/// Back-off and a rate-limited log line for failing `accept`s.
struct AcceptErrors {
    min: Duration,
    max: Duration,
    log_every: Duration,
    pause: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn new(limits: &ServeLimits) -> Self {
        AcceptErrors {
            min: limits.accept_backoff_min,
            max: limits.accept_backoff_max.max(limits.accept_backoff_min),
            log_every: limits.accept_error_log_every,
            pause: Duration::ZERO,
            last_log: None,
            unlogged: 0,
        }
    }

    /// Record a failure; returns how long to wait before the next accept.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.pause = if self.pause.is_zero() {
            self.min
        } else {
            (self.pause * 2).min(self.max)
        };
        let now = Instant::now();
        let due = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= self.log_every);
        if due {
            tracing::warn!(
                "accept failed: {e} (backing off {:?}; {} more failures since the last report)",
                self.pause,
                self.unlogged
            );
            self.last_log = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        self.pause
    }

    fn succeeded(&mut self) {
        if !self.pause.is_zero() {
            if self.unlogged > 0 {
                tracing::info!(
                    "accept works again after {} unreported failures",
                    self.unlogged
                );
            }
            self.pause = Duration::ZERO;
            self.unlogged = 0;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_keepalive_and_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        let limits = ServeLimits {
            tcp_keepalive: Duration::from_secs(42),
            ..ServeLimits::default()
        };
        tune_socket(&tcp, &limits);
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            Duration::from_secs(42)
        );
        assert!(tcp.nodelay().expect("TCP_NODELAY"));
    }

    #[test]
    fn accept_back_off_doubles_to_its_cap_and_resets() {
        let mut e = AcceptErrors::new(&ServeLimits::default());
        let err = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<u128> = (0..9).map(|_| e.failed(&err).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        e.succeeded();
        assert_eq!(e.failed(&err), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn a_connection_accepted_before_shutdown_still_gets_its_first_request_answered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tmp = tempfile::tempdir().expect("tmp");
        let ca = crate::Ca::generate().expect("ca");
        let host = crate::HostName::new("w1").expect("host");
        let agent = ca
            .issue(&crate::LeafSpec::agent(&host, "127.0.0.1", &[]).expect("spec"))
            .expect("issue");
        let master = ca.issue(&crate::LeafSpec::master()).expect("issue");
        let (adir, mdir) = (tmp.path().join("a"), tmp.path().join("m"));
        crate::Bundle::write(&adir, crate::BundleKind::Agent, ca.cert_pem(), &agent).expect("w");
        crate::Bundle::write(&mdir, crate::BundleKind::Master, ca.cert_pem(), &master).expect("w");
        let tls = crate::server_config(&crate::Bundle::load(&adir).expect("load")).expect("tls");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            tls,
            app,
            async {
                let _ = stopped.await;
            },
            ServeLimits::default(),
        ));
        let client = crate::client_config(
            &crate::Bundle::load(&mdir).expect("load"),
            crate::ServerExpectation::cn("w1"),
        )
        .expect("client");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        // Shut down between the handshake and the request; wait until the
        // server stopped accepting.
        let _ = stop.send(());
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the server never stopped accepting"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tls.write_all(b"GET /health HTTP/1.1\r\nhost: w1\r\n\r\n")
            .await
            .expect("request");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "answer: {answer:?}");
        server.await.expect("join").expect("serve");
    }
}
