//! The trust core against real rustls handshakes on loopback: a small mTLS
//! server built from `pki::serve`, and clients holding every kind of
//! certificate — ours, other roles', foreign, expired, wrong usage, none.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use pki::identity::CertInfo;
use pki::{Bundle, BundleKind, Ca, Fingerprint, HostName, LeafSpec, Peer, ServerExpectation};
use tests::TestPki;
use time::OffsetDateTime;

/// A server holding `w1`'s updater bundle, with a public and a master-only
/// route. Returns its address; it stops when the returned sender drops.
async fn server(pki: &TestPki) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, Bundle) {
    let worker = pki.worker("w1");
    let bundle = Bundle::load(&worker.updater_dir).expect("updater bundle");
    let tls = pki::server_config(&bundle).expect("server config");
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
            post(|Peer(who): Peer| async move { format!("updated by {who}") }),
        )
        .route("/releases", get(|| async { "secret releases" }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = pki::serve(listener, tls, app, async {
            let _ = rx.await;
        })
        .await;
    });
    (addr, tx, bundle)
}

fn client(bundle: &Bundle, expect: ServerExpectation) -> reqwest::Client {
    pki::http_client(bundle, expect)
        .expect("client builder")
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// POST /update with `bundle`; Ok(status) or Err(error chain).
async fn call(
    addr: SocketAddr,
    bundle: &Bundle,
    expect: ServerExpectation,
    path: &str,
) -> Result<(u16, String), String> {
    let c = client(bundle, expect);
    let url = format!("https://{addr}{path}");
    let req = if path == "/update" {
        c.post(url)
    } else {
        c.get(url)
    };
    match req.send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            Ok((code, r.text().await.unwrap_or_default()))
        }
        Err(e) => Err(error_chain(&e)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn issue(pki: &TestPki, name: &str, spec: &LeafSpec) -> Bundle {
    let (dir, _) = pki.issue(name, BundleKind::Master, spec);
    Bundle::load(&dir).expect("load")
}

#[tokio::test]
async fn master_allowed_everyone_else_forbidden_on_master_routes() {
    let pki = TestPki::new();
    let (addr, _stop, _) = server(&pki).await;
    let expect = ServerExpectation::cn("updater@w1");

    let master = pki.master();
    assert_eq!(
        call(addr, &master, expect.clone(), "/update").await,
        Ok((200, "updated by master".into()))
    );
    assert_eq!(
        call(addr, &master, expect.clone(), "/health").await,
        Ok((200, "master".into()))
    );

    // The host's own agent, and another host's updater: CA-signed, so the
    // handshake succeeds and /health answers, but /update is 403.
    let w2 = pki.worker("w2");
    let agent = Bundle::load(&pki.worker("w3").agent_dir).expect("agent");
    let other_updater = Bundle::load(&w2.updater_dir).expect("updater");
    for who in [&agent, &other_updater] {
        let (code, body) = call(addr, who, expect.clone(), "/update")
            .await
            .expect("handshake");
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("only the master"), "{body}");
        assert_eq!(
            call(addr, who, expect.clone(), "/health")
                .await
                .map(|r| r.0),
            Ok(200)
        );
    }

    // HEAD is GET for the policy: a master-only read stays master-only,
    // and nothing outside the policy table reaches a handler.
    let c = client(&agent, expect.clone());
    let head = c
        .head(format!("https://{addr}/releases"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 403);
    let head = c
        .head(format!("https://{addr}/update"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 404);
    let get = c
        .get(format!("https://{addr}/update"))
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 404);
    let c = client(&master, expect.clone());
    let put = c
        .put(format!("https://{addr}/update"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 404);
    let head = c
        .head(format!("https://{addr}/health"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);

    // CN "master" without any EKU: webpki lets it through, our identity
    // mapping does not.
    let mut no_eku = LeafSpec::master();
    no_eku.client_auth = false;
    let no_eku = issue(&pki, "no-eku", &no_eku);
    let (code, body) = call(addr, &no_eku, expect.clone(), "/update")
        .await
        .expect("handshake");
    assert_eq!(code, 403, "{body}");
}

#[tokio::test]
async fn bad_client_certificates_fail_the_handshake() {
    let pki = TestPki::new();
    let (addr, _stop, _) = server(&pki).await;
    let expect = ServerExpectation::cn("updater@w1");

    // Signed by another CA, with the right CN; the client trusts our CA,
    // so only the server's check of the client certificate can refuse it.
    let foreign = TestPki::new();
    let leaf = foreign.ca.issue(&LeafSpec::master()).expect("issue");
    let dir = pki.path().join("foreign-master");
    Bundle::write(&dir, BundleKind::Master, pki.ca.cert_pem(), &leaf).expect("write");
    let foreign_master = Bundle::load(&dir).expect("load");
    let err = call(addr, &foreign_master, expect.clone(), "/health")
        .await
        .unwrap_err();
    // Our CA's key did not sign it: the signature check fails (DecryptError).
    assert!(
        err.contains("alert: DecryptError") || err.contains("alert: UnknownCA"),
        "{err}"
    );

    // serverAuth only.
    let mut server_only = LeafSpec::master();
    server_only.client_auth = false;
    server_only.server_auth = true;
    let server_only = issue(&pki, "server-only", &server_only);
    let err = call(addr, &server_only, expect.clone(), "/health")
        .await
        .unwrap_err();
    assert!(err.contains("alert: UnsupportedCertificate"), "{err}");

    // Expired.
    let mut expired = LeafSpec::master();
    expired.not_before = OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = issue(&pki, "expired", &expired);
    let err = call(addr, &expired, expect.clone(), "/health")
        .await
        .unwrap_err();
    assert!(err.contains("alert: CertificateExpired"), "{err}");

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.master().ca.clone()).expect("root");
    let no_cert = rustls::ClientConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let c = reqwest::Client::builder()
        .tls_backend_preconfigured(no_cert)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let err = error_chain(
        &c.get(format!("https://{addr}/health"))
            .send()
            .await
            .unwrap_err(),
    );
    assert!(err.contains("alert: CertificateRequired"), "{err}");
}

#[tokio::test]
async fn client_pins_server_cn_and_fingerprint() {
    let pki = TestPki::new();
    let (addr, _stop, server_bundle) = server(&pki).await;
    let master = pki.master();
    let right = server_bundle.fingerprint();

    assert_eq!(
        call(
            addr,
            &master,
            ServerExpectation::pinned("updater@w1", right),
            "/health"
        )
        .await
        .map(|r| r.0),
        Ok(200)
    );
    let wrong_fp = Fingerprint::of_der(b"not the enrolled certificate");
    let err = call(
        addr,
        &master,
        ServerExpectation::pinned("updater@w1", wrong_fp),
        "/health",
    )
    .await
    .unwrap_err();
    assert!(err.contains("fingerprint"), "{err}");
    let err = call(
        addr,
        &master,
        ServerExpectation::pinned("updater@w2", right),
        "/health",
    )
    .await
    .unwrap_err();
    assert!(err.contains("CN"), "{err}");
    // The agent CN is not the updater's either.
    let err = call(addr, &master, ServerExpectation::cn("w1"), "/health")
        .await
        .unwrap_err();
    assert!(err.contains("CN"), "{err}");
}

#[test]
fn issued_leaves_say_what_spec_says() {
    let pki = TestPki::new();
    let host = HostName::new("worker-01").expect("host");
    let sans = vec!["w1.example.net".to_owned(), "10.0.0.9".to_owned()];
    let agent = pki
        .ca
        .issue(&LeafSpec::agent(&host, "192.168.1.23", &sans).expect("spec"))
        .expect("issue");
    let updater = pki
        .ca
        .issue(&LeafSpec::updater(&host, "192.168.1.23", &sans).expect("spec"))
        .expect("issue");
    let master = pki.ca.issue(&LeafSpec::master()).expect("issue");

    let der = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    };
    let now = OffsetDateTime::now_utc();
    for (leaf, cn, server) in [
        (&agent, "worker-01", true),
        (&updater, "updater@worker-01", true),
        (&master, "master", false),
    ] {
        let info = CertInfo::parse(&der(&leaf.cert_pem)).expect("parse");
        assert_eq!(info.cn, cn);
        assert!(info.has_eku && info.client_auth, "{cn}: clientAuth");
        assert_eq!(info.server_auth, server, "{cn}: serverAuth");
        assert!(!info.is_ca);
        assert!(info.not_before < now && info.not_before > now - time::Duration::hours(1));
        assert!(info.not_after > now + time::Duration::days(365));
        assert_eq!(info.fingerprint, leaf.fingerprint);
        if server {
            let ips: Vec<String> = info.ip_sans.iter().map(|i| i.to_string()).collect();
            assert_eq!(ips, ["192.168.1.23", "10.0.0.9", "127.0.0.1"], "{cn}");
            assert_eq!(
                info.dns_sans,
                ["w1.example.net", "worker-01", "localhost"],
                "{cn}"
            );
        } else {
            assert!(info.ip_sans.is_empty() && info.dns_sans.is_empty());
        }
    }

    let ca = CertInfo::parse(&der(pki.ca.cert_pem())).expect("parse CA");
    assert!(ca.is_ca);
    assert!(ca.not_after > now + time::Duration::days(3000));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&pki.path().join("ca/ca.key")), 0o600);
    assert_eq!(mode(&pki.path().join("ca")), 0o700);
    let w = pki.worker("w9");
    assert_eq!(mode(&w.agent_dir), 0o700);
    assert_eq!(mode(&w.agent_dir.join("worker.key")), 0o600);
    assert_eq!(mode(&w.updater_dir.join("updater.key")), 0o600);
    assert_eq!(mode(&w.updater_dir.join("updater.crt")), 0o644);
}

#[test]
fn loose_key_permissions_and_bad_input_are_refused() {
    let pki = TestPki::new();
    let w = pki.worker("w1");
    let key = w.agent_dir.join("worker.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = Bundle::load(&w.agent_dir).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");

    // Writing over an existing bundle is refused and leaves it as it was.
    let before = std::fs::read(w.updater_dir.join("updater.crt")).expect("read");
    let leaf = pki.ca.issue(&LeafSpec::master()).expect("issue");
    assert!(
        Bundle::write(
            &w.updater_dir,
            BundleKind::Updater,
            pki.ca.cert_pem(),
            &leaf
        )
        .is_err()
    );
    assert_eq!(
        std::fs::read(w.updater_dir.join("updater.crt")).expect("read"),
        before
    );

    assert!(LeafSpec::agent(&HostName::new("w1").expect("h"), "bad name!", &[]).is_err());
    // A CA key anyone can read is refused too.
    let ca_key = pki.path().join("ca/ca.key");
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(Ca::load(&pki.path().join("ca")).is_err());
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(Ca::load(&pki.path().join("ca")).is_ok());
}
