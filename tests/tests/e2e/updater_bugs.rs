//! Issue 9 bugs in the updater, end to end against the real binary: what
//! `--check` says about the bundles it was given (which host they are for,
//! a bundle of the wrong kind, a readable key said once), and a busy
//! answer that says `busy` once.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use pki::wire::OpStatus;
use tests::release::ReleaseTree;
use tests::worker::{Worker, WorkerOptions};
use tests::{TestPki, bin, eventually_async};

/// `worker-updater --check` with these bundle dirs and a fresh install dir.
fn check(updater_dir: &Path, agent_dir: &Path, install: &Path) -> Output {
    Command::new(bin("worker-updater"))
        .arg("--check")
        .arg("--updater-dir")
        .arg(updater_dir)
        .arg("--agent-dir")
        .arg(agent_dir)
        .arg("--install-dir")
        .arg(install)
        .output()
        .expect("run worker-updater --check")
}

fn good(tag: &str) -> Vec<u8> {
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .tarball()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_says_which_host_the_bundle_is_for_and_refuses_another_hosts() {
    let pki = TestPki::new();
    let (w1, w2) = (pki.worker("w1"), pki.worker("w2"));
    let install = pki.path().join("install");
    std::fs::create_dir(&install).unwrap();

    let ok = check(&w1.updater_dir, &w1.agent_dir, &install);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let out = text(&ok.stdout);
    assert!(out.contains("bundle for updater@w1"), "{out}");

    // Another host's updater bundle next to this host's agent bundle.
    let bad = check(&w2.updater_dir, &w1.agent_dir, &install);
    assert_eq!(bad.status.code(), Some(64), "{}", text(&bad.stdout));
    let err = text(&bad.stderr);
    assert!(
        err.contains("is for updater@w2") && err.contains("is for w1"),
        "{err}"
    );

    // The agent bundle passed as the updater's.
    let wrong = check(&w1.agent_dir, &w1.agent_dir, &install);
    assert_eq!(wrong.status.code(), Some(64));
    let err = text(&wrong.stderr);
    assert!(
        err.contains("this is an agent bundle (worker.crt), pass the updater bundle (updater.crt)"),
        "{err}"
    );
    assert!(!err.contains("no bundle here"), "{err}");
}

#[test]
fn a_readable_key_is_reported_once() {
    let pki = TestPki::new();
    let w1 = pki.worker("w1");
    let install = pki.path().join("install");
    std::fs::create_dir(&install).unwrap();
    let key = w1.updater_dir.join("updater.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&w1.updater_dir, &w1.agent_dir, &install);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert_eq!(err.matches("private key is mode 644").count(), 1, "{err}");
}

#[tokio::test]
async fn a_busy_answer_says_busy_once() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let gate = w.dir().join("install-gate");
    let hook = format!(
        "[install]\ncommand = [\"sh\", \"-c\", \"while [ ! -e '{}' ]; do sleep 0.02; done\"]\n",
        gate.display()
    );
    let slow = ReleaseTree::new()
        .file("swarm.toml", hook.as_bytes())
        .tarball();
    let first = w.push(&client, &slow);
    let meanwhile = async {
        eventually_async(Duration::from_secs(15), "update in progress", || async {
            (w.health(&client).await.busy.as_deref() == Some("update")).then_some(())
        })
        .await;
        let (code, body) = w.push(&client, &good("other")).await;
        std::fs::write(&gate, "").unwrap();
        (code, body)
    };
    let ((_, _), (code, body)) = tokio::join!(first, meanwhile);
    assert_eq!((code, body.status), (409, OpStatus::Busy), "{body:?}");
    let error = body.error.unwrap_or_default();
    // The master prints `busy: <error>`.
    assert!(!error.starts_with("busy"), "{error}");
    assert!(error.contains("update in progress"), "{error}");
}
