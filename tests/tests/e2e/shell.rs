//! A CLI that fits a shell (issue 17, issue 10 "CLI details"), against the
//! real `swarm` binary: usage errors on one line plus a hint, `--home` not
//! shown as required when `SWARM_HOME` is set, an unreadable home named as
//! such, `--json` on every command that reports, `NO_COLOR`/`--color`
//! (auto checked on a real terminal, a pty from `script`), and the one
//! path rule for `swarm.toml`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use serde_json::Value;
use tests::Swarm;
use tests::swarm::show;

/// Stderr of a run, as text.
fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_are_one_line_and_a_hint_and_do_not_ask_for_home() {
    let s = Swarm::new();
    let cases: [(&[&str], &str, &str); 6] = [
        (&["update"], "--host", "usage: swarm update "),
        (
            &["enroll", "--host", "w1"],
            "--out-dir",
            "usage: swarm enroll ",
        ),
        (
            &["status", "--hots", "w1"],
            "'--hots'",
            "usage: swarm status ",
        ),
        (
            &["update", "--all", "--parallel", "0"],
            "--parallel",
            "usage: swarm update ",
        ),
        (&["ca", "frob"], "'frob'", "usage: swarm ca "),
        (
            &["list", "--color", "sometimes"],
            "sometimes",
            "usage: swarm list ",
        ),
    ];
    for (args, what, usage) in cases {
        let out = s.run(args);
        assert_eq!(out.status.code(), Some(2), "swarm {args:?}: {}", show(&out));
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "swarm {args:?}: not one line + hint:\n{err}"
        );
        assert!(lines[0].starts_with("error: "), "{err}");
        assert!(lines[0].contains(what), "swarm {args:?}: {err}");
        assert!(lines[0].contains(usage), "swarm {args:?}: {err}");
        // SWARM_HOME is set (the harness sets it): --home is not missing.
        assert!(!lines[0].contains("--home"), "swarm {args:?}: {err}");
        assert!(lines[1].starts_with("hint: `swarm"), "{err}");
        assert!(lines[1].contains("--help"), "{err}");
    }
    // Help still prints whole, and its usage line does not ask for --home.
    let help = s.ok(&["enroll", "--help"]);
    let usage = help
        .lines()
        .find(|l| l.starts_with("Usage: "))
        .expect("usage line");
    assert!(!usage.contains("--home"), "{usage}");
}

#[test]
fn an_unreadable_home_says_it_cannot_be_read() {
    let s = Swarm::new();
    // A file where the home should be.
    let file = s.scratch().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    for args in [&["list"][..], &["status"], &["history"]] {
        let out = s
            .command()
            .args(args)
            .env("SWARM_HOME", &file)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(3), "{}", show(&out));
        let err = stderr(&out);
        assert!(err.contains("cannot read the swarm home"), "{err}");
        assert!(!err.contains("swarm ca init"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A home this user may not enter (the harness's temp dir is 0700
    // root's; run as nobody).
    for args in [
        &["list"][..],
        &["ca", "init"],
        &[
            "enroll",
            "--host",
            "w1",
            "--address",
            "127.0.0.1",
            "--out-dir",
            "/tmp/x",
        ],
    ] {
        let mut cmd = s.command();
        cmd.args(args).uid(65534).gid(65534);
        let out = cmd.output().expect("run as nobody");
        assert_eq!(out.status.code(), Some(3), "swarm {args:?}: {}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains("cannot read the swarm home"),
            "swarm {args:?}: {err}"
        );
        assert!(err.contains("Permission denied"), "swarm {args:?}: {err}");
        assert!(!err.contains("swarm ca init"), "swarm {args:?}: {err}");
    }
    // A home that does not exist yet is still "no CA".
    let none = s.scratch().join("nothing-here");
    let out = s
        .command()
        .arg("list")
        .env("SWARM_HOME", &none)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("swarm ca init"), "{}", show(&out));
}

#[test]
fn every_identity_command_has_json() {
    let s = Swarm::uninitialised();
    let ca = s.json(&["ca", "init", "--json"], 0);
    assert_eq!(ca["master_cn"], "master", "{ca}");
    assert_eq!(
        ca["ca_fingerprint"].as_str().map(str::len),
        Some(64),
        "{ca}"
    );
    assert!(
        ca["ca_dir"].as_str().is_some_and(|d| d.ends_with("/ca")),
        "{ca}"
    );
    assert_eq!(ca["decommissioned"], serde_json::json!([]), "{ca}");

    let out_dir = s.out("w1");
    let out = out_dir.to_str().expect("utf-8");
    let e = s.json(
        &[
            "enroll",
            "--host",
            "w1",
            "--address",
            "127.0.0.1",
            "--out-dir",
            out,
            "--json",
        ],
        0,
    );
    assert_eq!(e["host"], "w1", "{e}");
    assert_eq!(e["address"], "127.0.0.1", "{e}");
    assert_eq!(e["agent_port"], 8765, "{e}");
    assert_eq!(e["agent"]["cn"], "w1", "{e}");
    assert_eq!(e["agent"]["dir"], out, "{e}");
    assert_eq!(e["updater"], Value::Null, "{e}");
    let listed = &s.list()[0];
    assert_eq!(
        e["agent"]["fingerprint"], listed["agent_fingerprint"],
        "{listed}"
    );

    let u = s.json(
        &[
            "enroll",
            "--host",
            "w1",
            "--updater-only",
            "--out-dir",
            out,
            "--json",
        ],
        0,
    );
    assert_eq!(u["updater"]["cn"], "updater@w1", "{u}");
    assert_eq!(u["agent"], Value::Null, "{u}");
    assert!(
        u["not_after"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{u}"
    );

    let d = s.json(&["decommission", "--host", "w1", "--json"], 0);
    assert_eq!(d["host"], "w1", "{d}");
    assert_eq!(d["decommissioned"], true, "{d}");
    assert!(d["certificates_valid_until"].is_string(), "{d}");

    let again = s.json(&["ca", "init", "--force", "--json"], 0);
    assert_eq!(again["decommissioned"], serde_json::json!([]), "{again}");
}

#[test]
fn the_demo_has_json() {
    let s = Swarm::uninitialised();
    let out = s
        .command()
        .args(["demo", "--json"])
        .output()
        .expect("run swarm demo --json");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", show(&out)));
    assert_eq!(doc["ok"], true, "{doc}");
    let steps = doc["steps"].as_array().expect("steps");
    let commands: Vec<&str> = steps
        .iter()
        .map(|s| s["command"].as_str().unwrap_or(""))
        .collect();
    let count = |p: &str| commands.iter().filter(|c| c.starts_with(p)).count();
    assert_eq!(count("swarm ca init"), 1, "{commands:?}");
    assert_eq!(count("swarm enroll "), 3, "{commands:?}");
    assert_eq!(count("swarm update "), 3, "{commands:?}");
    assert_eq!(count("swarm rollback"), 1, "{commands:?}");
    assert_eq!(count("swarm status"), 1, "{commands:?}");
    assert_eq!(count("swarm history"), 2, "{commands:?}");
    assert_eq!(
        count("swarm history --host worker-01 --worker"),
        1,
        "{commands:?}"
    );
    assert_eq!(count("swarm logs"), 0, "{commands:?}");
    for step in steps.iter().filter(|s| s["command"] != "swarm demo") {
        assert!(step["output"].is_object(), "no JSON for {step}");
        assert!(step["exit_code"].is_u64(), "no exit code for {step}");
    }
    let broken = steps
        .iter()
        .find(|s| {
            s["command"]
                .as_str()
                .is_some_and(|c| c.contains("release-broken"))
        })
        .expect("the broken push");
    assert_eq!(broken["exit_code"], 1, "{broken}");
    assert_eq!(
        broken["output"]["hosts"][0]["agent"], "rolled-back",
        "{broken}"
    );
}

/// `swarm list` (its STATUS column is coloured) under `env` and `args`,
/// on a pipe; its stdout.
fn list_on_a_pipe(s: &Swarm, args: &[&str], no_color: Option<&str>) -> String {
    let mut cmd = s.command();
    cmd.arg("list").args(args).env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same on a terminal: `script` gives `swarm` a pty.
fn list_on_a_tty(s: &Swarm, args: &[&str], no_color: Option<&str>) -> String {
    let swarm = s.bins.swarm.display().to_string();
    let line = std::iter::once(swarm.as_str())
        .chain(std::iter::once("list"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"])
        .env("SWARM_HOME", s.home())
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("run script");
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_follows_no_color_and_the_color_flag() {
    let s = Swarm::new();
    let _w1 = s.enroll("w1");
    let green = "\u{1b}[32mactive\u{1b}[0m";
    let coloured = |text: &str| text.contains(green);
    let any_escape = |text: &str| text.contains('\u{1b}');

    // On a pipe: auto is plain; always colours, even with NO_COLOR.
    assert!(!any_escape(&list_on_a_pipe(&s, &[], None)));
    assert!(coloured(&list_on_a_pipe(&s, &["--color", "always"], None)));
    assert!(coloured(&list_on_a_pipe(
        &s,
        &["--color=always"],
        Some("1")
    )));
    assert!(!any_escape(&list_on_a_pipe(
        &s,
        &["--color", "never"],
        None
    )));

    // On a terminal: auto colours unless NO_COLOR is set (and not empty);
    // never is plain.
    assert!(coloured(&list_on_a_tty(&s, &[], None)));
    assert!(!coloured(&list_on_a_tty(&s, &[], Some("1"))));
    assert!(coloured(&list_on_a_tty(&s, &[], Some(""))));
    assert!(!coloured(&list_on_a_tty(&s, &["--color", "never"], None)));
    assert!(coloured(&list_on_a_tty(
        &s,
        &["--color", "always"],
        Some("1")
    )));
    // The flag is global: before the command too.
    let out = s
        .command()
        .args(["--color", "always", "list"])
        .output()
        .expect("run");
    assert!(
        coloured(&String::from_utf8_lossy(&out.stdout)),
        "{}",
        show(&out)
    );
}

#[test]
fn swarm_toml_paths_follow_one_rule() {
    let s = Swarm::new();
    let _w1 = s.enroll("w1");
    let cases = [
        (
            "[agent]\ncommand = [\"../bin/run\"]\n",
            "[agent] command \"../bin/run\"",
        ),
        (
            "[agent]\ncommand = [\"./run.sh\"]\n",
            "[agent] command \"./run.sh\"",
        ),
        (
            "[install]\ncommand = [\"bin/../../x\"]\n",
            "[install] command",
        ),
        (
            "[updater]\nbinary = \"/usr/local/bin/worker-updater\"\n",
            "is absolute",
        ),
        (
            "[updater]\nbinary = \"../worker-updater\"\n",
            "[updater] binary",
        ),
    ];
    for (i, (toml, names)) in cases.iter().enumerate() {
        let tree = s.tree(&format!("bad{i}"));
        std::fs::write(tree.join("swarm.toml"), toml).expect("swarm.toml");
        let root = tree.to_str().expect("utf-8");
        let err = s.fails(&["update", "--all", "--root", root, "--dry-run"], 3, names);
        assert!(err.contains("plain names joined by /"), "{err}");
    }
    for (i, toml) in [
        "[agent]\ncommand = [\"bin/worker-agent\", \"--x\", \"../arg\"]\n",
        "[agent]\ncommand = [\"/usr/bin/env\", \"python3\"]\n[install]\ncommand = [\"sh\", \"install.sh\"]\n",
        "[updater]\nbinary = \"tools/worker-updater\"\n",
    ]
    .iter()
    .enumerate()
    {
        let tree = s.tree(&format!("good{i}"));
        std::fs::write(tree.join("swarm.toml"), toml).expect("swarm.toml");
        s.ok(&["update", "--all", "--root", tree.to_str().expect("utf-8"), "--dry-run"]);
    }
}
