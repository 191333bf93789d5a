//! The master against a compromised worker (issue 10, "The master distrusts
//! what a worker says") and against being killed (the temp tarball): a
//! hostile updater and agent are real mTLS servers (`pki::serve`, the
//! enrolled bundles, so the master's pins hold) whose axum apps answer
//! terminal escape sequences, bidi overrides and a 400 MiB body.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pki::Bundle;
use serde_json::json;
use tests::swarm::{Enrolled, show};
use tests::{Daemon, Swarm, eventually};

/// Everything a hostile worker puts in its strings: OSC 52 (write the
/// operator's clipboard), clear screen, an 8-bit CSI, a bidi override.
const EVIL: &str = "\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2J\u{1b}[31m\u{9b}1m\u{202e}evil";

/// A hostile worker: its updater and agent, served on the enrolled ports
/// from a runtime of their own, stopped when dropped.
struct Hostile {
    rt: Option<tokio::runtime::Runtime>,
}

impl Hostile {
    fn start(e: &Enrolled, updater: Router, agent: Router) -> Hostile {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let agent_addr = SocketAddr::from(([127, 0, 0, 1], e.agent_port));
        for (addr, dir, app) in [
            (e.listen, &e.bundles.updater_dir, updater),
            (agent_addr, &e.bundles.agent_dir, agent),
        ] {
            let bundle = Bundle::load(dir).expect("enrolled bundle");
            let tls = pki::server_config(&bundle).expect("server config");
            let listener = rt.block_on(async {
                tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("bind an enrolled port")
            });
            rt.spawn(async move {
                let _ = pki::serve(listener, tls, app, std::future::pending()).await;
            });
        }
        Hostile { rt: Some(rt) }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        // Nothing to wait for: the servers only answer.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn evil_manifest() -> serde_json::Value {
    json!({"sha256": EVIL, "size_bytes": 1, "files": 1, "git_commit": EVIL,
           "pushed_at": EVIL, "pushed_by": EVIL})
}

fn json_answer(code: StatusCode, v: serde_json::Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// An updater and an agent whose every string is hostile.
fn evil_apps() -> (Router, Router) {
    let updater = Router::new()
        .route(
            "/health",
            get(|| async {
                json_answer(
                    StatusCode::OK,
                    json!({"status": "ok", "role": "updater", "host": EVIL, "version": EVIL,
                           "release": evil_manifest(), "pid": 1, "busy": EVIL,
                           "agent": {"state": "backoff", "pid": 7, "restarts": 3,
                                     "healthy": false, "last_exit": EVIL, "since": EVIL}}),
                )
            }),
        )
        .route(
            "/releases",
            get(|| async {
                json_answer(
                    StatusCode::OK,
                    json!({"active": evil_manifest(), "prev": evil_manifest(),
                           "failed": [{"name": EVIL, "manifest": evil_manifest()}]}),
                )
            }),
        )
        .route(
            "/update",
            post(|body: Body| async move {
                // Take the whole upload, then lie about it.
                let _ = axum::body::to_bytes(body, 64 << 20).await;
                let probe = json!({"phase": EVIL, "url": EVIL, "healthy": false, "attempts": 1,
                                   "elapsed_ms": 1, "release_sha256": EVIL, "error": EVIL});
                json_answer(
                    StatusCode::CONFLICT,
                    json!({"status": "rolled-back", "rolled_back": true, "error": EVIL,
                           "release": evil_manifest(), "probes": [probe.clone(), probe],
                           "stderr": format!("{EVIL}\n{EVIL}")}),
                )
            }),
        )
        .route(
            "/logs",
            get(|| async {
                (
                    StatusCode::OK,
                    [("content-type", "text/plain")],
                    format!("{EVIL}\n{EVIL}\r\nno newline at the end {EVIL}"),
                )
                    .into_response()
            }),
        )
        .route(
            "/history",
            get(|| async {
                let e = json!({"time": EVIL, "op": EVIL, "by": EVIL, "release": EVIL,
                               "outcome": EVIL, "detail": EVIL});
                json_answer(StatusCode::OK, json!({"entries": [e.clone(), e]}))
            }),
        )
        .route(
            "/agent/restart",
            post(|| async {
                json_answer(
                    StatusCode::CONFLICT,
                    json!({"status": "error", "error": EVIL, "release": evil_manifest(),
                           "probes": [], "log_tail": [EVIL, EVIL]}),
                )
            }),
        )
        .route(
            "/rollback",
            post(|| async {
                json_answer(
                    StatusCode::OK,
                    json!({"status": "rolled-back", "rolled_back": true,
                           "release": evil_manifest(), "probes": []}),
                )
            }),
        );
    // The agent's error body is not even JSON: raw bytes with escapes.
    let agent = Router::new().route(
        "/health",
        get(|| async { (StatusCode::SERVICE_UNAVAILABLE, EVIL).into_response() }),
    );
    (updater, agent)
}

/// Panics when `bytes` hold a terminal control: ESC, BEL, an 8-bit CSI
/// (U+009B as UTF-8) or a bidi override (U+202E as UTF-8).
fn assert_inert(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for (needle, name) in [
        (&b"\x1b"[..], "ESC"),
        (b"\x07", "BEL"),
        ("\u{9b}".as_bytes(), "CSI"),
        ("\u{202e}".as_bytes(), "RLO"),
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{what}: a raw {name} got through: {text}"
        );
    }
}

fn assert_output_inert(args: &[&str], out: &Output) {
    let what = format!("swarm {args:?}");
    assert_inert(&what, &out.stdout);
    assert_inert(&what, &out.stderr);
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

#[test]
fn nothing_a_hostile_worker_says_reaches_the_terminal_or_the_inventory() {
    let s = Swarm::new();
    let e = s.enroll("w1");
    let (updater, agent) = evil_apps();
    let _evil = Hostile::start(&e, updater, agent);
    let tree = s.tree("app");
    write(&tree, "VERSION", "1");
    let root = tree.to_str().expect("utf-8");

    let runs: [(&[&str], i32); 14] = [
        (&["status"], 1),
        (&["status", "--json"], 1),
        (&["logs", "--host", "w1"], 0),
        (&["logs", "--host", "w1", "-f"], 0),
        (&["history", "--host", "w1", "--worker"], 0),
        (&["history", "--host", "w1", "--worker", "--json"], 0),
        (&["restart", "--all"], 1),
        (&["restart", "--all", "--json"], 1),
        (&["update", "--all", "--root", root], 1),
        (&["update", "--all", "--root", root, "--json"], 1),
        (&["rollback", "--all"], 0),
        (&["rollback", "--all", "--json"], 0),
        (&["history"], 0),
        (&["history", "--json"], 0),
    ];
    for (args, code) in runs {
        let mut cmd = s.command();
        // Colours on: the only escapes allowed would be ours, and NO_COLOR
        // off must not let the worker's through either.
        cmd.args(args).env_remove("NO_COLOR");
        let out = cmd.output().expect("run swarm");
        assert_eq!(
            out.status.code(),
            Some(code),
            "swarm {args:?}: {}",
            show(&out)
        );
        assert_output_inert(args, &out);
        // What it said is shown, visibly escaped.
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("u{1b}]52"),
            "swarm {args:?} hid what the worker said: {text}"
        );
    }

    // The audit trail itself holds no control character.
    let db = rusqlite::Connection::open(s.home().join("inventory.db")).expect("inventory");
    let mut stmt = db
        .prepare(
            "SELECT COALESCE(release_sha256,'') || COALESCE(git_commit,'') || detail FROM pushes",
        )
        .expect("query");
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        assert_inert("inventory", l.as_bytes());
    }
}

/// A 400 MiB answer, sent in 1 MiB chunks without a length; `done` is set
/// when the stream is dropped (the reader hung up, or it was all sent).
fn huge_body(done: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> Body {
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let chunk = Bytes::from(EVIL.repeat((1 << 20) / EVIL.len()));
    let guard = OnDrop(done);
    let stream = futures_util::stream::iter((0..400).map(move |_| {
        let _ = &guard;
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        Ok::<_, std::io::Error>(chunk.clone())
    }));
    Body::from_stream(stream)
}

#[test]
fn a_400_mib_answer_is_refused_with_bounded_memory() {
    let s = Swarm::new();
    let e = s.enroll("w1");
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let updater = {
        let (done, sent) = (done.clone(), sent.clone());
        Router::new().route(
            "/health",
            get(move || {
                let (done, sent) = (done.clone(), sent.clone());
                async move { (StatusCode::OK, huge_body(done, sent)) }
            }),
        )
    };
    // A second host whose updater answers only when told: `swarm status`
    // stays alive after it refused w1's answer, so its peak memory can be
    // read.
    let e2 = s.enroll("w2");
    let slow = {
        let release = release.clone();
        Router::new().route(
            "/health",
            get(move || {
                let release = release.clone();
                async move {
                    let _ = tokio::time::timeout(Duration::from_secs(8), release.notified()).await;
                    json_answer(
                        StatusCode::OK,
                        json!({"status": "ok", "role": "updater", "host": "w2",
                               "version": "1", "release": null, "pid": 1}),
                    )
                }
            }),
        )
    };
    let _slow = Hostile::start(&e2, slow, Router::new());
    let _evil = Hostile::start(&e, updater, Router::new());

    let mut cmd = s.command();
    cmd.args(["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut status = Daemon::start(&mut cmd);
    eventually(Duration::from_secs(30), "the master to hang up", || {
        done.load(Ordering::SeqCst).then_some(())
    });
    let hwm = tests::process::status_bytes(status.pid(), "VmHWM").expect("VmHWM of swarm");
    eprintln!(
        "swarm status VmHWM after refusing the answer: {} KiB",
        hwm >> 10
    );
    release.notify_waiters();
    let code = status
        .wait(Duration::from_secs(30))
        .expect("swarm status ends");
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        hwm < 64 << 20,
        "swarm status peaked at {} MiB reading a 400 MiB answer ({} MiB sent)",
        hwm >> 20,
        sent >> 20
    );
    assert!(sent < 200 << 20, "the master read {} MiB", sent >> 20);
    assert_eq!(code.code(), Some(1), "{code:?}");
}

#[test]
fn a_push_killed_mid_upload_leaves_no_temp_file() {
    let s = Swarm::new();
    let e = s.enroll("w1");
    let uploading = Arc::new(AtomicBool::new(false));
    let updater = {
        let uploading = uploading.clone();
        Router::new().route(
            "/update",
            post(move |body: Body| {
                let uploading = uploading.clone();
                async move {
                    uploading.store(true, Ordering::SeqCst);
                    // Take the body, never answer: the push is in flight
                    // until it is killed.
                    let _ = axum::body::to_bytes(body, 256 << 20).await;
                    std::future::pending::<()>().await;
                }
            }),
        )
    };
    let _evil = Hostile::start(&e, updater, Router::new());
    let tree = s.tree("big");
    // Enough bytes that the upload is not over in one write.
    write(&tree, "VERSION", "1");
    let noise: String = (0..4_000_000u32)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    write(&tree, "data.txt", &noise);
    let tmp = s.scratch().join("tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir tmp");

    let mut cmd = s.command();
    cmd.args(["update", "--all", "--root", tree.to_str().expect("utf-8")])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut push = Daemon::start(&mut cmd);
    eventually(Duration::from_secs(60), "the upload to start", || {
        uploading.load(Ordering::SeqCst).then_some(())
    });
    let during: Vec<_> = std::fs::read_dir(&tmp).expect("tmp").collect();
    assert!(during.is_empty(), "a named temp file mid-push: {during:?}");
    push.kill();
    let after: Vec<_> = std::fs::read_dir(&tmp).expect("tmp").collect();
    assert!(after.is_empty(), "left behind by a killed push: {after:?}");
}

/// The `/update` answer is read under the same cap as every other answer:
/// a 400 MiB one makes the host's row an error naming the cap, and the
/// master stops reading long before the end.
#[test]
fn a_400_mib_update_answer_is_refused_under_the_cap() {
    let s = Swarm::new();
    let e = s.enroll("w1");
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let updater = {
        let (done, sent) = (done.clone(), sent.clone());
        Router::new().route(
            "/update",
            post(move |body: Body| {
                let (done, sent) = (done.clone(), sent.clone());
                async move {
                    let _ = axum::body::to_bytes(body, 64 << 20).await;
                    (StatusCode::OK, huge_body(done, sent))
                }
            }),
        )
    };
    let _evil = Hostile::start(&e, updater, Router::new());
    let tree = s.tree("v1");
    write(&tree, "VERSION", "1");
    let root = tree.to_str().expect("utf-8 path");
    let out = s.run(&["update", "--all", "--root", root, "--json"]);
    let sent = sent.load(Ordering::SeqCst);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("answer too large"),
        "the row names the cap: {}",
        show(&out)
    );
    assert!(sent < 200 << 20, "the master read {} MiB", sent >> 20);
}

/// `swarm logs` without `-f` reads at most 16 MiB (10,000 lines never
/// need more) and says so; the flood's newline-free lines are printed in
/// bounded pieces, escaped, never buffered whole.
#[test]
fn a_400_mib_log_answer_is_cut_off_under_the_cap() {
    let s = Swarm::new();
    let e = s.enroll("w1");
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let updater = {
        let (done, sent) = (done.clone(), sent.clone());
        Router::new().route(
            "/logs",
            get(move || {
                let (done, sent) = (done.clone(), sent.clone());
                async move { (StatusCode::OK, huge_body(done, sent)) }
            }),
        )
    };
    let _evil = Hostile::start(&e, updater, Router::new());
    let out = s
        .command()
        .args(["logs", "--host", "w1"])
        .stdout(Stdio::null())
        .output()
        .expect("run swarm logs");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than 16 MiB"), "{err}");
    assert_inert("swarm logs stderr", &out.stderr);
    eventually(Duration::from_secs(30), "the master to hang up", || {
        done.load(Ordering::SeqCst).then_some(())
    });
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent < 200 << 20, "the master read {} MiB", sent >> 20);
}
