//! A master and its fleet on loopback: a `SWARM_HOME` driven by the real
//! `swarm` CLI, hosts enrolled with `swarm enroll` on reserved ports, and
//! their [`Worker`]s. The fleet tests and the bench both stand on it.
//!
//! Layout under its root: `home/` (`SWARM_HOME`), `scratch/` (bundles
//! `<host>` and `<host>-updater`, release trees; nothing else, so tests can
//! assert what a command wrote there) and `workers/<host>/` (install dir and
//! updater log).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::worker::{Worker, WorkerOptions};
use crate::{Bins, Port, WorkerBundles};

/// A master home and the place its workers live.
pub struct Swarm {
    root: PathBuf,
    _tmp: Option<TempDir>,
    /// The binaries it runs.
    pub bins: Bins,
}

/// A host `swarm enroll` issued, on reserved loopback ports.
pub struct Enrolled {
    pub bundles: WorkerBundles,
    /// Where its updater is to listen (`--updater-port`).
    pub listen: SocketAddr,
    /// `--agent-port`.
    pub agent_port: u16,
    /// The reservations of both ports.
    pub ports: [Port; 2],
}

impl Swarm {
    /// A home in a new temp dir with `swarm ca init` run; panics on failure.
    pub fn new() -> Swarm {
        let s = Swarm::uninitialised();
        s.ok(&["ca", "init"]);
        s
    }

    /// A home as swarm made them before signed releases (issue 15): `swarm
    /// ca init` run, then its release key removed, so the updater bundles
    /// it issues have no `release.pub` and unsigned pushes are taken.
    pub fn unsigned() -> Swarm {
        let s = Swarm::new();
        for f in ["release.key", "release.pub"] {
            let path = s.home().join("ca").join(f);
            std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        s
    }

    /// A home in a new temp dir, no CA yet; panics on failure.
    pub fn uninitialised() -> Swarm {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Swarm::create_in(tmp.path(), Bins::built()).unwrap_or_else(|e| panic!("{e:#}"));
        s._tmp = Some(tmp);
        s
    }

    /// A home under `root` (created), run with `bins`, no CA yet.
    pub fn create_in(root: &Path, bins: Bins) -> anyhow::Result<Swarm> {
        for d in ["home", "scratch", "workers"] {
            let d = root.join(d);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(Swarm {
            root: root.to_owned(),
            _tmp: None,
            bins,
        })
    }

    /// `SWARM_HOME`.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    /// Where bundles and trees go.
    pub fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// `scratch/<name>`: e.g. an `--out-dir`.
    pub fn out(&self, name: &str) -> PathBuf {
        self.scratch().join(name)
    }

    /// The `swarm` binary with this home (`SWARM_HOME`, no `HOME` to fall
    /// back on) and no colours.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bins.swarm);
        c.env("SWARM_HOME", self.home())
            .env_remove("HOME")
            .env("NO_COLOR", "1");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run swarm")
    }

    /// Run, expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "swarm {args:?}: {}", show(&out));
        stdout(&out)
    }

    /// Run, expecting exit `code`.
    fn exits(&self, args: &[&str], code: i32) -> Output {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "swarm {args:?}: {}",
            show(&out)
        );
        out
    }

    /// Run, expecting exit `code`; returns stdout.
    pub fn code(&self, args: &[&str], code: i32) -> String {
        stdout(&self.exits(args, code))
    }

    /// Run, expecting exit `code` and a stderr containing `needle`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32, needle: &str) -> String {
        let out = self.exits(args, code);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains(needle),
            "swarm {args:?}: stderr lacks {needle:?}: {err}"
        );
        err
    }

    /// Run, expecting exit `code` and JSON on stdout.
    pub fn json(&self, args: &[&str], code: i32) -> Value {
        let text = self.code(args, code);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// The hosts of `swarm list --json`.
    pub fn list(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.ok(&["list", "--json"])).expect("list --json");
        v["hosts"].as_array().expect("hosts array").clone()
    }

    /// `swarm enroll` `host` at 127.0.0.1 on two reserved ports, bundles in
    /// `scratch/<host>` and `scratch/<host>-updater`.
    pub fn try_enroll(&self, host: &str) -> anyhow::Result<Enrolled> {
        self.try_enroll_at(host, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// [`Swarm::try_enroll`] at `ip` (an address of this namespace, e.g.
    /// the root side of a veth the bench's master reaches it through).
    pub fn try_enroll_at(&self, host: &str, ip: IpAddr) -> anyhow::Result<Enrolled> {
        let address = ip.to_string();
        let updater_port = Port::reserve()?;
        let agent_port = Port::reserve()?;
        let out_dir = self.out(host);
        let out = self
            .command()
            .args(["enroll", "--host", host, "--address", &address])
            .args(["--updater-port", &updater_port.to_string()])
            .args(["--agent-port", &agent_port.to_string()])
            .arg("--updater")
            .arg("--out-dir")
            .arg(&out_dir)
            .output()
            .context("running swarm enroll")?;
        if !out.status.success() {
            bail!("swarm enroll {host}: {}", show(&out));
        }
        let bundles = WorkerBundles::load(host, &out_dir, &self.out(&format!("{host}-updater")))?;
        Ok(Enrolled {
            bundles,
            listen: SocketAddr::new(ip, updater_port.get()),
            agent_port: agent_port.get(),
            ports: [updater_port, agent_port],
        })
    }

    /// [`Swarm::try_enroll`] for tests: panics on failure.
    pub fn enroll(&self, host: &str) -> Enrolled {
        self.try_enroll(host).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Enroll `host` and start its updater in `workers/<host>/` with the
    /// enrolled bundles and ports, and an `.env.local` saying
    /// `AGENT_PORT=<its agent port>` (what release trees expand).
    pub fn try_worker(&self, host: &str, options: WorkerOptions) -> anyhow::Result<Worker> {
        self.try_worker_at(host, IpAddr::V4(Ipv4Addr::LOCALHOST), options)
    }

    /// [`Swarm::try_worker`], enrolled and its updater listening at `ip`
    /// (its agent stays on loopback).
    pub fn try_worker_at(
        &self,
        host: &str,
        ip: IpAddr,
        mut options: WorkerOptions,
    ) -> anyhow::Result<Worker> {
        let e = self.try_enroll_at(host, ip)?;
        options.agent_port = Some(e.agent_port);
        options.dir = Some(self.root.join("workers").join(host));
        let mut w = Worker::try_start(e.bundles, e.listen, options)?;
        for p in e.ports {
            w.hold(p);
        }
        let env = w.install_dir.join(".env.local");
        std::fs::write(&env, format!("AGENT_PORT={}\n", w.agent_port))
            .with_context(|| format!("writing {}", env.display()))?;
        Ok(w)
    }

    /// [`Swarm::try_worker`] with the test options; panics on failure.
    pub fn worker(&self, host: &str) -> Worker {
        let options = WorkerOptions {
            bins: self.bins.clone(),
            ..WorkerOptions::default()
        };
        self.try_worker(host, options)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Swarm::worker`] for each of `hosts`.
    pub fn fleet(&self, hosts: &[&str]) -> Vec<Worker> {
        hosts.iter().map(|h| self.worker(h)).collect()
    }

    /// A directory for a release tree, `scratch/trees/<name>`.
    pub fn tree(&self, name: &str) -> PathBuf {
        let dir = self.scratch().join("trees").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir tree");
        dir
    }

    /// A client with this home's master identity, pinned to CN `cn`.
    pub fn master_client(&self, cn: &str) -> reqwest::Client {
        let master = pki::Bundle::load(&self.home().join("master")).expect("master bundle");
        crate::worker::client_for(&master, cn)
    }
}

impl Default for Swarm {
    fn default() -> Self {
        Swarm::new()
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}
