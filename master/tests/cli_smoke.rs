//! The `swarm` binary's own smoke test. Besides checking the basics, it
//! makes `cargo test --workspace` build `swarm` before the e2e suite runs.

use std::process::Command;

fn swarm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_swarm"))
}

#[test]
fn help_exits_zero() {
    let out = swarm().arg("--help").output().expect("run swarm --help");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "ca",
        "enroll",
        "list",
        "decommission",
        "update",
        "rollback",
        "status",
        "history",
        "demo",
    ] {
        assert!(text.contains(cmd), "--help does not mention {cmd}: {text}");
    }
}

#[test]
fn update_needs_exactly_one_of_host_or_all() {
    let home = tempfile::tempdir().expect("tempdir");
    for args in [&["update"][..], &["update", "--all", "--host", "w1"][..]] {
        let out = swarm()
            .args(args)
            .env("SWARM_HOME", home.path())
            .output()
            .expect("run swarm update");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}
