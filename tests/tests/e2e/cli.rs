//! The `swarm` CLI's identity commands end to end: `ca init`, `enroll`,
//! `list`, `decommission`, `history`, run as the real binary against a fresh
//! `SWARM_HOME`; bundles parsed back; every bad input checked for its exit
//! code, its message, and that nothing was half-written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pki::identity::CertInfo;
use pki::{Bundle, BundleKind};
use serde_json::Value;
use tests::Swarm;
use time::{Duration, OffsetDateTime};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn cert_info(path: &Path) -> CertInfo {
    let bundle = Bundle::load(path).expect("load bundle");
    bundle.info().expect("parse cert")
}

/// Nothing but `expected` in `dir`: no hidden temp siblings left behind.
fn assert_only(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(names, want, "contents of {}", dir.display());
}

/// `enroll --host HOST --address 127.0.0.1 --updater --out-dir OUT`.
fn enroll<'a>(host: &'a str, out: &'a str) -> [&'a str; 8] {
    [
        "enroll",
        "--host",
        host,
        "--address",
        "127.0.0.1",
        "--updater",
        "--out-dir",
        out,
    ]
}

#[test]
fn ca_init_creates_the_ca_and_master_identity_once() {
    let s = Swarm::uninitialised();
    let out = s.ok(&["ca", "init"]);
    assert!(out.contains("CA created"), "{out}");
    let home = &s.home();
    assert_eq!(mode(&home.join("ca")), 0o700);
    assert_eq!(mode(&home.join("ca/ca.key")), 0o600);
    assert_eq!(mode(&home.join("master")), 0o700);
    assert_eq!(mode(&home.join("master/master.key")), 0o600);
    assert!(home.join("inventory.db").is_file());

    let master = Bundle::load_kind(&home.join("master"), BundleKind::Master).expect("master");
    let info = master.info().expect("master cert");
    assert_eq!(info.cn, "master");
    assert!(info.client_auth && !info.server_auth && !info.is_ca);
    assert_eq!(
        std::fs::read(home.join("ca/ca.crt")).expect("ca.crt"),
        std::fs::read(home.join("master/ca.crt")).expect("master ca.crt")
    );
    let ca_before = std::fs::read(home.join("ca/ca.crt")).expect("ca.crt");

    let err = s.fails(&["ca", "init"], 2, "already exists");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_eq!(
        std::fs::read(home.join("ca/ca.crt")).expect("ca.crt"),
        ca_before
    );

    // --force replaces it, and hosts enrolled under the old CA are retired.
    s.ok(&enroll("w1", s.out("w1").to_str().unwrap()));
    let out = s.ok(&["ca", "init", "--force"]);
    assert!(out.contains("w1"), "{out}");
    assert_ne!(
        std::fs::read(home.join("ca/ca.crt")).expect("ca.crt"),
        ca_before
    );
    let leftovers: Vec<_> = std::fs::read_dir(home)
        .expect("read home")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp dirs left in home: {leftovers:?}"
    );
    let hosts = s.list();
    assert_eq!(hosts[0]["status"], "decommissioned");
}

#[test]
fn enroll_writes_both_bundles_and_records_the_host() {
    let s = Swarm::new();
    let dir = s.out("worker-01");
    let out = s.ok(&[
        "enroll",
        "--host",
        "worker-01",
        "--address",
        "192.0.2.10",
        "--sans",
        "w1.example.com,10.0.0.5",
        "--agent-port",
        "9765",
        "--updater-port",
        "9766",
        "--updater",
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.contains("worker-01"), "{out}");
    let updater_dir = s.out("worker-01-updater");
    assert_only(&s.scratch(), &["worker-01", "worker-01-updater"]);
    assert_only(&dir, &["ca.crt", "worker.crt", "worker.key"]);
    // The updater bundle carries the home's release key (issue 15), 0644.
    assert_only(
        &updater_dir,
        &["ca.crt", "release.pub", "updater.crt", "updater.key"],
    );
    assert_eq!(
        std::fs::read(updater_dir.join("release.pub")).expect("release.pub"),
        std::fs::read(s.home().join("ca/release.pub")).expect("home release.pub")
    );
    assert_eq!(mode(&updater_dir.join("release.pub")), 0o644);
    for d in [&dir, &updater_dir] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
        assert_eq!(mode(&d.join("ca.crt")), 0o644);
    }
    assert_eq!(mode(&dir.join("worker.key")), 0o600);
    assert_eq!(mode(&dir.join("worker.crt")), 0o644);
    assert_eq!(mode(&updater_dir.join("updater.key")), 0o600);
    let ca = std::fs::read(s.home().join("ca/ca.crt")).expect("ca.crt");
    assert_eq!(std::fs::read(dir.join("ca.crt")).expect("bundle ca"), ca);
    assert_eq!(
        std::fs::read(updater_dir.join("ca.crt")).expect("bundle ca"),
        ca
    );

    let agent = cert_info(&dir);
    let updater = cert_info(&updater_dir);
    assert_eq!(agent.cn, "worker-01");
    assert_eq!(updater.cn, "updater@worker-01");
    let now = OffsetDateTime::now_utc();
    for info in [&agent, &updater] {
        assert!(
            info.has_eku && info.server_auth && info.client_auth,
            "{info:?}"
        );
        assert!(!info.is_ca);
        for dns in ["w1.example.com", "worker-01", "localhost"] {
            assert!(
                info.dns_sans.iter().any(|d| d == dns),
                "{dns} not in {:?}",
                info.dns_sans
            );
        }
        for ip in ["192.0.2.10", "10.0.0.5", "127.0.0.1"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert!(info.ip_sans.contains(&ip), "{ip} not in {:?}", info.ip_sans);
        }
        assert!(info.not_before <= now && now < info.not_after);
        assert!(
            info.not_after - now > Duration::days(800),
            "{:?}",
            info.not_after
        );
        assert!(
            info.not_after - now < Duration::days(830),
            "{:?}",
            info.not_after
        );
    }

    let hosts = s.list();
    assert_eq!(hosts.len(), 1);
    let h = &hosts[0];
    assert_eq!(h["host"], "worker-01");
    assert_eq!(h["address"], "192.0.2.10");
    assert_eq!(h["agent_port"], 9765);
    assert_eq!(h["updater_port"], 9766);
    assert_eq!(h["status"], "active");
    assert_eq!(h["agent_fingerprint"], agent.fingerprint.to_string());
    assert_eq!(h["updater_fingerprint"], updater.fingerprint.to_string());
    let not_after = OffsetDateTime::parse(
        h["agent_not_after"].as_str().expect("agent_not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    assert_eq!(not_after, agent.not_after);

    let table = s.ok(&["list"]);
    assert!(
        table.contains("worker-01") && table.contains("active"),
        "{table}"
    );
    assert!(
        table.contains(&agent.fingerprint.to_string()[..12]),
        "{table}"
    );
}

#[test]
fn enroll_updater_only_adds_the_missing_bundle() {
    let s = Swarm::new();
    let dir = s.out("w2");
    let d = dir.to_str().unwrap();
    s.ok(&[
        "enroll",
        "--host",
        "w2",
        "--address",
        "10.1.2.3",
        "--out-dir",
        d,
    ]);
    assert_only(&s.scratch(), &["w2"]);
    assert!(s.list()[0]["updater_fingerprint"].is_null());

    s.ok(&["enroll", "--host", "w2", "--updater-only", "--out-dir", d]);
    assert_only(&s.scratch(), &["w2", "w2-updater"]);
    let info = cert_info(&s.out("w2-updater"));
    assert_eq!(info.cn, "updater@w2");
    assert!(info.ip_sans.contains(&"10.1.2.3".parse().unwrap()));
    assert_eq!(
        s.list()[0]["updater_fingerprint"],
        info.fingerprint.to_string()
    );

    std::fs::remove_dir_all(s.out("w2-updater")).unwrap();
    s.fails(
        &["enroll", "--host", "w2", "--updater-only", "--out-dir", d],
        2,
        "already has an updater certificate",
    );
    assert_only(&s.scratch(), &["w2"]);
    s.fails(
        &[
            "enroll",
            "--host",
            "nobody",
            "--updater-only",
            "--out-dir",
            d,
        ],
        2,
        "is not enrolled",
    );
}

#[test]
fn bad_host_names_are_refused_before_anything_is_written() {
    let s = Swarm::new();
    for bad in ["bad name", "-lead", "master", "a/b", &"x".repeat(65)] {
        let d = s.out("bundle");
        let host = format!("--host={bad}");
        let err = s.fails(
            &[
                "enroll",
                &host,
                "--address",
                "127.0.0.1",
                "--updater",
                "--out-dir",
                d.to_str().unwrap(),
            ],
            2,
            "invalid host name",
        );
        assert!(err.contains("[A-Za-z0-9._-]"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert_only(&s.scratch(), &[]);
    assert!(s.list().is_empty());
}

#[test]
fn duplicate_hosts_are_refused() {
    let s = Swarm::new();
    s.ok(&enroll("w1", s.out("a").to_str().unwrap()));
    let err = s.fails(
        &[
            "enroll",
            "--host",
            "w1",
            "--address",
            "127.0.0.2",
            "--updater",
            "--out-dir",
            s.out("b").to_str().unwrap(),
        ],
        2,
        "already enrolled",
    );
    assert!(err.contains("swarm decommission --host w1"), "{err}");
    assert_only(&s.scratch(), &["a", "a-updater"]);
    assert_eq!(s.list().len(), 1);
}

#[test]
fn a_missing_ca_is_reported_with_the_fix() {
    let s = Swarm::uninitialised();
    let err = s.fails(
        &enroll("w1", s.out("w1").to_str().unwrap()),
        3,
        "run `swarm ca init` first",
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_only(&s.scratch(), &[]);
    s.fails(&["list"], 3, "swarm ca init");
}

#[test]
fn an_unwritable_out_dir_leaves_no_bundle_and_no_row() {
    let s = Swarm::new();
    let file = s.out("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = s.fails(
        &enroll("w1", file.join("w1").to_str().unwrap()),
        3,
        "choose a writable --out-dir",
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(s.list().is_empty());
    assert_only(&s.scratch(), &["not-a-dir"]);

    // An existing target (here: only the updater half) is refused up front.
    std::fs::create_dir(s.out("w1-updater")).unwrap();
    s.fails(
        &enroll("w1", s.out("w1").to_str().unwrap()),
        2,
        "already exists",
    );
    assert_only(&s.scratch(), &["not-a-dir", "w1-updater"]);
    assert!(s.list().is_empty());

    // Missing parents are created, and a bad SAN is refused before that.
    let nested = s.out("x/y/w1");
    s.fails(
        &[
            "enroll",
            "--host",
            "w1",
            "--address",
            "not a name!",
            "--out-dir",
            nested.to_str().unwrap(),
        ],
        2,
        "invalid address or SAN",
    );
    assert!(!s.out("x").exists());
    s.ok(&[
        "enroll",
        "--host",
        "w1",
        "--address",
        "127.0.0.1",
        "--out-dir",
        nested.to_str().unwrap(),
    ]);
    assert!(nested.join("worker.crt").is_file());
}

#[test]
fn decommissioned_hosts_are_kept_but_never_targeted() {
    let s = Swarm::new();
    s.ok(&enroll("w1", s.out("w1").to_str().unwrap()));
    let out = s.ok(&["decommission", "--host", "w1"]);
    assert!(out.contains("decommissioned w1"), "{out}");
    let hosts = s.list();
    assert_eq!(hosts[0]["status"], "decommissioned");
    assert!(hosts[0]["decommissioned_at"].is_string());

    s.fails(
        &["decommission", "--host", "w1"],
        2,
        "already decommissioned",
    );
    s.fails(&["decommission", "--host", "ghost"], 2, "is not enrolled");
    s.fails(
        &[
            "enroll",
            "--host",
            "w1",
            "--updater-only",
            "--out-dir",
            s.out("again").to_str().unwrap(),
        ],
        2,
        "is decommissioned",
    );
    s.fails(
        &["update", "--host", "w1", "--dry-run"],
        2,
        "decommissioned",
    );
    s.fails(&["rollback", "--host", "w1"], 2, "decommissioned");
    s.fails(&["update", "--all", "--dry-run"], 2, "no active hosts");
    s.fails(&["update", "--host", "ghost"], 2, "unknown host ghost");
    assert_only(&s.scratch(), &["w1", "w1-updater"]);

    // The name can be enrolled again; the old row stays for the record.
    s.ok(&enroll("w1", s.out("w1b").to_str().unwrap()));
    let hosts = s.list();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["status"], "active");
    assert_eq!(hosts[1]["status"], "decommissioned");
}

#[test]
fn usage_errors_exit_2() {
    let s = Swarm::new();
    s.fails(&["update"], 2, "--host");
    s.fails(
        &["update", "--all", "--host", "w1"],
        2,
        "cannot be used with",
    );
    s.fails(&["rollback"], 2, "--host");
    s.fails(
        &["enroll", "--host", "w1", "--out-dir", "x"],
        2,
        "--address",
    );
    s.fails(
        &["update", "--all", "--include-self", "--self-timeout", "0"],
        2,
        "--self-timeout",
    );
}

#[test]
fn history_starts_empty() {
    let s = Swarm::new();
    assert!(s.ok(&["history"]).contains("no pushes recorded yet"));
    let v: Value = serde_json::from_str(&s.ok(&["history", "--json"])).expect("json");
    assert_eq!(v["history"], Value::Array(vec![]));
}
