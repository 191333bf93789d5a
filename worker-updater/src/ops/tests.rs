//! Unit tests of the operations on a temp install dir.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use pki::wire::Manifest;

use super::reconcile::start_up;
use crate::config::Config;
use crate::error::UpdaterError;
use crate::release::write_manifest;
use crate::state::Daemon;

/// A `Daemon` on a temp install dir, with a real updater bundle; the
/// agent command is `sleep`, which never answers a probe.
fn app(tmp: &Path) -> Arc<Daemon> {
    let ca = pki::Ca::generate().unwrap();
    let host = pki::HostName::new("w1").unwrap();
    let leaf = ca
        .issue(&pki::LeafSpec::updater(&host, "127.0.0.1", &[]).unwrap())
        .unwrap();
    let bundle = tmp.join("updater-bundle");
    pki::Bundle::write(&bundle, pki::BundleKind::Updater, ca.cert_pem(), &leaf).unwrap();
    let install = tmp.join("install");
    let args = crate::Args::try_parse_from([
        "worker-updater".as_ref(),
        "--updater-dir".as_ref(),
        bundle.as_os_str(),
        "--agent-dir".as_ref(),
        tmp.join("agent").as_os_str(),
        "--install-dir".as_ref(),
        install.as_os_str(),
        "--agent-cmd".as_ref(),
        "sleep 30".as_ref(),
        "--agent-url".as_ref(),
        "https://127.0.0.1:9/health".as_ref(),
        "--probe-attempts".as_ref(),
        "1".as_ref(),
        "--stop-grace-ms".as_ref(),
        "500".as_ref(),
    ] as [&std::ffi::OsStr; 15])
    .unwrap();
    Arc::new(Daemon::new(Config::from_args(args).unwrap(), None).unwrap())
}

#[tokio::test]
async fn start_up_takes_the_worker_before_anything_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let app = app(tmp.path());
    // No release: nothing to start, nothing held.
    let repair = app.layout.repair().unwrap();
    assert!(start_up(&app, &repair).await.is_none());
    assert!(app.try_begin("update").is_ok());
    // A release and no agent running: the worker is held from the
    // moment start_up returns, before its reconcile ever runs.
    install(&app, "aaaa");
    let repair = app.layout.repair().unwrap();
    let reconcile = start_up(&app, &repair).await.expect("a start-up reconcile");
    assert_eq!(app.busy().as_deref(), Some("start-up"));
    assert!(matches!(
        app.try_begin("update"),
        Err(UpdaterError::Busy("start-up"))
    ));
    // It holds the worker until it is done (the agent never answers).
    reconcile.await;
    assert!(app.busy().is_none());
    let stopped = app.supervisor.stop(&app.matcher()).await;
    assert_eq!(stopped.len(), 1, "the agent it started: {stopped:?}");
}

fn install(app: &Daemon, sha: &str) {
    let staging = app.layout.prepare_staging().unwrap();
    let m = Manifest {
        sha256: sha.into(),
        size_bytes: 1,
        files: 0,
        git_commit: None,
        pushed_at: String::new(),
        pushed_by: "master".into(),
        release_id: None,
    };
    write_manifest(&staging, &m).unwrap();
    app.layout.flip_in(&m).unwrap();
    app.layout.confirm().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn restarting_the_agent_reads_its_files_off_the_async_thread() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let app = app(tmp.path());
    install(&app, "aaaa");
    // `.env.local` as a FIFO: reading it blocks until a writer comes.
    let fifo = app.install.env_local();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let progressed = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(AtomicBool::new(false));
    let writer = {
        let (progressed, stalled) = (progressed.clone(), stalled.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !progressed.load(Ordering::SeqCst) {
                if Instant::now() > deadline {
                    stalled.store(true, Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::write(&fifo, "X=1\n").unwrap();
        })
    };
    let op = tokio::spawn({
        let app = app.clone();
        async move { super::restart_current(&app, "forward").await }
    });
    // The operation runs first and reaches the FIFO; on the one async
    // thread of this runtime, this task resumes only if it did not
    // block that thread.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    progressed.store(true, Ordering::SeqCst);
    let (_, spawned) = op.await.unwrap();
    writer.join().unwrap();
    assert!(
        !stalled.load(Ordering::SeqCst),
        "the async thread stalled on .env.local"
    );
    assert!(spawned.is_some());
    app.supervisor.stop(&app.matcher()).await;
}
