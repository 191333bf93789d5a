//! `swarm demo`: a throwaway fleet of three workers on loopback, driven
//! with the same code paths as the real commands: a fresh `SWARM_HOME` and
//! CA, three enrollments, three `worker-updater`s with their own ports and
//! install dirs, two good releases, a deliberately broken one (rolled back
//! by the updaters), `swarm rollback`, `swarm status` and `swarm history`.
//!
//! Invariant: every process the demo starts (updaters, and the agents they
//! spawn) is stopped before it returns, on error and on Ctrl-C too, unless
//! `--keep` asks to leave the fleet running.

mod ports;
mod procs;
mod release;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::cli::{
    DemoArgs, EnrollArgs, HistoryArgs, LogsArgs, OptionalTargets, RollbackArgs, RolloutArgs,
    StatusArgs, Targets, UpdateArgs,
};
use crate::error::{EXIT_FAILED, Error, Result};
use crate::home::Home;
use crate::output::{self, outln};
use crate::{enroll, fleet};
use procs::{DemoWorker, Fleet, install_signal_handler, start_updater, stop_script};
use release::{prepare_agent, sibling_binaries, write_release};
use serde::Serialize;

const HOSTS: [&str; 3] = ["worker-01", "worker-02", "worker-03"];

/// Announce the next command (with `--json`: start its step).
fn say(cmd: &str) -> Result<()> {
    if output::capture_step(cmd) {
        return Ok(());
    }
    outln!("\n$ {cmd}")
}

/// A step that must end with exit code `want`.
fn expect(step: &str, got: u8, want: u8, failures: &mut Vec<String>) {
    output::capture_exit(got);
    if got != want {
        failures.push(format!("`{step}` exited {got}, expected {want}"));
    }
}

/// `swarm demo [--keep]`.
pub(crate) fn run(args: &DemoArgs) -> Result<u8> {
    let (agent_bin, updater_bin) = sibling_binaries()?;
    let tmp = tempfile::Builder::new()
        .prefix("swarm-demo-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let root = tmp.path().to_owned();
    let home = Home::resolve(Some(&root.join("home")))?;
    if args.json {
        // The demo's own lines go to steps named `swarm demo`.
        output::capture_start();
        output::capture_step("swarm demo");
    }
    let outcome = run_fleet(args, tmp, &root, &home, &agent_bin, &updater_bin);
    if !args.json {
        return outcome.map(|(code, _)| code);
    }
    let steps = output::capture_end();
    let (code, kept) = outcome?;
    output::json(&DemoDoc {
        root: &root,
        ok: code == 0,
        exit_code: code,
        kept,
        steps,
    })?;
    Ok(code)
}

/// `swarm demo --json`.
#[derive(Serialize)]
struct DemoDoc<'a> {
    root: &'a Path,
    ok: bool,
    exit_code: u8,
    /// With `--keep`: where the fleet's home and stop script are.
    kept: Option<Kept>,
    steps: Vec<output::Step>,
}

/// A fleet left running by `--keep`.
#[derive(Serialize)]
struct Kept {
    home: PathBuf,
    stop_script: PathBuf,
}

/// Start the fleet, drive it, and stop it (or keep it); the exit code.
fn run_fleet(
    args: &DemoArgs,
    tmp: tempfile::TempDir,
    root: &Path,
    home: &Home,
    agent_bin: &Path,
    updater_bin: &Path,
) -> Result<(u8, Option<Kept>)> {
    let root = root.to_owned();
    outln!(
        "swarm demo: three workers on loopback, everything under {}",
        root.display()
    )?;
    let fleet = Arc::new(Mutex::new(Fleet::default()));
    install_signal_handler(fleet.clone(), root.clone())?;

    let started = Instant::now();
    let result = drive(home, &root, agent_bin, updater_bin, &fleet, args.json);
    let mut guard = fleet
        .lock()
        .map_err(|_| Error::Other("demo fleet lock poisoned".into()))?;
    if guard.interrupted {
        guard.stop();
        return Ok((130, None));
    }
    let mut kept_doc = None;
    match (&result, args.keep) {
        (Ok(_), true) => {
            let procs = guard.detach();
            drop(guard);
            let kept = tmp.keep();
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "swarm".into());
            outln!("\nthe fleet keeps running (--keep). Drive it by hand:")?;
            outln!("  export SWARM_HOME={}", kept.join("home").display())?;
            outln!("  {exe} status")?;
            outln!(
                "  {exe} update --all --root {}",
                kept.join("release-v2").display()
            )?;
            outln!("  {exe} rollback --host worker-01")?;
            outln!("  {exe} history")?;
            let stop = kept.join("stop.sh");
            fs::write(&stop, stop_script(&kept, &procs)).map_err(|e| Error::io(&stop, e))?;
            outln!("stop it (updaters, their current agents, and this directory) with:")?;
            outln!("  sh {}", stop.display())?;
            kept_doc = Some(Kept {
                home: kept.join("home"),
                stop_script: stop,
            });
        }
        _ => {
            // Stop first: a closed stdout must not leave the fleet running.
            let said = outln!("\nstopping the demo fleet");
            guard.stop();
            drop(guard);
            said?;
            outln!("done in {:.1}s", started.elapsed().as_secs_f64())?;
        }
    }
    result.map(|code| (code, kept_doc))
}

fn drive(
    home: &Home,
    root: &Path,
    agent_bin: &Path,
    updater_bin: &Path,
    fleet: &Arc<Mutex<Fleet>>,
    json: bool,
) -> Result<u8> {
    say("swarm ca init")?;
    enroll::ca_init(home, false, None, json)?;
    output::capture_exit(0);

    for host in HOSTS {
        let agent_port = ports::loopback_port()?;
        let updater_port = ports::loopback_port()?;
        let wdir = root.join("workers").join(host);
        let bundle = wdir.join("bundle");
        say(&format!(
            "swarm enroll --host {host} --address 127.0.0.1 --agent-port {agent_port} --updater-port {updater_port} --updater --out-dir {}",
            bundle.display()
        ))?;
        enroll::enroll(
            home,
            &EnrollArgs {
                host: host.to_owned(),
                address: Some("127.0.0.1".to_owned()),
                sans: Vec::new(),
                agent_port,
                updater_port,
                updater: true,
                updater_only: false,
                tags: Vec::new(),
                out_dir: bundle,
                json,
            },
        )?;
        output::capture_exit(0);
        // Per-host settings, never shipped: the agent's port.
        let install = wdir.join("install");
        fs::create_dir_all(&install).map_err(|e| Error::io(&install, e))?;
        let env_local = install.join(".env.local");
        fs::write(&env_local, format!("AGENT_PORT={agent_port}\n"))
            .map_err(|e| Error::io(&env_local, e))?;
        let child = start_updater(updater_bin, root, host, updater_port)?;
        outln!(
            "started worker-updater for {host} on 127.0.0.1:{updater_port} (pid {}), agent port {agent_port}",
            child.id()
        )?;
        fleet
            .lock()
            .map_err(|_| Error::Other("demo fleet lock poisoned".into()))?
            .workers
            .push(DemoWorker {
                host,
                install_dir: install,
                updater: Some(child),
            });
    }

    let agent_bin = prepare_agent(agent_bin, root)?;
    let mut failures = Vec::new();
    let releases = [
        ("release-v1", "1", false, 0),
        ("release-v2", "2", false, 0),
        ("release-broken", "3-broken", true, EXIT_FAILED),
    ];
    for (name, version, broken, want) in releases {
        let tree = root.join(name);
        write_release(&tree, version, &agent_bin, broken)?;
        say(&format!("swarm update --all --root {}", tree.display()))?;
        if broken {
            outln!(
                "# this release's agent fails its health check: each updater must roll it back"
            )?;
        }
        let code = fleet::update(
            home,
            &UpdateArgs {
                targets: Targets {
                    hosts: Vec::new(),
                    tags: Vec::new(),
                    all: true,
                },
                root: tree,
                exclude: Vec::new(),
                parallel: 8,
                dry_run: false,
                full: false,
                include_self: false,
                self_timeout: 30,
                json,
                rollout: RolloutArgs::default(),
                signing: Default::default(),
            },
        )?;
        expect(&format!("swarm update ({name})"), code, want, &mut failures);
    }

    say("swarm rollback --all")?;
    outln!("# back from release 2 to release 1 on every worker")?;
    let code = fleet::rollback(
        home,
        &RollbackArgs {
            targets: Targets {
                hosts: Vec::new(),
                tags: Vec::new(),
                all: true,
            },
            to: None,
            parallel: 8,
            json,
        },
    )?;
    expect("swarm rollback", code, 0, &mut failures);

    say("swarm status")?;
    let code = fleet::status(
        home,
        &StatusArgs {
            targets: OptionalTargets {
                hosts: Vec::new(),
                tags: Vec::new(),
                all: false,
            },
            parallel: 32,
            json,
        },
    )?;
    expect("swarm status", code, 0, &mut failures);

    say("swarm history --host worker-01")?;
    fleet::history(
        home,
        &HistoryArgs {
            host: Some("worker-01".to_owned()),
            tags: Vec::new(),
            limit: 50,
            worker: false,
            json,
        },
    )?;
    output::capture_exit(0);

    say("swarm history --host worker-01 --worker")?;
    outln!("# the worker's own journal: every operation its updater ran, and who asked")?;
    let code = fleet::history(
        home,
        &HistoryArgs {
            host: Some("worker-01".to_owned()),
            tags: Vec::new(),
            limit: 50,
            worker: true,
            json,
        },
    )?;
    expect("swarm history --worker", code, 0, &mut failures);

    // `swarm logs` prints the agent's lines, not a document: not a step
    // of `--json`.
    if !json {
        say("swarm logs --host worker-01 -n 5")?;
        outln!("# the agent's last lines of output, as its updater keeps them")?;
        let code = fleet::logs(
            home,
            &LogsArgs {
                host: Some("worker-01".to_owned()),
                tags: Vec::new(),
                lines: 5,
                follow: false,
            },
        )?;
        expect("swarm logs", code, 0, &mut failures);
    }

    output::capture_step("swarm demo");
    if failures.is_empty() {
        outln!(
            "\ndemo complete: two releases updated, the broken one rolled back by every updater, then a fleet-wide rollback"
        )?;
        Ok(0)
    } else {
        outln!("\ndemo did not go as planned:")?;
        for f in &failures {
            outln!("  {f}")?;
        }
        Ok(EXIT_FAILED)
    }
}
