//! Two workers on two real (namespaced) hosts: each in its own network
//! namespace, reached over a veth link at the address it was enrolled
//! with, both on the default ports 8766/8765. Shows that the master
//! verifies the updater by its enrolled address SAN and pin across a real
//! link, that being on the worker's own network grants nothing (a client
//! with the agent's certificate inside the namespace still gets 403), and
//! that a host whose link is down is an `error` row while the other updates.
//!
//! The namespaces, links and every process started in them are removed
//! when the test ends, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tests::{Daemon, Swarm, eventually};

fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace joined to this one by a veth pair:
/// host side `10.213.<net>.1/30`, namespace side `10.213.<net>.2/30`.
struct Host {
    ns: String,
    veth: String,
    address: String,
    install: PathBuf,
    updater: Option<Daemon>,
}

impl Host {
    fn new(tag: &str, net: u8, root: &Path) -> Host {
        let id = std::process::id() % 100_000;
        let ns = format!("swarm-test-{id}-{tag}");
        let veth = format!("sw{id}{tag}");
        let peer = format!("sw{id}{tag}p");
        let host = Host {
            ns: ns.clone(),
            veth: veth.clone(),
            address: format!("10.213.{net}.2"),
            install: root.join(tag).join("install"),
            updater: None,
        };
        std::fs::create_dir_all(&host.install).expect("mkdir install");
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", &ns]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{net}.1/30"),
            "dev",
            &veth,
        ]);
        sh(&["ip", "link", "set", &veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &ns];
            all.extend_from_slice(args);
            sh(&all);
        };
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{net}.2/30"),
            "dev",
            &peer,
        ]);
        inside(&["ip", "link", "set", &peer, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        host
    }

    /// A command that runs `program` inside this host's namespace.
    fn exec(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// Start the updater of `s` inside the namespace on the default ports.
    fn start_updater(&mut self, s: &Swarm, agent_dir: &Path, updater_dir: &Path) {
        let mut cmd = self.exec(&s.bins.updater);
        cmd.args(["--listen", "0.0.0.0:8766", "--updater-dir"])
            .arg(updater_dir)
            .arg("--agent-dir")
            .arg(agent_dir)
            .arg("--install-dir")
            .arg(&self.install)
            .arg("--agent-cmd")
            .arg(format!(
                "{} --listen 127.0.0.1:8765",
                s.bins.agent.display()
            ))
            .args(["--agent-url", "https://127.0.0.1:8765/health"]);
        let log = self.install.with_file_name("updater.log");
        let (daemon, _addr) = Daemon::spawn_listening(
            &format!("worker-updater in {}", self.ns),
            &mut cmd,
            &log,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        self.updater = Some(daemon);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The updater first (ip netns exec execs into it, so this is its
        // pid), then the agent it started in its own process group.
        self.updater.take();
        tests::process::kill_worker_leftovers(&self.install);
        // Deleting the namespace destroys the veth pair with it.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

fn rows(out: &Output) -> Vec<(String, String, String)> {
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut rows: Vec<_> = doc["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap_or_default().to_owned(),
                h["address"].as_str().unwrap_or_default().to_owned(),
                h["agent"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn workers_in_their_own_namespaces() {
    let s = Swarm::uninitialised();
    let scratch = s.scratch();
    let root = scratch.as_path();
    let net = (std::process::id() % 200) as u8 + 20;
    let mut hosts = [Host::new("a", net, root), Host::new("b", net + 1, root)];

    assert!(s.run(&["ca", "init"]).status.success());
    for (name, host) in ["wa", "wb"].iter().zip(hosts.iter_mut()) {
        let out_dir = root.join(format!("{name}-bundle"));
        let out = s.run(&[
            "enroll",
            "--host",
            name,
            "--address",
            &host.address,
            "--updater",
            "--out-dir",
            out_dir.to_str().expect("utf-8"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        host.start_updater(&s, &out_dir, &root.join(format!("{name}-bundle-updater")));
    }

    let tree = root.join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
    std::fs::write(tree.join("etc/app.conf"), "colour = blue\n").expect("write");
    let update_all = |code: i32| {
        let tree = tree.to_str().expect("utf-8");
        let out = s.run(&["update", "--all", "--root", tree, "--json"]);
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(code), "{shown}");
        out
    };

    // Both hosts, across their links, on the same ports.
    let out = update_all(0);
    assert_eq!(
        rows(&out),
        [
            (
                "wa".into(),
                format!("{}:8766", hosts[0].address),
                "updated".into()
            ),
            (
                "wb".into(),
                format!("{}:8766", hosts[1].address),
                "updated".into()
            ),
        ]
    );
    for host in &hosts {
        let conf = host.install.join("current/etc/app.conf");
        assert_eq!(
            std::fs::read_to_string(&conf).expect("landed"),
            "colour = blue\n"
        );
    }

    // On the worker's own network, with the worker's own agent certificate:
    // the handshake succeeds (CA-signed), /health answers, /rollback is 403.
    let bundle = root.join("wa-bundle");
    let curl = |method: &str, path: &str| {
        let out = hosts[0]
            .exec(Path::new("curl"))
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .arg("--cert")
            .arg(bundle.join("worker.crt"))
            .arg("--key")
            .arg(bundle.join("worker.key"))
            .arg("--cacert")
            .arg(bundle.join("ca.crt"))
            .arg(format!("https://127.0.0.1:8766{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("GET", "/health"), "200");
    assert_eq!(curl("POST", "/rollback"), "403");
    assert_eq!(curl("GET", "/releases"), "403");

    // Host b's link goes down: an error row for it, host a still updates.
    sh(&["ip", "link", "set", &hosts[1].veth, "down"]);
    std::fs::write(tree.join("etc/app.conf"), "colour = green\n").expect("write");
    let out = update_all(1);
    let r = rows(&out);
    assert_eq!(r[0].2, "updated");
    assert_eq!(r[1].2, "error");
    eventually(Duration::from_secs(5), "host a on the new release", || {
        std::fs::read_to_string(hosts[0].install.join("current/etc/app.conf"))
            .ok()
            .filter(|c| c == "colour = green\n")
    });
    assert_eq!(
        std::fs::read_to_string(hosts[1].install.join("current/etc/app.conf")).expect("b"),
        "colour = blue\n"
    );
}
