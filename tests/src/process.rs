//! Processes the tests and the bench start, and how they end: a [`Daemon`]
//! guard (stopped and reaped when dropped), the one reader of `/proc`
//! (state, process group, start time, argv, memory), the clean-up of what a
//! worker leaves running (its agent, re-exec'd updaters, watchdogs), and
//! timed commands.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// A child process, stopped and reaped when dropped: SIGKILL at once, or
/// with [`Daemon::graceful`] SIGTERM first and SIGKILL after the grace.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    reaped: bool,
    grace: Duration,
}

impl Daemon {
    /// Spawn `cmd` (stdin from /dev/null, stdout and stderr as `cmd` says).
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Daemon> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            reaped: false,
            grace: Duration::ZERO,
        })
    }

    /// [`Daemon::spawn`] for tests: panics when `cmd` cannot start.
    pub fn start(cmd: &mut Command) -> Daemon {
        let name = cmd.get_program().to_string_lossy().into_owned();
        Daemon::spawn(&name, cmd).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Spawn `cmd` with stdout and stderr appended to `log`.
    pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Daemon> {
        let out = append(log)?;
        let err = out.try_clone()?;
        Daemon::spawn(name, cmd.stdout(out).stderr(err))
    }

    /// Spawn `cmd` and wait (up to `timeout`) for it to print `listening on
    /// <addr>` on stdout; returns `<addr>`. Stderr goes to `log`, and so
    /// does the rest of stdout, drained for as long as the process (or the
    /// process it re-execs into) writes, so it never blocks on a full pipe
    /// nor dies of a closed one.
    pub fn spawn_listening(
        name: &str,
        cmd: &mut Command,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<(Daemon, String)> {
        let err = append(log)?;
        let mut daemon = Daemon::spawn(name, cmd.stdout(Stdio::piped()).stderr(err))?;
        let stdout = daemon
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sink = append(log).ok();
        std::thread::spawn(move || {
            let mut announced = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let (false, Some(addr)) = (announced, line.strip_prefix("listening on ")) {
                    announced = true;
                    let _ = tx.send(addr.trim().to_owned());
                    continue;
                }
                if let Some(f) = sink.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => return Ok((daemon, addr)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = daemon.wait(Duration::from_secs(1));
                    bail!(
                        "{name} exited before announcing its address ({status:?}); see {}",
                        log.display()
                    )
                }
            }
            if let Some(status) = daemon.try_wait() {
                bail!(
                    "{name} exited before announcing its address ({status}); see {}",
                    log.display()
                )
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not announce its address within {timeout:?}; see {}",
                    log.display()
                )
            }
        }
    }

    /// Stop with SIGTERM and `grace` before SIGKILL when dropped.
    pub fn graceful(mut self, grace: Duration) -> Daemon {
        self.grace = grace;
        self
    }

    /// Its pid.
    /// The child's stdout pipe, when it was spawned with `Stdio::piped()`
    /// and nobody took it yet.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited (and been reaped here).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    /// Send `signal` (unless it was reaped already).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        if self.reaped {
            bail!("{} has exited already", self.name);
        }
        let pid = i32::try_from(self.pid()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("{signal} to {}", self.name))
    }

    /// Wait up to `timeout` for it to exit.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGTERM, wait up to `grace`, SIGKILL; always reaped. Zero grace is
    /// SIGKILL at once. Returns how long it took to exit.
    pub fn stop(&mut self, grace: Duration) -> Duration {
        let start = Instant::now();
        if self.reaped || self.try_wait().is_some() {
            return Duration::ZERO;
        }
        if !grace.is_zero() {
            let _ = self.signal(Signal::SIGTERM);
            if self.wait(grace).is_err() {
                eprintln!("{} ignored SIGTERM for {grace:?}; killing it", self.name);
            }
        }
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
        start.elapsed()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.stop(Duration::ZERO);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(self.grace);
    }
}

fn append(log: &Path) -> anyhow::Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    /// `R`, `S`, `Z`, …
    pub state: char,
    /// Its process group.
    pub pgrp: i32,
    /// When it started, in clock ticks since boot.
    pub start_time: u64,
}

/// `/proc/<pid>/stat`, or `None` when there is no such process.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(5 - 3)?.parse().ok()?,
        start_time: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Wait until `pid` is gone (or a zombie).
pub fn wait_dead(pid: i32, what: &str) {
    crate::eventually(Duration::from_secs(15), what, || {
        (!alive(pid)).then_some(())
    });
}

/// The argv of `pid` (empty when it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("parsing {field} in {path}"))?;
            return Ok(kb * 1024);
        }
    }
    bail!("{path} has no {field}")
}

/// The pids of every process but this one.
fn pids() -> impl Iterator<Item = u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |pid| *pid != me)
}

fn sigkill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// SIGKILL every process whose executable lies under `root` (what a work
/// dir's copies of the binaries, or releases inside it, still run). Only
/// the executable counts, so a shell opened in a kept work dir is spared.
/// Returns how many were killed.
pub fn sweep(root: &Path) -> usize {
    let mut killed = 0;
    for pid in pids() {
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(root)) {
            sigkill(pid);
            killed += 1;
        }
    }
    killed
}

/// SIGKILL what a worker on `install_dir` leaves running once its updater
/// is gone: the agent (it runs in its own process group and outlives the
/// updater by design), and updaters and watchdogs a self-update started
/// (they carry `--install-dir=<install_dir>` in their argv).
pub fn kill_worker_leftovers(install_dir: &Path) {
    let pidfile = install_dir.join("agent.pid");
    // One the updater spawned (pidfile start time matches, leads its group)
    // goes with its whole group, so a wrapper script's children do too.
    if let Some(pgid) = spawned_agent_group(&pidfile) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    } else if let Some(pid) = read_pidfile(&pidfile)
        && is_agent_process(pid)
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let flag = format!("--install-dir={}", install_dir.display());
    for pid in pids() {
        if cmdline(pid).contains(&flag) {
            sigkill(pid);
        }
    }
}

/// The process group of the agent the updater's JSON pidfile names, when
/// that process is still the one it recorded (pid and start time) and leads
/// its own group.
fn spawned_agent_group(pidfile: &Path) -> Option<i32> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pidfile).ok()?).ok()?;
    let pid = i32::try_from(v.get("pid")?.as_i64()?).ok()?;
    let recorded = v.get("start_time")?.as_u64()?;
    let s = stat(pid)?;
    (s.start_time == recorded && s.pgrp == pid).then_some(pid)
}

/// Whether `pid` runs the reference agent (so clean-up never kills a stranger).
fn is_agent_process(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(|pid| {
        cmdline(pid)
            .first()
            .is_some_and(|a0| a0.ends_with("worker-agent"))
    })
}

/// The pid in a pidfile: the updater's JSON (`{"pid":…}`) or a bare number.
pub fn read_pidfile(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(pid) = v.get("pid").and_then(serde_json::Value::as_i64)
    {
        return i32::try_from(pid).ok();
    }
    text.trim().parse().ok()
}

/// The outcome of a timed command.
#[derive(Debug)]
pub struct Timed {
    pub elapsed: Duration,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` to completion (killed after `timeout`) and time it.
pub async fn run_timed(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
) -> anyhow::Result<Timed> {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{cmd:?} did not finish within {timeout:?}"))?
        .with_context(|| format!("waiting for {cmd:?}"))?;
    Ok(Timed {
        elapsed: start.elapsed(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Run `cmd` and fail with its stderr unless it exits 0.
pub async fn run_ok(cmd: &mut tokio::process::Command, timeout: Duration) -> anyhow::Result<Timed> {
    let t = run_timed(cmd, timeout).await?;
    if !t.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            t.status,
            t.stderr.trim(),
            t.stdout.trim()
        );
    }
    Ok(t)
}
