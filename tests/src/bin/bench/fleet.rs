//! A local swarm fleet for the benchmark: the harness's [`Swarm`] with its
//! CA and N workers enrolled with `swarm enroll` (each its own
//! `worker-updater`, install dir and reserved ports on loopback, as
//! shipped), and the `swarm` commands the benchmark times against it.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use tests::worker::{Worker, WorkerOptions};
use tests::{Bins, Swarm, process};
use tokio::process::Command;

use crate::settle;

/// How long one `swarm` command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(900);

/// A `SWARM_HOME` and its running workers.
pub(crate) struct Fleet {
    swarm: Swarm,
    pub(crate) workers: Vec<Worker>,
    /// The network namespace `swarm` runs in (the store fan-out's shaped
    /// uplink), `None`: this one.
    netns: Option<String>,
}

/// Per-host outcome of `swarm update`/`rollback --json`.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostOutcome {
    pub(crate) host: String,
    pub(crate) status: String,
    pub(crate) sha256: Option<String>,
    /// The release's `release_id` (issue 12), when reported.
    pub(crate) release_id: Option<String>,
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
    /// A new home under `dir` with `n` workers named `<prefix>01…`, their
    /// updaters as shipped plus `updater_args`.
    pub(crate) async fn start(
        dir: &Path,
        bins: &Bins,
        updater_args: &[String],
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<Fleet> {
        Fleet::start_at(dir, bins, updater_args, prefix, n, None).await
    }

    /// [`Fleet::start`] with the workers enrolled and listening at `ip`
    /// and `swarm` run inside namespace `ns`: `at = Some((ip, ns))`.
    pub(crate) async fn start_at(
        dir: &Path,
        bins: &Bins,
        updater_args: &[String],
        prefix: &str,
        n: usize,
        at: Option<(IpAddr, &str)>,
    ) -> anyhow::Result<Fleet> {
        let swarm = Swarm::create_in(dir, bins.clone())?;
        process::run_ok(&mut swarm_cmd(&swarm, &["ca", "init"]), CMD_TIMEOUT).await?;
        let mut workers = Vec::with_capacity(n);
        for i in 1..=n {
            let host = format!("{prefix}{i:02}");
            let mut options = WorkerOptions::as_shipped(bins.clone());
            options.extra_args = updater_args.to_vec();
            let w = match at {
                Some((ip, _)) => swarm.try_worker_at(&host, ip, options)?,
                None => swarm.try_worker(&host, options)?,
            };
            settle::watch_releases(w.install_dir.join("releases"));
            workers.push(w);
        }
        Ok(Fleet {
            swarm,
            workers,
            netns: at.map(|(_, ns)| ns.to_owned()),
        })
    }

    fn swarm(&self) -> Command {
        match &self.netns {
            Some(ns) => crate::uplink::in_netns(ns, &self.swarm.command()),
            None => swarm_cmd(&self.swarm, &[]),
        }
    }

    /// `swarm ARGS`, expecting success (e.g. `store set`).
    pub(crate) async fn swarm_ok(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = self.swarm();
        cmd.args(args);
        process::run_ok(&mut cmd, CMD_TIMEOUT).await?;
        Ok(())
    }

    /// The master's scratch dir (for files like a credentials file).
    pub(crate) fn scratch(&self) -> std::path::PathBuf {
        self.swarm.scratch()
    }

    /// `swarm update --host H… --root TREE --json` (or `--all`), timed.
    pub(crate) async fn update(
        &self,
        hosts: Option<&[&str]>,
        root: &Path,
        parallel: Option<u16>,
    ) -> anyhow::Result<Outcome> {
        self.update_with(hosts, root, parallel, &[]).await
    }

    /// [`Fleet::update`] with more flags (`--full`).
    pub(crate) async fn update_with(
        &self,
        hosts: Option<&[&str]>,
        root: &Path,
        parallel: Option<u16>,
        extra: &[&str],
    ) -> anyhow::Result<Outcome> {
        let mut cmd = self.swarm();
        cmd.arg("update").args(extra);
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
        let t = process::run_ok(&mut cmd, CMD_TIMEOUT).await?;
        Ok(t.elapsed)
    }

    /// `swarm rollback --host H --json`, timed.
    pub(crate) async fn rollback(&self, host: &str) -> anyhow::Result<Outcome> {
        let mut cmd = self.swarm();
        cmd.args(["rollback", "--host", host, "--json"]);
        self.run_json(&mut cmd).await
    }

    /// `swarm rollback --host H --to ID` (a kept release, issue 12).
    pub(crate) async fn rollback_to(&self, host: &str, id: &str) -> anyhow::Result<Outcome> {
        let mut cmd = self.swarm();
        cmd.args(["rollback", "--host", host, "--to", id, "--json"]);
        self.run_json(&mut cmd).await
    }

    async fn run_json(&self, cmd: &mut Command) -> anyhow::Result<Outcome> {
        let t = process::run_timed(cmd, CMD_TIMEOUT).await?;
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
            .find(|w| w.bundles.host.as_str() == host)
            .ok_or_else(|| anyhow!("no worker {host}"))
    }

    /// The name of the first worker.
    pub(crate) fn first_host(&self) -> anyhow::Result<String> {
        self.workers
            .first()
            .map(|w| w.bundles.host.to_string())
            .ok_or_else(|| anyhow!("a fleet without workers"))
    }
}

/// `swarm ARGS` of `swarm`'s home, as a tokio command.
fn swarm_cmd(swarm: &Swarm, args: &[&str]) -> Command {
    let mut c = Command::from(swarm.command());
    c.args(args);
    c
}

/// Poll the agent of `w` every 5 ms until it answers on release `sha`;
/// the instant it did.
pub(crate) async fn wait_release(
    w: &Worker,
    sha: &str,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let (_, at) = w
        .wait_release(sha, timeout, Duration::from_millis(5))
        .await?;
    Ok(at)
}

/// After a fan-out push `out` (`what` in messages): every host of `fleet`
/// updated, and the instant the last agent answered on the release.
pub(crate) async fn all_serve(
    fleet: &Fleet,
    out: &Outcome,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let n = fleet.workers.len();
    anyhow::ensure!(
        out.hosts.len() == n && out.hosts.iter().all(|h| h.status == "updated"),
        "{what} to {n} did not update every host: {}",
        out.raw
    );
    let sha = out.hosts[0]
        .sha256
        .clone()
        .ok_or_else(|| anyhow!("no release sha256 in {}", out.raw))?;
    let mut last = Instant::now();
    for w in &fleet.workers {
        last = last.max(wait_release(w, &sha, timeout).await?);
    }
    Ok(last)
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
            let release_id = [agent, body, h].iter().find_map(|v| {
                v.get("release")
                    .and_then(|r| r.get("release_id"))
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
                release_id,
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
