//! Issue 11 from the master's side: `swarm status` tells the truth from
//! each updater (a plain-HTTP, loopback-only app is healthy; an automatic
//! revert and a host that missed a push show as drift), `swarm update`
//! skips hosts that already run the release and converges drifted ones,
//! and `swarm restart`, `swarm logs` and `swarm history --worker` reach
//! what the updater keeps. The real `swarm` binary against real updaters.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tests::release::toml_array;
use tests::swarm::show;
use tests::{Daemon, Swarm, bin, eventually};

const LONG: Duration = Duration::from_secs(30);

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// A tree whose agent is `command` (run by the updater) probed at `health_url`.
fn tree_with(s: &Swarm, name: &str, command: &[String], health_url: &str) -> String {
    let dir = s.tree(name);
    write(&dir, "VERSION", name);
    write(
        &dir,
        "swarm.toml",
        &format!(
            "[agent]\ncommand = {}\nhealth_url = \"{health_url}\"\n",
            toml_array(command)
        ),
    );
    dir.to_str().expect("utf-8 path").to_owned()
}

/// A tree whose agent is the plain-HTTP, loopback-only test app printing
/// `marker` when it listens.
fn plain_tree(s: &Swarm, name: &str, marker: &str) -> String {
    tree_with(
        s,
        name,
        &[
            bin("plain-app").display().to_string(),
            "127.0.0.1:${AGENT_PORT}".into(),
            marker.into(),
        ],
        "http://127.0.0.1:${AGENT_PORT}/health",
    )
}

/// A tree whose agent is the reference agent (mTLS on its port).
fn good_tree(s: &Swarm, name: &str) -> String {
    tree_with(
        s,
        name,
        &[
            bin("worker-agent").display().to_string(),
            "--listen".into(),
            "127.0.0.1:${AGENT_PORT}".into(),
        ],
        "https://127.0.0.1:${AGENT_PORT}/health",
    )
}

/// A tree whose agent runs a shell script (`${AGENT_PORT}` expanded by the
/// updater before `sh` sees it).
fn script_tree(s: &Swarm, name: &str, script: &str) -> String {
    tree_with(
        s,
        name,
        &["sh".into(), "-c".into(), script.into()],
        "https://127.0.0.1:${AGENT_PORT}/health",
    )
}

fn host_row<'a>(doc: &'a Value, host: &str) -> &'a Value {
    doc["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("no row for {host} in {doc}"))
}

/// `swarm status --json`, whatever its exit code.
fn status_doc(s: &Swarm) -> Value {
    let out = s.run(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status: {e}: {}", show(&out)))
}

fn journal(s: &Swarm, host: &str) -> Vec<Value> {
    let doc = s.json(&["history", "--host", host, "--worker", "--json"], 0);
    assert_eq!(doc["host"], host, "{doc}");
    doc["entries"].as_array().expect("entries").clone()
}

fn sha_of(update: &Value, host: &str) -> String {
    host_row(update, host)["release"]["release_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no release for {host} in {update}"))
        .to_owned()
}

#[test]
fn a_plain_http_loopback_app_is_healthy_and_its_output_is_one_command_away() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let root = plain_tree(&s, "plain", "plain-marker-1");
    let up = s.json(&["update", "--all", "--root", &root, "--json"], 0);
    let sha = sha_of(&up, "w1");

    let doc = s.json(&["status", "--json"], 0);
    assert_eq!(doc["ok"], true, "{doc}");
    let row = host_row(&doc, "w1");
    assert_eq!(row["updater"], "ok", "{row}");
    assert_eq!(row["agent"], "healthy", "{row}");
    assert_eq!(row["agent_state"], "running", "{row}");
    assert_eq!(row["restarts"], 0, "{row}");
    assert_eq!(row["release"], sha.as_str(), "{row}");
    assert_eq!(row["desired"], sha.as_str(), "{row}");
    assert_eq!(row["drift"], false, "{row}");
    let table = s.ok(&["status"]);
    assert!(table.contains("healthy"), "{table}");
    assert!(table.contains("DRIFT"), "{table}");

    // The agent's own output, through the updater.
    let logs = s.ok(&["logs", "--host", "w1"]);
    assert!(logs.contains("plain-marker-1"), "{logs}");
    let one = s.ok(&["logs", "--host", "w1", "-n", "1"]);
    assert_eq!(one.lines().count(), 1, "{one}");

    // Killed by hand: the updater restarts it and status counts it.
    let pid = w.agent_pid().expect("agent pidfile");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the agent");
    let row = eventually(LONG, "status to show the restarted agent", || {
        let doc = status_doc(&s);
        let row = host_row(&doc, "w1").clone();
        (row["restarts"] == 1 && row["agent"] == "healthy" && row["pid"] != pid).then_some(row)
    });
    assert!(
        row["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("signal: 9")),
        "{row}"
    );
    s.code(&["status"], 0);
}

#[test]
fn a_host_down_during_a_push_drifts_and_the_next_push_converges_only_it() {
    let s = Swarm::new();
    let mut workers = s.fleet(&["w1", "w2", "w3"]);
    let v1 = good_tree(&s, "v1");
    s.ok(&["update", "--all", "--root", &v1]);
    let sha1 = workers[1].slot_id("active").expect("w2 on v1");

    workers[1].kill_updater();
    let v2 = good_tree(&s, "v2");
    let up = s.json(&["update", "--all", "--root", &v2, "--json"], 1);
    assert_eq!(host_row(&up, "w2")["agent"], "error", "{up}");
    let sha2 = sha_of(&up, "w1");
    workers[1].restart();

    let doc = s.json(&["status", "--json"], 1);
    let w2 = host_row(&doc, "w2");
    assert_eq!(w2["updater"], "ok", "{w2}");
    assert_eq!(w2["release"], sha1.as_str(), "{w2}");
    assert_eq!(w2["desired"], sha2.as_str(), "{w2}");
    assert_eq!(w2["drift"], true, "{w2}");
    for h in ["w1", "w3"] {
        assert_eq!(host_row(&doc, h)["drift"], false, "{doc}");
    }
    let table = s.code(&["status"], 1);
    assert!(table.contains("drift: should run"), "{table}");

    // The same tree again: only w2 is touched, nothing is sent to the others.
    let before = journal(&s, "w1").len();
    let prev1 = workers[0].slot_sha("prev");
    let up = s.json(&["update", "--all", "--root", &v2, "--json"], 0);
    assert_eq!(host_row(&up, "w1")["agent"], "unchanged", "{up}");
    assert_eq!(host_row(&up, "w3")["agent"], "unchanged", "{up}");
    assert_eq!(host_row(&up, "w2")["agent"], "updated", "{up}");
    assert_eq!(journal(&s, "w1").len(), before, "w1's updater saw a push");
    assert_eq!(workers[0].slot_sha("prev"), prev1, "w1's prev moved");
    assert_eq!(workers[1].slot_id("active").as_deref(), Some(sha2.as_str()));
    let doc = s.json(&["status", "--json"], 0);
    assert!(
        doc["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["drift"] == false && h["release"] == sha2.as_str()),
        "{doc}"
    );
}

#[test]
fn an_automatic_revert_shows_as_drift_and_in_the_worker_journal() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let v1 = good_tree(&s, "v1");
    s.ok(&["update", "--all", "--root", &v1]);
    let sha1 = w.slot_id("active").expect("v1 active");
    // Serves long enough to pass its probe, then every run exits at once.
    let marker = w.dir().join("served-once");
    let agent = format!(
        "{} --listen 127.0.0.1:${{AGENT_PORT}}",
        bin("worker-agent").display()
    );
    let script = format!(
        "if [ ! -e {m} ]; then touch {m}; {agent} & a=$!; sleep 3; kill -9 $a; fi; echo crash-marker; exit 7",
        m = marker.display()
    );
    let v2 = script_tree(&s, "v2", &script);
    let up = s.json(&["update", "--all", "--root", &v2, "--json"], 0);
    let sha2 = sha_of(&up, "w1");

    let row = eventually(
        Duration::from_secs(60),
        "the revert to show as drift",
        || {
            let doc = status_doc(&s);
            let row = host_row(&doc, "w1").clone();
            (row["release"] == sha1.as_str() && row["agent"] == "healthy").then_some(row)
        },
    );
    assert_eq!(row["desired"], sha2.as_str(), "{row}");
    assert_eq!(row["drift"], true, "{row}");
    s.code(&["status"], 1);

    let entries = journal(&s, "w1");
    let ops: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap_or(""),
                e["by"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(ops.contains(&("update", "master")), "{ops:?}");
    assert!(ops.contains(&("crash-loop", "updater")), "{ops:?}");
    assert!(ops.contains(&("revert", "updater")), "{ops:?}");
    let table = s.ok(&["history", "--host", "w1", "--worker"]);
    assert!(table.contains("revert"), "{table}");
    let logs = s.ok(&["logs", "--host", "w1", "-n", "200"]);
    assert!(logs.contains("crash-marker"), "{logs}");

    // Pushing v1 again makes it the desired release: no drift, no upload.
    let up = s.json(&["update", "--all", "--root", &v1, "--json"], 0);
    assert_eq!(host_row(&up, "w1")["agent"], "unchanged", "{up}");
    s.code(&["status"], 0);
}

#[test]
fn a_rolled_back_row_shows_the_failed_agents_last_lines() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let v1 = good_tree(&s, "v1");
    s.ok(&["update", "--all", "--root", &v1]);
    let sha1 = w.slot_id("active").expect("v1 active");
    let broken = script_tree(
        &s,
        "broken",
        "echo 'config: cannot read ./settings.toml (fail-marker)'; exit 1",
    );
    let out = s.code(&["update", "--all", "--root", &broken], 1);
    assert!(out.contains("rolled-back"), "{out}");
    assert!(out.contains("w1: the failed agent's last output:"), "{out}");
    assert!(
        out.contains("| config: cannot read ./settings.toml (fail-marker)"),
        "{out}"
    );
    // The other push's JSON carries it too.
    let broken2 = script_tree(&s, "broken2", "echo json-fail-marker; exit 1");
    let doc = s.json(&["update", "--all", "--root", &broken2, "--json"], 1);
    let row = host_row(&doc, "w1");
    assert_eq!(row["agent"], "rolled-back", "{row}");
    let tail = row["log_tail"].as_array().expect("log_tail");
    assert!(tail.iter().any(|l| l == "json-fail-marker"), "{row}");
    // Still on v1, healthy, and that is what it should run.
    assert_eq!(w.slot_id("active"), Some(sha1));
    s.code(&["status"], 0);
}

#[test]
fn restart_is_probed_and_journaled_and_logs_follow_shows_it() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let root = plain_tree(&s, "plain", "follow-marker");
    s.ok(&["update", "--all", "--root", &root]);
    let pid = w.agent_pid().expect("agent pid");

    let mut cmd = s.command();
    cmd.args(["logs", "--host", "w1", "-n", "5", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut follow = Daemon::start(&mut cmd);
    let mut out = follow.take_stdout().expect("stdout");
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = seen.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        })
    };
    let count = |seen: &Arc<Mutex<String>>| {
        seen.lock()
            .map(|s| s.matches("follow-marker").count())
            .unwrap_or(0)
    };
    eventually(LONG, "the followed log's first lines", || {
        (count(&seen) >= 1).then_some(())
    });

    let before = count(&seen);
    let doc = s.json(&["restart", "--host", "w1", "--json"], 0);
    let row = host_row(&doc, "w1");
    assert_eq!(row["outcome"], "restarted", "{row}");
    assert_ne!(w.agent_pid(), Some(pid), "the agent was not restarted");
    eventually(
        LONG,
        "the restarted agent's line on the followed stream",
        || (count(&seen) > before).then_some(()),
    );
    follow.kill();
    let _ = reader.join();

    let entries = journal(&s, "w1");
    let last = entries.last().expect("a journal entry");
    assert_eq!(last["op"], "restart", "{entries:?}");
    assert_eq!(last["by"], "master", "{entries:?}");
    assert_eq!(last["outcome"], "healthy", "{entries:?}");
    s.code(&["status"], 0);
}

#[test]
fn a_host_never_pushed_to_is_stopped_and_fails_status() {
    let s = Swarm::new();
    let _w = s.worker("w1");
    let doc = s.json(&["status", "--json"], 1);
    let row = host_row(&doc, "w1");
    assert_eq!(row["updater"], "ok", "{row}");
    assert_eq!(row["agent"], "stopped", "{row}");
    assert_eq!(row["release"], Value::Null, "{row}");
    assert_eq!(row["desired"], Value::Null, "{row}");
    assert_eq!(row["drift"], false, "{row}");
    // Nothing to restart: an error row, exit 1.
    let doc = s.json(&["restart", "--all", "--json"], 1);
    assert_eq!(host_row(&doc, "w1")["outcome"], "error", "{doc}");
}

#[test]
fn an_unreachable_host_is_unknown_in_status_and_a_clear_error_elsewhere() {
    let s = Swarm::new();
    let mut w = s.worker("w1");
    w.kill_updater();
    let doc = s.json(&["status", "--json"], 1);
    let row = host_row(&doc, "w1");
    assert_eq!(row["updater"], "unreachable", "{row}");
    assert_eq!(row["agent"], "unknown", "{row}");
    assert_eq!(row["restarts"], Value::Null, "{row}");
    for args in [
        &["logs", "--host", "w1"][..],
        &["history", "--host", "w1", "--worker"],
    ] {
        let out = s.run(args);
        assert_eq!(out.status.code(), Some(1), "swarm {args:?}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("w1: cannot connect"), "swarm {args:?}: {err}");
    }
}

#[test]
fn bad_arguments_exit_2_and_say_what_to_fix() {
    let s = Swarm::new();
    let _w = s.worker("w1");
    for (args, needle) in [
        (&["history", "--worker"][..], "--host"),
        (
            &["history", "--host", "w1", "--worker", "--limit", "0"],
            "1 to 1000",
        ),
        (
            &["history", "--host", "w1", "--worker", "--limit", "5000"],
            "1 to 1000",
        ),
        (&["logs", "--host", "nosuch"], "unknown host nosuch"),
        (&["logs", "--host", "w1", "-n", "0"], "--lines"),
        (&["logs", "--host", "w1", "-n", "10001"], "--lines"),
        (&["logs"], "--host"),
        (&["restart"], "--host"),
        (&["restart", "--host", "nosuch"], "unknown host nosuch"),
    ] {
        s.fails(args, 2, needle);
    }
    // `--help` documents every new command.
    for cmd in ["restart", "logs", "history"] {
        let help = s.ok(&[cmd, "--help"]);
        assert!(help.contains("Usage: swarm"), "{help}");
    }
}
