//! The `worker-updater` binary's own contract: `--help` works, and bad
//! configuration exits 64 before any port is bound. (Having this test also
//! makes `cargo test --workspace` build the binary for the e2e suite.)

use std::net::TcpListener;
use std::process::Command;

fn updater() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker-updater"))
}

#[test]
fn help_exits_zero() {
    let out = updater().arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--install-dir",
        "--agent-cmd",
        "--agent-url",
        "--probe-attempts",
        "--probe-deadline-ms",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
    assert!(
        text.contains("SWARM_UPDATER_INSTALL_DIR"),
        "env names documented"
    );
}

#[test]
fn bad_config_exits_64_before_binding() {
    let tmp = tempfile::tempdir().unwrap();
    // A port we hold: if the updater tried to bind it, it would fail differently.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let cases: Vec<Vec<String>> = vec![
        // No bundle in the updater dir.
        vec!["--updater-dir".into(), tmp.path().display().to_string()],
        // Unparsable flag value.
        vec!["--probe-attempts".into(), "many".into()],
    ];
    for args in cases {
        let out = updater()
            .args(["--listen", &addr, "--install-dir"])
            .arg(tmp.path().join("install"))
            .args(&args)
            .env("HOME", tmp.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "nothing announced: {out:?}");
    }
    assert!(!tmp.path().join("install").exists(), "nothing created");
}
