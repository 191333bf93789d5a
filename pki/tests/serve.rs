//! `pki::serve_with` against real rustls clients on loopback: HTTP/1.1 only,
//! the header and body timeouts, the connection budgets and the handshake
//! table, each with short limits so a violation shows within seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http_body_util::BodyExt;
use pki::{Bundle, BundleKind, Ca, HostName, LeafSpec, Peer, ServeLimits, ServerExpectation};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Long enough for any bound under test to trip, short enough to fail fast.
const DEADLINE: Duration = Duration::from_secs(20);

struct Fixture {
    _dir: TempDir,
    addr: SocketAddr,
    master: Bundle,
    agent: Bundle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn bundle(dir: &TempDir, ca: &Ca, name: &str, kind: BundleKind, spec: &LeafSpec) -> Bundle {
    let path = dir.path().join(name);
    let leaf = ca.issue(spec).expect("issue leaf");
    Bundle::write(&path, kind, ca.cert_pem(), &leaf).expect("write bundle");
    Bundle::load(&path).expect("load bundle")
}

/// A server with `w1`'s updater certificate, `limits`, `GET /health` and a
/// `POST /update` that reads its whole body and answers its size or error.
async fn fixture(limits: ServeLimits) -> Fixture {
    let dir = TempDir::new().expect("tempdir");
    let ca = Ca::generate().expect("CA");
    let host = HostName::new("w1").expect("host");
    let server = bundle(
        &dir,
        &ca,
        "updater",
        BundleKind::Updater,
        &LeafSpec::updater(&host, "127.0.0.1", &[]).expect("spec"),
    );
    let master = bundle(&dir, &ca, "master", BundleKind::Master, &LeafSpec::master());
    let agent = bundle(
        &dir,
        &ca,
        "agent",
        BundleKind::Agent,
        &LeafSpec::agent(&host, "127.0.0.1", &[]).expect("spec"),
    );
    let tls = pki::server_config(&server).expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route(
            "/health",
            get(|Peer(who): Peer| async move { who.to_string() }),
        )
        .route(
            "/update",
            post(|body: axum::body::Body| async move {
                match body.collect().await {
                    Ok(b) => (
                        axum::http::StatusCode::OK,
                        format!("got {}", b.to_bytes().len()),
                    ),
                    Err(e) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        format!("body failed: {}", pki::error_chain(&*e.into_inner())),
                    ),
                }
            }),
        );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pki::serve_with(
        listener,
        tls,
        app,
        async {
            let _ = rx.await;
        },
        limits,
    ));
    Fixture {
        _dir: dir,
        addr,
        master,
        agent,
        _stop: tx,
    }
}

/// A raw TLS connection holding `bundle`, with the given ALPN offer.
async fn tls(addr: SocketAddr, bundle: &Bundle, alpn: Vec<Vec<u8>>) -> TlsStream<TcpStream> {
    let mut config =
        pki::client_config(bundle, ServerExpectation::default()).expect("client config");
    config.alpn_protocols = alpn;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

fn h1() -> Vec<Vec<u8>> {
    vec![b"http/1.1".to_vec()]
}

/// Everything the server sends until it closes (or `DEADLINE` passes: then
/// `None`, the connection was left open).
async fn read_to_close(s: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    match read_for(s, DEADLINE).await {
        (out, true) => Some(out),
        (_, false) => None,
    }
}

/// What the server sends within `limit`, and whether it closed.
async fn read_for(s: &mut (impl AsyncRead + Unpin), limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn get_health(s: &mut TlsStream<TcpStream>) -> String {
    s.write_all(b"GET /health HTTP/1.1\r\nhost: w1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_client_sending_the_h2_preface_without_alpn_never_gets_h2() {
    let f = fixture(ServeLimits::default()).await;
    let mut s = tls(f.addr, &f.master, Vec::new()).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    // The HTTP/2 connection preface followed by an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write preface");
    let (answer, closed) = read_for(&mut s, Duration::from_secs(5)).await;
    // An h2 server answers with its own SETTINGS frame (type 4 at byte 3).
    let is_h2 = answer.len() >= 9 && answer[3] == 0x04 && !answer.starts_with(b"HTTP/");
    assert!(!is_h2, "the server spoke HTTP/2: {answer:?}");
    assert!(closed, "the server neither answered HTTP/1.1 nor closed");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "only an HTTP/1.1 answer or a close: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off() {
    let f = fixture(ServeLimits {
        header_read_timeout: Duration::from_secs(1),
        ..ServeLimits::default()
    })
    .await;
    let mut s = tls(f.addr, &f.agent, h1()).await;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: w1\r\n")
        .await
        .expect("write");
    assert!(
        read_to_close(&mut s).await.is_some(),
        "a request head that never ends holds the connection for good"
    );
    // The idle keep-alive connection after a request is bounded the same way.
    let mut s = tls(f.addr, &f.agent, h1()).await;
    assert!(get_health(&mut s).await.starts_with("HTTP/1.1 200"));
    assert!(
        read_to_close(&mut s).await.is_some(),
        "idle keep-alive connection held"
    );
}

#[tokio::test]
async fn a_stalled_body_fails_the_request() {
    let f = fixture(ServeLimits {
        body_idle_timeout: Duration::from_secs(1),
        ..ServeLimits::default()
    })
    .await;
    let mut s = tls(f.addr, &f.master, h1()).await;
    s.write_all(b"POST /update HTTP/1.1\r\nhost: w1\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .expect("write");
    let answer = read_to_close(&mut s)
        .await
        .expect("the server gives up on the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request body stalled"), "{answer}");
}

#[tokio::test]
async fn a_trickling_body_fails_once_it_falls_behind_the_minimum_rate() {
    let f = fixture(ServeLimits {
        body_idle_timeout: Duration::from_secs(5),
        body_min_rate: 1024,
        body_rate_grace: Duration::from_secs(1),
        ..ServeLimits::default()
    })
    .await;
    let mut s = tls(f.addr, &f.master, h1()).await;
    s.write_all(b"POST /update HTTP/1.1\r\nhost: w1\r\ncontent-length: 100000\r\n\r\n")
        .await
        .expect("write");
    // One byte every 200 ms: never idle, far below 1 KiB/s.
    let (mut rd, mut wr) = tokio::io::split(s);
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if wr.write_all(b"x").await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });
    let answer = read_to_close(&mut rd)
        .await
        .expect("the server gives up on the trickle");
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request body too slow"), "{answer}");
}

#[tokio::test]
async fn budgets_close_excess_connections_and_keep_room_for_the_master() {
    let f = fixture(ServeLimits {
        max_connections: 3,
        max_connections_per_peer: 2,
        master_connections: 2,
        ..ServeLimits::default()
    })
    .await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut s = tls(f.addr, &f.agent, h1()).await;
        assert!(get_health(&mut s).await.starts_with("HTTP/1.1 200"));
        kept.push(s);
    }
    // A third from the same identity is closed at once.
    let mut extra = tls(f.addr, &f.agent, h1()).await;
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nhost: w1\r\n\r\n")
        .await;
    let answer = read_to_close(&mut extra)
        .await
        .expect("closed, not left waiting");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    // The master still gets in, twice, past the agent's connections.
    for _ in 0..2 {
        let mut m = tls(f.addr, &f.master, h1()).await;
        let answer = get_health(&mut m).await;
        assert!(answer.contains("master"), "{answer}");
        kept.push(m);
    }
    for s in &mut kept {
        assert!(
            get_health(s).await.starts_with("HTTP/1.1 200"),
            "kept connections still work"
        );
    }
}

#[tokio::test]
async fn connections_that_never_handshake_cannot_keep_the_master_out() {
    let f = fixture(ServeLimits {
        max_handshakes: 4,
        ..ServeLimits::default()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(TcpStream::connect(f.addr).await.expect("connect"));
    }
    // The oldest silent ones were dropped to make room for newer ones.
    let dropped = read_to_close(&mut silent[0])
        .await
        .expect("evicted, not held");
    assert!(dropped.is_empty());
    let mut m = tls(f.addr, &f.master, h1()).await;
    assert!(get_health(&mut m).await.contains("master"));
}

#[test]
fn defaults_fit_under_the_default_descriptor_limit() {
    let d = ServeLimits::default();
    assert!(d.max_handshakes + d.max_connections + d.master_connections <= 512);
    assert!(d.max_connections_per_peer < d.max_connections);
}
