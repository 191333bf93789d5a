//! `bench`: swarm's benchmark harness. Pushes generated trees to local
//! workers with `swarm` and, in the same run, with what a user would pick
//! instead (rsync over ssh, then an agent restart) and against the local
//! tar floor; then broken pushes, rollbacks, fan-out (direct, and through
//! an S3 store behind a shaped uplink) and the updater's memory. Prints one table of medians, spreads, ratios and targets.
//!
//! `cargo run --release -p tests --bin bench -- --help`; see
//! `wiki/performance.md` for what is measured how, and a recorded run.

/// Say what is happening, on stderr (the table goes to stdout).
macro_rules! step {
    ($($t:tt)*) => { eprintln!("bench: {}", format_args!($($t)*)) };
}

#[path = "bench/baseline.rs"]
mod baseline;
#[path = "bench/fanout_store.rs"]
mod fanout_store;
#[path = "bench/fleet.rs"]
mod fleet;
#[path = "bench/machine.rs"]
mod machine;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/sections.rs"]
mod sections;
#[path = "bench/settle.rs"]
mod settle;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/tree.rs"]
mod tree;
#[path = "bench/uplink.rs"]
mod uplink;
#[path = "bench/zero.rs"]
mod zero;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use clap::Parser;

use crate::baseline::{BaselineAgent, Sshd};
use tests::{Bins, process};

use crate::fleet::Fleet;
use crate::machine::machine_info;
use crate::report::Report;
use crate::sections::{
    Revisions, broken_section, fanout_section, memory_section, push_healthy, push_section,
    rollback_section, set_targets,
};
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
    /// The whole release to 1, 5 and 20 workers `--direct` and through a
    /// real Garage, the master behind one shaped uplink: wall time and
    /// the bytes the master sends (issue 16).
    FanoutStore,
    /// The updater's peak RSS while it receives large uploads.
    Memory,
    /// Failed requests of a load during pushes: today, stop-first and
    /// start-first with `[agent] listen` (issue 14).
    ZeroDowntime,
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
    /// The master's uplink for fanout-store, Mbit/s (tc tbf on its veth;
    /// 0: unshaped).
    #[arg(long, default_value_t = 100, value_name = "MBIT")]
    uplink_mbit: u32,
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
                    Section::FanoutStore,
                    Section::Memory,
                    Section::ZeroDowntime,
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

    if plan.has(Section::FanoutStore) {
        let fresh = |dir: &str, seed: u64| -> anyhow::Result<Tree> {
            tree::generate(
                &root.join("trees").join(dir),
                plan.fan,
                seed,
                &launch,
                AgentKind::Healthy,
                in_tree,
            )
        };
        fanout_store::fanout_store_section(
            &plan,
            &root,
            &bins,
            &args.updater_arg,
            &fresh,
            args.uplink_mbit,
            &mut report,
        )
        .await?;
    }

    if plan.has(Section::ZeroDowntime) {
        zero::zero_section(&bins, &mut report).await?;
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
