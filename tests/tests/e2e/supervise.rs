//! Issue 11 on the worker: the updater supervises its agent (restart with
//! backoff, crash loop, automatic revert), reports it in `/health`, answers
//! `unchanged` for the active release, keeps a journal (`/history`) and
//! serves the agent's output (`/logs`, `log_tail`). Real updaters, real
//! agents (the reference agent and shell scripts), real signals.

use std::io::Write;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pki::wire::{AgentState, OpStatus, SupervisedAgent, WorkerHistory};
use tests::process::alive;
use tests::release::{ReleaseTree, sha256_hex, toml_array};
use tests::worker::{Worker, WorkerOptions};
use tests::{TestPki, bin, eventually_async};

const LONG: Duration = Duration::from_secs(30);

fn good(tag: &str) -> Vec<u8> {
    ReleaseTree::new().file("VERSION", tag.as_bytes()).tarball()
}

async fn push_ok(w: &Worker, client: &reqwest::Client, tgz: &[u8]) -> String {
    let (code, body) = w.push(client, tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert_eq!(body.status, OpStatus::Updated, "{body:?}");
    sha256_hex(tgz)
}

async fn agent(w: &Worker, client: &reqwest::Client) -> SupervisedAgent {
    w.health(client)
        .await
        .agent
        .expect("/health has an agent object")
}

async fn history(w: &Worker, client: &reqwest::Client) -> WorkerHistory {
    let resp = client
        .get(w.url("/history?limit=1000"))
        .send()
        .await
        .expect("GET /history");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("history body")
}

async fn get_status(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// An agent that serves (the reference agent, in the background) for
/// `serve_secs` and then dies with status 7, every time it is started;
/// with `once`, only its first run serves and every later one exits at once.
fn crashing_agent(w: &Worker, tag: &str, serve_secs: u32, once: bool) -> Vec<u8> {
    crashing_agent_with(w, tag, serve_secs, once, "")
}

/// [`crashing_agent`] with more `[agent]` settings.
fn crashing_agent_with(w: &Worker, tag: &str, serve_secs: u32, once: bool, extra: &str) -> Vec<u8> {
    let agent = format!(
        "{} --listen 127.0.0.1:{}",
        bin("worker-agent").display(),
        w.agent_port
    );
    let marker = w.dir().join(format!("served-{tag}"));
    let serve = format!("{agent} & a=$!; sleep {serve_secs}; kill -9 $a");
    let script = if once {
        format!(
            "if [ ! -e {m} ]; then touch {m}; {serve}; fi; echo crashing-{tag}; exit 7",
            m = marker.display()
        )
    } else {
        format!("{serve}; echo crashing-{tag}; exit 7")
    };
    let toml = format!(
        "[agent]\ncommand = {}\nhealth_url = \"https://127.0.0.1:{}/health\"\n{extra}",
        toml_array(&["sh".into(), "-c".into(), script]),
        w.agent_port
    );
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file("swarm.toml", toml.as_bytes())
        .tarball()
}

#[tokio::test]
async fn a_killed_agent_is_restarted_at_once_and_counted() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = push_ok(&w, &client, &good("a")).await;
    w.wait_agent_release(&a).await;
    let before = eventually_async(LONG, "the agent running and healthy", || async {
        let s = agent(&w, &client).await;
        (s.state == AgentState::Running && s.healthy == Some(true)).then_some(s)
    })
    .await;
    assert_eq!(before.restarts, 0);
    let old = before.pid.expect("a running agent has a pid");
    assert_eq!(Some(old as i32), w.agent_pid());
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    // Back within a second, as a new process.
    let after = eventually_async(Duration::from_secs(1), "a new agent pid", || async {
        let s = agent(&w, &client).await;
        s.pid.filter(|p| *p != old).map(|_| s)
    })
    .await;
    assert_eq!(after.restarts, 1, "{after:?}");
    assert!(
        after
            .last_exit
            .as_deref()
            .is_some_and(|e| e.contains("signal: 9")),
        "{after:?}"
    );
    let new = after.pid.unwrap_or_default() as i32;
    assert!(alive(new));
    w.wait_agent_release(&a).await;
    let s = eventually_async(LONG, "the restarted agent healthy", || async {
        let s = agent(&w, &client).await;
        (s.healthy == Some(true) && s.state == AgentState::Running).then_some(s)
    })
    .await;
    assert_eq!((s.restarts, s.pid), (1, Some(new as u32)));
    let h = history(&w, &client).await;
    assert!(
        h.entries
            .iter()
            .any(|e| e.op == "restart" && e.by == "updater" && e.outcome == "healthy"),
        "{h:?}"
    );
    // POST /agent/restart: a new agent, probed, counters reset, journaled.
    let resp = eventually_async(LONG, "POST /agent/restart not busy", || async {
        let r = client.post(w.url("/agent/restart")).send().await.ok()?;
        (r.status() != 409).then_some(r)
    })
    .await;
    assert_eq!(resp.status(), 200);
    let body: pki::wire::OpResponse = resp.json().await.unwrap();
    assert!(body.probes.first().is_some_and(|p| p.healthy), "{body:?}");
    let s = agent(&w, &client).await;
    assert_eq!(s.restarts, 0);
    assert_ne!(s.pid, Some(new as u32));
    assert!(!alive(new));
    let h = history(&w, &client).await;
    let last = h.entries.last().expect("an entry");
    assert_eq!(
        (last.op.as_str(), last.by.as_str(), last.outcome.as_str()),
        ("restart", "master", "healthy")
    );
    // A deliberate stop (an update) is no crash.
    let b = push_ok(&w, &client, &good("b")).await;
    w.wait_agent_release(&b).await;
    let s = agent(&w, &client).await;
    assert_eq!((s.restarts, s.last_exit), (0, None));
}

#[tokio::test]
async fn a_crash_loop_right_after_a_push_reverts_to_prev() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = push_ok(&w, &client, &good("a")).await;
    w.wait_agent_release(&a).await;
    let b = push_ok(&w, &client, &crashing_agent(&w, "b", 1, false)).await;
    let h = eventually_async(Duration::from_secs(90), "an automatic revert", || async {
        let h = history(&w, &client).await;
        h.entries.iter().any(|e| e.op == "revert").then_some(h)
    })
    .await;
    let ops: Vec<&str> = h.entries.iter().map(|e| e.op.as_str()).collect();
    let loop_at = ops
        .iter()
        .position(|o| *o == "crash-loop")
        .expect("crash-loop entry");
    let revert = h.entries.iter().find(|e| e.op == "revert").unwrap();
    assert!(loop_at < ops.iter().position(|o| *o == "revert").unwrap());
    assert_eq!(h.entries[loop_at].release.as_deref(), Some(b.as_str()));
    assert_eq!(revert.by, "updater");
    assert_eq!(revert.outcome, "rolled-back", "{revert:?}");
    assert_eq!(revert.release.as_deref(), Some(a.as_str()));
    assert!(revert.detail.contains("crash loop"), "{revert:?}");
    assert_eq!(
        ops.iter().filter(|o| **o == "restart").count(),
        5,
        "five restarts before the loop: {ops:?}"
    );
    w.wait_agent_release(&a).await;
    assert_eq!(w.slot_sha("active").as_deref(), Some(a.as_str()));
    let s = eventually_async(LONG, "the reverted agent running", || async {
        let s = agent(&w, &client).await;
        (s.state == AgentState::Running).then_some(s)
    })
    .await;
    assert_eq!(s.restarts, 0);
}

#[tokio::test]
async fn outside_its_rollback_window_a_crash_loop_only_stops() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = push_ok(&w, &client, &good("a")).await;
    w.wait_agent_release(&a).await;
    let tgz = crashing_agent_with(&w, "b", 1, true, "rollback_window_secs = 0\n");
    let b = push_ok(&w, &client, &tgz).await;
    let h = eventually_async(
        Duration::from_secs(60),
        "the crash loop journaled",
        || async {
            let h = history(&w, &client).await;
            h.entries.iter().any(|e| e.op == "crash-loop").then_some(h)
        },
    )
    .await;
    assert!(!h.entries.iter().any(|e| e.op == "revert"), "{h:?}");
    let s = agent(&w, &client).await;
    assert_eq!((s.state, s.restarts), (AgentState::CrashLoop, 5));
    assert_eq!(w.slot_sha("active").as_deref(), Some(b.as_str()));
    assert_eq!(w.slot_sha("prev").as_deref(), Some(a.as_str()));
    // A rollback by hand still works, and leaves the crash loop.
    let (code, body) = w.rollback(&client).await;
    assert_eq!(code, 200, "{body:?}");
    w.wait_agent_release(&a).await;
    let s = agent(&w, &client).await;
    assert_eq!(s.restarts, 0);
    assert_ne!(s.state, AgentState::CrashLoop);
}

#[tokio::test]
async fn an_agent_that_always_exits_stops_after_five_restarts() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    // First install: no prev, so a crash loop only stops restarting.
    let tgz = crashing_agent(&w, "x", 1, true);
    push_ok(&w, &client, &tgz).await;
    let s = eventually_async(Duration::from_secs(60), "crash-loop", || async {
        let s = agent(&w, &client).await;
        (s.state == AgentState::CrashLoop).then_some(s)
    })
    .await;
    assert_eq!(s.restarts, 5, "{s:?}");
    assert_eq!(s.pid, None);
    assert!(
        s.last_exit.as_deref().is_some_and(|e| e.contains('7')),
        "{s:?}"
    );
    let starts = |w: &Worker| {
        w.agent_log()
            .lines()
            .filter(|l| l.starts_with("--- "))
            .count()
    };
    // One start by the push, five restarts, and no more: the backoff
    // steps are counted, not timed.
    assert_eq!(starts(&w), 6, "{}", w.agent_log());
    let h = eventually_async(LONG, "the crash loop journaled", || async {
        let h = history(&w, &client).await;
        h.entries.iter().any(|e| e.op == "crash-loop").then_some(h)
    })
    .await;
    assert_eq!(
        h.entries.iter().filter(|e| e.op == "restart").count(),
        5,
        "{h:?}"
    );
    assert!(h.entries.iter().any(|e| e.op == "crash-loop"));
    assert!(
        !h.entries.iter().any(|e| e.op == "revert"),
        "no prev: no revert"
    );
    let again = agent(&w, &client).await;
    assert_eq!((again.state, again.restarts), (AgentState::CrashLoop, 5));
    assert_eq!(starts(&w), 6);
    // The crash loop is journaled while the caretaker still holds the
    // worker: wait until it lets go (else the restart is 409 busy).
    eventually_async(LONG, "the worker free", || async {
        w.health(&client).await.busy.is_none().then_some(())
    })
    .await;
    // POST /agent/restart leaves the crash loop; this agent fails its
    // probe, so the answer is 409 with its last line.
    let resp = client.post(w.url("/agent/restart")).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: pki::wire::OpResponse = resp.json().await.unwrap();
    assert_eq!(body.status, OpStatus::Error);
    assert_eq!(
        body.log_tail.last().map(String::as_str),
        Some("crashing-x"),
        "{body:?}"
    );
    assert!(starts(&w) >= 7);
}

#[tokio::test]
async fn the_active_release_pushed_again_is_unchanged() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = push_ok(&w, &client, &good("a")).await;
    let tgz = good("b");
    let b = push_ok(&w, &client, &tgz).await;
    w.wait_agent_release(&b).await;
    let pid = w.agent_pid();
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}");
    assert_eq!(body.status, OpStatus::Unchanged);
    assert_eq!(body.release.map(|m| m.sha256).as_deref(), Some(b.as_str()));
    assert!(body.probes.is_empty());
    assert_eq!(w.slot_sha("prev").as_deref(), Some(a.as_str()), "prev kept");
    assert_eq!(w.slot_sha("active").as_deref(), Some(b.as_str()));
    assert_eq!(w.agent_pid(), pid, "the agent was not restarted");
    assert!(!w.install_dir.join("releases/active.new").exists());
    let h = history(&w, &client).await;
    let ops: Vec<(&str, &str)> = h
        .entries
        .iter()
        .map(|e| (e.op.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("update", "updated"),
            ("update", "updated"),
            ("unchanged", "unchanged")
        ],
        "{h:?}"
    );
    assert!(h.entries.iter().all(|e| e.by == "master"));
    // A curl push of the same file is unchanged too.
    let m = pki.path().join("master");
    let file = w.dir().join("tree.tgz");
    std::fs::write(&file, &tgz).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cert"])
        .arg(m.join("master.crt"))
        .arg("--key")
        .arg(m.join("master.key"))
        .arg("--cacert")
        .arg(m.join("ca.crt"))
        .args(["-w", "\n%{http_code}", "-F"])
        .arg(format!("sha256={b}"))
        .arg("-F")
        .arg(format!("tarball=@{}", file.display()))
        .arg(w.url("/update"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n200"), "{text}");
    assert!(text.contains(r#""status":"unchanged""#), "{text}");
    assert_eq!(w.slot_sha("prev").as_deref(), Some(a.as_str()));
    assert_eq!(w.agent_pid(), pid);
    // Rollback still has its target.
    let (code, _) = w.rollback(&client).await;
    assert_eq!(code, 200);
    w.wait_agent_release(&a).await;
}

#[tokio::test]
async fn logs_show_and_follow_the_agent_output() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = push_ok(&w, &client, &good("a")).await;
    w.wait_agent_release(&a).await;
    let text = eventually_async(LONG, "the agent's line in /logs", || async {
        let r = client.get(w.url("/logs?lines=50")).send().await.ok()?;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/plain"))
        );
        let t = r.text().await.ok()?;
        t.contains("listening on").then_some(t)
    })
    .await;
    assert!(text.lines().count() <= 50);
    let one = client.get(w.url("/logs?lines=1")).send().await.unwrap();
    assert_eq!(one.text().await.unwrap().lines().count(), 1);
    // Follow: a line printed after the request arrives on the stream.
    let mut resp = client
        .get(w.url("/logs?lines=1&follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(LONG, resp.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_some());
    let pid = w.agent_pid().expect("pidfile");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let mut seen = String::new();
    let got = tokio::time::timeout(LONG, async {
        while let Ok(Some(c)) = resp.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&c));
            if seen.contains("listening on") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "streamed: {seen:?}");
    drop(resp);
    // Bad values are 400 and say why.
    for q in [
        "/logs?lines=0",
        "/logs?lines=10001",
        "/logs?lines=x",
        "/logs?follow=maybe",
        "/logs?tail=3",
        "/history?limit=0",
        "/history?limit=1001",
        "/history?limit=",
    ] {
        let r = client.get(w.url(q)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let body: pki::wire::OpResponse = r.json().await.unwrap();
        assert!(body.error.is_some(), "{q}");
    }
    assert_eq!(
        get_status(&client, &w.url("/history?limit=1000")).await,
        200
    );
    // Master only.
    let other = w.agent_identity_client();
    assert_eq!(get_status(&other, &w.url("/logs")).await, 403);
    assert_eq!(get_status(&other, &w.url("/history")).await, 403);
    let r = other.post(w.url("/agent/restart")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(w.agent_pid().map(alive), Some(true));
}

#[tokio::test]
async fn a_rolled_back_push_and_a_failed_first_install_carry_the_agent_s_last_lines() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let broken = |tag: &str| {
        ReleaseTree::new()
            .agent_command(
                &[
                    "sh".into(),
                    "-c".into(),
                    format!("echo starting up; echo cannot open bin/app-{tag} >&2; exit 3"),
                ],
                w.agent_port,
            )
            .tarball()
    };
    let (code, body) = w.push(&client, &broken("one")).await;
    assert_eq!(code, 409, "{body:?}");
    assert!(!body.rolled_back);
    assert_eq!(
        body.log_tail,
        ["starting up", "cannot open bin/app-one"],
        "{body:?}"
    );
    let a = push_ok(&w, &client, &good("a")).await;
    w.wait_agent_release(&a).await;
    let (code, body) = w.push(&client, &broken("two")).await;
    assert_eq!(code, 409, "{body:?}");
    assert!(body.rolled_back);
    assert_eq!(
        body.log_tail.last().map(String::as_str),
        Some("cannot open bin/app-two"),
        "{body:?}"
    );
    assert!(body.log_tail.len() <= 20);
    let h = history(&w, &client).await;
    let outcomes: Vec<&str> = h.entries.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["rolled-back", "updated", "rolled-back"]);
}

#[tokio::test]
async fn a_torn_journal_line_after_kill_9_is_skipped_and_the_agent_is_adopted() {
    let pki = TestPki::new();
    let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = push_ok(&w, &client, &good("a")).await;
    w.kill_updater();
    // What a kill -9 in the middle of an append leaves.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(w.install_dir.join("journal.jsonl"))
        .expect("the journal exists");
    f.write_all(br#"{"time":"2026-12-01T21:00:00Z","op":"upd"#)
        .unwrap();
    drop(f);
    w.restart();
    let client = w.master_client(&pki);
    // The new updater adopts the agent the killed one left running, and
    // watches it through /proc (it is not its child).
    let pid = w.agent_pid().expect("pidfile");
    let s = eventually_async(LONG, "the running agent adopted", || async {
        let s = agent(&w, &client).await;
        (s.pid == Some(pid as u32) && s.healthy == Some(true)).then_some(s)
    })
    .await;
    assert_eq!(s.state, AgentState::Running);
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let s = eventually_async(LONG, "the adopted agent restarted", || async {
        let h = w.health(&client).await;
        let s = h.agent?;
        let done = h.busy.is_none() && s.pid.is_some_and(|p| p != pid as u32) && s.restarts == 1;
        done.then_some(s)
    })
    .await;
    assert!(s.last_exit.is_some());
    w.wait_agent_release(&a).await;
    let b = push_ok(&w, &client, &good("b")).await;
    let h = history(&w, &client).await;
    let ops: Vec<(&str, Option<&str>)> = h
        .entries
        .iter()
        .map(|e| (e.op.as_str(), e.release.as_deref()))
        .collect();
    assert_eq!(
        ops,
        [
            ("update", Some(a.as_str())),
            ("restart", Some(a.as_str())),
            ("update", Some(b.as_str()))
        ],
        "{h:?}"
    );
}
