//! A local swarm fleet for the benchmark: a `SWARM_HOME` with its CA, N
//! workers enrolled with `swarm enroll`, each with its own `worker-updater`
//! (own install dir and ports) on loopback, and the `swarm` commands the
//! benchmark times against it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use tests::Port;
use tokio::process::Command;

use crate::procs::{self, Daemon};

/// How long one `swarm` command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(900);
/// How long an updater may take to print `listening on …`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Paths of the built binaries.
#[derive(Clone, Debug)]
pub(crate) struct Bins {
    pub(crate) swarm: PathBuf,
    pub(crate) updater: PathBuf,
    pub(crate) agent: PathBuf,
    /// Extra arguments for every updater (tuning experiments).
    pub(crate) updater_args: Vec<String>,
}

/// One worker: its bundles, install dir, ports and running updater.
pub(crate) struct Worker {
    pub(crate) host: String,
    pub(crate) agent_port: u16,
    pub(crate) updater: Daemon,
    client: reqwest::Client,
    /// Both ports, reserved as long as the worker lives.
    _ports: [Port; 2],
}

impl Worker {
    pub(crate) fn agent_url(&self) -> String {
        format!("https://127.0.0.1:{}/health", self.agent_port)
    }

    /// Poll the agent until it answers on release `sha`; the instant it did.
    pub(crate) async fn wait_release(
        &self,
        sha: &str,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        procs::wait_health(&self.client, &self.agent_url(), Some(sha), timeout)
            .await
            .with_context(|| format!("agent of {}", self.host))
    }

    pub(crate) fn updater_pid(&self) -> anyhow::Result<u32> {
        self.updater
            .pid()
            .ok_or_else(|| anyhow!("the updater of {} is not running", self.host))
    }
}

/// A `SWARM_HOME` and its running workers.
pub(crate) struct Fleet {
    dir: PathBuf,
    pub(crate) home: PathBuf,
    pub(crate) bins: Bins,
    pub(crate) workers: Vec<Worker>,
}

/// Per-host outcome of `swarm update`/`rollback --json`.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostOutcome {
    pub(crate) host: String,
    pub(crate) status: String,
    pub(crate) sha256: Option<String>,
    /// The updater's `timings`, when the CLI passes them on.
    pub(crate) timings: Option<pki::wire::Timings>,
    /// The CLI's own per-host time, ms, when it reports one.
    pub(crate) elapsed_ms: Option<f64>,
    pub(crate) probes: Vec<pki::wire::Probe>,
}

/// What one `swarm update`/`rollback` run gave.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) hosts: Vec<HostOutcome>,
    /// The CLI's pack time, ms, when it reports one.
    pub(crate) pack_ms: Option<f64>,
    /// The released tarball's size, when reported.
    pub(crate) size_bytes: Option<u64>,
    pub(crate) raw: Value,
}

impl Outcome {
    pub(crate) fn host(&self, host: &str) -> anyhow::Result<&HostOutcome> {
        self.hosts
            .iter()
            .find(|h| h.host == host)
            .ok_or_else(|| anyhow!("no result for {host} in: {}", self.raw))
    }
}

impl Fleet {
    /// A new home under `dir` with `n` workers named `<prefix>01…`.
    pub(crate) async fn start(
        dir: &Path,
        bins: &Bins,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<Fleet> {
        let home = dir.join("home");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut fleet = Fleet {
            dir: dir.to_owned(),
            home,
            bins: bins.clone(),
            workers: Vec::with_capacity(n),
        };
        procs::run_ok(fleet.swarm().args(["ca", "init"]), CMD_TIMEOUT).await?;
        for i in 1..=n {
            let host = format!("{prefix}{i:02}");
            let wdir = dir.join(&host);
            std::fs::create_dir_all(&wdir)
                .with_context(|| format!("creating {}", wdir.display()))?;
            let agent_port = Port::reserve()?;
            let updater_port = Port::reserve()?;
            let agent_dir = wdir.join("agent");
            let updater_dir = wdir.join("agent-updater");
            procs::run_ok(
                fleet
                    .swarm()
                    .args(["enroll", "--host", &host, "--address", "127.0.0.1"])
                    .args(["--agent-port", &agent_port.to_string()])
                    .args(["--updater-port", &updater_port.to_string()])
                    .arg("--updater")
                    .arg("--out-dir")
                    .arg(&agent_dir),
                CMD_TIMEOUT,
            )
            .await?;
            let install_dir = wdir.join("install");
            std::fs::create_dir_all(&install_dir)
                .with_context(|| format!("creating {}", install_dir.display()))?;
            procs::watch_releases(install_dir.join("releases"));
            std::fs::write(
                install_dir.join(".env.local"),
                format!("AGENT_PORT={agent_port}\n"),
            )
            .context("writing .env.local")?;
            let mut cmd = std::process::Command::new(&bins.updater);
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{updater_port}"))
                .arg("--updater-dir")
                .arg(&updater_dir)
                .arg("--agent-dir")
                .arg(&agent_dir)
                .arg("--install-dir")
                .arg(&install_dir)
                .arg("--agent-cmd")
                .arg(format!(
                    "{} --listen 127.0.0.1:{agent_port}",
                    bins.agent.display()
                ))
                .arg("--agent-url")
                .arg(format!("https://127.0.0.1:{agent_port}/health"))
                .args(&bins.updater_args)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1");
            let (updater, _addr) = Daemon::spawn_listening(
                &format!("worker-updater of {host}"),
                &mut cmd,
                &wdir.join("updater.log"),
                START_TIMEOUT,
            )?;
            let client = procs::health_client(&fleet.home.join("master"), &host)?;
            fleet.workers.push(Worker {
                host,
                agent_port: agent_port.get(),
                updater,
                client,
                _ports: [agent_port, updater_port],
            });
        }
        Ok(fleet)
    }

    fn swarm(&self) -> Command {
        let mut c = Command::new(&self.bins.swarm);
        c.arg("--home").arg(&self.home).env("NO_COLOR", "1");
        c
    }

    /// `swarm update --host H… --root TREE --json` (or `--all`), timed.
    pub(crate) async fn update(
        &self,
        hosts: Option<&[&str]>,
        root: &Path,
        parallel: Option<u16>,
    ) -> anyhow::Result<Outcome> {
        let mut cmd = self.swarm();
        cmd.arg("update");
        if let Some(n) = parallel {
            cmd.arg("--parallel").arg(n.to_string());
        }
        match hosts {
            Some(h) => cmd.arg("--host").arg(h.join(",")),
            None => cmd.arg("--all"),
        };
        cmd.arg("--root").arg(root).arg("--json");
        self.run_json(&mut cmd).await
    }

    /// `swarm update --dry-run`: the pack alone (plus CLI start-up), timed.
    pub(crate) async fn pack_only(&self, root: &Path) -> anyhow::Result<Duration> {
        let mut cmd = self.swarm();
        cmd.args(["update", "--all", "--dry-run", "--json", "--root"])
            .arg(root);
        let t = procs::run_ok(&mut cmd, CMD_TIMEOUT).await?;
        Ok(t.elapsed)
    }

    /// `swarm rollback --host H --json`, timed.
    pub(crate) async fn rollback(&self, host: &str) -> anyhow::Result<Outcome> {
        let mut cmd = self.swarm();
        cmd.args(["rollback", "--host", host, "--json"]);
        self.run_json(&mut cmd).await
    }

    async fn run_json(&self, cmd: &mut Command) -> anyhow::Result<Outcome> {
        let t = procs::run_timed(cmd, CMD_TIMEOUT).await?;
        let raw: Value = serde_json::from_str(t.stdout.trim()).with_context(|| {
            format!(
                "{cmd:?} ({}) printed no JSON: {}{}",
                t.status,
                t.stdout.trim(),
                t.stderr.trim()
            )
        })?;
        let hosts = host_outcomes(&raw);
        if hosts.is_empty() {
            bail!(
                "{cmd:?}: no per-host results in {raw}; stderr: {}",
                t.stderr.trim()
            );
        }
        Ok(Outcome {
            pack_ms: raw.get("pack_ms").and_then(Value::as_f64),
            size_bytes: find_number(&raw, &["size_bytes"]).map(|v| v as u64),
            hosts,
            raw,
        })
    }

    pub(crate) fn worker(&self, host: &str) -> anyhow::Result<&Worker> {
        self.workers
            .iter()
            .find(|w| w.host == host)
            .ok_or_else(|| anyhow!("no worker {host}"))
    }
}

impl Drop for Fleet {
    /// Stop the updaters, then the agents they spawned (which outlive
    /// their updater by design, and run with their cwd in the fleet dir).
    fn drop(&mut self) {
        self.workers.clear();
        procs::sweep_agents_in(&self.dir);
    }
}

/// Read per-host results out of the CLI's JSON, whatever its exact
/// shape: an array of host objects under `hosts`/`results`, or at the top.
fn host_outcomes(raw: &Value) -> Vec<HostOutcome> {
    let list = ["hosts", "results"]
        .iter()
        .find_map(|k| raw.get(*k).and_then(Value::as_array))
        .or_else(|| raw.as_array());
    let Some(list) = list else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|h| {
            let host = h.get("host")?.as_str()?.to_owned();
            let body = h.get("response").unwrap_or(h);
            let agent = h.get("agent").filter(|a| a.is_object()).unwrap_or(body);
            // `swarm --json` says `"agent": "updated"`; an updater body says `status`.
            let status = h
                .get("agent")
                .and_then(Value::as_str)
                .or_else(|| {
                    [h, agent, body]
                        .iter()
                        .find_map(|v| v.get("status").and_then(Value::as_str))
                })
                .unwrap_or_default()
                .to_owned();
            let sha256 = [agent, body, h].iter().find_map(|v| {
                v.get("release")
                    .and_then(|r| r.get("sha256"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            let timings = [agent, body, h].iter().find_map(|v| {
                v.get("timings")
                    .and_then(|t| serde_json::from_value(t.clone()).ok())
            });
            let probes = [agent, body, h]
                .iter()
                .find_map(|v| {
                    v.get("probes")
                        .and_then(|p| serde_json::from_value(p.clone()).ok())
                })
                .unwrap_or_default();
            let elapsed_ms = h.get("elapsed_ms").and_then(Value::as_f64);
            Some(HostOutcome {
                host,
                status,
                sha256,
                timings,
                elapsed_ms,
                probes,
            })
        })
        .collect()
}

/// The first number found under any of `keys`, searching depth-first.
fn find_number(v: &Value, keys: &[&str]) -> Option<f64> {
    match v {
        Value::Object(map) => {
            for k in keys {
                if let Some(n) = map.get(*k).and_then(Value::as_f64) {
                    return Some(n);
                }
            }
            map.values().find_map(|c| find_number(c, keys))
        }
        Value::Array(a) => a.iter().find_map(|c| find_number(c, keys)),
        _ => None,
    }
}
