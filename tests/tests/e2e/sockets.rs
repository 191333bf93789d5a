//! Issue 14: zero-downtime restarts. The updater holds the agent's
//! `[agent] listen` sockets and passes them by socket activation; with
//! `start-first` the new agent starts beside the old one. A load of fresh
//! connections runs through good, broken and rolled-back pushes and must
//! see no failed request; the sockets survive a self-update (the very same
//! socket) and an updater restart (bound again, the agent handed over);
//! an address that cannot be bound is a 500 with nothing changed.

use std::time::Duration;

use pki::wire::OpStatus;
use tests::load::{Load, Tally};
use tests::release::{ReleaseTree, release_form, sha256_hex, shippable_updater};
use tests::worker::{Worker, WorkerOptions};
use tests::{TestPki, free_port};

const LONG: Duration = Duration::from_secs(30);

/// Requests between two pushes of a load, at least: the load really runs.
const BETWEEN: u64 = 5;

/// A socket-activated release of the reference agent on `w`'s agent port.
fn good(w: &Worker, tag: &str, mode: &str) -> Vec<u8> {
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .activated_agent(w.agent_port, mode, &[])
        .tarball()
}

/// A release whose agent exits at once.
fn broken(w: &Worker, tag: &str, mode: &str) -> Vec<u8> {
    let cmd = ["sh", "-c", "echo broken agent; exit 3"].map(str::to_owned);
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .activated_command(&cmd, w.agent_port, mode)
        .tarball()
}

fn worker(pki: &TestPki, host: &str) -> Worker {
    Worker::start(pki, host, WorkerOptions::default())
}

/// The load: two loops of fresh connections to the agent's `/health`.
fn load(w: &Worker) -> Load {
    let bundle = pki::Bundle::load(&w.bundles.updater_dir).expect("updater bundle");
    let client = tests::load::client(&bundle, w.bundles.host.as_str()).expect("load client");
    Load::start(client, w.agent_url(), 2, Duration::from_millis(5))
}

/// Wait until the load has had `n` more answers.
async fn more_answers(l: &Load, n: u64) {
    let from = l.ok();
    tests::eventually_async(
        Duration::from_secs(30),
        "the load to be answered",
        || async { (l.ok() >= from + n).then_some(()) },
    )
    .await;
}

fn assert_no_failure(t: &Tally, w: &Worker) {
    assert!(t.ok > 0, "the load never got an answer");
    assert_eq!(
        t.failed,
        0,
        "{} of {} requests failed: {:?}\nagent log:\n{}\nupdater log:\n{}",
        t.failed,
        t.ok + t.failed,
        t.errors,
        w.agent_log(),
        w.log()
    );
}

async fn agent_pid(w: &Worker) -> u32 {
    w.agent_health().await.expect("agent answering").pid
}

/// Good pushes, a broken push (rolled back) and a rollback under load,
/// for restart mode `mode`: no request fails.
async fn pushes_under_load(mode: &str) {
    let pki = TestPki::new();
    let w = worker(&pki, &format!("zd-{mode}"));
    let client = w.master_client(&pki);
    let first = good(&w, "v1", mode);
    let (code, body) = w.push(&client, &first).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    w.wait_agent_release(&sha256_hex(&first)).await;
    let l = load(&w);
    more_answers(&l, BETWEEN).await;
    for tag in ["v2", "v3"] {
        let tgz = good(&w, tag, mode);
        let (code, body) = w.push(&client, &tgz).await;
        assert_eq!(code, 200, "{tag}: {body:?}\n{}", w.log());
        more_answers(&l, BETWEEN).await;
    }
    let serving = agent_pid(&w).await;
    let (code, body) = w.push(&client, &broken(&w, "v4", mode)).await;
    assert_eq!(code, 409, "{body:?}\n{}", w.log());
    assert_eq!(body.status, OpStatus::RolledBack, "{body:?}");
    more_answers(&l, BETWEEN).await;
    if mode == "start-first" {
        // The broken push never touched the agent that served.
        assert_eq!(agent_pid(&w).await, serving, "{}", w.log());
    }
    let (code, body) = w.rollback(&client).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    more_answers(&l, BETWEEN).await;
    let tally = l.finish().await;
    assert_no_failure(&tally, &w);
    assert_eq!(
        w.agent_health()
            .await
            .and_then(|h| h.release)
            .map(|m| m.sha256),
        Some(sha256_hex(&good(&w, "v2", mode))),
        "rolled back to v2"
    );
}

#[tokio::test]
async fn start_first_pushes_broken_pushes_and_rollbacks_lose_no_request() {
    pushes_under_load("start-first").await;
}

#[tokio::test]
async fn stop_first_with_listen_queues_connections_instead_of_refusing_them() {
    pushes_under_load("stop-first").await;
}

/// The inode of the socket listening on 127.0.0.1:`port` in `/proc/net/tcp`.
fn listening_inode(port: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (*f.get(1)? == local && *f.get(3)? == "0A")
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

/// Whether process `pid` holds the socket with `inode`.
fn holds(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
        rd.filter_map(Result::ok)
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
    })
}

#[tokio::test]
async fn sockets_survive_a_self_update_and_an_updater_restart() {
    let pki = TestPki::new();
    let port = free_port();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port.get()));
    let options = WorkerOptions {
        extra_args: vec!["--self-check-timeout-secs".into(), "20".into()],
        ..WorkerOptions::default()
    };
    let mut w = Worker::start_with(pki.worker("zd-keep"), listen, options);
    w.hold(port);
    let client = w.master_client(&pki);
    let v1 = good(&w, "v1", "start-first");
    let (code, body) = w.push(&client, &v1).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    w.wait_agent_release(&sha256_hex(&v1)).await;
    let inode = listening_inode(w.agent_port).expect("a socket listens on the agent port");
    let updater = w.updater_pid();
    assert!(
        holds(updater, inode),
        "the updater holds the agent's socket"
    );

    // Self-update: the very same socket lives on in the re-exec'ed updater.
    let me = ReleaseTree::new()
        .file("VERSION", b"updater-2")
        .file_mode("bin/worker-updater", shippable_updater(), 0o755)
        .tarball();
    let form = release_form(&me, &sha256_hex(&me), &[("confirm_self", "true")]);
    let _ = client
        .post(w.url("/update-self"))
        .multipart(form)
        .send()
        .await;
    let sha = sha256_hex(&me);
    tests::eventually_async(Duration::from_secs(40), "the new updater", || async {
        let h = client.get(w.url("/health")).send().await.ok()?;
        let h: pki::wire::UpdaterHealth = h.json().await.ok()?;
        h.release.filter(|m| m.sha256 == sha).map(|_| ())
    })
    .await;
    assert_eq!(w.updater_pid(), updater, "re-exec keeps the process");
    assert!(
        holds(updater, inode),
        "the socket went through the exec\n{}",
        w.log()
    );
    // And the new updater passes it on: pushes under load lose nothing.
    let l = load(&w);
    more_answers(&l, BETWEEN).await;
    let v2 = good(&w, "v2", "start-first");
    let (code, body) = w.push(&client, &v2).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    more_answers(&l, BETWEEN).await;
    assert_no_failure(&l.finish().await, &w);
    assert_eq!(
        listening_inode(w.agent_port),
        Some(inode),
        "still the same socket"
    );

    // A plain restart cannot inherit: it binds again beside the running
    // agent's copy and hands the agent over onto its own socket.
    let before = agent_pid(&w).await;
    w.restart();
    let client = w.master_client(&pki);
    let updater = w.updater_pid();
    tests::eventually_async(Duration::from_secs(30), "the agent handed over", || async {
        let h = w.agent_health().await?;
        (h.pid != before && h.release.map(|m| m.sha256) == Some(sha256_hex(&v2))).then_some(())
    })
    .await;
    // Connections still queued on the old agent's copy of the socket when
    // it closes can be reset by the kernel (wiki/operations.md, "Zero-downtime
    // restarts": net.ipv4.tcp_migrate_req): the load starts once it is gone.
    let old = i32::try_from(before).expect("a pid");
    tests::eventually_async(LONG, "the old agent to exit", || async {
        (!tests::process::alive(old)).then_some(())
    })
    .await;
    let l = load(&w);
    more_answers(&l, BETWEEN).await;
    let v3 = good(&w, "v3", "start-first");
    // The hand-over holds the worker until the old agent is gone.
    let (code, body) = tests::eventually_async(LONG, "the start-up to finish", || async {
        let (code, body) = w.push(&client, &v3).await;
        (body.status != OpStatus::Busy).then_some((code, body))
    })
    .await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    more_answers(&l, BETWEEN).await;
    assert_no_failure(&l.finish().await, &w);
    let inode = listening_inode(w.agent_port).expect("listening");
    assert!(
        holds(updater, inode),
        "the restarted updater holds the socket"
    );
}

#[tokio::test]
async fn an_address_that_cannot_be_bound_is_a_500_and_nothing_changes() {
    let pki = TestPki::new();
    let w = worker(&pki, "zd-bind");
    let client = w.master_client(&pki);
    let v1 = good(&w, "v1", "start-first");
    let (code, body) = w.push(&client, &v1).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    w.wait_agent_release(&sha256_hex(&v1)).await;
    let pid = agent_pid(&w).await;
    let before = w.releases(&client).await;
    // Another service holds the port the next release wants.
    let stranger = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = stranger.local_addr().expect("addr").port();
    let cmd = [
        tests::bin("worker-agent").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{taken}"),
    ];
    let v2 = ReleaseTree::new()
        .file("VERSION", b"v2")
        .activated_command(&cmd, taken, "start-first")
        .tarball();
    let (code, body) = w.push(&client, &v2).await;
    assert_eq!(code, 500, "{body:?}\n{}", w.log());
    let e = body.error.unwrap_or_default();
    assert!(
        e.contains(&format!("127.0.0.1:{taken}")) && e.contains("nothing was rotated"),
        "{e}"
    );
    let after = w.releases(&client).await;
    assert_eq!(
        after.active.map(|m| m.sha256),
        before.active.map(|m| m.sha256)
    );
    assert_eq!(after.prev.map(|m| m.sha256), before.prev.map(|m| m.sha256));
    assert_eq!(agent_pid(&w).await, pid, "the agent was not touched");
    assert!(!w.install_dir.join("releases/active.new").exists());
}

#[tokio::test]
async fn an_agent_that_binds_its_address_itself_fails_its_probe_and_says_why() {
    let pki = TestPki::new();
    let w = worker(&pki, "zd-self");
    let client = w.master_client(&pki);
    let v1 = good(&w, "v1", "stop-first");
    let (code, body) = w.push(&client, &v1).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    // `env -u LISTEN_FDS`: the agent never sees its socket and binds.
    let cmd = [
        "env".to_owned(),
        "-u".into(),
        "LISTEN_FDS".into(),
        tests::bin("worker-agent").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", w.agent_port),
    ];
    let v2 = ReleaseTree::new()
        .file("VERSION", b"v2")
        .activated_command(&cmd, w.agent_port, "start-first")
        .tarball();
    let (code, body) = w.push(&client, &v2).await;
    assert_eq!(code, 409, "{body:?}\n{}", w.log());
    let e = body.error.unwrap_or_default();
    assert!(
        e.contains("bound its address itself") && e.contains("LISTEN_FDS"),
        "{e}"
    );
    w.wait_agent_release(&sha256_hex(&v1)).await;
}

#[tokio::test]
async fn an_agent_moves_to_socket_activation_on_its_own_port_and_back() {
    let pki = TestPki::new();
    let w = worker(&pki, "zd-move");
    let client = w.master_client(&pki);
    // Today's release: the agent binds the port itself.
    let own = ReleaseTree::new()
        .file("VERSION", b"own")
        .reference_agent(w.agent_port, &[])
        .tarball();
    let (code, body) = w.push(&client, &own).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    // The same port, now held by the updater: bound once the old agent
    // (which holds it itself) has stopped — not a bind failure.
    let held = good(&w, "held", "start-first");
    let (code, body) = w.push(&client, &held).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    w.wait_agent_release(&sha256_hex(&held)).await;
    // And back: the held socket is closed before the agent that binds the
    // port itself starts.
    let again = ReleaseTree::new()
        .file("VERSION", b"own-again")
        .reference_agent(w.agent_port, &[])
        .tarball();
    let (code, body) = w.push(&client, &again).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    w.wait_agent_release(&sha256_hex(&again)).await;
}
