//! Self-update: `/update-self` installs a tree into the updater's own slots
//! (`updater/releases/`, `updater/current`) with the same extraction, hook,
//! journal and flip as `/update`, runs the new binary with `--check`, and
//! re-execs it with an argv rebuilt from the [`Stash`] alone. A trial
//! marker (`updater/trial.json`) and a watchdog — the previous, known-good
//! binary in `--watchdog` mode — guard the switch: the watchdog removes the
//! marker once the new updater's `/health` reports the new release, or
//! kills it, puts the previous release back and starts the previous
//! updater. Also here: what every start does first ([`prestart`]: repair
//! the updater's slots, settle a trial nobody watches any more, hand over
//! to `updater/current`), and the watchdog itself ([`watchdog`]).
//!
//! ```text
//! updater/current -> releases/active   the updater that should run
//! updater/releases/{active,prev,failed/…}
//! updater/trial.json                   a self-update not yet confirmed
//! updater/watchdog.log                 the watchdog's output
//! updater/updater.log                  output of an updater the watchdog restored
//! ```

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::Multipart;
use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pki::wire::{Manifest, OpResponse, OpStatus, Timings, UpdaterHealth};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::agent::{alive, proc_start_time};
use crate::config::{Config, Stash};
use crate::error::{Result, UpdaterError};
use crate::layout::{Layout, fsync_dir};
use crate::ops::{App, Finished, OpGuard, Purpose, blocking, ms, run_bounded, short};
use crate::release::SwarmToml;

/// `[updater] binary` when `swarm.toml` gives none.
pub const DEFAULT_BINARY: &str = "bin/worker-updater";
/// Set on every updater started from a slot: the release it runs from
/// (what `/health` reports).
pub const RELEASE_DIR_VAR: &str = "SWARM_UPDATER_RELEASE_DIR";
/// Set on a start-up hand-over so the process handed to never hands over again.
const HANDOFF_VAR: &str = "SWARM_UPDATER_HANDOFF";
const TRIAL_FILE: &str = "trial.json";
const WATCHDOG_LOG: &str = "watchdog.log";
const RESTORED_LOG: &str = "updater.log";
/// After the 200 has been handed to the connection, before the exec.
const EXEC_GRACE: Duration = Duration::from_millis(200);
/// Longest wait for the response body to be taken before exec anyway.
const SEND_WAIT: Duration = Duration::from_secs(3);
/// SIGTERM → SIGKILL grace for a new updater that failed its trial.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long past a trial's deadline a start waits for its verdict (the
/// watchdog's kill grace and revert fit well within it).
const VERDICT_SLACK_MS: u64 = 30_000;
/// How often the watchdog asks `/health`.
const POLL: Duration = Duration::from_millis(200);

/// The updater binary of the release in `release_dir`: `[updater] binary`
/// (default [`DEFAULT_BINARY`]), a relative path inside the tree naming an
/// executable file.
pub fn updater_binary(release_dir: &Path) -> Result<PathBuf> {
    let toml = SwarmToml::load(release_dir)?;
    let rel = toml
        .updater
        .binary
        .unwrap_or_else(|| DEFAULT_BINARY.to_owned());
    let p = Path::new(&rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(UpdaterError::ReleaseConfig(format!(
            "[updater] binary {rel:?} must be a relative path inside the tree, like {DEFAULT_BINARY}"
        )));
    }
    let path = release_dir.join(p);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.mode() & 0o111 != 0 => Ok(path),
        Ok(_) => Err(UpdaterError::BadUpload(format!(
            "the updater binary {rel} in the tree is not an executable file"
        ))),
        Err(e) => Err(UpdaterError::BadUpload(format!(
            "the tree has no updater binary at {rel} ({e}); /update-self needs one (or set [updater] binary in swarm.toml)"
        ))),
    }
}

/// The release this process runs from: `SWARM_UPDATER_RELEASE_DIR` when it
/// was started from a slot by an updater, else the slot its executable
/// lives in, else none (a base install outside `updater/`).
pub fn own_release(layout: &Layout) -> Option<Manifest> {
    if let Some(dir) = std::env::var_os(RELEASE_DIR_VAR) {
        return Manifest::read(Path::new(&dir));
    }
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let releases = layout.releases.canonicalize().ok()?;
    let slot = exe.strip_prefix(&releases).ok()?.components().next()?;
    Manifest::read(&releases.join(slot))
}

/// The updater that should be running: `updater/current`'s binary (and its
/// release dir), or the base executable when `updater/` holds no release.
fn desired(layout: &Layout, base_exe: &Path) -> (PathBuf, Option<PathBuf>) {
    if let Some(dir) = layout.resolved_current() {
        match updater_binary(&layout.current()) {
            Ok(exe) => return (exe, Some(dir)),
            Err(e) => tracing::error!(
                "updater/current has no usable updater binary ({e}); using {}",
                base_exe.display()
            ),
        }
    }
    (base_exe.to_owned(), None)
}

/// `exe` with the argv rebuilt from `stash` alone and the stash in its
/// environment.
fn updater_command(exe: &Path, release_dir: Option<&Path>, stash: &Stash) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(stash.argv())
        .envs(stash.vars())
        .env_remove(HANDOFF_VAR);
    match release_dir {
        Some(d) => cmd.env(RELEASE_DIR_VAR, d),
        None => cmd.env_remove(RELEASE_DIR_VAR),
    };
    cmd
}

/// Whether `pid` is alive and still the process that started at `start`.
fn same_process(pid: i32, start: Option<u64>) -> bool {
    pid > 1 && alive(pid) && (start.is_none() || proc_start_time(pid) == start)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn append_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// `updater/trial.json`: a self-update whose new updater has not yet been
/// seen healthy. Written before the exec, removed by the watchdog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The release on trial (`updater/releases/active`).
    pub release_sha256: String,
    /// The release it replaced (`prev`), or none (the base executable).
    pub previous_sha256: Option<String>,
    /// The process that execs into the new updater (exec keeps pid and start time).
    pub updater_pid: i32,
    pub updater_start_time: Option<u64>,
    pub watchdog_pid: Option<i32>,
    pub watchdog_start_time: Option<u64>,
    /// When the watchdog gives up, in ms since the Unix epoch.
    pub deadline_unix_ms: u64,
    pub started_at: String,
}

/// What is on disk at `updater/trial.json`.
#[derive(Debug)]
pub enum Marker {
    None,
    Trial(Trial),
    /// Present but unreadable.
    Corrupt(String),
}

impl Trial {
    fn path(layout: &Layout) -> PathBuf {
        layout.root.join(TRIAL_FILE)
    }

    pub fn read(layout: &Layout) -> Marker {
        let path = Trial::path(layout);
        match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(t) => Marker::Trial(t),
                Err(e) => Marker::Corrupt(format!("{}: {e}", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Marker::None,
            Err(e) => Marker::Corrupt(format!("{}: {e}", path.display())),
        }
    }

    /// Write atomically (temp file, rename, directory fsync).
    fn write(&self, layout: &Layout) -> Result<()> {
        let path = Trial::path(layout);
        let tmp = layout
            .root
            .join(format!(".{TRIAL_FILE}.tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| UpdaterError::Internal(format!("serializing the trial marker: {e}")))?;
        std::fs::write(&tmp, json).map_err(|e| UpdaterError::io(&tmp, e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| UpdaterError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| UpdaterError::io(&path, e))?;
        fsync_dir(&layout.root)
    }

    fn remove(layout: &Layout) -> Result<()> {
        let path = Trial::path(layout);
        match std::fs::remove_file(&path) {
            Ok(()) => fsync_dir(&layout.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(UpdaterError::io(&path, e)),
        }
    }

    fn watchdog_alive(&self) -> bool {
        self.watchdog_pid
            .is_some_and(|pid| same_process(pid, self.watchdog_start_time))
    }
}

/// Put the previous updater release back if the one on trial is still
/// live; returns what was done, for the log.
fn revert_trial(layout: &Layout, trial: &Trial) -> Result<String> {
    let live = Manifest::read(&layout.active()).map(|m| m.sha256);
    let done = if live.as_deref() == Some(trial.release_sha256.as_str()) {
        let name = layout.abandon_active()?;
        format!(
            "updater release {} moved to updater/releases/failed/{name}; back to {}",
            short(&trial.release_sha256),
            trial
                .previous_sha256
                .as_deref()
                .map_or("the base executable", short)
        )
    } else {
        format!(
            "updater release {} is no longer live; slots left as they are",
            short(&trial.release_sha256)
        )
    };
    Trial::remove(layout)?;
    Ok(done)
}

/// A self-update that passed its check, waiting for its 200 to be sent:
/// [`Handoff::exec`] then replaces this process with the new updater.
#[derive(Debug)]
pub struct Handoff {
    exe: PathBuf,
    release_dir: PathBuf,
    stash: Stash,
    layout: Layout,
    trial: Trial,
}

impl Handoff {
    /// Exec the new updater once `sent` fires (the response body was taken
    /// or dropped) plus a short grace, holding the worker until then.
    pub fn exec_after(self, sent: oneshot::Receiver<()>, guard: OpGuard) {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SEND_WAIT, sent).await;
            tokio::time::sleep(EXEC_GRACE).await;
            let _ = tokio::task::spawn_blocking(move || self.exec()).await;
            drop(guard);
        });
    }

    /// Replace this process; returns only when the exec failed, after
    /// putting the previous updater release back.
    fn exec(self) {
        tracing::info!(
            exe = %self.exe.display(),
            argv = ?self.stash.argv(),
            "re-executing into the new updater"
        );
        let err = updater_command(&self.exe, Some(&self.release_dir), &self.stash).exec();
        tracing::error!(
            "cannot exec {}: {err}; putting the previous updater release back",
            self.exe.display()
        );
        if let Some(pid) = self.trial.watchdog_pid
            && same_process(pid, self.trial.watchdog_start_time)
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match revert_trial(&self.layout, &self.trial) {
            Ok(done) => tracing::warn!("{done}"),
            Err(e) => tracing::error!("reverting the updater slots: {e}"),
        }
    }
}

/// The body of the `/update-self` 200: one chunk, then a signal when the
/// connection has taken it all (or dropped it).
pub struct NotifyingBody {
    chunk: Option<Bytes>,
    sent: Option<oneshot::Sender<()>>,
}

impl NotifyingBody {
    pub fn new(chunk: Bytes, sent: oneshot::Sender<()>) -> Self {
        NotifyingBody {
            chunk: Some(chunk),
            sent: Some(sent),
        }
    }
}

impl futures_util::Stream for NotifyingBody {
    type Item = std::result::Result<Bytes, std::convert::Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(c) = self.chunk.take() {
            return Poll::Ready(Some(Ok(c)));
        }
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
        Poll::Ready(None)
    }
}

impl Drop for NotifyingBody {
    fn drop(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl App {
    /// `POST /update-self`, with the worker already taken: receive into
    /// `updater/releases/active.new`, hook, flip `updater/current`, check
    /// the new binary, confirm, arm the trial. Returns the 200 body and
    /// what to exec once it is sent. On any failure the updater's slots are
    /// as they were and this process keeps serving.
    pub async fn update_self(
        self: Arc<Self>,
        form: Multipart,
        pushed_by: String,
    ) -> Result<(OpResponse, Handoff)> {
        let t0 = Instant::now();
        let mut timings = Timings::default();
        let layout = self.updater_layout.clone();
        let l = layout.clone();
        let staging = blocking(move || l.prepare_staging()).await?;
        let prepared = self
            .prepare(form, &staging, pushed_by, &mut timings, Purpose::Updater)
            .await;
        let manifest = match prepared {
            Ok(m) => m,
            Err(e) => {
                let l = layout.clone();
                let _ = blocking(move || {
                    l.discard_staging();
                    Ok(())
                })
                .await;
                return Err(e);
            }
        };
        let l = layout.clone();
        let previous = blocking(move || Ok(Manifest::read(&l.active()))).await?;

        let t = Instant::now();
        let (l, m) = (layout.clone(), manifest.clone());
        if let Err(e) = blocking(move || l.flip_in(&m)).await {
            let l = layout.clone();
            let repaired = blocking(move || {
                if l.repair()?.unconfirmed {
                    l.abandon_active()?;
                }
                Ok(())
            })
            .await;
            if let Err(re) = repaired {
                tracing::error!("repairing the updater slots after a failed flip: {re}");
            }
            return Err(e);
        }
        timings.sync_flip_ms = ms(t);

        let t = Instant::now();
        let checked = self.check_new(&layout).await;
        timings.probe_ms = ms(t);
        let (exe, release_dir) = match checked {
            Ok(ok) => ok,
            Err((message, stderr)) => {
                let (l, m) = (layout.clone(), manifest.clone());
                let message = match blocking(move || l.revert(&m)).await {
                    Ok((name, _)) => format!(
                        "{message}; the previous updater keeps running and the tree is in updater/releases/failed/{name}"
                    ),
                    Err(re) => format!(
                        "{message}; putting the previous updater release back failed too: {re}"
                    ),
                };
                tracing::warn!("{message}");
                return Err(UpdaterError::SelfCheck { message, stderr });
            }
        };

        let (l, m, config_trial) = (layout.clone(), manifest.clone(), self.config.self_trial);
        let stash = self.config.stash.clone();
        let prev_sha = previous.as_ref().map(|p| p.sha256.clone());
        let armed = blocking(move || {
            l.confirm()?;
            arm_trial(&l, &m, prev_sha, config_trial, &stash)
        })
        .await;
        let trial = match armed {
            Ok(t) => t,
            Err(e) => {
                let l = layout.clone();
                let undone = blocking(move || {
                    l.abandon_active()?;
                    Trial::remove(&l)
                })
                .await;
                if let Err(re) = undone {
                    tracing::error!("putting the previous updater release back: {re}");
                }
                return Err(e);
            }
        };
        timings.total_ms = ms(t0);
        tracing::info!(
            sha256 = %manifest.sha256,
            watchdog = ?trial.watchdog_pid,
            "new updater checked; switching to it once the answer is sent"
        );
        let body = OpResponse {
            status: OpStatus::Updated,
            release: Some(manifest),
            rolled_back: false,
            error: None,
            probes: Vec::new(),
            stderr: None,
            timings: Some(timings),
        };
        let handoff = Handoff {
            exe,
            release_dir,
            stash: self.config.stash.clone(),
            layout,
            trial,
        };
        Ok((body, handoff))
    }

    /// Run the new `updater/current` binary with the rebuilt argv and
    /// `--check`, bounded. `Ok((exe, release dir))`, or the reason and its
    /// stderr tail.
    async fn check_new(
        &self,
        layout: &Layout,
    ) -> std::result::Result<(PathBuf, PathBuf), (String, String)> {
        let l = layout.clone();
        let (release_dir, exe) = tokio::task::spawn_blocking(move || {
            let release_dir = l.resolved_current().ok_or_else(|| {
                (
                    "updater/current does not resolve after the flip".to_owned(),
                    String::new(),
                )
            })?;
            let exe = updater_binary(&l.current()).map_err(|e| (e.to_string(), String::new()))?;
            Ok::<_, (String, String)>((release_dir, exe))
        })
        .await
        .map_err(|e| (format!("blocking task: {e}"), String::new()))??;
        let mut cmd = updater_command(&exe, Some(&release_dir), &self.config.stash);
        cmd.arg("--check").current_dir(&self.config.install_dir);
        let mut cmd = tokio::process::Command::from(cmd);
        let timeout = self.config.self_check_timeout;
        tracing::info!(exe = %exe.display(), "checking the new updater binary");
        match run_bounded(&mut cmd, timeout).await {
            Ok((Finished::Exited(s), _)) if s.success() => Ok((exe, release_dir)),
            Ok((Finished::Exited(s), stderr)) => Err((
                format!("the new updater binary failed its check ({s})"),
                stderr,
            )),
            Ok((Finished::TimedOut, stderr)) => Err((
                format!("the new updater binary did not finish its check within {timeout:?}"),
                stderr,
            )),
            Ok((Finished::WaitFailed(e), stderr)) => {
                Err((format!("waiting for the updater check: {e}"), stderr))
            }
            Err(e) => Err((
                format!("cannot run the new updater binary {}: {e}", exe.display()),
                String::new(),
            )),
        }
    }
}

/// Write the trial marker, start the watchdog (this very binary, through
/// `/proc/self/exe`, so it is the known-good one even after the slots
/// moved), and record the watchdog in the marker.
fn arm_trial(
    layout: &Layout,
    manifest: &Manifest,
    previous_sha256: Option<String>,
    trial_time: Duration,
    stash: &Stash,
) -> Result<Trial> {
    let me = i32::try_from(std::process::id())
        .map_err(|_| UpdaterError::Internal("pid out of range".into()))?;
    let mut trial = Trial {
        release_sha256: manifest.sha256.clone(),
        previous_sha256,
        updater_pid: me,
        updater_start_time: proc_start_time(me),
        watchdog_pid: None,
        watchdog_start_time: None,
        deadline_unix_ms: now_unix_ms()
            .saturating_add(u64::try_from(trial_time.as_millis()).unwrap_or(u64::MAX)),
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    trial.write(layout)?;
    let log_path = layout.root.join(WATCHDOG_LOG);
    let log = append_log(&log_path).map_err(|e| UpdaterError::io(&log_path, e))?;
    let err_log = log
        .try_clone()
        .map_err(|e| UpdaterError::io(&log_path, e))?;
    let arg0 = std::env::current_exe()
        .map_or_else(|_| "worker-updater".to_owned(), |p| p.display().to_string());
    let child = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(stash.argv())
        .arg("--watchdog")
        .envs(stash.vars())
        .env_remove(HANDOFF_VAR)
        .env_remove(RELEASE_DIR_VAR)
        .current_dir(&layout.install)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn()
        .map_err(|e| UpdaterError::Internal(format!("cannot start the watchdog: {e}")))?;
    let pid = i32::try_from(child.id())
        .map_err(|_| UpdaterError::Internal("watchdog pid out of range".into()))?;
    trial.watchdog_pid = Some(pid);
    trial.watchdog_start_time = proc_start_time(pid);
    if let Err(e) = trial.write(layout) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        return Err(e);
    }
    Ok(trial)
}

/// What every start does before binding (not in `--check` or
/// `--watchdog`): repair the updater's slots, settle a trial that nobody
/// watches any more, and hand over to the updater that should run. Returns
/// only if this process is that updater (or the hand-over failed).
pub fn prestart(config: &Config) {
    let layout = Layout::updater(&config.install_dir, config.failed_keep);
    if !layout.root.is_dir() {
        return;
    }
    match layout.repair() {
        Ok(r) => {
            for action in &r.actions {
                tracing::warn!("start-up repair of updater/: {action}");
            }
            if r.unconfirmed {
                // The flip happened but the check never passed.
                match layout.abandon_active() {
                    Ok(name) => tracing::warn!(
                        "a self-update stopped before its check passed; its tree is in updater/releases/failed/{name}"
                    ),
                    Err(e) => tracing::error!("reverting an unchecked updater release: {e}"),
                }
            }
        }
        Err(e) => tracing::error!("start-up repair of updater/: {e}"),
    }
    let me = i32::try_from(std::process::id()).unwrap_or_default();
    let mut waiting = false;
    loop {
        match Trial::read(&layout) {
            Marker::None => {}
            Marker::Trial(t) if t.watchdog_alive() && t.updater_pid == me => tracing::info!(
                release = %short(&t.release_sha256),
                watchdog = ?t.watchdog_pid,
                "self-update trial in progress; its watchdog decides"
            ),
            // Started during someone else's trial (a service manager
            // restarting a crashed updater, say): wait for the verdict, so
            // the hand-over below goes to the release that won.
            Marker::Trial(t)
                if t.watchdog_alive()
                    && now_unix_ms() < t.deadline_unix_ms.saturating_add(VERDICT_SLACK_MS) =>
            {
                if !waiting {
                    tracing::info!(
                        release = %short(&t.release_sha256),
                        watchdog = ?t.watchdog_pid,
                        "a self-update trial is in progress; waiting for its watchdog's verdict"
                    );
                    waiting = true;
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Marker::Trial(t) if t.watchdog_alive() => tracing::error!(
                watchdog = ?t.watchdog_pid,
                "the self-update watchdog is past its deadline and still running; starting anyway"
            ),
            Marker::Trial(t) => {
                // The watchdog is gone (killed, or the machine restarted): nobody
                // saw this release healthy, so it does not survive a restart.
                match revert_trial(&layout, &t) {
                    Ok(done) => {
                        tracing::warn!("an unconfirmed self-update lost its watchdog: {done}")
                    }
                    Err(e) => tracing::error!("settling an abandoned self-update trial: {e}"),
                }
            }
            Marker::Corrupt(why) => {
                tracing::error!("unreadable trial marker ({why}); removing it");
                let _ = Trial::remove(&layout);
            }
        }
        break;
    }
    if std::env::var_os(HANDOFF_VAR).is_some() {
        return;
    }
    let (exe, release_dir) = desired(&layout, &config.base_exe);
    // Already it: the same executable, or started from that very slot by
    // an updater (a wrapper script in the slot execs a binary elsewhere).
    let me = std::env::current_exe().unwrap_or_default();
    let from_slot = std::env::var_os(RELEASE_DIR_VAR).map(PathBuf::from);
    if same_file(&exe, &me) || (release_dir.is_some() && from_slot == release_dir) || !exe.is_file()
    {
        return;
    }
    tracing::info!(
        exe = %exe.display(),
        "handing over to the updater in updater/current"
    );
    let mut cmd = updater_command(&exe, release_dir.as_deref(), &config.stash);
    cmd.env(HANDOFF_VAR, "1");
    let err = cmd.exec();
    tracing::error!(
        "cannot hand over to {}: {err}; running this binary instead",
        exe.display()
    );
}

/// In a freshly exec'd updater: the watchdog of its trial is our child
/// (spawned before the exec); reap it once it exits so it leaves no zombie.
pub fn reap_watchdog(layout: &Layout) {
    let Marker::Trial(t) = Trial::read(layout) else {
        return;
    };
    let Some(pid) = t.watchdog_pid else {
        return;
    };
    tokio::spawn(async move {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        loop {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => tokio::time::sleep(Duration::from_millis(500)).await,
                _ => return,
            }
        }
    });
}

/// `--watchdog`: guard the trial in `updater/trial.json`. Success: the
/// updater on the stashed address reports the new release on `/health`
/// before the deadline; the marker goes. Failure (deadline, or the new
/// updater died): kill it if it is still the same process, put the
/// previous updater release back, start the previous updater detached.
/// Takes nothing from the network but the health answer.
pub fn watchdog(config: &Config) -> std::process::ExitCode {
    // Out of the updater's session and process group, so what stops the
    // updater (a terminal's ^C, a killpg) does not stop its watchdog.
    if let Err(e) = nix::unistd::setsid() {
        tracing::warn!("watchdog: setsid: {e}");
    }
    let layout = Layout::updater(&config.install_dir, config.failed_keep);
    let trial = match Trial::read(&layout) {
        Marker::Trial(t) => t,
        Marker::None => {
            tracing::info!("watchdog: no trial to guard");
            return std::process::ExitCode::SUCCESS;
        }
        Marker::Corrupt(why) => {
            tracing::error!("watchdog: {why}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("watchdog: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let verdict = runtime.block_on(watch(config, &trial));
    match verdict {
        Ok(()) => {
            // Remove the marker only if it is still the trial we guarded.
            if let Marker::Trial(now) = Trial::read(&layout)
                && now.release_sha256 == trial.release_sha256
                && now.updater_pid == trial.updater_pid
                && let Err(e) = Trial::remove(&layout)
            {
                tracing::error!("watchdog: removing the trial marker: {e}");
            }
            tracing::info!(
                release = %short(&trial.release_sha256),
                "watchdog: the new updater is healthy; self-update confirmed"
            );
            std::process::ExitCode::SUCCESS
        }
        Err(why) => {
            tracing::error!("watchdog: {why}; reverting to the previous updater");
            runtime.block_on(stop(trial.updater_pid, trial.updater_start_time));
            match revert_trial(&layout, &trial) {
                Ok(done) => tracing::warn!("watchdog: {done}"),
                Err(e) => tracing::error!("watchdog: reverting the updater slots: {e}"),
            }
            if config.supervised {
                tracing::warn!(
                    "watchdog: leaving the restart to the service manager (--supervised)"
                );
                return std::process::ExitCode::SUCCESS;
            }
            let (exe, release_dir) = desired(&layout, &config.base_exe);
            let log_path = layout.root.join(RESTORED_LOG);
            let mut cmd = updater_command(&exe, release_dir.as_deref(), &config.stash);
            cmd.current_dir(&config.install_dir)
                .stdin(std::process::Stdio::null());
            match (append_log(&log_path), append_log(&log_path)) {
                (Ok(out), Ok(err)) => {
                    cmd.stdout(out).stderr(err);
                }
                _ => tracing::error!("watchdog: cannot open {}", log_path.display()),
            }
            match cmd.spawn() {
                Ok(child) => {
                    tracing::warn!(
                        pid = child.id(),
                        exe = %exe.display(),
                        "watchdog: previous updater started (output in {})",
                        log_path.display()
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(
                        "watchdog: cannot start the previous updater {}: {e}; the updater is down until it is started by hand or by its service manager",
                        exe.display()
                    );
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// Poll the updater's `/health` until it reports the release on trial.
async fn watch(config: &Config, trial: &Trial) -> std::result::Result<(), String> {
    let client = pki::http_client(
        &config.bundle,
        pki::ServerExpectation::cn(config.host.updater_cn()),
    )
    .and_then(|b| Ok(b.timeout(Duration::from_secs(2)).build()?))
    .map_err(|e| format!("cannot build the health client: {e}"))?;
    let mut addr = config.stash.listen().unwrap_or(config.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("https://{addr}/health");
    tracing::info!(
        %url,
        release = %short(&trial.release_sha256),
        pid = trial.updater_pid,
        "watchdog: waiting for the new updater"
    );
    let mut last: String;
    loop {
        match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => match resp.json::<UpdaterHealth>().await {
                Ok(h) => {
                    let got = h.release.map(|m| m.sha256);
                    // The process before the exec still holds `update-self`;
                    // only the one after it counts (even for the same tree).
                    let after_exec = h.busy.as_deref() != Some("update-self");
                    if after_exec && got.as_deref() == Some(trial.release_sha256.as_str()) {
                        return Ok(());
                    }
                    last = format!(
                        "pid {} reports release {}",
                        h.pid,
                        got.as_deref().map_or("none", short)
                    );
                }
                Err(e) => last = format!("unreadable health answer: {e}"),
            },
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) => last = pki::error_chain(&e),
        }
        if !same_process(trial.updater_pid, trial.updater_start_time) {
            return Err(format!(
                "the new updater (pid {}) exited before answering /health with its release (last: {last})",
                trial.updater_pid
            ));
        }
        if now_unix_ms() >= trial.deadline_unix_ms {
            return Err(format!(
                "the new updater did not report release {} on {url} in time (last: {last})",
                short(&trial.release_sha256)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// SIGTERM, grace, SIGKILL `pid` — only while it is still the process that
/// started at `start` (a recycled pid is never signalled).
async fn stop(pid: i32, start: Option<u64>) {
    for (sig, wait) in [
        (Signal::SIGTERM, KILL_GRACE),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        if !same_process(pid, start) {
            return;
        }
        tracing::warn!(pid, ?sig, "watchdog: stopping the new updater");
        let _ = kill(Pid::from_raw(pid), sig);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if !same_process(pid, start) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tracing::error!(pid, "watchdog: the new updater survived SIGKILL");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_must_be_an_executable_inside_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(updater_binary(dir).is_err(), "missing");
        std::fs::create_dir(dir.join("bin")).unwrap();
        std::fs::write(dir.join(DEFAULT_BINARY), "x").unwrap();
        assert!(updater_binary(dir).is_err(), "not executable");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join(DEFAULT_BINARY),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(updater_binary(dir).unwrap(), dir.join(DEFAULT_BINARY));
        for bad in ["/bin/sh", "../x", "bin/../bin/worker-updater", ""] {
            std::fs::write(
                dir.join("swarm.toml"),
                format!("[updater]\nbinary = {bad:?}\n"),
            )
            .unwrap();
            assert!(updater_binary(dir).is_err(), "{bad}");
        }
    }

    #[test]
    fn marker_round_trip_and_stale_revert() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::updater(tmp.path(), 3);
        l.ensure_dirs().unwrap();
        let m = |sha: &str| Manifest {
            sha256: sha.into(),
            size_bytes: 1,
            files: 1,
            git_commit: None,
            pushed_at: String::new(),
            pushed_by: "master".into(),
        };
        for sha in ["aaaa", "bbbb"] {
            let s = l.prepare_staging().unwrap();
            crate::release::write_manifest(&s, &m(sha)).unwrap();
            l.flip_in(&m(sha)).unwrap();
            l.confirm().unwrap();
        }
        let t = Trial {
            release_sha256: "bbbb".into(),
            previous_sha256: Some("aaaa".into()),
            updater_pid: 1,
            updater_start_time: None,
            watchdog_pid: Some(i32::MAX),
            watchdog_start_time: None,
            deadline_unix_ms: 0,
            started_at: String::new(),
        };
        t.write(&l).unwrap();
        let Marker::Trial(back) = Trial::read(&l) else {
            panic!("marker")
        };
        assert_eq!(back, t);
        assert!(!back.watchdog_alive());
        revert_trial(&l, &back).unwrap();
        assert_eq!(Manifest::read(&l.current()).unwrap().sha256, "aaaa");
        assert!(matches!(Trial::read(&l), Marker::None));
        assert_eq!(l.releases().failed.len(), 1);
        // First self-update reverted: no release left, current removed.
        let l2 = Layout::updater(&tmp.path().join("other"), 3);
        let s = l2.prepare_staging().unwrap();
        crate::release::write_manifest(&s, &m("cccc")).unwrap();
        l2.flip_in(&m("cccc")).unwrap();
        l2.confirm().unwrap();
        l2.abandon_active().unwrap();
        assert!(l2.resolved_current().is_none());
        assert!(std::fs::symlink_metadata(l2.current()).is_err());
    }
}
