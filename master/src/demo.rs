//! `swarm demo`: a throwaway fleet of three workers on loopback, driven
//! with the same code paths as the real commands: a fresh `SWARM_HOME` and
//! CA, three enrollments, three `worker-updater`s with their own ports and
//! install dirs, two good releases, a deliberately broken one (rolled back
//! by the updaters), `swarm rollback`, `swarm status` and `swarm history`.
//!
//! Invariant: every process the demo starts (updaters, and the agents they
//! spawn) is stopped before it returns, on error and on Ctrl-C too, unless
//! `--keep` asks to leave the fleet running.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::{
    DemoArgs, EnrollArgs, HistoryArgs, OptionalTargets, RollbackArgs, StatusArgs, Targets,
    UpdateArgs,
};
use crate::error::{EXIT_FAILED, Error, Result};
use crate::home::Home;
use crate::{enroll, fleet};

const HOSTS: [&str; 3] = ["worker-01", "worker-02", "worker-03"];
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The example release kept in the repo (`master/demo/`), embedded so the
/// demo works from any directory.
const RELEASE_FILES: [(&str, &str); 4] = [
    ("swarm.toml", include_str!("../demo/release/swarm.toml")),
    ("README.md", include_str!("../demo/release/README.md")),
    (
        "www/index.html",
        include_str!("../demo/release/www/index.html"),
    ),
    (".swarmignore", include_str!("../demo/release/.swarmignore")),
];
const BROKEN_SWARM_TOML: &str = include_str!("../demo/broken/swarm.toml");

/// One worker the demo runs.
#[derive(Debug)]
struct DemoWorker {
    host: &'static str,
    install_dir: PathBuf,
    updater: Option<Child>,
}

/// Everything the demo started; stopping it is idempotent.
#[derive(Debug, Default)]
struct Fleet {
    workers: Vec<DemoWorker>,
    stopped: bool,
    /// Set by the signal handler: the demo ends with 130 whatever else failed.
    interrupted: bool,
}

/// Whether `pid` runs `worker-agent` (so we never signal a stranger).
fn is_agent(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|a0| a0.ends_with(b"worker-agent"))
        })
        .unwrap_or(false)
}

/// The pid in `agent.pid` (JSON `{"pid":…}` or a bare number).
fn agent_pid(install_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(install_dir.join("agent.pid")).ok()?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(pid) = v.get("pid").and_then(serde_json::Value::as_i64)
    {
        return i32::try_from(pid).ok();
    }
    text.trim().parse().ok()
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|c| c != 'Z' && c != 'X')
}

impl Fleet {
    /// SIGTERM every updater and agent, wait a little, SIGKILL what is left.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // Agents seen now, and again once the updaters are gone: an updater
        // draining an update on SIGTERM may still start a new one.
        let mut agents: Vec<i32> = self
            .workers
            .iter()
            .filter_map(|w| agent_pid(&w.install_dir))
            .collect();
        for w in &self.workers {
            if let Some(child) = &w.updater
                && let Ok(pid) = i32::try_from(child.id())
            {
                signal(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for w in &mut self.workers {
            if let Some(mut child) = w.updater.take() {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
        agents.extend(
            self.workers
                .iter()
                .filter_map(|w| agent_pid(&w.install_dir)),
        );
        agents.sort_unstable();
        agents.dedup();
        agents.retain(|pid| is_agent(*pid));
        for pid in &agents {
            signal(*pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for pid in agents {
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) && is_agent(pid) {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// Forget the processes: `--keep` leaves them running.
    fn detach(&mut self) -> Vec<(String, u32, Option<i32>)> {
        self.stopped = true;
        self.workers
            .iter_mut()
            .map(|w| {
                let pid = w.updater.take().map(|c| c.id()).unwrap_or(0);
                (w.host.to_owned(), pid, agent_pid(&w.install_dir))
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("127.0.0.1:0", e))?
        .port())
}

/// `worker-agent` and `worker-updater`, next to the running `swarm`.
fn sibling_binaries() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::State("cannot tell where the swarm executable lives".into()))?;
    let find = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::State(format!(
                "{name} is not next to swarm in {}: build all three binaries first (`cargo build --release`) and run that swarm",
                dir.display()
            )))
        }
    };
    Ok((find("worker-agent")?, find("worker-updater")?))
}

/// Write the example tree into `dir`, with `version`, the agent binary and
/// optionally the broken `swarm.toml`.
fn write_release(dir: &Path, version: &str, agent: &Path, broken: bool) -> Result<()> {
    for (rel, text) in RELEASE_FILES {
        let text = if broken && rel == "swarm.toml" {
            BROKEN_SWARM_TOML
        } else {
            text
        };
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    let version_file = dir.join("VERSION");
    fs::write(&version_file, format!("{version}\n")).map_err(|e| Error::io(&version_file, e))?;
    // Files the ignore rules must keep off the workers.
    let secret = dir.join(".env.local");
    fs::write(&secret, "DEMO_SECRET=never-shipped\n").map_err(|e| Error::io(&secret, e))?;
    let scratch = dir.join("notes.tmp");
    fs::write(&scratch, "scratch\n").map_err(|e| Error::io(&scratch, e))?;
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).map_err(|e| Error::io(&bin, e))?;
    fs::copy(agent, bin.join("worker-agent"))
        .map_err(|e| Error::io(bin.join("worker-agent"), e))?;
    Ok(())
}

/// The agent binary to ship: the built one with its debug info stripped
/// when `strip` is available (as for any deploy; a debug build shrinks
/// about fivefold), else a plain copy.
fn prepare_agent(agent_bin: &Path, root: &Path) -> Result<PathBuf> {
    let out = root.join("worker-agent");
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(agent_bin)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        let _ = fs::remove_file(&out);
        fs::copy(agent_bin, &out).map_err(|e| Error::io(&out, e))?;
    }
    let size = fs::metadata(&out).map_err(|e| Error::io(&out, e))?.len();
    println!(
        "\nshipping {} as bin/worker-agent ({}{})",
        agent_bin.display(),
        crate::pack::human_bytes(size),
        if stripped {
            ", debug info stripped"
        } else {
            ""
        }
    );
    Ok(out)
}

/// Start one updater, wait for `listening on …` in its stdout log.
fn start_updater(updater_bin: &Path, root: &Path, host: &str, updater_port: u16) -> Result<Child> {
    let wdir = root.join("workers").join(host);
    let out_path = wdir.join("updater.out");
    let out = fs::File::create(&out_path).map_err(|e| Error::io(&out_path, e))?;
    let log_path = wdir.join("updater.log");
    let log = fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let mut cmd = Command::new(updater_bin);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{updater_port}"))
        .arg("--updater-dir")
        .arg(wdir.join("bundle-updater"))
        .arg("--agent-dir")
        .arg(wdir.join("bundle"))
        .arg("--install-dir")
        .arg(wdir.join("install"))
        .args(["--stop-grace-ms", "3000"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log);
    // Its own process group: a Ctrl-C on the terminal reaches the demo,
    // which then stops the fleet in order.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| Error::io(updater_bin, e))?;
    let started = Instant::now();
    loop {
        let text = fs::read_to_string(&out_path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("listening on ")) {
            return Ok(child);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let tail: String = fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .last()
                .unwrap_or("")
                .to_owned();
            return Err(Error::Other(format!(
                "worker-updater for {host} did not start ({}): {tail} (see {})",
                exited.map_or("no `listening on` line in time".to_owned(), |s| s
                    .to_string()),
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A script that stops a `--keep` fleet: the updaters by pid, the agents
/// by their current pidfiles (they change with every push), then the dir.
fn stop_script(dir: &Path, procs: &[(String, u32, Option<i32>)]) -> String {
    let updaters: Vec<String> = procs.iter().map(|(_, pid, _)| pid.to_string()).collect();
    let dir = dir.display();
    format!(
        "#!/bin/sh\n\
         # Stops the fleet `swarm demo --keep` left running, then removes it.\n\
         kill {} 2>/dev/null\n\
         for f in {dir}/workers/*/install/agent.pid; do\n\
         \x20 pid=$(sed -n 's/.*\"pid\" *: *\\([0-9][0-9]*\\).*/\\1/p' \"$f\" 2>/dev/null)\n\
         \x20 [ -n \"$pid\" ] && kill \"$pid\" 2>/dev/null\n\
         done\n\
         rm -rf {dir}\n",
        updaters.join(" ")
    )
}

fn say(cmd: &str) {
    println!("\n$ {cmd}");
}

/// A step that must end with exit code `want`.
fn expect(step: &str, got: u8, want: u8, failures: &mut Vec<String>) {
    if got != want {
        failures.push(format!("`{step}` exited {got}, expected {want}"));
    }
}

/// Stop the fleet on SIGINT/SIGTERM, then exit 130. The signals are
/// blocked in this thread (and so in every thread started later, tokio's
/// included) and taken by a dedicated thread with `sigwait`, so no runtime
/// can swallow them. Children get an empty mask from `std::process`.
fn install_signal_handler(fleet: Arc<Mutex<Fleet>>, dir: PathBuf) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| Error::Other(format!("cannot block signals: {e}")))?;
    std::thread::spawn(move || {
        if set.wait().is_err() {
            return;
        }
        eprintln!("\ninterrupted: stopping the demo fleet");
        if let Ok(mut f) = fleet.lock() {
            f.interrupted = true;
            f.stop();
        }
        let _ = fs::remove_dir_all(&dir);
        std::process::exit(130);
    });
    Ok(())
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
    println!(
        "swarm demo: three workers on loopback, everything under {}",
        root.display()
    );
    let fleet = Arc::new(Mutex::new(Fleet::default()));
    install_signal_handler(fleet.clone(), root.clone())?;

    let started = Instant::now();
    let result = drive(&home, &root, &agent_bin, &updater_bin, &fleet);
    let mut guard = fleet
        .lock()
        .map_err(|_| Error::Other("demo fleet lock poisoned".into()))?;
    if guard.interrupted {
        guard.stop();
        return Ok(130);
    }
    match (&result, args.keep) {
        (Ok(_), true) => {
            let procs = guard.detach();
            drop(guard);
            let kept = tmp.keep();
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "swarm".into());
            println!("\nthe fleet keeps running (--keep). Drive it by hand:");
            println!("  export SWARM_HOME={}", kept.join("home").display());
            println!("  {exe} status");
            println!(
                "  {exe} update --all --root {}",
                kept.join("release-v2").display()
            );
            println!("  {exe} rollback --host worker-01");
            println!("  {exe} history");
            let stop = kept.join("stop.sh");
            fs::write(&stop, stop_script(&kept, &procs)).map_err(|e| Error::io(&stop, e))?;
            println!("stop it (updaters, their current agents, and this directory) with:");
            println!("  sh {}", stop.display());
        }
        _ => {
            println!("\nstopping the demo fleet");
            guard.stop();
            drop(guard);
            println!("done in {:.1}s", started.elapsed().as_secs_f64());
        }
    }
    result
}

fn drive(
    home: &Home,
    root: &Path,
    agent_bin: &Path,
    updater_bin: &Path,
    fleet: &Arc<Mutex<Fleet>>,
) -> Result<u8> {
    say("swarm ca init");
    enroll::ca_init(home, false)?;

    for host in HOSTS {
        let agent_port = free_port()?;
        let updater_port = free_port()?;
        let wdir = root.join("workers").join(host);
        let bundle = wdir.join("bundle");
        say(&format!(
            "swarm enroll --host {host} --address 127.0.0.1 --agent-port {agent_port} --updater-port {updater_port} --updater --out-dir {}",
            bundle.display()
        ));
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
                out_dir: bundle,
            },
        )?;
        // Per-host settings, never shipped: the agent's port.
        let install = wdir.join("install");
        fs::create_dir_all(&install).map_err(|e| Error::io(&install, e))?;
        let env_local = install.join(".env.local");
        fs::write(&env_local, format!("AGENT_PORT={agent_port}\n"))
            .map_err(|e| Error::io(&env_local, e))?;
        let child = start_updater(updater_bin, root, host, updater_port)?;
        println!(
            "started worker-updater for {host} on 127.0.0.1:{updater_port} (pid {}), agent port {agent_port}",
            child.id()
        );
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
        say(&format!("swarm update --all --root {}", tree.display()));
        if broken {
            println!(
                "# this release's agent fails its health check: each updater must roll it back"
            );
        }
        let code = fleet::update(
            home,
            &UpdateArgs {
                targets: Targets {
                    hosts: Vec::new(),
                    all: true,
                },
                root: tree,
                exclude: Vec::new(),
                parallel: 8,
                dry_run: false,
                include_self: false,
                self_timeout: 30,
                json: false,
            },
        )?;
        expect(&format!("swarm update ({name})"), code, want, &mut failures);
    }

    say("swarm rollback --all");
    println!("# back from release 2 to release 1 on every worker");
    let code = fleet::rollback(
        home,
        &RollbackArgs {
            targets: Targets {
                hosts: Vec::new(),
                all: true,
            },
            parallel: 8,
            json: false,
        },
    )?;
    expect("swarm rollback", code, 0, &mut failures);

    say("swarm status");
    let code = fleet::status(
        home,
        &StatusArgs {
            targets: OptionalTargets {
                hosts: Vec::new(),
                all: false,
            },
            json: false,
        },
    )?;
    expect("swarm status", code, 0, &mut failures);

    say("swarm history --host worker-01");
    fleet::history(
        home,
        &HistoryArgs {
            host: Some("worker-01".to_owned()),
            limit: 50,
            json: false,
        },
    )?;

    if failures.is_empty() {
        println!(
            "\ndemo complete: two releases updated, the broken one rolled back by every updater, then a fleet-wide rollback"
        );
        Ok(0)
    } else {
        println!("\ndemo did not go as planned:");
        for f in &failures {
            println!("  {f}");
        }
        Ok(EXIT_FAILED)
    }
}
