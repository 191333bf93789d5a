//! Staged rollouts and host tags (issue 13), end to end: the real `swarm`
//! against five real `worker-updater`s on loopback: a broken canary halts
//! the rollout, a release that crashes after its probe fails its soak and
//! is reverted, batches go in wave order, `--dry-run` shows the plan, tags
//! target, and every bad plan exits 2 before any connection.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tests::release::toml_array;
use tests::worker::Worker;
use tests::{Daemon, Swarm, bin, eventually};

const FIVE: [&str; 5] = ["w1", "w2", "w3", "w4", "w5"];

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

fn agent_cmd() -> String {
    format!(
        "{} --listen 127.0.0.1:${{AGENT_PORT}}",
        bin("worker-agent").display()
    )
}

/// `[agent]` running `command` on each worker's own port.
fn agent_toml(command: &[String]) -> String {
    format!(
        "[agent]\ncommand = {}\nhealth_url = \"https://127.0.0.1:${{AGENT_PORT}}/health\"\n",
        toml_array(command)
    )
}

/// A tree whose agent is the reference agent with `extra` arguments.
fn tree_with(s: &Swarm, name: &str, extra: &[&str]) -> String {
    let dir = s.tree(name);
    write(&dir, "VERSION", name);
    let mut cmd = vec![
        bin("worker-agent").display().to_string(),
        "--listen".to_owned(),
        "127.0.0.1:${AGENT_PORT}".to_owned(),
    ];
    cmd.extend(extra.iter().map(|e| (*e).to_owned()));
    write(&dir, "swarm.toml", &agent_toml(&cmd));
    dir.to_str().expect("utf-8").to_owned()
}

/// A release that passes its probe and crashes (exit 7) some 2 s later (3 s
/// after it starts: a slow start on a loaded machine still passes the
/// updater's 2.5 s probe deadline first), every time it is started.
fn crashing_tree(s: &Swarm) -> String {
    let dir = s.tree("crashing");
    write(&dir, "VERSION", "crashing");
    let script = format!("{} & a=$!; sleep 3; kill -9 $a; exit 7", agent_cmd());
    write(
        &dir,
        "swarm.toml",
        &agent_toml(&["sh".into(), "-c".into(), script]),
    );
    dir.to_str().expect("utf-8").to_owned()
}

/// Five workers, all on a first good release; returns them and its sha256.
fn five_on_v1(s: &Swarm) -> (Vec<Worker>, String) {
    let workers = s.fleet(&FIVE);
    let v1 = tree_with(s, "v1", &[]);
    s.ok(&["update", "--all", "--root", &v1]);
    let sha = workers[0].slot_sha("active").expect("v1 active");
    for w in &workers {
        assert_eq!(w.slot_sha("active").as_deref(), Some(sha.as_str()));
    }
    (workers, sha)
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn waves(doc: &Value) -> Vec<Vec<String>> {
    doc["rollout"]["waves"]
        .as_array()
        .expect("rollout.waves")
        .iter()
        .map(|w| {
            w.as_array()
                .expect("a wave")
                .iter()
                .map(|h| str_of(h).to_owned())
                .collect()
        })
        .collect()
}

/// `(host, agent, wave)` of every row of an update's JSON.
fn outcomes(doc: &Value) -> Vec<(String, String, u64)> {
    doc["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                str_of(&h["host"]).to_owned(),
                str_of(&h["agent"]).to_owned(),
                h["wave"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn rows(hosts: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    hosts
        .iter()
        .map(|(h, a, w)| ((*h).to_owned(), (*a).to_owned(), *w))
        .collect()
}

/// The lines of the audit trail of `rollout`, as (op, host, outcome, wave).
fn trail(s: &Swarm, rollout: &str) -> Vec<(String, String, String, u64)> {
    let h = s.json(&["history", "--json", "--limit", "1000"], 0);
    h["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["rollout"] == rollout)
        .map(|e| {
            (
                str_of(&e["operation"]).to_owned(),
                str_of(&e["host"]).to_owned(),
                str_of(&e["outcome"]).to_owned(),
                e["wave"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_broken_canary_halts_the_rollout_and_spares_the_rest() {
    let s = Swarm::new();
    let (workers, v1) = five_on_v1(&s);
    let broken = tree_with(&s, "broken", &["--health-cmd", "false"]);
    let doc = s.json(
        &[
            "update", "--all", "--root", &broken, "--canary", "1", "--json",
        ],
        1,
    );
    assert_eq!(
        waves(&doc),
        [vec!["w1"], vec!["w2", "w3", "w4", "w5"]],
        "{doc}"
    );
    assert_eq!(
        outcomes(&doc),
        rows(&[
            ("w1", "rolled-back", 1),
            ("w2", "skipped", 2),
            ("w3", "skipped", 2),
            ("w4", "skipped", 2),
            ("w5", "skipped", 2),
        ]),
        "{doc}"
    );
    let r = &doc["rollout"];
    assert_eq!(r["halted"], true, "{doc}");
    assert!(
        str_of(&r["reason"]).contains("more than --max-fail 0"),
        "{doc}"
    );
    assert_eq!(
        (r["failed"].as_u64(), r["skipped"].as_u64()),
        (Some(1), Some(4))
    );
    assert!(
        str_of(&doc["hosts"][1]["detail"]).contains("not pushed"),
        "{doc}"
    );
    for w in &workers {
        assert_eq!(w.slot_sha("active").as_deref(), Some(v1.as_str()));
        w.wait_agent_release_blocking(&v1);
    }
    // Only the canary was ever sent the release: the others keep no prev.
    assert!(workers[0].slot_sha("prev").is_none());
    for w in &workers[1..] {
        assert!(w.slot_sha("prev").is_none());
        assert!(!w.log().contains("rolled back"), "{}", w.log());
    }
    let id = str_of(&r["id"]).to_owned();
    let lines = trail(&s, &id);
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0].1, "w1");
    assert_eq!(lines[0].2, "rolled-back");
    assert!(
        lines[1..].iter().all(|l| l.2 == "skipped" && l.3 == 2),
        "{lines:?}"
    );
}

#[test]
fn a_release_that_crashes_after_its_probe_fails_its_soak_and_is_reverted() {
    let s = Swarm::new();
    let (workers, v1) = five_on_v1(&s);
    let crashing = crashing_tree(&s);
    let doc = s.json(
        &[
            "update",
            "--all",
            "--root",
            &crashing,
            "--batch",
            "2",
            "--soak",
            "5s",
            "--revert-on-halt",
            "--json",
        ],
        1,
    );
    assert_eq!(
        waves(&doc),
        [vec!["w1", "w2"], vec!["w3", "w4"], vec!["w5"]],
        "{doc}"
    );
    assert_eq!(
        outcomes(&doc),
        rows(&[
            ("w1", "reverted", 1),
            ("w2", "reverted", 1),
            ("w3", "skipped", 2),
            ("w4", "skipped", 2),
            ("w5", "skipped", 3),
        ]),
        "{doc}"
    );
    for h in &doc["hosts"].as_array().expect("hosts")[..2] {
        let detail = str_of(&h["detail"]);
        assert!(detail.contains("failed its soak"), "{detail}");
        assert!(detail.contains("restarted"), "{detail}");
        assert!(detail.contains("reverted"), "{detail}");
    }
    let r = &doc["rollout"];
    assert_eq!(r["halted"], true);
    assert_eq!(
        (
            r["reverted"].as_u64(),
            r["skipped"].as_u64(),
            r["updated"].as_u64()
        ),
        (Some(2), Some(3), Some(0)),
        "{doc}"
    );
    // Every host runs v1 again; the first wave went there and back, the
    // other three were never sent anything.
    for w in &workers {
        assert_eq!(w.slot_sha("active").as_deref(), Some(v1.as_str()));
        w.wait_agent_release_blocking(&v1);
    }
    for w in &workers[..2] {
        assert!(w.slot_sha("prev").is_some());
    }
    for w in &workers[2..] {
        assert!(w.slot_sha("prev").is_none());
    }
    let id = str_of(&r["id"]).to_owned();
    let reverts: Vec<_> = trail(&s, &id)
        .into_iter()
        .filter(|l| l.0 == "rollback")
        .collect();
    assert_eq!(reverts.len(), 2, "{reverts:?}");
    assert!(
        reverts.iter().all(|l| l.2 == "reverted" && l.3 == 1),
        "{reverts:?}"
    );
    // A revert is the operator's intent too: no host drifts from it (the
    // master names a release by its release_id).
    let v1_id = workers[0].slot_id("active").expect("v1 active");
    let out = s.run(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    for h in status["hosts"].as_array().expect("hosts") {
        assert_eq!(h["desired"], v1_id.as_str(), "{h}");
        assert_eq!(h["drift"], false, "{h}");
    }
}

#[test]
fn a_good_release_goes_in_three_waves_and_history_keeps_their_order() {
    let s = Swarm::new();
    let (workers, _) = five_on_v1(&s);
    let v2 = tree_with(&s, "v2", &[]);
    let out = s.ok(&["update", "--all", "--root", &v2, "--batch", "2"]);
    // HOST WAVE ADDRESS AGENT SELF DETAIL
    let table: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() >= 5 && FIVE.contains(&c[0]))
        .collect();
    let got: Vec<(&str, &str, &str)> = table.iter().map(|c| (c[0], c[1], c[3])).collect();
    assert_eq!(
        got,
        [
            ("w1", "1", "updated"),
            ("w2", "1", "updated"),
            ("w3", "2", "updated"),
            ("w4", "2", "updated"),
            ("w5", "3", "updated"),
        ],
        "{out}"
    );
    assert!(out.contains("HOST  WAVE"), "{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("rollout r"))
        .unwrap_or_else(|| panic!("no summary line in {out}"));
    assert!(
        summary.ends_with(": 5 updated, 0 failed, 0 skipped, 0 reverted"),
        "{summary}"
    );
    let v2_sha = workers[0].slot_sha("active").expect("active");
    for w in &workers {
        assert_eq!(w.slot_sha("active").as_deref(), Some(v2_sha.as_str()));
    }
    let id = summary
        .strip_prefix("rollout ")
        .and_then(|s| s.split(':').next())
        .expect("rollout id");
    let lines = trail(&s, id);
    let order: Vec<(String, u64)> = lines
        .iter()
        .map(|l| {
            assert_eq!((l.0.as_str(), l.2.as_str()), ("update", "updated"), "{l:?}");
            (l.1.clone(), l.3)
        })
        .collect();
    let mut by_wave = order.clone();
    by_wave.sort_by_key(|(_, w)| *w);
    assert_eq!(order, by_wave, "history is in wave order: {order:?}");
    let mut hosts: Vec<(String, u64)> = order;
    hosts.sort();
    assert_eq!(
        hosts,
        [("w1", 1), ("w2", 1), ("w3", 2), ("w4", 2), ("w5", 3)].map(|(h, w)| (h.to_owned(), w))
    );
    // `swarm history` shows the rollout and wave.
    let text = s.ok(&["history", "--host", "w5"]);
    assert!(text.contains(&format!("{id}/w3")), "{text}");
}

/// Five hosts enrolled on updater ports where a listener stands that
/// nobody may knock on.
fn enrolled_behind_listeners(s: &Swarm) -> Vec<TcpListener> {
    FIVE.iter()
        .map(|h| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            let port = listener.local_addr().expect("addr").port().to_string();
            let out = s.out(h);
            s.ok(&[
                "enroll",
                "--host",
                h,
                "--address",
                "127.0.0.1",
                "--updater-port",
                &port,
                "--updater",
                "--out-dir",
                out.to_str().expect("utf-8"),
            ]);
            listener
        })
        .collect()
}

fn nobody_knocked(listeners: &[TcpListener]) {
    for l in listeners {
        match l.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("something connected to an updater: {other:?}"),
        }
    }
}

#[test]
fn dry_run_prints_the_plan_and_connects_to_nobody() {
    let s = Swarm::new();
    let listeners = enrolled_behind_listeners(&s);
    s.ok(&["tag", "--host", "w4", "--add", "canary"]);
    let tree = tree_with(&s, "app", &[]);
    let plan = [
        "--canary",
        "1",
        "--batch",
        "2",
        "--soak",
        "30s",
        "--max-fail",
        "1",
        "--revert-on-halt",
    ];
    let mut args = vec!["update", "--all", "--root", &tree, "--dry-run"];
    args.extend(plan);
    let out = s.ok(&args);
    assert!(out.contains("dry run: nothing was sent"), "{out}");
    assert!(
        out.contains("plan     3 wave(s); soak 30s per wave; halt when more than 1 host(s) fail; revert on halt"),
        "{out}"
    );
    // The host tagged `canary` is the canary wave; the rest by name.
    assert!(
        out.contains("  wave 1 (canary: tagged canary): w4\n"),
        "{out}"
    );
    assert!(out.contains("  wave 2: w1 w2\n"), "{out}");
    assert!(out.contains("  wave 3: w3 w5\n"), "{out}");
    args.push("--json");
    let doc = s.json(&args, 0);
    assert_eq!(doc["dry_run"], true);
    assert_eq!(
        waves(&doc),
        [vec!["w4"], vec!["w1", "w2"], vec!["w3", "w5"]],
        "{doc}"
    );
    assert_eq!(doc["rollout"]["soak_secs"], 30.0);
    assert_eq!(doc["rollout"]["max_fail"], 1);
    assert_eq!(doc["rollout"]["canary"], "tag");
    // `[rollout]` in swarm.toml is the plan when no flag says otherwise,
    // and a flag wins.
    write(
        Path::new(&tree),
        "swarm.toml",
        &format!(
            "{}[rollout]\nbatch = \"40%\"\nsoak = \"5s\"\n",
            agent_toml(&[agent_cmd()])
        ),
    );
    let doc = s.json(
        &["update", "--all", "--root", &tree, "--dry-run", "--json"],
        0,
    );
    assert_eq!(
        waves(&doc),
        [vec!["w1", "w2"], vec!["w3", "w4"], vec!["w5"]],
        "{doc}"
    );
    assert_eq!(doc["rollout"]["soak_secs"], 5.0);
    let doc = s.json(
        &[
            "update",
            "--all",
            "--root",
            &tree,
            "--dry-run",
            "--json",
            "--batch",
            "4",
        ],
        0,
    );
    assert_eq!(waves(&doc), [vec!["w1", "w2", "w3", "w4"], vec!["w5"]]);
    nobody_knocked(&listeners);
    assert!(s.ok(&["history"]).contains("no pushes recorded yet"));
}

#[test]
fn every_bad_plan_exits_2_before_any_connection() {
    let s = Swarm::new();
    let listeners = enrolled_behind_listeners(&s);
    let tree = tree_with(&s, "app", &[]);
    let cases: [(&[&str], &str); 10] = [
        (&["--batch", "0"], "0 hosts never ends"),
        (&["--canary", "0"], "0 hosts never ends"),
        (&["--canary", "150%"], "from 1% to 100%"),
        (&["--batch", "0%"], "from 1% to 100%"),
        (&["--canary", "10%"], "less than one host"),
        (&["--canary", "6"], "more than the 5 target(s)"),
        (&["--max-fail", "5", "--revert-on-halt"], "can never halt"),
        (&["--soak", "500ms"], "shorter than 1s"),
        (&["--soak", "25h"], "longer than 24h"),
        (
            &["--canary", "1", "--pause-after-canary", "--yes"],
            "--yes never asks",
        ),
    ];
    for (plan, needle) in cases {
        let mut args = vec!["update", "--all", "--root", &tree];
        args.extend(plan);
        s.fails(&args, 2, needle);
    }
    // Not on a terminal (the test's stdin is not one): the pause refuses.
    s.fails(
        &[
            "update",
            "--all",
            "--root",
            &tree,
            "--canary",
            "1",
            "--pause-after-canary",
        ],
        2,
        "not one",
    );
    s.fails(
        &["update", "--all", "--root", &tree, "--pause-after-canary"],
        2,
        "no canary wave",
    );
    // The same checks hold for the `[rollout]` table.
    write(
        Path::new(&tree),
        "swarm.toml",
        &format!("{}[rollout]\nbatch = 0\n", agent_toml(&[agent_cmd()])),
    );
    s.fails(
        &["update", "--all", "--root", &tree],
        2,
        "0 hosts never ends",
    );
    nobody_knocked(&listeners);
    assert!(s.ok(&["history"]).contains("no pushes recorded yet"));
}

#[test]
fn tags_target_hosts_and_an_unknown_tag_lists_the_known_ones() {
    let s = Swarm::new();
    let workers = s.fleet(&["w1", "w2", "w3"]);
    s.fails(&["update", "--tag", "web"], 2, "no host has a tag yet");
    s.ok(&["tag", "--host", "w1", "--add", "web,eu"]);
    let doc = s.json(&["tag", "--host", "w2", "--add", "web", "--json"], 0);
    assert_eq!(doc["tags"], serde_json::json!(["web"]));
    s.fails(&["tag", "--host", "w2"], 2, "nothing to do");
    s.fails(
        &["tag", "--host", "w2", "--add", "bad tag"],
        2,
        "invalid tag",
    );
    s.fails(
        &["tag", "--host", "ghost", "--add", "x"],
        2,
        "not an active host",
    );
    let list = s.list();
    let tags: Vec<Value> = list.iter().map(|h| h["tags"].clone()).collect();
    assert_eq!(
        tags,
        [
            serde_json::json!(["eu", "web"]),
            serde_json::json!(["web"]),
            serde_json::json!([])
        ]
    );
    let table = s.ok(&["list"]);
    assert!(table.contains("TAGS"), "{table}");
    assert!(table.contains("eu,web"), "{table}");

    let tree = tree_with(&s, "app", &[]);
    s.fails(
        &["update", "--tag", "nope", "--root", &tree],
        2,
        "unknown tag nope: known tags are eu, web",
    );
    // Every tag given: only w1 has both.
    let doc = s.json(
        &[
            "update", "--tag", "web", "--tag", "eu", "--root", &tree, "--json",
        ],
        0,
    );
    assert_eq!(outcomes(&doc), rows(&[("w1", "updated", 1)]), "{doc}");
    let doc = s.json(&["update", "--tag", "web", "--root", &tree, "--json"], 0);
    assert_eq!(
        outcomes(&doc),
        rows(&[("w1", "unchanged", 1), ("w2", "updated", 1)]),
        "{doc}"
    );
    assert!(
        workers[2].slot_sha("active").is_none(),
        "w3 is not tagged web"
    );
    let status = s.json(&["status", "--tag", "web", "--json"], 0);
    let hosts: Vec<&str> = status["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| str_of(&h["host"]))
        .collect();
    assert_eq!(hosts, ["w1", "w2"]);
    // Logs of every tagged host, one after the other under a header.
    let logs = s.ok(&["logs", "--tag", "web", "-n", "5"]);
    let w1 = logs.find("==> w1 <==").unwrap_or_else(|| panic!("{logs}"));
    let w2 = logs.find("==> w2 <==").unwrap_or_else(|| panic!("{logs}"));
    assert!(w1 < w2, "{logs}");
    assert!(logs.contains("agent listening"), "{logs}");
    s.fails(&["logs"], 2, "--host");
    s.fails(&["logs", "--tag", "nope"], 2, "unknown tag nope");
    let history = s.json(&["history", "--tag", "eu", "--json"], 0);
    let hosts: Vec<&str> = history["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| str_of(&e["host"]))
        .collect();
    assert_eq!(hosts, ["w1", "w1"], "{history}");
    let doc = s.json(&["rollback", "--tag", "eu", "--json"], 1);
    assert_eq!(doc["hosts"].as_array().map(Vec::len), Some(1), "{doc}");
    s.fails(
        &["update", "--tag", "web", "--all", "--root", &tree],
        2,
        "cannot be used with",
    );

    // Removing a tag, and tagging at enrollment.
    s.ok(&["tag", "--host", "w1", "--remove", "eu"]);
    let out = s.out("w4");
    let doc = s.json(
        &[
            "enroll",
            "--host",
            "w4",
            "--address",
            "127.0.0.1",
            "--updater",
            "--tag",
            "db",
            "--tag",
            "eu",
            "--out-dir",
            out.to_str().expect("utf-8"),
            "--json",
        ],
        0,
    );
    assert_eq!(doc["tags"], serde_json::json!(["db", "eu"]));
    let tags: Vec<Value> = s.list().iter().map(|h| h["tags"].clone()).collect();
    assert_eq!(tags[0], serde_json::json!(["web"]));
    assert_eq!(tags[3], serde_json::json!(["db", "eu"]));
    s.fails(
        &["update", "--tag", "web,db", "--root", &tree],
        2,
        "no active host carries every tag",
    );
}

#[test]
fn ctrl_c_stops_a_rollout_after_the_pushes_in_flight_and_exits_130() {
    let s = Swarm::new();
    let workers = s.fleet(&["w1", "w2"]);
    let tree = tree_with(&s, "app", &[]);
    let mut cmd = s.command();
    cmd.args([
        "update", "--all", "--root", &tree, "--batch", "1", "--soak", "60s", "--json",
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut push = Daemon::start(&mut cmd);
    // Wave 1 (w1) is pushed and soaking: interrupt it.
    let db = s.home().join("inventory.db");
    eventually(Duration::from_secs(60), "w1's push recorded", || {
        let conn = rusqlite::Connection::open(&db).ok()?;
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM pushes WHERE host = 'w1' AND outcome = 'updated'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        (n == 1).then_some(())
    });
    push.signal(nix::sys::signal::Signal::SIGINT)
        .expect("SIGINT");
    let mut stdout = push.take_stdout().expect("stdout");
    let status = push.wait(Duration::from_secs(60)).expect("wait");
    assert_eq!(status.code(), Some(130), "{status:?}");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).expect("read stdout");
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(doc["rollout"]["interrupted"], true, "{doc}");
    assert_eq!(
        outcomes(&doc),
        rows(&[("w1", "updated", 1), ("w2", "skipped", 2)]),
        "{doc}"
    );
    assert!(
        str_of(&doc["hosts"][1]["detail"]).contains("interrupted"),
        "{doc}"
    );
    assert!(
        workers[1].slot_sha("active").is_none(),
        "w2 was never pushed"
    );
    let id = str_of(&doc["rollout"]["id"]).to_owned();
    let lines: Vec<(String, String)> = trail(&s, &id).into_iter().map(|l| (l.1, l.2)).collect();
    assert_eq!(
        lines,
        [
            ("w1".to_owned(), "updated".to_owned()),
            ("w2".to_owned(), "skipped".to_owned())
        ]
    );
}

/// `swarm update ARGS` on a terminal (util-linux `script` gives it one),
/// with `answer` typed ahead; its exit code and everything it printed.
fn on_a_terminal(s: &Swarm, args: &[&str], answer: &str) -> (Option<i32>, String) {
    let mut line = vec![s.bins.swarm.display().to_string()];
    line.extend(args.iter().map(|a| (*a).to_owned()));
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qefc", &line.join(" "), "/dev/null"])
        .env("SWARM_HOME", s.home())
        .env_remove("HOME")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("script");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, answer.as_bytes()).expect("type the answer");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).expect("read");
    let status = child.wait().expect("wait");
    drop(stdin);
    (status.code(), text)
}

#[test]
fn pause_after_canary_asks_on_the_terminal_and_a_no_halts() {
    let s = Swarm::new();
    let workers = s.fleet(&["w1", "w2", "w3"]);
    let v1 = tree_with(&s, "v1", &[]);
    let plan = ["--canary", "1", "--pause-after-canary"];
    let mut args = vec!["update", "--all", "--root", &v1];
    args.extend(plan);
    let (code, out) = on_a_terminal(&s, &args, "n\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("go on with the 2 remaining host(s) in 1 wave(s)? [y/N]"),
        "{out}"
    );
    assert!(
        out.contains("halted: the operator stopped it after the canary wave"),
        "{out}"
    );
    let canary = workers[0].slot_sha("active");
    assert!(canary.is_some());
    assert!(workers[1].slot_sha("active").is_none());
    assert!(workers[2].slot_sha("active").is_none());
    // Yes: the rest follows (the canary answers `unchanged`).
    let (code, out) = on_a_terminal(&s, &args, "y\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(": 3 updated, 0 failed, 0 skipped, 0 reverted"),
        "{out}"
    );
    // Every host runs the canary's release.
    for w in &workers {
        assert_eq!(w.slot_sha("active"), canary);
    }
}

#[test]
fn an_unreachable_host_counts_as_failed_and_halts_the_next_wave() {
    let s = Swarm::new();
    let mut workers = s.fleet(&["w1", "w2", "w3"]);
    workers[1].kill_updater();
    let tree = tree_with(&s, "app", &[]);
    let doc = s.json(
        &["update", "--all", "--root", &tree, "--batch", "1", "--json"],
        1,
    );
    assert_eq!(
        outcomes(&doc),
        rows(&[
            ("w1", "updated", 1),
            ("w2", "error", 2),
            ("w3", "skipped", 3)
        ]),
        "{doc}"
    );
    assert!(
        str_of(&doc["hosts"][1]["detail"]).contains("cannot connect"),
        "{doc}"
    );
    assert!(
        str_of(&doc["rollout"]["reason"]).contains("first: w2"),
        "{doc}"
    );
    assert!(workers[2].slot_sha("active").is_none());
    // With a budget of one, the same rollout goes on past it.
    let doc = s.json(
        &[
            "update",
            "--all",
            "--root",
            &tree,
            "--batch",
            "1",
            "--max-fail",
            "1",
            "--json",
        ],
        1,
    );
    assert_eq!(
        outcomes(&doc),
        rows(&[
            ("w1", "unchanged", 1),
            ("w2", "error", 2),
            ("w3", "updated", 3)
        ]),
        "{doc}"
    );
    assert_eq!(doc["rollout"]["halted"], false, "{doc}");
}
