//! Shared support for swarm's end-to-end tests: where the built binaries
//! are, a fresh CA per test in a temp dir, polling with a deadline, child
//! processes that die with the test, and free loopback ports.
//!
//! The binaries are built by `cargo test --workspace` itself: each binary
//! crate has an integration test of its own, which makes cargo build that
//! crate's binary into `target/<profile>/` before any test runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pki::{Bundle, BundleKind, Ca, HostName, IssuedLeaf, LeafSpec};
use tempfile::TempDir;

pub mod ports;
pub mod worker;

pub use ports::{Port, free_port};

/// Path of a workspace binary (`swarm`, `worker-agent`, `worker-updater`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// Poll `f` every 20 ms until it returns `Some`, or panic with `what` after
/// `timeout`. Use it instead of sleeping to wait for state.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async flavour of [`eventually`].
pub async fn eventually_async<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh CA in its own temp dir, issuing bundles with `pki` directly.
pub struct TestPki {
    pub dir: TempDir,
    pub ca: Ca,
}

/// The bundles of one enrolled worker.
#[derive(Clone, Debug)]
pub struct WorkerBundles {
    pub host: HostName,
    pub agent_dir: PathBuf,
    pub updater_dir: PathBuf,
    pub agent: IssuedLeaf,
    pub updater: IssuedLeaf,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate().expect("generate CA");
        ca.save(&dir.path().join("ca")).expect("save CA");
        TestPki { dir, ca }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issue a leaf from `spec` into `<tmp>/<name>/` as a bundle of `kind`.
    pub fn issue(&self, name: &str, kind: BundleKind, spec: &LeafSpec) -> (PathBuf, IssuedLeaf) {
        let dir = self.dir.path().join(name);
        let leaf = self.ca.issue(spec).expect("issue leaf");
        Bundle::write(&dir, kind, self.ca.cert_pem(), &leaf).expect("write bundle");
        (dir, leaf)
    }

    /// The master bundle at `<tmp>/master/`.
    pub fn master(&self) -> Bundle {
        let dir = self.dir.path().join("master");
        if !dir.exists() {
            self.issue("master", BundleKind::Master, &LeafSpec::master());
        }
        Bundle::load(&dir).expect("load master bundle")
    }

    /// Enroll `host` at 127.0.0.1: agent bundle `<tmp>/<host>/agent`,
    /// updater bundle `<tmp>/<host>/updater`.
    pub fn worker(&self, host: &str) -> WorkerBundles {
        let host = HostName::new(host).expect("host name");
        std::fs::create_dir_all(self.dir.path().join(host.as_str())).expect("mkdir");
        let (agent_dir, agent) = self.issue(
            &format!("{host}/agent"),
            BundleKind::Agent,
            &LeafSpec::agent(&host, "127.0.0.1", &[]).expect("agent spec"),
        );
        let (updater_dir, updater) = self.issue(
            &format!("{host}/updater"),
            BundleKind::Updater,
            &LeafSpec::updater(&host, "127.0.0.1", &[]).expect("updater spec"),
        );
        WorkerBundles {
            host,
            agent_dir,
            updater_dir,
            agent,
            updater,
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
