//! End-to-end tests of the updater's self-update (`POST /update-self`): the
//! real `worker-updater` switches to a copy of itself shipped in a tree, keeps
//! the flags it was first started with across self-updates, refuses a
//! binary that fails its `--check`, and a watchdog puts the previous updater
//! back when the new one never comes up. The agent is never restarted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pki::wire::{OpResponse, OpStatus, UpdaterHealth};
use tests::process::{alive, cmdline};
use tests::release::{ReleaseTree, release_form, sha256_hex, shippable_updater};
use tests::worker::{Worker, WorkerOptions};
use tests::{TestPki, free_port};

/// How long a switch (or a revert) may take to show on `/health`.
const SWITCH: Duration = Duration::from_secs(40);

/// A tree whose updater is the real binary; `tag` makes its digest unique.
fn real_updater_tree(tag: &str) -> Vec<u8> {
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/worker-updater", shippable_updater(), 0o755)
        .tarball()
}

/// A tree whose updater binary is the shell script `script`.
fn script_updater_tree(tag: &str, script: &str) -> Vec<u8> {
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/worker-updater", script.as_bytes(), 0o755)
        .tarball()
}

/// A good agent release (the fixture's default agent).
fn agent_tree(tag: &str) -> Vec<u8> {
    ReleaseTree::new().file("VERSION", tag.as_bytes()).tarball()
}

/// A worker on a fixed loopback port with non-default settings that a
/// self-update must carry over.
fn start(pki: &TestPki, host: &str, extra: &[&str]) -> Worker {
    let port = free_port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port.get()));
    let mut options = WorkerOptions {
        probe_attempts: Some(30),
        ..WorkerOptions::default()
    };
    options.extra_args = ["--failed-keep", "7", "--self-check-timeout-secs", "20"]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
    let mut w = Worker::start_with(pki.worker(host), listen, options);
    w.hold(port);
    w
}

/// `POST /update-self`; `Err` when the connection dropped before an answer
/// (expected: the updater replaces itself right after answering).
async fn push_self(
    w: &Worker,
    client: &reqwest::Client,
    tgz: &[u8],
    confirm: Option<&str>,
) -> Result<(u16, OpResponse), String> {
    let extra: Vec<(&str, &str)> = confirm.map(|c| ("confirm_self", c)).into_iter().collect();
    let form = release_form(tgz, &sha256_hex(tgz), &extra);
    let resp = client
        .post(w.url("/update-self"))
        .multipart(form)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let code = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| format!("{e:?}"))?;
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {code}: {text:?} is not an OpResponse: {e}"));
    Ok((code, body))
}

/// The updater's `/health`, or `None` while nothing answers.
async fn health(w: &Worker, client: &reqwest::Client) -> Option<UpdaterHealth> {
    let resp = client.get(w.url("/health")).send().await.ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.json().await.ok()
}

/// Wait until `/health` satisfies `f`.
async fn wait_health(
    w: &Worker,
    client: &reqwest::Client,
    what: &str,
    f: impl Fn(&UpdaterHealth) -> bool,
) -> UpdaterHealth {
    // Polled here rather than with `eventually_async` so that a timeout
    // shows the updater's log and the last health seen (a flake seen once
    // under the full suite's load left nothing to read).
    let deadline = std::time::Instant::now() + SWITCH;
    let mut last = None;
    loop {
        let h = health(w, client).await;
        if let Some(h) = h.as_ref().filter(|h| f(h)) {
            return h.clone();
        }
        if h.is_some() {
            last = h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {SWITCH:?} waiting for {what}; last health: {last:?}\nupdater log:\n{}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The settings given at the first start are in the argv of `pid`.
fn assert_flags_kept(w: &Worker, pid: u32) {
    let argv = cmdline(pid);
    for want in [
        format!("--listen={}", w.addr),
        format!("--install-dir={}", w.install_dir.display()),
        format!("--updater-dir={}", w.bundles.updater_dir.display()),
        format!("--agent-dir={}", w.bundles.agent_dir.display()),
        format!("--agent-url={}", w.agent_url()),
        "--failed-keep=7".to_owned(),
        "--probe-attempts=30".to_owned(),
    ] {
        assert!(argv.contains(&want), "{want} missing from {argv:?}");
    }
}

fn updater_slot_sha(w: &Worker, slot: &str) -> Option<String> {
    let text = std::fs::read_to_string(
        w.install_dir
            .join("updater/releases")
            .join(slot)
            .join(pki::wire::MANIFEST_FILE),
    )
    .ok()?;
    serde_json::from_str::<pki::wire::Manifest>(&text)
        .ok()
        .map(|m| m.sha256)
}

fn updater_failed_count(w: &Worker) -> usize {
    std::fs::read_dir(w.install_dir.join("updater/releases/failed"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn trial_marker(w: &Worker) -> PathBuf {
    w.install_dir.join("updater/trial.json")
}

/// Push a good agent release; returns the agent's pid.
async fn agent_running(w: &Worker, client: &reqwest::Client) -> i32 {
    let tgz = agent_tree("agent-1");
    let (code, body) = w.push(client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    w.wait_agent_release(&sha256_hex(&tgz)).await;
    w.agent_pid().expect("agent.pid")
}

#[tokio::test]
async fn self_update_switches_keeps_its_flags_and_never_restarts_the_agent() {
    let pki = TestPki::new();
    let mut w = start(&pki, "self-ok", &[]);
    let client = w.master_client(&pki);
    let agent = agent_running(&w, &client).await;
    let pid = w.updater_pid();
    let before = health(&w, &client).await.expect("health");
    assert!(before.release.is_none(), "a base install has no release");

    let mut shas = Vec::new();
    for tag in ["updater-1", "updater-2"] {
        let tgz = real_updater_tree(tag);
        let sha = sha256_hex(&tgz);
        match push_self(&w, &client, &tgz, Some("true")).await {
            Ok((code, body)) => {
                assert_eq!(code, 200, "{body:?}\n{}", w.log());
                assert_eq!(body.status, OpStatus::Updated);
                assert_eq!(body.release.map(|m| m.sha256), Some(sha.clone()));
            }
            // The connection dropping mid-answer is allowed; /health decides.
            Err(e) => eprintln!("connection dropped: {e}"),
        }
        let h = wait_health(&w, &client, "the new updater release on /health", |h| {
            h.release.as_ref().is_some_and(|m| m.sha256 == sha)
        })
        .await;
        assert_eq!(h.pid, pid, "re-exec keeps the process");
        assert_flags_kept(&w, pid);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
        assert!(
            exe.starts_with(w.install_dir.join("updater/releases")),
            "runs from its slot: {}",
            exe.display()
        );
        // The watchdog confirms and removes the trial marker.
        tests::eventually(SWITCH, "trial marker removed", || {
            (!trial_marker(&w).exists()).then_some(())
        });
        assert_eq!(
            w.agent_pid(),
            Some(agent),
            "agent restarted by a self-update"
        );
        assert!(alive(agent));
        shas.push(sha);
    }
    assert_eq!(updater_slot_sha(&w, "active").as_ref(), Some(&shas[1]));
    assert_eq!(updater_slot_sha(&w, "prev").as_ref(), Some(&shas[0]));
    assert!(
        w.current_target().is_some() && w.slot_sha("active").is_some(),
        "the agent's release untouched"
    );

    // A normal update still works and never touches updater/.
    let tgz = agent_tree("agent-2");
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert_eq!(updater_slot_sha(&w, "active").as_ref(), Some(&shas[1]));

    // Started again from the base binary, it hands over to updater/current.
    w.restart();
    let h = wait_health(&w, &client, "hand-over to updater/current", |h| {
        h.release.as_ref().is_some_and(|m| m.sha256 == shas[1])
    })
    .await;
    assert_eq!(h.pid, w.updater_pid());
    assert_flags_kept(&w, h.pid);
}

#[tokio::test]
async fn update_self_refuses_without_confirmation_or_the_master() {
    let pki = TestPki::new();
    let w = start(&pki, "self-refuse", &[]);
    let client = w.master_client(&pki);
    let tgz = script_updater_tree("x", "#!/bin/sh\nexit 0\n");
    for confirm in [None, Some("false"), Some("yes")] {
        let (code, body) = push_self(&w, &client, &tgz, confirm)
            .await
            .expect("an answer");
        assert_eq!(code, 400, "{confirm:?}: {body:?}");
        assert!(
            body.error
                .as_deref()
                .unwrap_or("")
                .contains("confirm_self=true"),
            "{body:?}"
        );
    }
    // A tree without the updater binary says so.
    let none = agent_tree("no-updater");
    let (code, body) = push_self(&w, &client, &none, Some("true"))
        .await
        .expect("an answer");
    assert_eq!(code, 400, "{body:?}");
    assert!(
        body.error
            .as_deref()
            .unwrap_or("")
            .contains("bin/worker-updater"),
        "{body:?}"
    );
    // Other identities of the same CA: 403, whatever the body.
    let updater_identity = tests::worker::client_for(
        &pki::Bundle::load(&w.bundles.updater_dir).expect("bundle"),
        &w.bundles.host.updater_cn(),
    );
    for (who, c) in [
        ("agent", w.agent_identity_client()),
        ("updater", updater_identity),
    ] {
        let (code, body) = push_self(&w, &c, &tgz, Some("true"))
            .await
            .expect("an answer");
        assert_eq!(code, 403, "{who}: {body:?}");
    }
    assert!(
        updater_slot_sha(&w, "active").is_none() && updater_slot_sha(&w, "active.new").is_none(),
        "nothing installed"
    );
    assert!(!w.install_dir.join("updater/current").exists());
    assert_eq!(
        health(&w, &client).await.map(|h| h.pid),
        Some(w.updater_pid())
    );
}

#[tokio::test]
async fn broken_updaters_are_refused_or_reverted_and_the_agent_keeps_running() {
    let pki = TestPki::new();
    let w = start(&pki, "self-broken", &["--self-trial-secs", "3"]);
    let client = w.master_client(&pki);
    let agent = agent_running(&w, &client).await;
    let pid = w.updater_pid();

    // A binary that exits at once fails its check: 500, nothing switched.
    let tgz = script_updater_tree("exits", "#!/bin/sh\necho broken build >&2\nexit 1\n");
    let (code, body) = push_self(&w, &client, &tgz, Some("true"))
        .await
        .expect("a 500, not a dropped connection");
    assert_eq!(code, 500, "{body:?}");
    assert!(
        body.stderr
            .as_deref()
            .unwrap_or("")
            .contains("broken build"),
        "{body:?}"
    );
    let h = health(&w, &client).await.expect("the old updater answers");
    assert_eq!((h.pid, h.release), (pid, None));
    assert!(!w.install_dir.join("updater/current").exists());
    assert_eq!(updater_failed_count(&w), 1);
    assert!(!trial_marker(&w).exists());

    // One that passes --check but never listens: the watchdog kills it and
    // starts the previous updater (here the base binary) on the same address.
    let hang = "#!/bin/sh\ncase \" $* \" in *\" --check \"*) exit 0;; esac\nexec sleep 600\n";
    let tgz = script_updater_tree("hangs", hang);
    let answered = push_self(&w, &client, &tgz, Some("true")).await;
    if let Ok((code, body)) = &answered {
        assert_eq!(*code, 200, "{body:?}");
    }
    let h = wait_health(&w, &client, "the previous updater back", |h| h.pid != pid).await;
    assert!(h.release.is_none(), "back on the base binary: {h:?}");
    assert!(!alive(pid as i32), "the hung updater was killed");
    assert_flags_kept(&w, h.pid);
    assert_eq!(updater_failed_count(&w), 2);
    assert!(!w.install_dir.join("updater/current").exists());
    assert!(!trial_marker(&w).exists());
    assert_eq!(w.agent_pid(), Some(agent), "agent restarted");
    assert!(alive(agent));

    // With a good self-update in place, a hung one reverts to it.
    let good = real_updater_tree("good");
    let good_sha = sha256_hex(&good);
    let _ = push_self(&w, &client, &good, Some("true")).await;
    let h = wait_health(&w, &client, "the good updater release", |h| {
        h.release.as_ref().is_some_and(|m| m.sha256 == good_sha)
    })
    .await;
    tests::eventually(SWITCH, "trial confirmed", || {
        (!trial_marker(&w).exists()).then_some(())
    });
    let good_pid = h.pid;
    let tgz = script_updater_tree("hangs-again", hang);
    let _ = push_self(&w, &client, &tgz, Some("true")).await;
    let h = wait_health(&w, &client, "reverted to the good updater", |h| {
        h.pid != good_pid && h.release.as_ref().is_some_and(|m| m.sha256 == good_sha)
    })
    .await;
    assert_flags_kept(&w, h.pid);
    assert_eq!(updater_slot_sha(&w, "active"), Some(good_sha));
    assert_eq!(updater_failed_count(&w), 3);
    assert_eq!(w.agent_pid(), Some(agent), "agent restarted");
    assert!(alive(agent));
    let log =
        std::fs::read_to_string(w.install_dir.join("updater/watchdog.log")).unwrap_or_default();
    eprintln!("{log}");
    assert!(
        log.contains("did not report release") && log.contains("confirmed"),
        "the watchdog says what it did:\n{log}"
    );
}

#[tokio::test]
async fn a_trial_whose_watchdog_died_is_reverted_at_the_next_start() {
    let pki = TestPki::new();
    let mut w = start(&pki, "self-stale", &["--self-trial-secs", "600"]);
    let client = w.master_client(&pki);
    let agent = agent_running(&w, &client).await;
    let hang = "#!/bin/sh\ncase \" $* \" in *\" --check \"*) exit 0;; esac\nexec sleep 600\n";
    let tgz = script_updater_tree("hangs", hang);
    let _ = push_self(&w, &client, &tgz, Some("true")).await;
    // The watchdog and the hung updater die together (a reboot, say).
    let marker: serde_json::Value = tests::eventually(SWITCH, "trial marker", || {
        std::fs::read(trial_marker(&w))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    let watchdog = marker["watchdog_pid"].as_i64().expect("watchdog pid") as i32;
    assert!(alive(watchdog));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watchdog),
        nix::sys::signal::Signal::SIGKILL,
    );
    tests::process::wait_dead(watchdog, "watchdog gone");
    w.restart();
    let h = health(&w, &client)
        .await
        .expect("the restarted updater answers");
    assert!(
        h.release.is_none(),
        "the unconfirmed release did not survive: {h:?}"
    );
    assert!(!trial_marker(&w).exists());
    assert!(!w.install_dir.join("updater/current").exists());
    assert_eq!(updater_failed_count(&w), 1);
    assert!(
        w.log().contains("lost its watchdog"),
        "the start-up says what it did:\n{}",
        w.log()
    );
    assert_eq!(w.agent_pid(), Some(agent), "agent restarted");
}

#[tokio::test]
async fn under_a_service_manager_a_restart_waits_for_the_trial_verdict() {
    let pki = TestPki::new();
    let mut w = start(
        &pki,
        "self-supervised",
        &["--self-trial-secs", "600", "--supervised", "true"],
    );
    let client = w.master_client(&pki);
    let agent = agent_running(&w, &client).await;
    let hang = "#!/bin/sh\ncase \" $* \" in *\" --check \"*) exit 0;; esac\nexec sleep 600\n";
    let tgz = script_updater_tree("hangs", hang);
    let (code, body) = push_self(&w, &client, &tgz, Some("true"))
        .await
        .expect("the 200 is sent before the switch");
    assert_eq!(code, 200, "{body:?}");
    assert!(trial_marker(&w).exists());
    // What the service manager does when the updater dies: start the
    // unit's binary again. It waits for the watchdog, which sees the new
    // updater gone, puts the previous one back and leaves the start to us.
    w.restart();
    let h = health(&w, &client)
        .await
        .expect("the restarted updater answers");
    assert!(h.release.is_none(), "{h:?}");
    assert_eq!(h.pid, w.updater_pid());
    assert!(!trial_marker(&w).exists());
    assert!(!w.install_dir.join("updater/current").exists());
    assert_eq!(updater_failed_count(&w), 1);
    // Whether the start had to wait depends on timing; it never treated
    // the trial as abandoned, the watchdog decided.
    assert!(!w.log().contains("lost its watchdog"), "{}", w.log());
    let wlog =
        std::fs::read_to_string(w.install_dir.join("updater/watchdog.log")).unwrap_or_default();
    assert!(
        wlog.contains("leaving the restart to the service manager"),
        "{wlog}"
    );
    assert!(
        !w.install_dir.join("updater/updater.log").exists(),
        "the watchdog started nothing itself"
    );
    assert_eq!(w.agent_pid(), Some(agent), "agent restarted");
}
