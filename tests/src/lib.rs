//! Shared support for swarm's end-to-end tests and its bench: where the
//! built binaries are, polling with a deadline, and the harness modules.
//!
//! - [`ports`]: loopback ports no two daemons are handed.
//! - [`process`]: child-process guards, `/proc`, clean-up, timed commands.
//! - [`ca`]: a fresh CA per test in a temp dir, a worker's bundles.
//! - [`garage`]: a real single-node S3 store (Garage) for the store tests.
//! - [`load`]: a load generator over fresh connections (zero downtime).
//! - [`release`]: release tarballs built in memory (and raw, hostile ones).
//! - [`worker`]: one `worker-updater` with its install dir, and its agent.
//! - [`swarm`]: a master home driven by the `swarm` CLI, and its fleet.
//!
//! Functions that panic on failure are for tests; their `try_`/`Result`
//! twins serve the bench, which reports errors instead.
//!
//! The binaries are built by `cargo test --workspace` itself: each binary
//! crate has an integration test of its own, which makes cargo build that
//! crate's binary into `target/<profile>/` before any test runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod ca;
pub mod garage;
pub mod load;
pub mod ports;
pub mod process;
pub mod release;
pub mod swarm;
pub mod worker;

pub use ca::{TestPki, WorkerBundles};
pub use ports::{Port, free_port};
pub use process::Daemon;
pub use swarm::Swarm;

/// Paths of the three binaries a worker and a master run.
#[derive(Clone, Debug)]
pub struct Bins {
    pub swarm: PathBuf,
    pub updater: PathBuf,
    pub agent: PathBuf,
}

impl Bins {
    /// The ones this test build sits next to (`target/<profile>/`).
    pub fn built() -> Bins {
        Bins {
            swarm: bin("swarm"),
            updater: bin("worker-updater"),
            agent: bin("worker-agent"),
        }
    }
}

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

/// Run `f` to completion on a runtime of its own, from a test without one.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}
