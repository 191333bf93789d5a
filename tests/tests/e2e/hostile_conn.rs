//! Hostile connections against the real `worker-updater` binary: a flood of
//! idle connections from an agent certificate and raw sockets that never
//! handshake, a trickling and a stalled upload, a request head that never
//! ends, and `accept` failing for want of descriptors (issue 10).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use pki::wire::OpStatus;
use pki::{Bundle, HostName, ServerExpectation};
use tempfile::TempDir;
use tests::release::{ReleaseTree, sha256_hex};
use tests::worker::{Worker, WorkerOptions};
use tests::{TestPki, WorkerBundles, bin, eventually, eventually_async, free_port};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Long enough for any bound under test to trip.
const DEADLINE: Duration = Duration::from_secs(30);

/// A raw mTLS connection to `addr` holding `bundle`, expecting CN `cn`.
async fn tls(addr: SocketAddr, bundle: &Bundle, cn: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let config = pki::client_config(bundle, ServerExpectation::cn(cn)).expect("client config");
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// What the server sends until it closes the connection, or `None` when it
/// is still open after [`DEADLINE`].
async fn read_to_close(s: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// `prlimit` on a process: set its soft and hard `RLIMIT_NOFILE`.
fn set_nofile(pid: u32, soft: u64, hard: u64) {
    let st = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("run prlimit (util-linux)");
    assert!(st.success(), "prlimit --pid {pid} --nofile={soft}:{hard}");
}

/// The hard `RLIMIT_NOFILE` of this process, from /proc.
fn hard_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .expect("a numeric hard limit of open files")
}

fn open_fds(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// A master home made by `swarm ca init`, and `swarm` run against it.
struct Master {
    home: TempDir,
    scratch: TempDir,
}

impl Master {
    fn new() -> Master {
        let m = Master {
            home: tempfile::tempdir().expect("tempdir"),
            scratch: tempfile::tempdir().expect("tempdir"),
        };
        m.ok(&["ca", "init"]);
        m
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin("swarm"))
            .args(args)
            .env("SWARM_HOME", self.home.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("run swarm")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "swarm {args:?}: exit {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `swarm enroll` host `w1` on loopback and start its updater.
    fn worker(&self, options: WorkerOptions) -> Worker {
        let port = free_port();
        let agent_port = free_port();
        let out_dir = self.scratch.path().join("w1");
        self.ok(&[
            "enroll",
            "--host",
            "w1",
            "--address",
            "127.0.0.1",
            "--updater-port",
            &port.get().to_string(),
            "--agent-port",
            &agent_port.get().to_string(),
            "--updater",
            "--out-dir",
            out_dir.to_str().expect("utf-8 path"),
        ]);
        let updater_dir = self.scratch.path().join("w1-updater");
        let bundles = WorkerBundles {
            host: HostName::new("w1").expect("host"),
            agent: leaf(&out_dir, "worker"),
            updater: leaf(&updater_dir, "updater"),
            agent_dir: out_dir,
            updater_dir,
        };
        let options = WorkerOptions {
            agent_port: Some(agent_port.get()),
            ..options
        };
        let mut worker = Worker::start_with(
            bundles,
            SocketAddr::from(([127, 0, 0, 1], port.get())),
            options,
        );
        worker.hold(port);
        worker.hold(agent_port);
        worker
    }

    /// A release tree whose agent is the reference agent on `port`.
    fn tree(&self, port: u16, version: &str) -> String {
        let dir = self.scratch.path().join(format!("tree-{version}"));
        std::fs::create_dir_all(&dir).expect("mkdir tree");
        std::fs::write(dir.join("VERSION"), version).expect("write");
        let toml = format!(
            "[agent]\ncommand = [\"{}\", \"--listen\", \"127.0.0.1:{port}\"]\nhealth_url = \"https://127.0.0.1:{port}/health\"\n",
            bin("worker-agent").display()
        );
        std::fs::write(dir.join("swarm.toml"), toml).expect("write");
        dir.to_str().expect("utf-8 path").to_owned()
    }
}

fn leaf(dir: &Path, stem: &str) -> pki::IssuedLeaf {
    let bundle = Bundle::load(dir).expect("bundle");
    let info = bundle.info().expect("cert info");
    pki::IssuedLeaf {
        cert_pem: std::fs::read_to_string(dir.join(format!("{stem}.crt"))).expect("crt"),
        key_pem: std::fs::read_to_string(dir.join(format!("{stem}.key"))).expect("key"),
        fingerprint: bundle.fingerprint(),
        not_after: info.not_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_idle_agent_connections_leave_room_for_the_master() {
    let m = Master::new();
    let w = m.worker(WorkerOptions::default());
    let pid = w.updater_pid();
    // The updater gets systemd's default; this test needs room for its side.
    let hard = hard_nofile();
    set_nofile(pid, 1024, hard.max(1024));
    set_nofile(std::process::id(), hard, hard);
    let agent = Bundle::load(&w.bundles.agent_dir).expect("agent bundle");
    let cn = w.bundles.host.updater_cn();
    let v1 = m.tree(w.agent_port, "v1");
    tokio::task::block_in_place(|| m.ok(&["update", "--all", "--root", &v1]));

    let mut raw = Vec::new();
    for _ in 0..100 {
        raw.push(TcpStream::connect(w.addr).await.expect("raw connect"));
    }
    // 1,000 idle connections with the agent's certificate, 32 at a time.
    let mut held = Vec::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (agent, cn, sem) = (agent.clone(), cn.clone(), Arc::clone(&sem));
        let addr = w.addr;
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.expect("semaphore");
            tls(addr, &agent, &cn).await.ok()
        }));
    }
    for t in tasks {
        if let Some(s) = t.await.expect("task") {
            held.push(s);
        }
    }
    for _ in 0..100 {
        raw.push(TcpStream::connect(w.addr).await.expect("raw connect"));
    }
    let fds = open_fds(pid).len();
    assert!(fds < 1024, "the updater holds {fds} descriptors");

    let status = tokio::task::block_in_place(|| m.ok(&["status", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["hosts"][0]["updater_reachable"], true, "{status}");
    assert_eq!(status["hosts"][0]["agent_healthy"], true, "{status}");
    let v2 = m.tree(w.agent_port, "v2");
    let out = tokio::task::block_in_place(|| m.ok(&["update", "--all", "--root", &v2]));
    assert!(out.contains("updated"), "{out}");
    drop((held, raw));
}

/// Send the head and the leading form fields of a `/update` upload of
/// `tgz` over `s`, leaving exactly the tarball's bytes to send.
async fn upload_head(s: &mut TlsStream<TcpStream>, tgz: &[u8]) {
    let b = "swarmtestboundary";
    let pre = format!(
        "--{b}\r\ncontent-disposition: form-data; name=\"sha256\"\r\n\r\n{}\r\n--{b}\r\ncontent-disposition: form-data; name=\"tarball\"; filename=\"t.tgz\"\r\ncontent-type: application/gzip\r\n\r\n",
        sha256_hex(tgz)
    );
    let post = format!("\r\n--{b}--\r\n");
    let head = format!(
        "POST /update HTTP/1.1\r\nhost: w1\r\ncontent-type: multipart/form-data; boundary={b}\r\ncontent-length: {}\r\n\r\n",
        pre.len() + tgz.len() + post.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(pre.as_bytes()).await.expect("write fields");
    s.flush().await.expect("flush");
}

fn short_body_limits() -> WorkerOptions {
    WorkerOptions {
        env: vec![
            ("SWARM_SERVE_BODY_IDLE_TIMEOUT".into(), "3s".into()),
            ("SWARM_SERVE_BODY_MIN_RATE".into(), "1024".into()),
            ("SWARM_SERVE_BODY_RATE_GRACE".into(), "2s".into()),
            ("SWARM_SERVE_HEADER_READ_TIMEOUT".into(), "2s".into()),
        ],
        ..WorkerOptions::default()
    }
}

/// After a cut-off upload: staging gone, and a normal push goes through.
async fn next_push_succeeds(pki: &TestPki, w: &Worker, version: &str) {
    eventually(Duration::from_secs(15), "staging discarded", || {
        (!w.install_dir.join("releases/active.new").exists()).then_some(())
    });
    let tgz = ReleaseTree::new()
        .file("VERSION", version.as_bytes())
        .reference_agent(w.agent_port, &[])
        .tarball();
    let (code, body) = w.push(&w.master_client(pki), &tgz).await;
    assert_eq!(code, 200, "{body:?}\nlog:\n{}", w.log());
    assert_eq!(body.status, OpStatus::Updated);
}

#[tokio::test]
async fn a_trickling_upload_times_out_and_frees_the_lock() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", short_body_limits());
    let tgz = ReleaseTree::new()
        .file("VERSION", b"slow")
        .reference_agent(w.agent_port, &[])
        .tarball();
    let mut s = tls(w.addr, &pki.master(), &w.bundles.host.updater_cn())
        .await
        .expect("master connects");
    upload_head(&mut s, &tgz).await;
    // One real byte of the tarball per second: never idle, far below 1 KiB/s.
    let (mut rd, mut wr) = tokio::io::split(s);
    let body = tgz.clone();
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for byte in body {
            tick.tick().await;
            if wr.write_all(&[byte]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });
    let answer = read_to_close(&mut rd).await;
    trickle.abort();
    assert!(
        answer.is_some(),
        "a 1 byte/s upload still holds the updater; log:\n{}",
        w.log()
    );
    next_push_succeeds(&pki, &w, "after-trickle").await;
}

#[tokio::test]
async fn a_stalled_upload_and_an_unfinished_head_are_cut_off() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", short_body_limits());
    let cn = w.bundles.host.updater_cn();
    let tgz = ReleaseTree::new()
        .file("VERSION", b"stalled")
        .reference_agent(w.agent_port, &[])
        .tarball();
    let mut s = tls(w.addr, &pki.master(), &cn)
        .await
        .expect("master connects");
    upload_head(&mut s, &tgz).await;
    s.write_all(&tgz[..tgz.len() / 2])
        .await
        .expect("half the tarball");
    s.flush().await.expect("flush");
    assert!(
        read_to_close(&mut s).await.is_some(),
        "a stalled upload holds the updater; log:\n{}",
        w.log()
    );
    next_push_succeeds(&pki, &w, "after-stall").await;

    let agent = Bundle::load(&w.bundles.agent_dir).expect("agent bundle");
    let mut s = tls(w.addr, &agent, &cn).await.expect("agent connects");
    s.write_all(b"GET /health HTTP/1.1\r\nhost: w1\r\n")
        .await
        .expect("half a head");
    assert!(
        read_to_close(&mut s).await.is_some(),
        "a request head that never ends holds the connection"
    );
}

#[tokio::test]
async fn accept_errors_back_off_instead_of_spinning() {
    let pki = TestPki::new();
    let w = Worker::start(
        &pki,
        "w1",
        WorkerOptions {
            env: vec![("SWARM_SERVE_ACCEPT_ERROR_LOG_EVERY".into(), "2s".into())],
            ..WorkerOptions::default()
        },
    );
    let pid = w.updater_pid();
    let client = w.master_client(&pki);
    assert_eq!(w.health(&client).await.status, "ok");
    let hard = hard_nofile();
    // Below the lowest free descriptor: the next accept fails with EMFILE.
    let fds = open_fds(pid);
    let lowest_free = (0..)
        .find(|n| !fds.contains(n))
        .expect("a free descriptor number");
    set_nofile(pid, lowest_free, hard);
    let _waiting = TcpStream::connect(w.addr)
        .await
        .expect("connect into the backlog");
    let log = eventually(DEADLINE, "a report that the back-off reached 1s", || {
        let log = w.log();
        log.contains("backing off 1s").then_some(log)
    });
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    let failures: u64 = reports
        .iter()
        .map(|l| {
            1 + l
                .split("; ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    // 10 ms doubling to 1 s takes 8 attempts; a 50 ms spin makes ~40 by
    // the time the 2 s report comes, each one logged.
    assert!(
        reports.len() <= 3,
        "{} accept-failure lines:\n{log}",
        reports.len()
    );
    assert!(
        failures <= 20,
        "{failures} accept attempts while out of descriptors:\n{log}"
    );
    set_nofile(pid, 1024, hard);
    assert_eq!(
        eventually_async(DEADLINE, "the updater to serve again", || async {
            let resp = client.get(w.url("/health")).send().await.ok()?;
            (resp.status() == 200).then_some(200)
        })
        .await,
        200
    );
}
