//! `swarm update`, `rollback`, `status`, `history` and `demo` end to end:
//! the real `swarm` binary against real `worker-updater`s on loopback,
//! holding bundles issued by `swarm enroll` itself.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pki::Ca;
use serde_json::Value;
use tests::release::agent_toml;
use tests::swarm::{show, stdout};
use tests::worker::{Worker, WorkerOptions};
use tests::{Swarm, TestPki, bin, free_port};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// A release whose agent is the reference agent on each worker's own port
/// (from its `.env.local`), with extra agent arguments.
/// A good release tree with `version` in it.
fn good_tree(dir: &Path, version: &str) {
    write(dir, "VERSION", version);
    write(dir, "swarm.toml", &agent_toml(&[]));
}

/// Table rows: the whitespace-separated cells of every line after the header.
fn rows(table: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines().skip_while(|l| !l.starts_with(header));
    assert!(
        lines.next().is_some(),
        "no table with {header:?} in:\n{table}"
    );
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn update_rows(out: &str) -> Vec<Vec<String>> {
    rows(out, "HOST ")
}

#[test]
fn update_all_updates_every_worker_and_ships_only_the_tree() {
    let s = Swarm::new();
    let workers = s.fleet(&["w1", "w2", "w3"]);
    let tree = s.tree("app");
    good_tree(&tree, "1");
    write(&tree, "src/main.txt", "hello");
    write(&tree, ".gitignore", "target/\n");
    write(&tree, "target/debug/big.bin", "build output");
    write(&tree, ".git/HEAD", "ref: refs/heads/main\n");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    write(&tree, ".git/refs/heads/main", &format!("{commit}\n"));
    write(&tree, ".env.local", "SECRET=local");
    write(&tree, ".env", "SECRET=dotenv");
    write(&tree, ".swarmignore", "*.log\n");
    write(&tree, "debug.log", "noise");

    let out = s.ok(&["update", "--all", "--root", tree.to_str().unwrap()]);
    let table = update_rows(&out);
    assert_eq!(table.len(), 3, "{out}");
    let sha_prefix = table[0][4].clone();
    for (row, w) in table.iter().zip(&workers) {
        assert_eq!(row[0], w.bundles.host.as_str());
        assert_eq!(row[1], format!("127.0.0.1:{}", w.addr.port()));
        assert_eq!(row[2], "updated", "{out}");
        assert_eq!(row[3], "skipped");
        assert_eq!(row[4], sha_prefix);
        let id = w.slot_id("active").expect("active release");
        assert!(id.starts_with(&sha_prefix), "{id} vs {sha_prefix}");
        let active = w.slot_sha("active").expect("active release");
        w.wait_agent_release_blocking(&active);

        let current = w.install_dir.join("current");
        assert_eq!(
            std::fs::read_to_string(current.join("VERSION")).unwrap(),
            "1"
        );
        assert!(current.join("src/main.txt").is_file());
        assert!(current.join(".gitignore").is_file());
        for gone in [".git", "target", ".env", "debug.log"] {
            assert!(!current.join(gone).exists(), "{gone} was shipped");
        }
        // The worker's own .env.local is untouched, the master's never shipped.
        let env = std::fs::read_to_string(w.install_dir.join(".env.local")).unwrap();
        assert!(env.starts_with("AGENT_PORT="), "{env}");
        assert!(!current.join(".env.local").exists());
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(current.join(pki::wire::MANIFEST_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["git_commit"], commit);
        assert_eq!(manifest["pushed_by"], "master");
    }

    // The same tree again, as JSON: it parses and says what the table said,
    // except that every host is now `unchanged` (issue 11: a push of the
    // active release changes nothing).
    let doc = s.json(
        &[
            "update",
            "--all",
            "--root",
            tree.to_str().unwrap(),
            "--json",
        ],
        0,
    );
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["operation"], "update");
    // Nothing was packed (every host already ran it): the release is
    // named by its release_id, which the table shows.
    assert_eq!(doc["release"]["sha256"], Value::Null, "{doc}");
    let id = doc["release"]["release_id"].as_str().expect("release_id");
    assert!(id.starts_with(&sha_prefix));
    assert_eq!(doc["release"]["git_commit"], commit);
    let hosts = doc["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), table.len());
    for (h, row) in hosts.iter().zip(&table) {
        assert_eq!(h["host"], row[0].as_str());
        assert_eq!(h["address"], row[1].as_str());
        assert_eq!(row[2], "updated");
        assert_eq!(h["agent"], "unchanged", "{doc}");
        assert_eq!(h["self"], row[3].as_str());
        assert_eq!(
            h["detail"],
            format!("{} already active; nothing changed", row[4]),
            "{doc}"
        );
        assert_eq!(h["release"]["release_id"], id);
    }

    // Every push is in the audit trail, under the release's name and the
    // digest of what each host was sent (the first, whole push).
    let history = s.json(&["history", "--json"], 0);
    let entries = history["history"].as_array().expect("history");
    assert_eq!(entries.len(), 6);
    assert!(entries.iter().all(|e| e["release_id"] == id), "{history}");
    let sha = workers[0].slot_sha("active").expect("active");
    assert!(
        entries.iter().all(|e| e["release_sha256"] == sha.as_str()),
        "{history}"
    );
    let outcomes: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        [
            "updated",
            "updated",
            "updated",
            "unchanged",
            "unchanged",
            "unchanged"
        ],
        "{history}"
    );
    let w1 = s.json(&["history", "--host", "w1", "--json"], 0);
    assert_eq!(w1["history"].as_array().unwrap().len(), 2);

    let status = s.json(&["status", "--json"], 0);
    for h in status["hosts"].as_array().expect("hosts") {
        assert_eq!(h["updater_reachable"], true, "{h}");
        assert_eq!(h["agent_healthy"], true, "{h}");
        assert_eq!(h["active"]["sha256"], sha);
        assert_eq!(h["failed"], 0);
        assert!(h["cert_days_left"].as_i64().unwrap() > 800);
    }
}

#[test]
fn a_down_worker_costs_an_error_row_not_the_fleet() {
    let s = Swarm::new();
    let mut workers = s.fleet(&["w1", "w2", "w3"]);
    workers[1].kill_updater();
    let tree = s.tree("app");
    good_tree(&tree, "1");
    let out = s.code(&["update", "--all", "--root", tree.to_str().unwrap()], 1);
    let table = update_rows(&out);
    assert_eq!(table.len(), 3);
    assert_eq!(table[0][2], "updated", "{out}");
    assert_eq!(table[1][2], "error", "{out}");
    assert!(table[1][4..].join(" ").contains("cannot connect"), "{out}");
    assert_eq!(table[2][2], "updated", "{out}");
    assert!(workers[0].slot_sha("active").is_some());
    assert!(workers[1].slot_sha("active").is_none());
    assert!(workers[2].slot_sha("active").is_some());

    let history = s.json(&["history", "--host", "w2", "--json"], 0);
    assert_eq!(history["history"][0]["outcome"], "error");
    let status = s.json(&["status", "--json"], 1);
    assert_eq!(status["ok"], false);
    assert_eq!(status["hosts"][1]["updater_reachable"], false);
}

#[test]
fn a_broken_release_is_rolled_back_and_rollback_swaps_releases() {
    let s = Swarm::new();
    let workers = s.fleet(&["w1", "w2", "w3"]);
    let v1 = s.tree("v1");
    good_tree(&v1, "1");
    s.ok(&["update", "--all", "--root", v1.to_str().unwrap()]);
    let sha1: Vec<String> = workers
        .iter()
        .map(|w| w.slot_sha("active").unwrap())
        .collect();

    // Nothing to roll back to yet: 404 is an error row.
    let out = s.code(&["rollback", "--all"], 1);
    for row in update_rows(&out) {
        assert_eq!(row[2], "error", "{out}");
        assert!(row[4..].join(" ").contains("no previous release"), "{out}");
    }

    let broken = s.tree("broken");
    write(&broken, "VERSION", "2-broken");
    write(
        &broken,
        "swarm.toml",
        &agent_toml(&["--health-cmd", "false"]),
    );
    let out = s.code(&["update", "--all", "--root", broken.to_str().unwrap()], 1);
    let table = update_rows(&out);
    assert_eq!(table.len(), 3);
    for (row, (w, sha)) in table.iter().zip(workers.iter().zip(&sha1)) {
        assert_eq!(row[2], "rolled-back", "{out}");
        // Still serving the old release.
        assert_eq!(w.slot_sha("active").as_ref(), Some(sha));
        w.wait_agent_release_blocking(sha);
        let current = w.install_dir.join("current");
        assert_eq!(
            std::fs::read_to_string(current.join("VERSION")).unwrap(),
            "1"
        );
    }

    let v2 = s.tree("v2");
    good_tree(&v2, "2");
    s.ok(&["update", "--all", "--root", v2.to_str().unwrap()]);
    let doc = s.json(&["rollback", "--all", "--json"], 0);
    assert_eq!(doc["operation"], "rollback");
    for (h, (w, sha)) in doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(workers.iter().zip(&sha1))
    {
        assert_eq!(h["agent"], "rolled-back", "{h}");
        assert_eq!(h["release"]["sha256"], sha.as_str());
        assert_eq!(w.slot_sha("active").as_ref(), Some(sha));
    }

    let status = s.json(&["status", "--json"], 0);
    for (h, sha) in status["hosts"].as_array().unwrap().iter().zip(&sha1) {
        assert_eq!(h["active"]["sha256"], sha.as_str());
        assert!(h["prev"]["sha256"].is_string());
        assert_eq!(h["failed"], 1);
    }
    let history = s.json(&["history", "--host", "w1", "--json"], 0);
    let outcomes: Vec<(String, String)> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("update", "updated"),
        ("rollback", "error"),
        ("update", "rolled-back"),
        ("update", "updated"),
        ("rollback", "rolled-back"),
    ];
    assert_eq!(
        outcomes,
        expected.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
    );
}

#[test]
fn decommissioned_hosts_are_skipped_by_all() {
    let s = Swarm::new();
    let workers = s.fleet(&["w1", "w2"]);
    s.ok(&["decommission", "--host", "w2"]);
    let tree = s.tree("app");
    good_tree(&tree, "1");
    let out = s.ok(&["update", "--all", "--root", tree.to_str().unwrap()]);
    let table = update_rows(&out);
    assert_eq!(table.len(), 1, "{out}");
    assert_eq!(table[0][0], "w1");
    assert!(workers[0].slot_sha("active").is_some());
    assert!(workers[1].slot_sha("active").is_none());
    let status = s.json(&["status", "--json"], 0);
    assert_eq!(status["hosts"].as_array().unwrap().len(), 1);
}

#[test]
fn dry_run_opens_no_connection() {
    let s = Swarm::new();
    // A listener stands where the updater would be; nobody may knock.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().unwrap().port();
    let out_dir = s.out("w1");
    s.ok(&[
        "enroll",
        "--host",
        "w1",
        "--address",
        "127.0.0.1",
        "--updater-port",
        &port.to_string(),
        "--updater",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    let tree = s.tree("app");
    good_tree(&tree, "1");
    write(&tree, "a/b.txt", "x");
    write(&tree, "keys/server.key", "secret");
    let out = s.ok(&[
        "update",
        "--all",
        "--dry-run",
        "--root",
        tree.to_str().unwrap(),
    ]);
    assert!(out.contains("dry run"), "{out}");
    assert!(out.contains("files    3"), "{out}");
    assert!(out.contains("keys/server.key"), "{out}");
    assert!(out.contains(&format!("w1  127.0.0.1:{port}")), "{out}");
    let doc = s.json(
        &[
            "update",
            "--host",
            "w1",
            "--dry-run",
            "--json",
            "--root",
            tree.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["release"]["files"], 3);
    assert_eq!(doc["release"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(doc["targets"][0]["host"], "w1");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("--dry-run connected to the updater: {other:?}"),
    }
    assert!(s.ok(&["history"]).contains("no pushes recorded yet"));
}

#[test]
fn an_updater_with_another_certificate_is_refused() {
    let s = Swarm::new();
    let enrolled = s.enroll("w1");
    // Same CA, same CN, but not the certificate the inventory recorded.
    let ca = Ca::load(&s.home().join("ca")).expect("load CA");
    let impostor = TestPki {
        dir: tempfile::tempdir().expect("tempdir"),
        ca,
    };
    let bundles = impostor.worker("w1");
    assert_ne!(
        bundles.updater.fingerprint,
        enrolled.bundles.updater.fingerprint
    );
    let w = Worker::start_with(bundles, enrolled.listen, WorkerOptions::default());
    let tree = s.tree("app");
    good_tree(&tree, "1");
    let out = s.code(
        &["update", "--host", "w1", "--root", tree.to_str().unwrap()],
        1,
    );
    let table = update_rows(&out);
    assert_eq!(table[0][2], "error", "{out}");
    let detail = table[0][4..].join(" ");
    assert!(detail.contains("fingerprint"), "{out}");
    assert!(
        detail.contains(&enrolled.bundles.updater.fingerprint.to_string()),
        "{out}"
    );
    assert!(
        w.slot_sha("active").is_none(),
        "the impostor got the release"
    );
}

#[test]
fn demo_runs_to_completion_and_cleans_up() {
    let out = Command::new(bin("swarm"))
        .arg("demo")
        .env("NO_COLOR", "1")
        .env_remove("SWARM_HOME")
        .output()
        .expect("run swarm demo");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(text.contains("demo complete"), "{text}");
    assert!(text.matches(" rolled-back ").count() >= 6, "{text}");
    let dir = text
        .lines()
        .find_map(|l| l.split("everything under ").nth(1))
        .expect("demo dir in output")
        .trim()
        .to_owned();
    assert!(!Path::new(&dir).exists(), "{dir} left behind");
    // No process of the demo survives it.
    for pid in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
    {
        let cmdline = tests::process::cmdline(pid).join(" ");
        assert!(
            !cmdline.contains(&dir) || !tests::process::alive(pid as i32),
            "left running: {cmdline}"
        );
    }
}

#[test]
fn update_include_self_updates_the_updater_after_its_agent() {
    let s = Swarm::new();
    let workers = s.fleet(&["w1", "w2"]);
    // w2's agent is probed on a port nobody listens on: its agent update
    // rolls back, so its updater must be left alone.
    let unused = free_port();
    for (w, health_port) in workers.iter().zip([workers[0].agent_port, unused.get()]) {
        std::fs::write(
            w.install_dir.join(".env.local"),
            format!("AGENT_PORT={}\nHEALTH_PORT={health_port}\n", w.agent_port),
        )
        .expect("write .env.local");
    }
    let pids: Vec<u32> = workers.iter().map(Worker::updater_pid).collect();
    let tree = s.tree("with-updater");
    write(&tree, "VERSION", "1");
    write(
        &tree,
        "swarm.toml",
        &agent_toml(&[]).replace(":${AGENT_PORT}/health", ":${HEALTH_PORT}/health"),
    );
    let root = tree.to_str().unwrap();

    // Without the updater binary in the tree: a usage error before any push.
    let out = s.run(&["update", "--all", "--root", root, "--include-self"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bin/worker-updater"),
        "{}",
        show(&out)
    );
    assert!(workers.iter().all(|w| w.slot_sha("active").is_none()));

    let bin_path = tree.join("bin/worker-updater");
    std::fs::create_dir_all(bin_path.parent().unwrap()).unwrap();
    std::fs::write(&bin_path, tests::release::shippable_updater()).unwrap();
    std::fs::set_permissions(
        &bin_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let doc = s.json(
        &[
            "update",
            "--all",
            "--root",
            root,
            "--include-self",
            "--json",
        ],
        1,
    );
    let sha = doc["release"]["sha256"]
        .as_str()
        .expect("sha256")
        .to_owned();
    let hosts = doc["hosts"].as_array().expect("hosts");
    assert_eq!(hosts[0]["agent"], "updated", "{doc}");
    assert_eq!(hosts[0]["self"], "ok", "{doc}");
    assert_eq!(hosts[1]["agent"], "rolled-back", "{doc}");
    assert_eq!(hosts[1]["self"], "skipped", "{doc}");

    // w1 now runs the shipped updater, re-exec'd in place with its flags,
    // and its watchdog confirmed it (waited for, so that stopping the
    // worker at the end is not mistaken for a failed trial).
    let w1 = &workers[0];
    trial_confirmed(w1);
    let h = updater_health(&s, w1);
    assert_eq!(h.release.map(|m| m.sha256), Some(sha.clone()));
    assert_eq!(h.pid, pids[0]);
    let argv = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    let argv = String::from_utf8_lossy(&argv);
    assert!(
        argv.contains(&format!("--listen={}", w1.addr)),
        "listen address kept: {argv}"
    );
    // w2's updater was never asked.
    let h2 = updater_health(&s, &workers[1]);
    assert!(h2.release.is_none(), "{h2:?}");
    assert_eq!(h2.pid, pids[1]);
    assert!(!workers[1].install_dir.join("updater").exists());

    // The self-update is in the audit trail; the table says the same.
    let history = s.json(&["history", "--host", "w1", "--json"], 0);
    let entries = history["history"].as_array().expect("history");
    assert!(
        entries.iter().any(|e| e["operation"] == "update"
            && e["outcome"] == "updated"
            && e["detail"].as_str().is_some_and(|d| d.contains("self: ok"))),
        "{history}"
    );
    let out = s.code(
        &["update", "--host", "w1", "--root", root, "--include-self"],
        0,
    );
    // The same tree again: the agent's release is unchanged (issue 11), the
    // updater is still pushed and switches again.
    let table = update_rows(&out);
    assert_eq!(table[0][2..4], ["unchanged", "ok"], "{out}");
    trial_confirmed(w1);
}

/// Wait until the self-update watchdog of `w` has removed its trial marker.
fn trial_confirmed(w: &Worker) {
    let marker = w.install_dir.join("updater/trial.json");
    tests::eventually(Duration::from_secs(30), "trial confirmed", || {
        (!marker.exists()).then_some(())
    });
}

/// The updater's `/health`, asked with the master identity of `s`.
fn updater_health(s: &Swarm, w: &Worker) -> pki::wire::UpdaterHealth {
    let client = s.master_client(&w.bundles.host.updater_cn());
    tests::block_on(w.health(&client))
}
