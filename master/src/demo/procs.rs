//! The processes the demo starts, and their teardown.
//!
//! Invariant (the precise form of "only `worker-updater` touches agent
//! processes"): while the fleet runs, only the updaters start, restart and
//! stop agents. The demo signals processes only when it tears down the
//! fleet it started itself: its own updater children first, then the
//! agents those updaters left behind, each found through the pidfile in an
//! install dir the demo created and checked to be `worker-agent` before any
//! signal (the updaters keep agents running across their own restarts by
//! design, so nobody else would stop them).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One worker the demo runs.
#[derive(Debug)]
pub(super) struct DemoWorker {
    pub(super) host: &'static str,
    pub(super) install_dir: PathBuf,
    pub(super) updater: Option<Child>,
}

/// Everything the demo started; stopping it is idempotent.
#[derive(Debug, Default)]
pub(super) struct Fleet {
    pub(super) workers: Vec<DemoWorker>,
    stopped: bool,
    /// Set by the signal handler: the demo ends with 130 whatever else failed.
    pub(super) interrupted: bool,
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
    pub(super) fn stop(&mut self) {
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
    pub(super) fn detach(&mut self) -> Vec<(String, u32, Option<i32>)> {
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

/// Start one updater, wait for `listening on …` in its stdout log.
pub(super) fn start_updater(
    updater_bin: &Path,
    root: &Path,
    host: &str,
    updater_port: u16,
) -> Result<Child> {
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
pub(super) fn stop_script(dir: &Path, procs: &[(String, u32, Option<i32>)]) -> String {
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

/// Stop the fleet on SIGINT/SIGTERM, then exit 130. The signals are
/// blocked in this thread (and so in every thread started later, tokio's
/// included) and taken by a dedicated thread with `sigwait`, so no runtime
/// can swallow them. A blocked mask can be inherited by the processes the
/// demo starts (and theirs); nothing relies on it being reset: both daemons
/// unblock SIGTERM/SIGINT first thing (`pki::daemon`).
pub(super) fn install_signal_handler(fleet: Arc<Mutex<Fleet>>, dir: PathBuf) -> Result<()> {
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
