//! `bench`: swarm's benchmark harness. Pushes generated trees to local
//! workers with `swarm` and, in the same run, with what a user would pick
//! instead (rsync over ssh, then an agent restart) and against the local
//! tar floor; then broken pushes, rollbacks, fan-out and the updater's
//! memory. Prints one table of medians, spreads, ratios and targets.
//!
//! `cargo run --release -p tests --bin bench -- --help`; see
//! `wiki/performance.md` for what is measured how, and a recorded run.

#[path = "bench/baseline.rs"]
mod baseline;
#[path = "bench/fleet.rs"]
mod fleet;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/settle.rs"]
mod settle;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/tree.rs"]
mod tree;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use clap::Parser;

use crate::baseline::{BaselineAgent, Sshd};
use tests::worker::short;
use tests::{Bins, process};

use crate::fleet::{Fleet, Outcome};
use crate::report::{Report, Target, Unit};
use crate::tree::{AgentKind, AgentLaunch, Shape, Tree};

/// How long an agent may take to answer on the expected release after the
/// command that should have put it there returned.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;
/// `swarm update --parallel` when not given.
const DEFAULT_PARALLEL: usize = 8;

/// The sections of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// Only the baselines of `push` (rsync over ssh, tar floor, agent start).
    Baselines,
    /// Push to healthy, small and large, side by side with rsync and the tar floor.
    Push,
    /// Broken push until the old release serves again.
    Broken,
    /// `swarm rollback` until the previous release serves.
    Rollback,
    /// `swarm update --all` to 1, 5 and 20 workers.
    Fanout,
    /// The updater's peak RSS while it receives large uploads.
    Memory,
}

/// swarm's benchmark: push, rollback, fan-out and memory, against rsync
/// over ssh and a local tar floor.
#[derive(Debug, Parser)]
#[command(name = "bench", max_term_width = 100)]
struct Args {
    /// Repetitions of each timed figure [default: 5, or 2 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    reps: Option<u32>,
    /// A fast smoke run: 2 reps (unless --reps), a 20 MB "large" tree, a 2 MB fan-out tree,
    /// 64 and 128 MB memory uploads.
    #[arg(long)]
    quick: bool,
    /// Run only these sections (comma separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Fan-out fleet sizes.
    #[arg(long, value_delimiter = ',', value_name = "N,…")]
    fanout: Vec<usize>,
    /// `swarm update --parallel` for the fan-out (default: the CLI's own).
    #[arg(long, value_name = "N")]
    fanout_parallel: Option<u16>,
    /// Upload sizes for the memory figure, MB (10^6 bytes; the updater's
    /// default upload cap is 1 GiB, so 1000 is the largest that fits).
    #[arg(long, value_delimiter = ',', value_name = "MB,…")]
    mem_sizes: Vec<u64>,
    /// Seed for the generated trees.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory to create the work dir in (trees, installs, logs).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the work dir (and its logs) after the run.
    #[arg(long)]
    keep: bool,
    /// Use the binaries in target/release as they are instead of building them.
    #[arg(long)]
    no_build: bool,
    /// Where swarm, worker-updater and worker-agent are (default: next to
    /// this executable, i.e. target/release). Implies --no-build.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Fail instead of installing openssh-server and rsync with apt-get.
    #[arg(long)]
    no_install: bool,
    /// Ship a copy of worker-agent in every tree (bin/worker-agent) instead
    /// of running one copy from outside the trees. Adds the binary's size
    /// to every tree.
    #[arg(long)]
    agent_in_tree: bool,
    /// An extra argument for every worker-updater (repeatable), for tuning
    /// experiments, e.g. `--updater-arg=--probe-max-backoff-ms=250`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    updater_arg: Vec<String>,
    /// Also write the report to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// What this run measures, with `--quick` and the flags applied.
#[derive(Debug)]
struct Plan {
    reps: u32,
    small: Shape,
    large: Shape,
    fan: Shape,
    fanout: Vec<usize>,
    fanout_parallel: Option<u16>,
    mem_sizes_mb: Vec<u64>,
    mem_reps: u32,
    sections: Vec<Section>,
    /// Keep fleets' install dirs and logs (`--keep`).
    keep: bool,
}

impl Plan {
    fn from_args(args: &Args) -> Plan {
        let quick = args.quick;
        let reps = args.reps.unwrap_or(if quick { 2 } else { 5 });
        let mb = |n: u64| n * 1_000_000;
        Plan {
            reps,
            small: Shape {
                name: "small",
                bytes: mb(1),
                files: 200,
                noise_only: false,
            },
            large: Shape {
                name: "large",
                bytes: if quick { mb(20) } else { mb(100) },
                files: if quick { 1000 } else { 5000 },
                noise_only: false,
            },
            fan: Shape {
                name: "fan",
                bytes: if quick { mb(2) } else { mb(10) },
                files: if quick { 200 } else { 1000 },
                noise_only: false,
            },
            fanout: if !args.fanout.is_empty() {
                args.fanout.clone()
            } else {
                vec![1, 5, 20]
            },
            fanout_parallel: args.fanout_parallel,
            mem_sizes_mb: if !args.mem_sizes.is_empty() {
                args.mem_sizes.clone()
            } else if quick {
                vec![64, 128]
            } else {
                vec![250, 500, 1000]
            },
            mem_reps: reps.min(3),
            keep: args.keep,
            sections: if args.only.is_empty() {
                vec![
                    Section::Push,
                    Section::Broken,
                    Section::Rollback,
                    Section::Fanout,
                    Section::Memory,
                ]
            } else {
                args.only.clone()
            },
        }
    }

    fn has(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async {
        let signals = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        };
        // Dropping `run` on a signal drops every guard it holds, which
        // stops the daemons and removes the work dir.
        tokio::select! {
            r = run(args) => r,
            sig = signals => Err(anyhow!("{sig}: stopped; everything started was stopped")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The work dir: removed at the end, after every process still running
/// out of it has been killed.
struct Work {
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl Work {
    fn path(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => Path::new("/nonexistent"),
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let killed = process::sweep(dir.path());
        if killed > 0 {
            eprintln!("bench: killed {killed} leftover process(es)");
        }
        if self.keep {
            let path = dir.keep();
            eprintln!("bench: kept {}", path.display());
        }
    }
}

/// Say what is happening, on stderr (the table goes to stdout).
macro_rules! step {
    ($($t:tt)*) => { eprintln!("bench: {}", format_args!($($t)*)) };
}

async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args);
    let target_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("finding the bench executable")?
            .parent()
            .map(Path::to_owned)
            .ok_or_else(|| anyhow!("the bench executable has no directory"))?,
    };
    let only_baselines = plan.sections == [Section::Baselines];
    if !args.no_build && args.bin_dir.is_none() {
        build_binaries(only_baselines).await?;
    }
    let bins = Bins {
        swarm: target_dir.join("swarm"),
        updater: target_dir.join("worker-updater"),
        agent: target_dir.join("worker-agent"),
    };
    let needed: &[&PathBuf] = if only_baselines {
        &[&bins.agent]
    } else {
        &[&bins.swarm, &bins.updater, &bins.agent]
    };
    for b in needed {
        ensure!(
            b.exists(),
            "{} is missing: build it with `cargo build --release` (or drop --no-build)",
            b.display()
        );
    }
    // Only the push baselines need sshd and rsync.
    if plan.has(Section::Push) || plan.has(Section::Baselines) {
        baseline::ensure_tools(!args.no_install).await?;
    }

    let base = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = Work {
        dir: Some(
            tempfile::Builder::new()
                .prefix("swarm-bench-")
                .tempdir_in(&base)
                .with_context(|| format!("creating a work dir in {}", base.display()))?,
        ),
        keep: args.keep,
    };
    let root = work.path().to_owned();
    step!("work dir {}", root.display());
    let machine = machine_info(&root).await;
    step!("{}", machine.replace('\n', "; "));

    // One agent binary outside the trees (unless --agent-in-tree); living
    // under the work dir, its processes are found by the final sweep.
    std::fs::create_dir_all(root.join("bin"))?;
    let agent_copy = root.join("bin/worker-agent");
    std::fs::copy(&bins.agent, &agent_copy).context("copying worker-agent")?;
    let bins = Bins {
        agent: agent_copy.clone(),
        ..bins
    };
    let (launch, in_tree) = if args.agent_in_tree {
        (
            AgentLaunch {
                binary: "bin/worker-agent".into(),
            },
            Some(agent_copy.as_path()),
        )
    } else {
        (
            AgentLaunch {
                binary: agent_copy.display().to_string(),
            },
            None,
        )
    };
    let gen_tree = |shape: Shape, kind: AgentKind, dir: &str| -> anyhow::Result<Tree> {
        let t = tree::generate(
            &root.join("trees").join(dir),
            shape,
            args.seed,
            &launch,
            kind,
            in_tree,
        )?;
        step!(
            "generated {dir}: {} files, {:.1} MB",
            t.files,
            t.bytes as f64 / 1e6
        );
        Ok(t)
    };

    let mut report = Report::default();
    let mut revs = Revisions::default();
    let started = Instant::now();

    let needs_single =
        plan.has(Section::Push) || plan.has(Section::Broken) || plan.has(Section::Rollback);
    let small = gen_tree(plan.small, AgentKind::Healthy, "small")?;
    let mut single = None;
    if needs_single {
        step!("starting a one-worker fleet");
        let fleet =
            Fleet::start(&root.join("fleet-1"), &bins, &args.updater_arg, "solo", 1).await?;
        // The first install (nothing to stop, no prev) is not measured.
        let host = fleet.first_host()?;
        push_healthy(&fleet, &host, &small, &mut revs).await?;
        single = Some(fleet);
    }

    if plan.has(Section::Push) || plan.has(Section::Baselines) {
        let fleet = single.as_ref();
        let large = gen_tree(plan.large, AgentKind::Healthy, "large")?;
        let sshd = Sshd::start(&root.join("sshd")).await?;
        step!("sshd on 127.0.0.1:{}", sshd.port);
        let mut agent = BaselineAgent::new(
            &root.join("baseline"),
            bins_agent_outside(&args, &agent_copy),
        )?;
        push_section(
            &plan,
            &root,
            fleet,
            &sshd,
            &mut agent,
            &small,
            &large,
            &mut report,
            &mut revs,
        )
        .await?;
        agent.stop();
        let _ = std::fs::remove_dir_all(&large.root);
    }

    if plan.has(Section::Broken) {
        let fleet = single
            .as_ref()
            .ok_or_else(|| anyhow!("no single-worker fleet"))?;
        let exits = gen_tree(plan.small, AgentKind::ExitsAtOnce, "broken-exits")?;
        let unhealthy = gen_tree(plan.small, AgentKind::Unhealthy, "broken-503")?;
        broken_section(
            &plan,
            fleet,
            &small,
            &exits,
            &unhealthy,
            &mut report,
            &mut revs,
        )
        .await?;
    }

    if plan.has(Section::Rollback) {
        let fleet = single
            .as_ref()
            .ok_or_else(|| anyhow!("no single-worker fleet"))?;
        rollback_section(&plan, fleet, &small, &mut report, &mut revs).await?;
    }
    drop(single);

    if plan.has(Section::Fanout) {
        let fan = gen_tree(plan.fan, AgentKind::Healthy, "fan")?;
        fanout_section(
            &plan,
            &root,
            &bins,
            &args.updater_arg,
            &fan,
            &mut report,
            &mut revs,
        )
        .await?;
        let _ = std::fs::remove_dir_all(&fan.root);
    }

    if plan.has(Section::Memory) {
        memory_section(
            &plan,
            &root,
            &bins,
            &args.updater_arg,
            &gen_tree,
            &mut report,
            &mut revs,
        )
        .await?;
    }

    set_targets(&mut report);
    report.notes.push(format!(
        "run took {:.0} s; reps {} (memory {}); trees: small {} B/{} files, large {:.0} MB/{} files, \
         fan-out {:.0} MB/{} files{}",
        started.elapsed().as_secs_f64(),
        plan.reps,
        plan.mem_reps,
        plan.small.bytes,
        plan.small.files,
        plan.large.bytes as f64 / 1e6,
        plan.large.files,
        plan.fan.bytes as f64 / 1e6,
        plan.fan.files,
        if args.agent_in_tree {
            ", plus bin/worker-agent in each"
        } else {
            ""
        }
    ));
    if !args.updater_arg.is_empty() {
        report.notes.push(format!(
            "worker-updater run with extra arguments: {}",
            args.updater_arg.join(" ")
        ));
    }
    report
        .notes
        .push(format!("machine: {}", machine.replace('\n', "; ")));
    let text = report.render();
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    drop(work);
    Ok(())
}

fn bins_agent_outside(args: &Args, copy: &Path) -> Option<PathBuf> {
    (!args.agent_in_tree).then(|| copy.to_owned())
}

/// `cargo build --release` of the three binaries the benchmark drives.
async fn build_binaries(agent_only: bool) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let packages: &[&str] = if agent_only {
        &["-p", "worker-agent"]
    } else {
        &["-p", "swarm", "-p", "worker-updater", "-p", "worker-agent"]
    };
    step!(
        "building {} (release)",
        packages
            .iter()
            .filter(|p| **p != "-p")
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    );
    let status = tokio::process::Command::new(cargo)
        .args(["build", "--release"])
        .args(packages)
        .status()
        .await
        .context("running cargo build (use --no-build to skip)")?;
    ensure!(status.success(), "cargo build failed ({status})");
    Ok(())
}

/// Unique revision strings, so that every push is a new release.
#[derive(Default)]
struct Revisions(u64);

impl Revisions {
    fn next(&mut self, what: &str) -> String {
        self.0 += 1;
        format!("{what}-{}-{}", self.0, std::process::id())
    }
}

/// One healthy push: wall time from the command's start until the agent
/// answers on the new release, and what the CLI said.
struct Pushed {
    wall: Duration,
    sha256: String,
    outcome: Outcome,
}

async fn push_healthy(
    fleet: &Fleet,
    host: &str,
    tree: &Tree,
    revs: &mut Revisions,
) -> anyhow::Result<Pushed> {
    tree.set_revision(&revs.next(tree.shape.name))?;
    settle::settle().await;
    let start = Instant::now();
    let outcome = fleet.update(Some(&[host]), &tree.root, None).await?;
    let h = outcome.host(host)?;
    ensure!(
        h.status == "updated",
        "push of {} to {host} did not update: {}",
        tree.shape.name,
        outcome.raw
    );
    let sha256 = h
        .sha256
        .clone()
        .ok_or_else(|| anyhow!("no release sha256 in {}", outcome.raw))?;
    let at = fleet::wait_release(fleet.worker(host)?, &sha256, SETTLE_TIMEOUT).await?;
    Ok(Pushed {
        wall: at - start,
        sha256,
        outcome,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The part of the updater's total that no phase accounts for: staging
/// set-up before the upload, the manifest and `swarm.toml` checks. (Older
/// updaters report no `confirm_ms`: their confirm, which also deleted the
/// replaced release, lands here.)
fn unattributed(t: &pki::wire::Timings) -> f64 {
    let phases =
        t.receive_ms + t.install_ms + t.sync_flip_ms + t.restart_ms + t.probe_ms + t.confirm_ms;
    t.total_ms.saturating_sub(phases) as f64
}

/// Record the phases of one swarm push under `label`.
fn record_push_phases(report: &mut Report, label: &str, host: &str, p: &Pushed) {
    let phases = report.phases(label);
    let wall = ms(p.wall);
    let Ok(h) = p.outcome.host(host) else { return };
    let mut accounted = 0.0;
    if let Some(pack) = p.outcome.pack_ms {
        phases.push("pack+compress", pack);
        accounted += pack;
    }
    if let Some(t) = &h.timings {
        let t: &pki::wire::Timings = t;
        phases.push("transfer+extract", t.receive_ms as f64);
        phases.push("install hook", t.install_ms as f64);
        phases.push("sync+flip", t.sync_flip_ms as f64);
        phases.push("agent restart", t.restart_ms as f64);
        phases.push("probe", t.probe_ms as f64);
        phases.push("confirm", t.confirm_ms as f64);
        phases.push("updater other", unattributed(t));
        phases.push("updater total", t.total_ms as f64);
        accounted += t.total_ms as f64;
    }
    phases.push(
        if p.outcome.pack_ms.is_some() {
            "other (CLI start, connect, reply)"
        } else {
            "CLI start+pack+compress+connect"
        },
        (wall - accounted).max(0.0),
    );
    phases.push("wall", wall);
}

#[allow(clippy::too_many_arguments)]
async fn push_section(
    plan: &Plan,
    root: &Path,
    fleet: Option<&Fleet>,
    sshd: &Sshd,
    agent: &mut BaselineAgent,
    small: &Tree,
    large: &Tree,
    report: &mut Report,
    revs: &mut Revisions,
) -> anyhow::Result<()> {
    let scratch = root.join("scratch");
    std::fs::create_dir_all(&scratch)?;

    for (tree, name) in [(small, "small"), (large, "large")] {
        // A first rsync + agent start, not measured: warms the sshd and
        // gives the incremental rsync a destination.
        let incr_dest = scratch.join(format!("rsync-{name}-incr"));
        baseline::rsync_and_restart(sshd, agent, tree, &incr_dest).await?;
        for rep in 0..plan.reps {
            step!("push {name}: rep {}/{}", rep + 1, plan.reps);
            // Interleaved, so that drift in the machine's load hits every
            // method alike.
            let floor_dest = scratch.join(format!("floor-{name}-{rep}"));
            settle::settle().await;
            let floor = baseline::tar_floor(&tree.root, &floor_dest).await?;
            let _ = std::fs::remove_dir_all(&floor_dest);
            report
                .row(
                    &format!("floor-{name}"),
                    &format!("{name}: tar | gzip -1 | gunzip | tar -x + sync"),
                    Unit::Seconds,
                )
                .samples
                .push(secs(floor));

            let dest = scratch.join(format!("rsync-{name}-{rep}"));
            settle::settle().await;
            let r = baseline::rsync_and_restart(sshd, agent, tree, &dest).await?;
            {
                let ph = report.phases(&format!("{name}: rsync first sync + restart"));
                ph.push("rsync", ms(r.rsync));
                ph.push("agent restart+health", ms(r.restart));
                ph.push("wall", ms(r.total()));
            }
            let row = report.row(
                &format!("rsync-{name}"),
                &format!("{name}: rsync -a over ssh (first sync) + agent restart"),
                Unit::Seconds,
            );
            row.samples.push(secs(r.total()));
            row.baselines = vec![format!("floor-{name}")];

            tree.set_revision(&revs.next("rsync"))?;
            settle::settle().await;
            let r = baseline::rsync_and_restart(sshd, agent, tree, &incr_dest).await?;
            let row = report.row(
                &format!("rsync-incr-{name}"),
                &format!("{name}: rsync -a over ssh (1 file changed) + agent restart"),
                Unit::Seconds,
            );
            row.samples.push(secs(r.total()));
            row.baselines = vec![format!("floor-{name}")];
            // Restart needs the release dir; the first-sync copy can go once
            // the agent runs from the incremental one.
            let _ = std::fs::remove_dir_all(&dest);

            if name == "small" {
                agent.stop();
                settle::settle().await;
                let start = agent.restart(&incr_dest).await?;
                report
                    .row(
                        "agent-start",
                        "worker-agent alone: spawn until /health answers",
                        Unit::Seconds,
                    )
                    .samples
                    .push(secs(start));
            }
            let Some(fleet) = fleet else { continue };
            let host = fleet.first_host()?;
            settle::settle().await;
            let pack = fleet.pack_only(&tree.root).await?;
            report
                .row(
                    &format!("pack-{name}"),
                    &format!("{name}: swarm update --dry-run (CLI start + pack)"),
                    Unit::Seconds,
                )
                .samples
                .push(secs(pack));

            let p = push_healthy(fleet, &host, tree, revs).await?;
            let row = report.row(
                &format!("swarm-{name}"),
                &format!("{name}: swarm update --host, until the agent serves it"),
                Unit::Seconds,
            );
            row.samples.push(secs(p.wall));
            row.baselines = vec![format!("rsync-{name}"), format!("floor-{name}")];
            record_push_phases(report, &format!("{name}: swarm push"), &host, &p);
            if let (0, Some(size)) = (rep, p.outcome.size_bytes) {
                report.notes.push(format!(
                    "{name} tree: {} files, {:.2} MB on disk, {:.2} MB as the gzip swarm uploads",
                    tree.files,
                    tree.bytes as f64 / 1e6,
                    size as f64 / 1e6
                ));
            }
        }
        agent.stop();
        let _ = std::fs::remove_dir_all(&incr_dest);
    }
    Ok(())
}

async fn broken_section(
    plan: &Plan,
    fleet: &Fleet,
    good: &Tree,
    exits: &Tree,
    unhealthy: &Tree,
    report: &mut Report,
    revs: &mut Revisions,
) -> anyhow::Result<()> {
    let host = fleet.first_host()?;
    let worker = fleet.worker(&host)?;
    // A known-good release to come back to.
    let good_sha = push_healthy(fleet, &host, good, revs).await?.sha256;
    for (tree, key, label) in [
        (
            exits,
            "broken-exits",
            "broken push (agent exits at once) until the old release serves",
        ),
        (
            unhealthy,
            "broken-503",
            "broken push (agent up, /health 503) until the old release serves",
        ),
    ] {
        for rep in 0..plan.reps {
            step!("{key}: rep {}/{}", rep + 1, plan.reps);
            tree.set_revision(&revs.next(key))?;
            settle::settle().await;
            let start = Instant::now();
            let out = fleet
                .update(Some(&[host.as_str()]), &tree.root, None)
                .await?;
            let h = out.host(&host)?;
            ensure!(
                h.status == "rolled-back",
                "a broken push to {host} was not rolled back: {}",
                out.raw
            );
            let at = fleet::wait_release(worker, &good_sha, SETTLE_TIMEOUT).await?;
            let row = report.row(key, label, Unit::Seconds);
            row.samples.push(secs(at - start));
            row.baselines = vec!["rsync-incr-small".into()];
            let ph = report.phases(key);
            for p in &h.probes {
                ph.push(&format!("{} probe", p.phase), p.elapsed_ms as f64);
                ph.push(&format!("{} attempts", p.phase), f64::from(p.attempts));
            }
            if let Some(t) = &h.timings {
                ph.push("updater total", t.total_ms as f64);
            }
            ph.push("wall", ms(at - start));
        }
    }
    Ok(())
}

async fn rollback_section(
    plan: &Plan,
    fleet: &Fleet,
    tree: &Tree,
    report: &mut Report,
    revs: &mut Revisions,
) -> anyhow::Result<()> {
    let host = fleet.first_host()?;
    let worker = fleet.worker(&host)?;
    // Two healthy pushes: active = b, prev = a.
    let mut prev = push_healthy(fleet, &host, tree, revs).await?.sha256;
    let mut active = push_healthy(fleet, &host, tree, revs).await?.sha256;
    for rep in 0..plan.reps {
        step!("rollback: rep {}/{}", rep + 1, plan.reps);
        settle::settle().await;
        let start = Instant::now();
        let out = fleet.rollback(&host).await?;
        let h = out.host(&host)?;
        ensure!(
            h.status == "rolled-back",
            "rollback of {host} failed: {}",
            out.raw
        );
        if let Some(sha) = &h.sha256 {
            ensure!(
                *sha == prev,
                "rollback of {host} went to {} instead of {}",
                short(sha),
                short(&prev)
            );
        }
        let at = fleet::wait_release(worker, &prev, SETTLE_TIMEOUT).await?;
        let row = report.row(
            "rollback",
            "swarm rollback until the previous release serves",
            Unit::Seconds,
        );
        row.samples.push(secs(at - start));
        row.baselines = vec!["rsync-incr-small".into()];
        let ph = report.phases("rollback");
        for p in &h.probes {
            ph.push(&format!("{} probe", p.phase), p.elapsed_ms as f64);
            ph.push(&format!("{} attempts", p.phase), f64::from(p.attempts));
        }
        if let Some(e) = h.elapsed_ms {
            ph.push("updater round trip (CLI)", e);
        }
        ph.push("wall", ms(at - start));
        std::mem::swap(&mut prev, &mut active);
    }
    Ok(())
}

async fn fanout_section(
    plan: &Plan,
    root: &Path,
    bins: &Bins,
    updater_args: &[String],
    tree: &Tree,
    report: &mut Report,
    revs: &mut Revisions,
) -> anyhow::Result<()> {
    let first = plan.fanout.first().copied().unwrap_or(1);
    let biggest = plan.fanout.iter().copied().max().unwrap_or(1);
    for &n in &plan.fanout {
        step!("fan-out: starting {n} worker(s)");
        let dir = root.join(format!("fanout-{n}"));
        let fleet = Fleet::start(&dir, bins, updater_args, "fan", n).await?;
        // First install everywhere, not measured.
        tree.set_revision(&revs.next("fan-warm"))?;
        let warm = fleet.update(None, &tree.root, plan.fanout_parallel).await?;
        ensure!(
            warm.hosts.iter().all(|h| h.status == "updated"),
            "warm-up fan-out push failed: {}",
            warm.raw
        );
        // The CLI's default concurrency (8) first; for the biggest fleet
        // also every host at once, to show what the default costs.
        let mut variants = vec![(format!("fanout-{n}"), plan.fanout_parallel)];
        if n == biggest && n > DEFAULT_PARALLEL && plan.fanout_parallel.is_none() {
            variants.push((
                format!("fanout-{n}-p{n}"),
                Some(u16::try_from(n).unwrap_or(u16::MAX)),
            ));
        }
        for (key, parallel) in variants {
            let how = match parallel {
                Some(p) => format!("--parallel {p}"),
                None => format!("default --parallel {DEFAULT_PARALLEL}"),
            };
            for rep in 0..plan.reps {
                step!("{key}: rep {}/{}", rep + 1, plan.reps);
                tree.set_revision(&revs.next("fan"))?;
                settle::settle().await;
                let start = Instant::now();
                let out = fleet.update(None, &tree.root, parallel).await?;
                ensure!(
                    out.hosts.len() == n && out.hosts.iter().all(|h| h.status == "updated"),
                    "fan-out push to {n} did not update every host: {}",
                    out.raw
                );
                let sha = out.hosts[0]
                    .sha256
                    .clone()
                    .ok_or_else(|| anyhow!("no release sha256 in {}", out.raw))?;
                let mut last = Instant::now();
                for w in &fleet.workers {
                    last = last.max(fleet::wait_release(w, &sha, SETTLE_TIMEOUT).await?);
                }
                let row = report.row(
                    &key,
                    &format!("fan-out: swarm update --all to {n} worker(s) ({how}), total"),
                    Unit::Seconds,
                );
                row.samples.push(secs(last - start));
                if key != format!("fanout-{first}") {
                    row.baselines = vec![format!("fanout-{first}")];
                }
                let per_host: Vec<f64> = out.hosts.iter().filter_map(|h| h.elapsed_ms).collect();
                let summary = stats::Summary::of(&per_host);
                if let Some(s) = summary {
                    let row = report.row(
                        &format!("{key}-host"),
                        &format!("  per-host time, median over the {n} host(s)"),
                        Unit::Seconds,
                    );
                    row.samples.push(s.median / 1000.0);
                }
                let ph = report.phases(&format!(
                    "{key} (per host: median over hosts and reps; total: over reps)"
                ));
                if let Some(pack) = out.pack_ms {
                    ph.push("pack+compress", pack);
                }
                for h in &out.hosts {
                    if let Some(t) = &h.timings {
                        ph.push("transfer+extract", t.receive_ms as f64);
                        ph.push("sync+flip", t.sync_flip_ms as f64);
                        ph.push("agent restart", t.restart_ms as f64);
                        ph.push("probe", t.probe_ms as f64);
                        ph.push("confirm", t.confirm_ms as f64);
                        ph.push("updater other", unattributed(t));
                        ph.push("updater total", t.total_ms as f64);
                    }
                    if let Some(e) = h.elapsed_ms {
                        ph.push("per-host (CLI)", e);
                    }
                }
                if let Some(s) = summary {
                    ph.push("slowest host", s.max);
                }
                ph.push("total", ms(last - start));
            }
        }
        drop(fleet);
        if !plan.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

async fn memory_section(
    plan: &Plan,
    root: &Path,
    bins: &Bins,
    updater_args: &[String],
    gen_tree: &dyn Fn(Shape, AgentKind, &str) -> anyhow::Result<Tree>,
    report: &mut Report,
    revs: &mut Revisions,
) -> anyhow::Result<()> {
    let first = plan.mem_sizes_mb.first().copied().unwrap_or(0);
    for &mb in &plan.mem_sizes_mb {
        let name = format!("mem{mb}");
        let shape = Shape {
            name: "mem",
            bytes: mb * 1_000_000,
            files: u32::try_from((mb / 8).max(1)).unwrap_or(u32::MAX),
            noise_only: true,
        };
        let tree = gen_tree(shape, AgentKind::Healthy, &name)?;
        let dir = root.join(format!("mem-{mb}"));
        let fleet = Fleet::start(&dir, bins, updater_args, "mem", 1).await?;
        let host = fleet.first_host()?;
        let pid = fleet.worker(&host)?.updater_pid();
        let idle = process::status_bytes(pid, "VmHWM")?;
        report
            .row(
                "updater-idle",
                "updater peak RSS before any upload",
                Unit::Bytes,
            )
            .samples
            .push(idle as f64);
        for rep in 0..plan.mem_reps {
            step!("memory {mb} MB: rep {}/{}", rep + 1, plan.mem_reps);
            // Reset the peak (VmHWM) so each rep reads its own.
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
                .context("resetting VmHWM via /proc/<pid>/clear_refs")?;
            let p = push_healthy(&fleet, &host, &tree, revs).await?;
            let hwm = process::status_bytes(pid, "VmHWM")?;
            let row = report.row(
                &format!("mem-{mb}"),
                &format!("updater peak RSS (VmHWM), {mb} MB upload"),
                Unit::Bytes,
            );
            row.samples.push(hwm as f64);
            if mb != first {
                row.baselines = vec![format!("mem-{first}")];
            }
            if rep == 0 {
                report.notes.push(format!(
                    "memory {mb} MB: upload {:.0} MB, pushed in {:.1} s",
                    p.outcome.size_bytes.unwrap_or(0) as f64 / 1e6,
                    secs(p.wall)
                ));
            }
        }
        drop(fleet);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&tree.root);
    }
    Ok(())
}

/// The targets of the issue, resolved against this run's own baselines.
fn set_targets(report: &mut Report) {
    let m = |k: &str| report.median(k);
    let mut targets: Vec<(String, Target)> = Vec::new();
    if let Some(agent) = m("agent-start") {
        targets.push((
            "swarm-small".into(),
            Target {
                text: format!("< 0.3 s + agent start = {:.3} s", 0.3 + agent),
                limit: 0.3 + agent,
            },
        ));
    }
    if let (Some(floor), Some(rsync)) = (m("floor-large"), m("rsync-large")) {
        targets.push((
            "swarm-large".into(),
            Target {
                text: format!(
                    "≤ 1.5× floor = {:.2} s and < rsync = {rsync:.2} s",
                    1.5 * floor
                ),
                limit: (1.5 * floor).min(rsync),
            },
        ));
    }
    for k in ["broken-exits", "broken-503"] {
        targets.push((
            k.into(),
            Target {
                text: "< 3 s".into(),
                limit: 3.0,
            },
        ));
    }
    if let Some(one) = m("fanout-1") {
        targets.push((
            "fanout-20".into(),
            Target {
                text: format!("≤ 2.5× one worker = {:.2} s", 2.5 * one),
                limit: 2.5 * one,
            },
        ));
    }
    for r in &report.rows {
        if r.key.starts_with("mem-") {
            targets.push((
                r.key.clone(),
                Target {
                    text: "< 40 MiB".into(),
                    limit: 40.0 * MIB as f64,
                },
            ));
        }
    }
    for (key, target) in targets {
        if let Some(row) = report.get_mut(&key) {
            row.target = Some(target);
        }
    }
}

/// CPU, memory, kernel, disk and tool versions, for the record.
async fn machine_info(work: &Path) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap_or_default();
    // The mount holding the work dir: the longest mount point prefixing it.
    let disk = read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && work.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} {} on {}", f[0], f[2], f[1])))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, s)| s)
        .unwrap_or_default();
    let rotational = disk
        .split_whitespace()
        .next()
        .and_then(|dev| dev.strip_prefix("/dev/"))
        .map(|dev| read(&format!("/sys/block/{dev}/queue/rotational")))
        .map(|r| match r.trim() {
            "0" => " (non-rotational)",
            "1" => " (rotational)",
            _ => "",
        })
        .unwrap_or("");
    let dirty_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("Dirty:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let load = read("/proc/loadavg");
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let mut tools = Vec::new();
    for (bin, arg) in [("rsync", "--version"), ("ssh", "-V"), ("gzip", "--version")] {
        if let Ok(o) = tokio::process::Command::new(bin).arg(arg).output().await {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            if let Some(first) = String::from_utf8_lossy(&text).lines().next() {
                tools.push(first.trim().to_owned());
            }
        }
    }
    format!(
        "{cpu}, {cores} cores, {:.1} GiB RAM\n{os}, kernel {kernel}\ndisk: {disk}{rotational}\n\
         load average at start: {}, dirty page cache {:.0} MiB\ntools: {}",
        mem_kb as f64 / (1024.0 * 1024.0),
        load.join(" "),
        dirty_kb as f64 / 1024.0,
        tools.join("; ")
    )
}
