//! Processes the benchmark starts, and how it stops them: daemons that are
//! stopped (SIGTERM, then SIGKILL) and reaped when dropped, a last sweep of
//! anything still running out of the work directory, timed commands, `/health` polling and `/proc` memory readings.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A long-running child process, stopped and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Daemon {
    name: String,
    child: Option<Child>,
}

impl Daemon {
    /// Spawn `cmd` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Daemon> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// Spawn `cmd` and wait (up to `timeout`) for it to print
    /// `listening on <addr>` on stdout; stderr goes to `log`, and so does
    /// the rest of stdout.
    pub(crate) fn spawn_listening(
        name: &str,
        cmd: &mut Command,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<(Daemon, String)> {
        let err = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let mut daemon = Daemon {
            name: name.to_owned(),
            child: Some(child),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let sink_path = log.to_owned();
        // Read the announcement, then keep draining stdout into the log so
        // the daemon never blocks on (or dies of) a full or closed pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sink = File::options().append(true).open(&sink_path).ok();
            let mut announced = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let (false, Some(addr)) = (announced, line.strip_prefix("listening on ")) {
                    announced = true;
                    let _ = tx.send(addr.trim().to_owned());
                    continue;
                }
                if let Some(f) = sink.as_mut() {
                    use std::io::Write;
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
                    let status = daemon.wait_exit(Duration::from_secs(1));
                    bail!(
                        "{name} exited before announcing its address ({status}); see {}",
                        log.display()
                    )
                }
            }
            if let Some(status) = daemon.try_status() {
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

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn try_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_status() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        "still running".to_owned()
    }

    /// SIGTERM, wait up to the grace period, SIGKILL; always reaped.
    /// Returns how long the daemon took to exit.
    pub(crate) fn stop(&mut self) -> Duration {
        let start = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        if let Ok(None) = child.try_wait() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = start + STOP_GRACE;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!(
                            "bench: {} ignored SIGTERM for {STOP_GRACE:?}; killing it",
                            self.name
                        );
                        let _ = child.kill();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }
        let _ = child.wait();
        start.elapsed()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kill every process whose executable lies under `root`: the agents the
/// updaters spawned (they outlive their updater by design) run from the
/// copy of `worker-agent` in the work dir, or from a release inside it.
/// Only the executable counts, so a shell someone opened in a kept work
/// dir is left alone.
pub(crate) fn sweep(root: &Path) -> usize {
    sweep_where(|exe, _cwd| exe.starts_with(root))
}

/// Kill the `worker-agent` processes working in `dir` (an updater starts
/// its agent with the install dir as its working directory).
pub(crate) fn sweep_agents_in(dir: &Path) -> usize {
    sweep_where(|exe, cwd| {
        cwd.starts_with(dir) && exe.file_name().is_some_and(|n| n == "worker-agent")
    })
}

fn sweep_where(matches: impl Fn(&Path, &Path) -> bool) -> usize {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let (Ok(exe), Ok(cwd)) = (
            std::fs::read_link(entry.path().join("exe")),
            std::fs::read_link(entry.path().join("cwd")),
        ) else {
            continue;
        };
        if matches(&exe, &cwd) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

/// The `releases/` dirs of the workers started, whose background deletes
/// [`settle`] waits for.
static RELEASE_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Longest wait in [`settle`] for the updaters' background deletes.
const TRASH_TIMEOUT: Duration = Duration::from_secs(120);

/// Have [`settle`] wait for the background deletes in `releases`.
pub(crate) fn watch_releases(releases: PathBuf) {
    if let Ok(mut dirs) = RELEASE_DIRS.lock() {
        dirs.push(releases);
    }
}

/// Whether an updater is still deleting a replaced release in `releases`.
fn deleting(releases: &Path) -> bool {
    std::fs::read_dir(releases).is_ok_and(|rd| {
        rd.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(".trash-"))
    })
}

/// Let the machine come to rest (untimed), so that the next timed
/// operation does not pay for the work of the one before it: wait until
/// no updater is still deleting the release a push replaced (they do it
/// after answering), then flush every dirty page to disk.
pub(crate) async fn settle() {
    let dirs = RELEASE_DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    let start = Instant::now();
    while start.elapsed() < TRASH_TIMEOUT && dirs.iter().any(|d| deleting(d)) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
}

/// The outcome of a timed command.
#[derive(Debug)]
pub(crate) struct Timed {
    pub(crate) elapsed: Duration,
    pub(crate) status: std::process::ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Run `cmd` to completion (killed after `timeout`) and time it.
pub(crate) async fn run_timed(
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
pub(crate) async fn run_ok(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
) -> anyhow::Result<Timed> {
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

/// An mTLS client for one agent's `/health`, with no connection reuse:
/// every poll is a fresh connection, so "answering" means the process that
/// listens now.
pub(crate) fn health_client(master_dir: &Path, host: &str) -> anyhow::Result<reqwest::Client> {
    let bundle = pki::Bundle::load(master_dir)
        .with_context(|| format!("loading the master bundle from {}", master_dir.display()))?;
    pki::http_client(&bundle, pki::ServerExpectation::cn(host))?
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the health client")
}

/// What the agent said on `/health`.
#[derive(Debug)]
pub(crate) struct Seen {
    /// The release sha256 it reported.
    pub(crate) sha256: Option<String>,
}

/// One `GET url`: the reported release when the agent answered 200.
pub(crate) async fn health_once(client: &reqwest::Client, url: &str) -> Option<Seen> {
    let resp = client.get(url).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let health: pki::wire::AgentHealth = resp.json().await.ok()?;
    Some(Seen {
        sha256: health.release.map(|m| m.sha256),
    })
}

/// Poll `url` every 5 ms until the agent answers 200 (and, with `want`,
/// reports that release); returns the instant it did.
pub(crate) async fn wait_health(
    client: &reqwest::Client,
    url: &str,
    want: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(seen) = health_once(client, url).await {
            match want {
                None => return Ok(Instant::now()),
                Some(w) if seen.sha256.as_deref() == Some(w) => return Ok(Instant::now()),
                Some(_) => last = seen.sha256,
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{url} did not answer healthy{} within {timeout:?} (last release seen: {last:?})",
                want.map(|w| format!(" on release {}", short(w)))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The first 12 hex digits of a digest, for messages.
pub(crate) fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
pub(crate) fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("parsing {field} in {}", path.display()))?;
            return Ok(kb * 1024);
        }
    }
    bail!("{} has no {field}", path.display())
}
