//! `swarm completions` and `swarm man` (issue 17) with the real binary: the
//! scripts and pages are generated from the parser, need no `$SWARM_HOME`,
//! and are accepted by the tools that read them (`bash -n`, `man -l`).

use std::path::Path;
use std::process::{Command, Output};

use tests::bin;

/// `swarm ARGS` with no home at all: these commands must not need one.
fn swarm(args: &[&str]) -> Output {
    let out = Command::new(bin("swarm"))
        .args(args)
        .env_remove("SWARM_HOME")
        .env_remove("HOME")
        .output()
        .expect("run swarm");
    assert!(
        out.status.success(),
        "swarm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn bash_completion_is_valid_bash_and_knows_the_commands() {
    let out = swarm(&["completions", "bash"]);
    let script = String::from_utf8(out.stdout).expect("utf-8");
    for word in [
        "update",
        "rollback",
        "enroll",
        "package",
        "--host",
        "--package",
        "--include-self",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("swarm.bash");
    std::fs::write(&file, &script).expect("write");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("bash");
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Sourced, it registers a completion function for `swarm`.
    let sourced = Command::new("bash")
        .arg("-c")
        .arg(format!(". {} && complete -p swarm", file.display()))
        .output()
        .expect("bash");
    let said = String::from_utf8_lossy(&sourced.stdout);
    assert!(sourced.status.success() && said.contains("swarm"), "{said}");
}

#[test]
fn zsh_and_fish_completions_name_the_commands() {
    let zsh = String::from_utf8(swarm(&["completions", "zsh"]).stdout).expect("utf-8");
    assert!(
        zsh.starts_with("#compdef swarm"),
        "{}",
        &zsh[..zsh.len().min(80)]
    );
    assert!(zsh.contains("'--host=[") && zsh.contains("update"), "zsh");
    let fish = String::from_utf8(swarm(&["completions", "fish"]).stdout).expect("utf-8");
    assert!(fish.contains("complete -c swarm"), "fish");
    assert!(
        fish.lines()
            .any(|l| l.contains("__fish_swarm_using_subcommand update") && l.contains("-l host")),
        "fish completes `swarm update --host`"
    );
}

fn render(page: &Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man");
    assert!(
        out.status.success(),
        "man -l {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn man_pages_render() {
    let page = String::from_utf8(swarm(&["man"]).stdout).expect("utf-8");
    assert!(page.contains(".TH swarm 1"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = swarm(&["man", "--out-dir", tmp.path().to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("man pages written"));
    for name in [
        "swarm.1",
        "swarm-update.1",
        "swarm-enroll.1",
        "swarm-ca-init.1",
        "swarm-package.1",
    ] {
        assert!(tmp.path().join(name).is_file(), "{name} missing");
    }
    let text = render(&tmp.path().join("swarm.1"));
    assert!(
        text.contains("SYNOPSIS") && text.contains("update"),
        "{text}"
    );
    let text = render(&tmp.path().join("swarm-update.1"));
    assert!(
        text.contains("--include-self") || text.contains("include-self"),
        "{text}"
    );
}
