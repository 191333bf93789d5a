//! Crash windows (issue 10): a real updater killed at every named step of
//! an update, a revert, a rollback and a rollback's undo
//! (`SWARM_UPDATER_CRASH_AT`, compiled into debug builds only), restarted,
//! and the invariants checked: `current` on one whole release, `prev` kept,
//! an agent of the release `current` names, and the next push works. And
//! install hooks, which die with the updater and never write into a
//! staging or live dir after it.

use std::path::Path;
use std::time::Duration;

use pki::wire::OpStatus;
use tests::process::{alive, wait_dead};
use tests::release::{ReleaseTree, sha256_hex};
use tests::worker::{Worker, WorkerOptions};
use tests::{TestPki, eventually_async};

const CRASH_AT: &str = "SWARM_UPDATER_CRASH_AT";

fn good(tag: &str) -> Vec<u8> {
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .tarball()
}

/// A release whose agent exits at once unless `gate` exists (then it is
/// the reference agent): healthy while the gate is there, unhealthy fast.
fn gated(w: &Worker, gate: &Path, tag: &str) -> Vec<u8> {
    let agent = format!(
        "test -e '{}' && exec '{}' --listen 127.0.0.1:{}",
        gate.display(),
        tests::bin("worker-agent").display(),
        w.agent_port
    );
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .agent_command(&["sh".into(), "-c".into(), agent], w.agent_port)
        .tarball()
}

async fn push_ok(w: &Worker, client: &reqwest::Client, tgz: &[u8]) -> String {
    let (code, body) = w.push(client, tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    let sha = sha256_hex(tgz);
    w.wait_agent_release(&sha).await;
    sha
}

/// Restart the updater with (or without) a crash step.
fn restart_with(w: &mut Worker, step: Option<&str>) {
    w.options.env.retain(|(k, _)| k != CRASH_AT);
    if let Some(step) = step {
        w.options.env.push((CRASH_AT.into(), step.into()));
    }
    let old = w.updater_pid() as i32;
    w.restart();
    wait_dead(old, "the previous updater");
}

/// `POST /update` to an updater that may die answering it: the status
/// code if an answer came.
async fn push_dying(w: &Worker, client: &reqwest::Client, tgz: &[u8]) -> Option<u16> {
    let form = tests::release::release_form(tgz, &sha256_hex(tgz), &[]);
    let sent = client.post(w.url("/update")).multipart(form).send().await;
    sent.ok().map(|r| r.status().as_u16())
}

/// `POST /rollback`, likewise.
async fn rollback_dying(w: &Worker, client: &reqwest::Client) -> Option<u16> {
    let sent = client.post(w.url("/rollback")).send().await;
    sent.ok().map(|r| r.status().as_u16())
}

/// Wait for the updater to have killed itself at its crash step.
async fn wait_crashed(w: &Worker, step: &str) {
    let pid = w.updater_pid() as i32;
    let what = format!("the updater to crash at {step}");
    eventually_async(Duration::from_secs(30), &what, || async {
        (!alive(pid)).then_some(())
    })
    .await;
}

/// After a restart: the start-up reconcile is over, `current` is a whole
/// release in `active`, nothing is in flight, the agent reports `current`'s
/// release, and a new push works with `prev` = the release it replaced.
async fn assert_repaired(w: &Worker, pki: &TestPki, step: &str) -> (String, Option<String>) {
    let client = w.master_client(pki);
    eventually_async(
        Duration::from_secs(30),
        "the start-up reconcile",
        || async { (w.health(&client).await.busy.is_none()).then_some(()) },
    )
    .await;
    let current = tests::worker::manifest_sha(&w.install_dir.join("current"))
        .unwrap_or_else(|| panic!("{step}: current is not a whole release\n{}", w.log()));
    assert_eq!(
        w.slot_sha("active").as_deref(),
        Some(current.as_str()),
        "{step}"
    );
    let r = w.install_dir.join("releases");
    for leftover in [
        "active.new",
        "active.old",
        ".incoming.json",
        ".reverting.json",
        ".rollback.json",
        ".rollback-undo.json",
        ".hook.json",
    ] {
        assert!(
            !r.join(leftover).exists(),
            "{step}: {leftover} left\n{}",
            w.log()
        );
    }
    w.wait_agent_release(&current).await;
    let prev = w.slot_sha("prev");
    (current, prev)
}

async fn next_push_works(w: &Worker, pki: &TestPki, current: &str, tag: &str) {
    let client = w.master_client(pki);
    push_ok(w, &client, &good(tag)).await;
    assert_eq!(w.slot_sha("prev").as_deref(), Some(current));
}

/// prev = A, active = B (both good); returns (A, B).
async fn two_releases(w: &Worker, pki: &TestPki) -> (String, String) {
    let client = w.master_client(pki);
    let a = push_ok(w, &client, &good("a")).await;
    let b = push_ok(w, &client, &good("b")).await;
    (a, b)
}

fn failed_count(w: &Worker) -> usize {
    std::fs::read_dir(w.install_dir.join("releases/failed"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn killed_at_every_step_of_an_unhealthy_update_keeps_the_last_good_and_prev() {
    let steps = [
        "flip-exchanged",
        "update-flipped",
        "update-unhealthy",
        "update-marked",
        "revert-marked",
        "revert-exchanged",
        "update-reverted",
    ];
    for step in steps {
        let pki = TestPki::new();
        let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
        let (a, b) = two_releases(&w, &pki).await;
        restart_with(&mut w, Some(step));
        let client = w.master_client(&pki);
        // C's agent exits at once: unhealthy.
        let bad = gated(&w, &w.dir().join("never"), "c");
        let code = tokio::join!(push_dying(&w, &client, &bad), async {
            wait_crashed(&w, step).await;
        })
        .0;
        assert_eq!(code, None, "{step}: the updater answered before its crash");
        restart_with(&mut w, None);
        let (current, prev) = assert_repaired(&w, &pki, step).await;
        assert_eq!(
            current,
            b,
            "{step}: back on the last good release\n{}",
            w.log()
        );
        assert_eq!(
            prev.as_deref(),
            Some(a.as_str()),
            "{step}: prev kept\n{}",
            w.log()
        );
        assert_eq!(failed_count(&w), 1, "{step}: the bad release is in failed/");
        let (code, body) = w.rollback(&w.master_client(&pki)).await;
        assert_eq!(code, 200, "{step}: /rollback still has prev: {body:?}");
        w.wait_agent_release(&a).await;
        next_push_works(&w, &pki, &a, "d").await;
    }
}

#[tokio::test]
async fn killed_at_every_step_of_a_healthy_update_ends_on_one_whole_release() {
    for step in ["flip-exchanged", "update-flipped", "update-healthy"] {
        let pki = TestPki::new();
        let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
        let (_, b) = two_releases(&w, &pki).await;
        restart_with(&mut w, Some(step));
        let client = w.master_client(&pki);
        let c_tgz = good("c");
        let c = sha256_hex(&c_tgz);
        let code = tokio::join!(push_dying(&w, &client, &c_tgz), async {
            wait_crashed(&w, step).await;
        })
        .0;
        assert_eq!(code, None, "{step}: the updater answered before its crash");
        restart_with(&mut w, None);
        let (current, prev) = assert_repaired(&w, &pki, step).await;
        // The flip happened: the healthy C is probed again and confirmed.
        assert_eq!(current, c, "{step}\n{}", w.log());
        assert_eq!(prev.as_deref(), Some(b.as_str()), "{step}");
        next_push_works(&w, &pki, &c, "d").await;
    }
}

#[tokio::test]
async fn killed_at_every_step_of_a_rollback_to_an_unhealthy_prev_goes_back() {
    let steps = [
        "rollback-journaled",
        "rollback-swapped",
        "rollback-unhealthy",
        "rollback-undoing",
        "rollback-undone",
    ];
    for step in steps {
        let pki = TestPki::new();
        let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
        let client = w.master_client(&pki);
        let gate = w.dir().join("gate");
        std::fs::write(&gate, "").unwrap();
        let a = push_ok(&w, &client, &gated(&w, &gate, "a")).await;
        let b = push_ok(&w, &client, &good("b")).await;
        // A turns unhealthy: a rollback to it must be undone.
        std::fs::remove_file(&gate).unwrap();
        restart_with(&mut w, Some(step));
        let client = w.master_client(&pki);
        let code = tokio::join!(rollback_dying(&w, &client), async {
            wait_crashed(&w, step).await;
        })
        .0;
        assert_eq!(code, None, "{step}: the updater answered before its crash");
        restart_with(&mut w, None);
        let (current, prev) = assert_repaired(&w, &pki, step).await;
        assert_eq!(
            current,
            b,
            "{step}: went back to the release that ran\n{}",
            w.log()
        );
        assert_eq!(prev.as_deref(), Some(a.as_str()), "{step}: prev as it was");
        next_push_works(&w, &pki, &b, "d").await;
    }
}

#[tokio::test]
async fn killed_at_every_step_of_a_healthy_rollback_ends_on_one_whole_release() {
    for (step, rolled) in [("rollback-journaled", false), ("rollback-swapped", true)] {
        let pki = TestPki::new();
        let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
        let (a, b) = two_releases(&w, &pki).await;
        restart_with(&mut w, Some(step));
        let client = w.master_client(&pki);
        let code = tokio::join!(rollback_dying(&w, &client), async {
            wait_crashed(&w, step).await;
        })
        .0;
        assert_eq!(code, None, "{step}: the updater answered before its crash");
        restart_with(&mut w, None);
        let (current, prev) = assert_repaired(&w, &pki, step).await;
        let (live, other) = if rolled { (&a, &b) } else { (&b, &a) };
        assert_eq!(&current, live, "{step}\n{}", w.log());
        assert_eq!(prev.as_ref(), Some(other), "{step}");
        next_push_works(&w, &pki, live, "d").await;
    }
}

/// A hook that records its pid, backgrounds a writer into its release dir
/// (one that leaves the process group with setsid too), then blocks on a
/// gate or exits with `exit`.
fn hook_tree(w: &Worker, tag: &str, exit: Option<u8>) -> Vec<u8> {
    let pids = w.dir().join(format!("hook-{tag}.pids"));
    let tail = match exit {
        Some(code) => format!("exit {code}"),
        None => "while true; do sleep 0.05; done".into(),
    };
    let script = format!(
        "writer() {{ while true; do echo x >> \"$SWARM_RELEASE_DIR/leak\" 2>/dev/null; sleep 0.02; done; }}\n\
         writer &\necho $! >> '{pids}'\n\
         setsid sh -c 'while true; do echo x >> \"$SWARM_RELEASE_DIR/leak\" 2>/dev/null; sleep 0.02; done' &\n\
         echo $! >> '{pids}'\necho $$ >> '{pids}'\n{tail}\n",
        pids = pids.display()
    );
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file(
            "swarm.toml",
            b"[install]\ncommand = [\"sh\", \"install.sh\"]\ntimeout_secs = 60\n",
        )
        .file("install.sh", script.as_bytes())
        .tarball()
}

/// Push a release whose hook blocks, and return once it and its writers run
/// (the push is left hanging: the caller kills the updater).
async fn block_in_hook(w: &Worker, client: &reqwest::Client) {
    let tgz = hook_tree(w, "h", None);
    let push = w.push(client, &tgz);
    let running = async {
        eventually_async(
            Duration::from_secs(15),
            "the hook and its writers",
            // All three started, and the setsid writer really left the
            // hook's process group (its pid is written before it calls
            // setsid(): a kill in between would take it with the group).
            || async {
                let pids = hook_pids(w, "h");
                let left = pids.len() == 3
                    && matches!(
                        (tests::process::stat(pids[1]), tests::process::stat(pids[2])),
                        (Some(a), Some(b)) if a.pgrp != b.pgrp
                    );
                left.then_some(())
            },
        )
        .await;
    };
    tokio::select! {
        r = push => panic!("the blocked hook finished: {r:?}"),
        () = running => {}
    }
}

fn hook_pids(w: &Worker, tag: &str) -> Vec<i32> {
    std::fs::read_to_string(w.dir().join(format!("hook-{tag}.pids")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn a_failed_hook_leaves_nothing_running() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = push_ok(&w, &client, &good("a")).await;
    let (code, body) = w.push(&client, &hook_tree(&w, "h", Some(3))).await;
    assert_eq!(code, 500, "{body:?}");
    let pids = hook_pids(&w, "h");
    assert_eq!(pids.len(), 3, "the hook ran");
    for pid in pids {
        assert!(!alive(pid), "hook process {pid} outlived the failed hook");
    }
    let b = push_ok(&w, &client, &good("b")).await;
    assert!(
        !w.install_dir.join("current/leak").exists(),
        "a hook wrote into the live release"
    );
    assert_eq!(w.slot_sha("prev").as_deref(), Some(a.as_str()));
    assert_eq!(w.slot_sha("active").as_deref(), Some(b.as_str()));
}

#[tokio::test]
async fn a_hook_dies_with_the_updater_and_never_writes_into_the_next_release() {
    let pki = TestPki::new();
    let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    push_ok(&w, &client, &good("a")).await;
    block_in_hook(&w, &client).await;
    assert!(
        w.install_dir.join("releases/.hook.json").exists(),
        "its group is journaled"
    );
    let pids = hook_pids(&w, "h");
    w.kill_updater();
    // Without any restart: the leader's PDEATHSIG takes its group (the
    // hook's shell and its backgrounded writer; the pid file lists the
    // writer, the setsid writer, then the shell).
    wait_dead(pids[0], "the hook's writer, with the updater");
    wait_dead(pids[2], "the hook's shell, with the updater");
    assert!(
        alive(pids[1]),
        "the setsid writer left the group: the repair's to kill"
    );
    // The leader's PDEATHSIG takes its group; the setsid writer left the
    // group and is the start-up repair's to kill.
    w.restart();
    for pid in &pids {
        wait_dead(*pid, "a process of the interrupted hook");
    }
    let log = w.log();
    assert!(!log.contains("Directory not empty"), "{log}");
    let client = w.master_client(&pki);
    let b = push_ok(&w, &client, &good("b")).await;
    // Nothing writes into the release that staging became.
    let leak = w.install_dir.join("current/leak");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !leak.exists(),
        "a leftover hook process wrote into the live release {b}"
    );
}

#[tokio::test]
async fn a_push_after_an_interrupted_hook_is_exactly_what_was_pushed() {
    // The same, with the push right after the restart racing any survivor.
    let pki = TestPki::new();
    let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    push_ok(&w, &client, &good("a")).await;
    block_in_hook(&w, &client).await;
    w.restart();
    let client = w.master_client(&pki);
    let tgz = good("b");
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert_eq!(body.status, OpStatus::Updated);
    for pid in hook_pids(&w, "h") {
        assert!(!alive(pid), "hook process {pid} survived the restart");
    }
    let files: Vec<String> = std::fs::read_dir(w.install_dir.join("current"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|f| f == "leak"), "{files:?}");
}
