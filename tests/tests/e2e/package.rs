//! The worker package (issue 17): `swarm enroll --package` writes one
//! archive; unpacked on a bare "host" (a fresh network namespace joined by a
//! veth, inside a fresh mount namespace whose /etc, /opt and /usr/local/bin
//! are the test's own copies) its `install.sh --no-systemd` creates the
//! `swarm` user, the dirs and files with the right owners and modes and
//! starts the updater as that user; the master then pushes to it over the
//! namespace's address. A second run changes nothing (same listing of paths,
//! modes, owners and hashes; same updater process), `--uninstall` stops both
//! daemons and keeps the releases, `--purge` removes the rest.
//!
//! Also the shipped unit: every `Environment=` variable is one the updater
//! knows, `systemd-analyze verify` is clean and the offline security
//! exposure is at most 4.0.
//!
//! The namespaces, links and every process started in them are removed
//! when the test ends, pass or fail.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tests::process::{alive, read_pidfile, wait_dead};
use tests::{Daemon, bin, eventually};

const UNIT: &str = include_str!("../../../worker-updater/deploy/swarm-updater.service");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sh(args: &[&str]) -> Output {
    run(Command::new(args[0]).args(&args[1..]))
}

/// A bare host: a network namespace on a veth link (`10.214.<net>.2`) and,
/// inside it, a mount namespace where /etc, /opt and /usr/local/bin are
/// directories of the test and /run is an empty tmpfs (so install.sh can create users and install
/// files without touching the real system). A holder process keeps the
/// mount namespace alive; commands join it with nsenter.
struct BareHost {
    ns: String,
    veth: String,
    address: String,
    /// The test's side of /etc, /opt and /usr/local/bin.
    etc: PathBuf,
    opt: PathBuf,
    usr_bin: PathBuf,
    holder: Option<Daemon>,
    /// Every daemon pid seen, so Drop kills them even after their
    /// pidfiles are gone.
    seen: std::cell::RefCell<Vec<i32>>,
}

impl BareHost {
    /// `tag` (0 or 1) tells apart the hosts of tests running at once.
    fn new(root: &Path, tag: u8) -> BareHost {
        let id = std::process::id() % 100_000;
        let net = (std::process::id() % 100 + 20 + u32::from(tag) * 100) as u8;
        let ns = format!("swarm-pkg-{id}-{tag}");
        let veth = format!("swp{id}{tag}");
        let peer = format!("swp{id}{tag}p");
        let mut host = BareHost {
            ns: ns.clone(),
            veth: veth.clone(),
            address: format!("10.214.{net}.2"),
            etc: root.join("etc"),
            opt: root.join("opt"),
            usr_bin: root.join("usr-local-bin"),
            holder: None,
            seen: std::cell::RefCell::new(Vec::new()),
        };
        sh(&["cp", "-a", "/etc", host.etc.to_str().expect("utf-8")]);
        for d in [&host.opt, &host.usr_bin] {
            std::fs::create_dir(d).expect("mkdir");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", &ns]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.214.{net}.1/30"),
            "dev",
            &veth,
        ]);
        sh(&["ip", "link", "set", &veth, "up"]);
        for args in [
            vec![
                "ip".to_owned(),
                "addr".into(),
                "add".into(),
                format!("{}/30", host.address),
                "dev".into(),
                peer.clone(),
            ],
            vec!["ip".into(), "link".into(), "set".into(), peer, "up".into()],
            vec![
                "ip".into(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ] {
            run(Command::new("ip").args(["netns", "exec", &ns]).args(&args));
        }
        let script = format!(
            "mount --bind {etc} /etc && mount --bind {opt} /opt && mount --bind {bin} /usr/local/bin && mount -t tmpfs tmpfs /run && echo ready && exec sleep 3600",
            etc = host.etc.display(),
            opt = host.opt.display(),
            bin = host.usr_bin.display()
        );
        let mut holder = Daemon::start(
            Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                .arg(script)
                .stdout(Stdio::piped()),
        );
        let mut line = String::new();
        BufReader::new(holder.take_stdout().expect("stdout"))
            .read_line(&mut line)
            .expect("read the holder's line");
        assert_eq!(line, "ready\n", "the mount namespace was not set up");
        host.holder = Some(holder);
        host
    }

    /// A command run inside both namespaces.
    fn exec(&self, program: &str) -> Command {
        let pid = self.holder.as_ref().expect("holder").pid().to_string();
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &pid, "--mount", "--net", "--", program]);
        cmd
    }

    /// install.sh that must fail: its stderr.
    fn install_fails(&self, script: &Path, args: &[&str]) -> String {
        let out = self.exec("sh").arg(script).args(args).output().expect("sh");
        assert!(!out.status.success(), "install.sh {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn install(&self, script: &Path, args: &[&str]) -> String {
        let out = run(self.exec("sh").arg(script).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid in /opt/swarm/updater.direct.pid ("PID START").
    fn updater_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.opt.join("swarm/updater.direct.pid")).ok()?;
        let pid = text.split_whitespace().next()?.parse().ok()?;
        self.seen.borrow_mut().push(pid);
        Some(pid)
    }

    fn agent_pid(&self) -> Option<i32> {
        let pid = read_pidfile(&self.opt.join("swarm/agent.pid"))?;
        self.seen.borrow_mut().push(pid);
        Some(pid)
    }

    /// uid and gid of `user` in the host's /etc/passwd.
    fn user(&self, user: &str) -> Option<(u32, u32)> {
        let passwd = std::fs::read_to_string(self.etc.join("passwd")).expect("passwd");
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user))
                .then(|| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
        })
    }

    /// Every path under the installed locations with its type, mode, owner,
    /// group and (files) SHA-256 or (links) target. Logs are listed without
    /// their contents, which grow with every request.
    fn listing(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for root in [
            self.opt.clone(),
            self.etc.join("swarm"),
            self.usr_bin.clone(),
        ] {
            walk(&root, &mut out);
        }
        for f in ["passwd", "group", "shadow", "gshadow"] {
            walk(&self.etc.join(f), &mut out);
        }
        out
    }
}

fn walk(path: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let what = if meta.file_type().is_symlink() {
        format!(
            "-> {}",
            std::fs::read_link(path).expect("readlink").display()
        )
    } else if meta.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .expect("read_dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        names.sort();
        for p in names {
            walk(&p, out);
        }
        "dir".to_owned()
    } else if path.extension().is_some_and(|e| e == "log") {
        "log".to_owned()
    } else {
        hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
    };
    out.insert(
        path.display().to_string(),
        // Inode and mtime too: a file rewritten with the same bytes, or a
        // directory whose entries were touched, is a change.
        format!(
            "{:o} {}:{} ino {} mtime {}.{} {what}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
    );
}

impl Drop for BareHost {
    fn drop(&mut self) {
        // The updater install.sh started, then the agent it started in its
        // own process group, then the holder; deleting the network
        // namespace destroys the veth pair with it.
        self.updater_pid();
        self.agent_pid();
        for pid in self.seen.take() {
            // By comm, not /proc/PID/exe: an uninstall half done has
            // deleted the binary, and exe then reads "… (deleted)".
            if alive(pid)
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| matches!(c.trim_end(), "worker-updater" | "worker-agent"))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.holder.take();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

fn swarm(home: &Path, args: &[&str]) -> Output {
    Command::new(bin("swarm"))
        .args(args)
        .env("SWARM_HOME", home)
        .env("NO_COLOR", "1")
        .output()
        .expect("run swarm")
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).expect("stat");
    (m.uid(), m.gid())
}

/// The real uid of a process, from /proc/PID/status.
fn proc_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("Uid line")
}

fn push(home: &Path, tree: &Path) -> Value {
    let out = swarm(
        home,
        &[
            "update",
            "--host",
            "pkw",
            "--root",
            tree.to_str().expect("utf-8"),
            "--json",
        ],
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    doc
}

#[test]
fn package_installs_on_a_bare_host_idempotently_and_uninstalls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let home = root.join("home");
    let host = BareHost::new(root, 0);

    assert!(swarm(&home, &["ca", "init"]).status.success());
    let archive = root.join("pkw.tar.gz");
    let out = swarm(
        &home,
        &[
            "enroll",
            "--host",
            "pkw",
            "--address",
            &host.address,
            "--out-dir",
            root.join("bundle").to_str().expect("utf-8"),
            "--package",
            archive.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("HOLDS PRIVATE KEYS"), "{said}");
    assert_eq!(mode(&archive), 0o600, "the archive holds private keys");
    // A second package over the first is refused, the first untouched.
    let again = swarm(
        &home,
        &[
            "package",
            "--host",
            "pkw",
            "--bundle-dir",
            root.join("bundle").to_str().expect("utf-8"),
            "--out",
            archive.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(again.status.code(), Some(2));

    // "scp" it over and unpack it as the operator would.
    let unpack = root.join("operator");
    std::fs::create_dir(&unpack).expect("mkdir");
    run(Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpack));
    let pkg = unpack.join("swarm-pkw");
    let readme = std::fs::read_to_string(pkg.join("README.txt")).expect("README");
    assert!(readme.contains("PRIVATE KEYS"), "{readme}");
    assert_eq!(
        std::fs::read_to_string(pkg.join("swarm-updater.service")).expect("unit"),
        UNIT,
        "the package ships the repository's unit"
    );
    let script = pkg.join("install.sh");

    // A package whose settings the updater refuses (a plain-http agent
    // URL): install.sh stops at the updater's own --check, starts nothing.
    let bad = unpack.join("swarm-pkw-bad");
    run(Command::new("cp").arg("-a").arg(&pkg).arg(&bad));
    let env = std::fs::read_to_string(bad.join("updater.env")).expect("updater.env");
    let env = env.replace("https://127.0.0.1", "http://127.0.0.1");
    std::fs::write(bad.join("updater.env"), env).expect("write");
    let said = host.install_fails(&bad.join("install.sh"), &["--no-systemd"]);
    assert!(said.contains("--check refuses"), "{said}");
    assert!(
        said.contains("https"),
        "the updater's reason is shown: {said}"
    );
    assert_eq!(host.updater_pid(), None);

    // The real package over it: user, dirs, files, and the updater started
    // as `swarm`.
    let said = host.install(&script, &["--no-systemd"]);
    assert!(said.contains("started the updater directly"), "{said}");
    let (uid, gid) = host
        .user("swarm")
        .expect("install.sh created the swarm user");
    assert_ne!(uid, 0);
    let etc_swarm = host.etc.join("swarm");
    for (dir, stem) in [("agent", "worker"), ("updater", "updater")] {
        let d = etc_swarm.join(dir);
        assert_eq!(
            (mode(&d), owner(&d)),
            (0o700, (uid, gid)),
            "{}",
            d.display()
        );
        for f in [
            "ca.crt".to_owned(),
            format!("{stem}.crt"),
            format!("{stem}.key"),
        ] {
            let p = d.join(f);
            assert_eq!(
                (mode(&p), owner(&p)),
                (0o600, (uid, gid)),
                "{}",
                p.display()
            );
        }
    }
    let install_dir = host.opt.join("swarm");
    assert_eq!(
        (mode(&install_dir), owner(&install_dir)),
        (0o750, (uid, gid))
    );
    for b in ["worker-updater", "worker-agent"] {
        let p = host.usr_bin.join(b);
        assert_eq!((mode(&p), owner(&p)), (0o755, (0, 0)), "{}", p.display());
    }
    let updater = host
        .updater_pid()
        .expect("install.sh wrote the updater's pidfile");
    assert!(alive(updater));
    assert_eq!(
        proc_uid(updater),
        uid,
        "the updater runs as swarm, not root"
    );

    // The master pushes to it over the namespace's address.
    let tree = root.join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
    std::fs::write(tree.join("etc/app.conf"), "colour = blue\n").expect("write");
    let doc = push(&home, &tree);
    let row = &doc["hosts"][0];
    assert_eq!(row["agent"], "updated", "{doc:#}");
    assert_eq!(row["address"], format!("{}:8766", host.address), "{doc:#}");
    assert_eq!(
        std::fs::read_to_string(install_dir.join("current/etc/app.conf")).expect("landed"),
        "colour = blue\n"
    );
    let agent = host.agent_pid().expect("the updater started the agent");
    assert!(alive(agent));
    assert_eq!(proc_uid(agent), uid, "the agent runs as swarm too");

    // Second run: nothing changes, the same updater keeps running.
    let before = host.listing();
    let said = host.install(&script, &["--no-systemd"]);
    assert!(said.contains("up to date"), "{said}");
    assert_eq!(
        host.listing(),
        before,
        "a second install.sh run changed something"
    );
    assert_eq!(host.updater_pid(), Some(updater));
    assert!(alive(updater) && alive(agent));

    // Uninstall: both daemons stop, the releases stay.
    let said = host.install(&script, &["--uninstall"]);
    assert!(said.contains("uninstalled"), "{said}");
    wait_dead(updater, "the updater to stop");
    wait_dead(agent, "the agent to stop");
    assert!(!etc_swarm.exists(), "bundles removed");
    assert_eq!(
        std::fs::read_dir(&host.usr_bin).expect("bin dir").count(),
        0,
        "binaries removed"
    );
    let left: Vec<String> = std::fs::read_dir(&install_dir)
        .expect("install dir kept")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["releases"]);
    assert!(install_dir.join("releases/active/etc/app.conf").exists());
    assert!(
        host.user("swarm").is_some(),
        "the user owns the kept releases"
    );

    // Purge: the rest goes too.
    let said = host.install(&script, &["--uninstall", "--purge"]);
    assert!(said.contains("purged"), "{said}");
    assert!(!install_dir.exists());
    assert!(host.user("swarm").is_none());
    eventually(Duration::from_secs(1), "no swarm process left", || {
        (!alive(updater) && !alive(agent)).then_some(())
    });
}

/// A stand-in for `systemctl` (systemd cannot run in a test namespace): it
/// records each call and keeps "enabled"/"active" in marker files, so the
/// test can check which calls install.sh makes and when.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
echo "$*" >>"$FAKE_SYSTEMCTL_DIR/calls"
case $1 in
    is-enabled) [ -f "$FAKE_SYSTEMCTL_DIR/enabled" ] ;;
    is-active) [ -f "$FAKE_SYSTEMCTL_DIR/active" ] ;;
    enable) touch "$FAKE_SYSTEMCTL_DIR/enabled" ;;
    start | restart) touch "$FAKE_SYSTEMCTL_DIR/active" ;;
    disable) rm -f "$FAKE_SYSTEMCTL_DIR/enabled" "$FAKE_SYSTEMCTL_DIR/active" ;;
esac
"#;

/// The systemd branch of install.sh, driven through [`FAKE_SYSTEMCTL`]: the
/// first run installs the unit, reloads, enables and starts (after a real
/// `worker-updater --check`); a second run only asks (no reload, enable,
/// start or restart, same listing); a newer package restarts without a
/// reload (the unit did not change); uninstall disables, removes the unit
/// and reloads. What systemd then does with the unit is checked by
/// `systemd-analyze` below, not here.
#[test]
fn install_sh_drives_systemd_only_when_something_changed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let home = root.join("home");
    let host = BareHost::new(root, 1);
    let fake = root.join("fake");
    std::fs::create_dir(&fake).expect("mkdir");
    std::fs::write(fake.join("systemctl"), FAKE_SYSTEMCTL).expect("write");
    std::fs::set_permissions(
        fake.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    run(host.exec("mkdir").args(["-p", "/run/systemd/system"]));

    assert!(swarm(&home, &["ca", "init"]).status.success());
    let archive = root.join("sd.tar.gz");
    let out = swarm(
        &home,
        &[
            "enroll",
            "--host",
            "sd",
            "--address",
            &host.address,
            "--out-dir",
            root.join("bundle").to_str().expect("utf-8"),
            "--package",
            archive.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(root));
    let script = root.join("swarm-sd/install.sh");
    let calls = fake.join("calls");
    let install = |args: &[&str]| -> (String, Vec<String>) {
        let _ = std::fs::remove_file(&calls);
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fake.display());
        let out = run(host
            .exec("env")
            .arg(format!("PATH={path}"))
            .arg(format!("FAKE_SYSTEMCTL_DIR={}", fake.display()))
            .arg("sh")
            .arg(&script)
            .args(args));
        let made = std::fs::read_to_string(&calls).unwrap_or_default();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            made.lines().map(str::to_owned).collect(),
        )
    };
    let unit = host.etc.join("systemd/system/swarm-updater.service");

    let (said, made) = install(&[]);
    assert_eq!(
        made,
        [
            "daemon-reload",
            "is-enabled --quiet swarm-updater.service",
            "enable --quiet swarm-updater.service",
            "is-active --quiet swarm-updater.service",
            "start swarm-updater.service",
        ],
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&unit).expect("unit installed"),
        UNIT
    );
    assert_eq!((mode(&unit), owner(&unit)), (0o644, (0, 0)));
    assert!(
        host.updater_pid().is_none(),
        "systemd, not install.sh, runs the updater"
    );

    let before = host.listing();
    let (said, made) = install(&[]);
    assert!(said.contains("up to date"), "{said}");
    for call in &made {
        assert!(
            call.starts_with("is-enabled") || call.starts_with("is-active"),
            "a second run only asks, yet called `systemctl {call}`"
        );
    }
    assert_eq!(
        host.listing(),
        before,
        "a second install.sh run changed something"
    );

    // A newer package (here: other per-host settings) restarts the updater;
    // the unit itself is unchanged, so no reload.
    let env_file = root.join("swarm-sd/updater.env");
    let env = std::fs::read_to_string(&env_file).expect("updater.env");
    std::fs::write(&env_file, env.replace(":8766\"", ":9766\"")).expect("write");
    let (said, made) = install(&[]);
    assert!(
        made.iter().any(|c| c == "restart swarm-updater.service"),
        "{said}\n{made:?}"
    );
    assert!(!made.iter().any(|c| c == "daemon-reload"), "{made:?}");
    let installed = std::fs::read_to_string(host.etc.join("swarm/updater.env")).expect("env");
    assert!(installed.contains("0.0.0.0:9766"), "{installed}");

    let (said, made) = install(&["--uninstall"]);
    assert_eq!(
        made,
        [
            "disable --now --quiet swarm-updater.service",
            "daemon-reload"
        ],
        "{said}"
    );
    assert!(!unit.exists());
}

/// Every `Environment=` of the unit is a variable `worker-updater` reads.
#[test]
fn unit_environment_names_real_updater_variables() {
    let help = run(Command::new(bin("worker-updater")).arg("--help"));
    let help = String::from_utf8_lossy(&help.stdout);
    let vars: Vec<&str> = UNIT
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    for needed in [
        "SWARM_UPDATER_BUNDLE_DIR",
        "SWARM_UPDATER_AGENT_DIR",
        "SWARM_UPDATER_INSTALL_DIR",
    ] {
        assert!(vars.contains(&needed), "the unit sets {needed} explicitly");
    }
    for v in vars {
        assert!(
            help.contains(&format!("[env: {v}=")),
            "{v} is not a worker-updater variable"
        );
    }
}

/// `systemd-analyze verify` is clean and the offline exposure is ≤ 4.0
/// (needs the `systemd` package for the tool; the daemon need not run).
#[test]
fn unit_is_verified_and_hardened() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let unit = tmp.path().join("swarm-updater.service");
    std::fs::write(&unit, UNIT).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=40"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for swarm-updater.service: "))
        .map(|(_, s)| s.to_owned())
        .unwrap_or_default();
    assert!(out.status.success(), "exposure over 4.0: {score}\n{text}");
    // verify wants ExecStart= to exist: give it one in a private mount.
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).expect("mkdir");
    std::fs::copy(bin("worker-updater"), bin_dir.join("worker-updater")).expect("copy");
    let script = format!(
        "mount --bind {} /usr/local/bin && exec systemd-analyze verify {}",
        bin_dir.display(),
        unit.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );
}

/// `swarm package` for an enrolled host packages the bundles `enroll`
/// wrote, and only those: another host's bundles (or a missing updater
/// bundle) are refused, and nothing is written.
#[test]
fn package_of_an_enrolled_host_checks_the_pins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let home = root.join("home");
    let p = |name: &str| root.join(name).to_str().expect("utf-8").to_owned();
    assert!(swarm(&home, &["ca", "init"]).status.success());
    for (host, dir) in [("wa", "a"), ("wb", "b")] {
        let out = swarm(
            &home,
            &[
                "enroll",
                "--host",
                host,
                "--address",
                "192.0.2.7",
                "--updater",
                "--out-dir",
                &p(dir),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = swarm(
        &home,
        &[
            "package",
            "--host",
            "wa",
            "--bundle-dir",
            &p("a"),
            "--out",
            &p("wa.tgz"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&root.join("wa.tgz")), 0o600);
    let listing = run(Command::new("tar").arg("tzf").arg(root.join("wa.tgz")));
    let names = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "swarm-wa/install.sh",
        "swarm-wa/swarm-updater.service",
        "swarm-wa/updater.env",
        "swarm-wa/agent/worker.key",
        "swarm-wa/updater/updater.key",
        "swarm-wa/bin/worker-updater",
        "swarm-wa/bin/worker-agent",
    ] {
        assert!(
            names.lines().any(|l| l == f),
            "{f} not in the package:\n{names}"
        );
    }

    // `--json`: one document on stdout naming what was written.
    let out = swarm(
        &home,
        &[
            "package",
            "--host",
            "wa",
            "--bundle-dir",
            &p("a"),
            "--out",
            &p("wa2.tgz"),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["host"], "wa", "{doc}");
    assert_eq!(doc["package"], p("wa2.tgz").as_str(), "{doc}");
    assert_eq!(doc["mode"], "0600", "{doc}");
    assert_eq!(doc["holds_private_keys"], true, "{doc}");
    let size = std::fs::metadata(root.join("wa2.tgz"))
        .expect("package")
        .len();
    assert_eq!(doc["size_bytes"].as_u64(), Some(size), "{doc}");
    assert!(
        doc["install"]
            .as_str()
            .is_some_and(|i| i.contains("install.sh")),
        "{doc}"
    );

    // enroll --package onto an existing file is refused before anything is
    // enrolled or written.
    let out = swarm(
        &home,
        &[
            "enroll",
            "--host",
            "wc",
            "--address",
            "192.0.2.8",
            "--out-dir",
            &p("c"),
            "--package",
            &p("wa.tgz"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!root.join("c").exists());
    let list = swarm(&home, &["list", "--json"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains("\"wc\""));

    // wb's bundles are not wa's: refused, exit 2, no file.
    let out = swarm(
        &home,
        &[
            "package",
            "--host",
            "wa",
            "--bundle-dir",
            &p("b"),
            "--out",
            &p("wrong.tgz"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("differs from what the inventory pins"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.join("wrong.tgz").exists());

    // No updater bundle beside the agent bundle: refused too.
    std::fs::remove_dir_all(root.join("a-updater")).expect("rm");
    let out = swarm(
        &home,
        &[
            "package",
            "--host",
            "wa",
            "--bundle-dir",
            &p("a"),
            "--out",
            &p("half.tgz"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!root.join("half.tgz").exists());
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".swarm-package")
        })
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}
