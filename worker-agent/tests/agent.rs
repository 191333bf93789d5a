//! The reference agent as a real process: mTLS /health and /status, the
//! release it was started from, --health-cmd, SIGTERM, and bad config.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pki::wire::{AgentHealth, AgentStatus, ErrorBody, MANIFEST_FILE, Manifest};
use pki::{Bundle, BundleKind, Ca, HostName, LeafSpec, ServerExpectation};

struct Agent {
    child: Child,
    addr: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(agent_dir: &Path, release_dir: Option<&Path>, extra: &[&str]) -> Agent {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker-agent"));
    cmd.args(["--listen", "127.0.0.1:0", "--agent-dir"])
        .arg(agent_dir)
        .args(extra)
        .env_remove("SWARM_RELEASE_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(r) = release_dir {
        cmd.env("SWARM_RELEASE_DIR", r);
    }
    let mut child = cmd.spawn().expect("spawn worker-agent");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Agent { child, addr }
}

struct Fixture {
    _dir: tempfile::TempDir,
    agent_dir: std::path::PathBuf,
    master: Bundle,
    release_dir: std::path::PathBuf,
    manifest: Manifest,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate().expect("CA");
    let host = HostName::new("w1").expect("host");
    let agent_dir = dir.path().join("agent");
    let leaf = ca
        .issue(&LeafSpec::agent(&host, "127.0.0.1", &[]).expect("spec"))
        .expect("issue");
    Bundle::write(&agent_dir, BundleKind::Agent, ca.cert_pem(), &leaf).expect("write");
    let master_dir = dir.path().join("master");
    let leaf = ca.issue(&LeafSpec::master()).expect("issue");
    Bundle::write(&master_dir, BundleKind::Master, ca.cert_pem(), &leaf).expect("write");
    let release_dir = dir.path().join("release");
    std::fs::create_dir(&release_dir).expect("mkdir");
    let manifest = Manifest {
        sha256: "ab".repeat(32),
        size_bytes: 123,
        files: 4,
        git_commit: None,
        pushed_at: "2026-11-23T00:00:00Z".into(),
        pushed_by: "master".into(),
        release_id: None,
    };
    std::fs::write(
        release_dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("write manifest");
    Fixture {
        master: Bundle::load(&master_dir).expect("load"),
        _dir: dir,
        agent_dir,
        release_dir,
        manifest,
    }
}

fn client(master: &Bundle) -> reqwest::Client {
    pki::http_client(master, ServerExpectation::cn("w1"))
        .expect("client")
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build client")
}

#[tokio::test]
async fn health_reports_the_release_it_started_from() {
    let f = fixture();
    let agent = spawn(&f.agent_dir, Some(&f.release_dir), &[]);
    let c = client(&f.master);
    let resp = c
        .get(format!("https://{}/health", agent.addr))
        .send()
        .await
        .expect("GET /health");
    assert_eq!(resp.status(), 200);
    let h: AgentHealth = resp.json().await.expect("json");
    assert_eq!(h.status, "ok");
    assert_eq!(h.role, "agent");
    assert_eq!(h.host, "w1");
    assert_eq!(h.pid, agent.child.id());
    assert_eq!(h.release.as_ref(), Some(&f.manifest));

    // Replacing the manifest on disk does not change what it reports.
    std::fs::write(f.release_dir.join(MANIFEST_FILE), b"{}").expect("overwrite");
    let s: AgentStatus = c
        .get(format!("https://{}/status", agent.addr))
        .send()
        .await
        .expect("GET /status")
        .json()
        .await
        .expect("json");
    assert_eq!(s.release.as_ref(), Some(&f.manifest));
    assert_eq!(
        s.release_dir.as_deref(),
        Some(f.release_dir.display().to_string().as_str())
    );
}

#[tokio::test]
async fn no_release_dir_reports_null_release() {
    let f = fixture();
    let agent = spawn(&f.agent_dir, None, &[]);
    let h: AgentHealth = client(&f.master)
        .get(format!("https://{}/health", agent.addr))
        .send()
        .await
        .expect("GET /health")
        .json()
        .await
        .expect("json");
    assert!(h.release.is_none());
}

#[tokio::test]
async fn failing_health_cmd_answers_503() {
    let f = fixture();
    let agent = spawn(
        &f.agent_dir,
        Some(&f.release_dir),
        &["--health-cmd", "echo db down >&2; false"],
    );
    let resp = client(&f.master)
        .get(format!("https://{}/health", agent.addr))
        .send()
        .await
        .expect("GET /health");
    assert_eq!(resp.status(), 503);
    let body: ErrorBody = resp.json().await.expect("json");
    assert!(body.error.contains("db down"), "{}", body.error);
}

#[tokio::test]
async fn master_only_routes_do_not_exist_here() {
    let f = fixture();
    let agent = spawn(&f.agent_dir, None, &[]);
    // The agent serves no /update: even the master, whom the policy lets
    // through, finds nothing there.
    let resp = client(&f.master)
        .post(format!("https://{}/update", agent.addr))
        .send()
        .await
        .expect("POST /update");
    assert_eq!(resp.status(), 404);
}

#[test]
fn sigterm_stops_it_cleanly() {
    let f = fixture();
    let mut agent = spawn(&f.agent_dir, None, &[]);
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_stops_it_even_when_its_parent_blocked_sigterm() {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let f = fixture();
    // A parent that sigwait()s (like `swarm demo`) has SIGTERM blocked, and
    // the mask survives fork and exec: spawn from such a thread.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).expect("block");
    let mut agent = spawn(&f.agent_dir, None, &[]);
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).expect("restore");

    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn bad_flags_exit_64_and_help_exits_0() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_worker-agent"))
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&["--listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--health-cmd"));
}

#[test]
fn bad_config_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_worker-agent"))
        .args(["--listen", "127.0.0.1:0", "--agent-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no bundle here"), "{err}");
}

#[tokio::test]
async fn connection_limit_flags_apply_to_the_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture();
    let agent = spawn(&f.agent_dir, None, &["--serve-header-read-timeout", "1s"]);
    let config = pki::client_config(&f.master, ServerExpectation::cn("w1")).expect("config");
    let tcp = tokio::net::TcpStream::connect(&agent.addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    s.write_all(b"GET /health HTTP/1.1\r\nhost: w1\r\n")
        .await
        .expect("half a head");
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "--serve-header-read-timeout 1s did not cut off an unfinished head"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_worker-agent"))
        .args(["--listen", "127.0.0.1:0", "--serve-max-connections", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "a zero budget is refused");
}
