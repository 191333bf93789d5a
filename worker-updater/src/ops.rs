//! The operations: update (receive → install hook → flip → restart → probe
//! → confirm or revert), rollback (swap with `prev` → restart → probe → undo
//! if unhealthy), and the start-up reconcile. One at a time per worker:
//! [`App::try_begin`] hands out the only [`OpGuard`].

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Multipart;
use axum::http::StatusCode;
use pki::wire::{Manifest, OpResponse, OpStatus, Probe, Timings};
use tokio::io::AsyncReadExt;

use crate::agent::{Launch, Matcher, Spawned, Supervisor};
use crate::config::Config;
use crate::error::{Result, UpdaterError};
use crate::layout::{Layout, Repair};
use crate::probe::{ProbeSettings, probe};
use crate::release::{AgentEnv, SwarmToml, resolve_program, write_manifest};
use crate::upload;

/// How much of the install hook's stderr is returned.
const STDERR_TAIL: usize = 8 * 1024;

/// Shared state of the daemon.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub layout: Layout,
    /// The updater's own slots (`updater/`), touched only by `/update-self`.
    pub updater_layout: Layout,
    pub supervisor: Supervisor,
    pub probe_client: reqwest::Client,
    /// The updater's own release (the slot it runs from), read at start.
    pub own_release: Option<Manifest>,
    busy: Mutex<Option<&'static str>>,
}

/// Holds the worker for one operation; released on drop.
#[derive(Debug)]
pub struct OpGuard {
    app: Arc<App>,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if let Ok(mut b) = self.app.busy.lock() {
            *b = None;
        }
    }
}

/// Which slots a pushed tree is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `/update`: the agent's release.
    Agent,
    /// `/update-self`: the updater's own release.
    Updater,
}

/// An operation's answer: status code and body.
pub type OpResult = Result<(StatusCode, OpResponse)>;

impl App {
    pub fn new(config: Config) -> anyhow::Result<App> {
        let layout = Layout::new(&config.install_dir, config.failed_keep);
        let supervisor = Supervisor::new(
            &config.install_dir,
            layout.pidfile(),
            layout.spawn_log(),
            config.stop_grace,
        );
        let probe_client = pki::http_client(
            &config.bundle,
            pki::ServerExpectation::cn(config.host.as_str()),
        )?
        .connect_timeout(config.probe.timeout)
        .build()?;
        let updater_layout = Layout::updater(&config.install_dir, config.failed_keep);
        let own_release = crate::selfupdate::own_release(&updater_layout);
        Ok(App {
            config,
            layout,
            updater_layout,
            supervisor,
            probe_client,
            own_release,
            busy: Mutex::new(None),
        })
    }

    /// Take the worker for `op`, or fail at once with `Busy`.
    pub fn try_begin(self: &Arc<Self>, op: &'static str) -> Result<OpGuard> {
        let mut b = self
            .busy
            .lock()
            .map_err(|_| UpdaterError::Internal("operation lock poisoned".into()))?;
        if let Some(running) = *b {
            return Err(UpdaterError::Busy(running));
        }
        *b = Some(op);
        Ok(OpGuard { app: self.clone() })
    }

    /// The operation running now, if any.
    pub fn busy(&self) -> Option<String> {
        self.busy.lock().ok().and_then(|b| b.map(str::to_owned))
    }

    /// How to recognise this worker's agent: the default program, the
    /// reference agent, and the programs of the releases on disk.
    fn matcher(&self) -> Matcher {
        let mut programs = vec!["worker-agent".to_owned()];
        let mut add = |cmd: Option<&String>| {
            if let Some(name) = cmd.and_then(|c| Path::new(c).file_name()) {
                programs.push(name.to_string_lossy().into_owned());
            }
        };
        add(self.config.agent_cmd.first());
        for dir in [self.layout.active(), self.layout.prev(), self.layout.old()] {
            if let Ok(t) = SwarmToml::load(&dir) {
                add(t.agent.command.as_ref().and_then(|c| c.first()));
            }
        }
        programs.sort();
        programs.dedup();
        Matcher {
            programs,
            install_dir: self.config.install_dir.clone(),
            agent_dir: self.config.agent_dir.clone(),
        }
    }

    /// The environment of an agent (or install hook) running from `release_dir`.
    fn env_for(&self, release_dir: &Path) -> Result<AgentEnv> {
        AgentEnv::new(
            &self.layout.env_local(),
            &self.config.agent_dir,
            release_dir,
            &self.config.install_dir,
        )
    }

    /// The command, environment, health URL and probe settings for the
    /// release in `release_dir`.
    fn launch_for(
        &self,
        release_dir: &Path,
        sha256: Option<String>,
    ) -> Result<(Launch, String, ProbeSettings)> {
        let toml = SwarmToml::load(release_dir)?;
        let env = self.env_for(release_dir)?;
        let settings = self.config.probe.with_deadline(toml.probe_deadline());
        let raw = toml
            .agent
            .command
            .unwrap_or_else(|| self.config.agent_cmd.clone());
        let mut argv = raw
            .iter()
            .map(|a| env.expand(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UpdaterError::ReleaseConfig(format!("[agent] command: {e}")))?;
        if let Some(p) = argv.first_mut() {
            *p = resolve_program(p, release_dir).display().to_string();
        }
        let url = match toml.agent.health_url {
            Some(u) => env
                .expand(&u)
                .map_err(|e| UpdaterError::ReleaseConfig(format!("[agent] health_url: {e}")))?,
            None => self.config.agent_url.clone(),
        };
        let launch = Launch {
            argv,
            env: env.added.into_iter().collect(),
            release_dir: release_dir.to_owned(),
            sha256,
        };
        Ok((launch, url, settings))
    }

    /// Stop whatever agent of ours runs, start one from `current`, probe it.
    /// The `/proc` scan, `swarm.toml`, `.env.local` and the fork run on the
    /// blocking pool.
    pub async fn restart_and_probe(
        self: &Arc<Self>,
        phase: &str,
        expect: Option<&Manifest>,
    ) -> (Probe, Option<Spawned>) {
        let app = self.clone();
        let found = blocking(move || Ok(app.supervisor.find(&app.matcher())))
            .await
            .unwrap_or_else(|e| {
                tracing::error!("looking for the running agent: {e}");
                Vec::new()
            });
        let mut stopped = Vec::new();
        for (pid, start_time) in found {
            stopped.push(self.supervisor.stop_pid(pid, start_time).await);
        }
        for s in &stopped {
            tracing::info!("{}", s.note);
        }
        let failed = |url: String, error: String| Probe {
            phase: phase.into(),
            url,
            healthy: false,
            attempts: 0,
            elapsed_ms: 0,
            release_sha256: None,
            error: Some(error),
        };
        if let Some(s) = stopped.iter().find(|s| s.survived) {
            return (
                failed(
                    self.config.agent_url.clone(),
                    format!(
                        "{}; not starting another agent beside it (it may still hold the port)",
                        s.note
                    ),
                ),
                None,
            );
        }
        let app = self.clone();
        let launched = blocking(move || {
            let release_dir = app
                .layout
                .resolved_current()
                .ok_or_else(|| UpdaterError::Agent("no current release to start".into()))?;
            let sha = Manifest::read(&release_dir).map(|m| m.sha256);
            let (launch, url, settings) = app.launch_for(&release_dir, sha)?;
            // Forks and writes the pidfile; the reaper task it spawns
            // finds the runtime from the blocking pool.
            let spawned = app.supervisor.spawn(&launch).map_err(|e| (url.clone(), e));
            Ok((url, settings, spawned))
        })
        .await;
        let (url, settings, spawned) = match launched {
            Ok((_, _, Err((url, e)))) => return (failed(url, e.to_string()), None),
            Ok((url, settings, Ok(s))) => (url, settings, s),
            Err(UpdaterError::Agent(e)) => {
                return (failed(self.config.agent_url.clone(), e), None);
            }
            Err(e) => return (failed(self.config.agent_url.clone(), e.to_string()), None),
        };
        let p = probe(
            &self.probe_client,
            &url,
            phase,
            expect.map(|m| m.sha256.as_str()),
            &settings,
            Some(&spawned),
        )
        .await;
        (p, Some(spawned))
    }

    /// `POST /update`, holding the worker (`guard`). When the layout has to
    /// be repaired half-way, the guard passes to the reconcile that follows,
    /// so nothing else starts in between.
    pub async fn update(
        self: Arc<Self>,
        form: Multipart,
        pushed_by: String,
        guard: OpGuard,
    ) -> OpResult {
        let t0 = Instant::now();
        let mut timings = Timings::default();
        let layout = self.layout.clone();
        let staging = blocking(move || layout.prepare_staging()).await?;
        let prepared = self
            .prepare(form, &staging, pushed_by, &mut timings, Purpose::Agent)
            .await;
        let manifest = match prepared {
            Ok(m) => m,
            Err(e) => {
                let layout = self.layout.clone();
                let _ = blocking(move || {
                    layout.discard_staging();
                    Ok(())
                })
                .await;
                return Err(e);
            }
        };
        let layout = self.layout.clone();
        let previous = blocking(move || Ok(Manifest::read(&layout.active()))).await?;

        let t = Instant::now();
        let (layout, m) = (self.layout.clone(), manifest.clone());
        if let Err(e) = blocking(move || layout.flip_in(&m)).await {
            self.recover(guard, "a failed flip").await;
            return Err(e);
        }
        timings.sync_flip_ms = ms(t);
        tracing::info!(sha256 = %manifest.sha256, "flipped current to the new release");

        let t = Instant::now();
        let (forward, spawned) = self.restart_and_probe("forward", Some(&manifest)).await;
        timings.probe_ms = forward.elapsed_ms;
        timings.restart_ms = ms(t).saturating_sub(forward.elapsed_ms);
        if forward.healthy {
            let t = Instant::now();
            let layout = self.layout.clone();
            let trash = blocking(move || layout.confirm_to_trash()).await?;
            timings.confirm_ms = ms(t);
            // The release it replaced can take seconds to delete (a big tree,
            // a busy disk): not the pusher's wait.
            if let Some(trash) = trash {
                crate::layout::delete_in_background(trash);
            }
            timings.total_ms = ms(t0);
            tracing::info!(sha256 = %manifest.sha256, "update healthy");
            return Ok((
                StatusCode::OK,
                OpResponse {
                    status: OpStatus::Updated,
                    release: Some(manifest),
                    rolled_back: false,
                    error: None,
                    probes: vec![forward],
                    stderr: None,
                    timings: Some(timings),
                },
            ));
        }

        // Unhealthy: stop it, put the last good release back.
        let why = forward.error.clone().unwrap_or_else(|| "unhealthy".into());
        if let Some(s) = &spawned {
            tracing::info!(
                "{}",
                self.supervisor
                    .stop_pid(s.pid, crate::agent::proc_start_time(s.pid))
                    .await
                    .note
            );
        }
        let (layout, m) = (self.layout.clone(), manifest.clone());
        let (failed_name, restored) = match blocking(move || layout.revert(&m)).await {
            Ok(r) => r,
            Err(e) => {
                self.recover(guard, "a failed revert").await;
                return Err(e);
            }
        };
        let mut probes = vec![forward];
        let (release, error) = if restored {
            let (back, _) = self.restart_and_probe("rollback", previous.as_ref()).await;
            let mut error = format!(
                "release {} failed its health probe ({why}); rolled back to {} (the failed tree is in releases/failed/{failed_name})",
                short(&manifest.sha256),
                previous
                    .as_ref()
                    .map_or("the previous release", |p| short(&p.sha256)),
            );
            if !back.healthy {
                error.push_str(&format!(
                    "; the restored release is unhealthy too: {}",
                    back.error.as_deref().unwrap_or("unhealthy")
                ));
            }
            probes.push(back);
            (previous, error)
        } else {
            (
                None,
                format!(
                    "first install of {} failed its health probe ({why}); there was no previous release, so nothing runs and `current` is absent; the tree is in releases/failed/{failed_name}; push a fixed tree",
                    short(&manifest.sha256)
                ),
            )
        };
        timings.total_ms = ms(t0);
        tracing::warn!("{error}");
        Ok((
            StatusCode::CONFLICT,
            OpResponse {
                status: OpStatus::RolledBack,
                release,
                rolled_back: restored,
                error: Some(error),
                probes,
                stderr: None,
                timings: Some(timings),
            },
        ))
    }

    /// Receive into staging, write the manifest, check `swarm.toml` (the
    /// agent command for an update, `confirm_self` and the updater binary
    /// for a self-update), run the install hook. Nothing outside staging is
    /// touched.
    pub async fn prepare(
        self: &Arc<Self>,
        form: Multipart,
        staging: &Path,
        pushed_by: String,
        timings: &mut Timings,
        purpose: Purpose,
    ) -> Result<Manifest> {
        let t = Instant::now();
        let received = upload::receive(form, staging, &self.config.caps).await?;
        if purpose == Purpose::Updater && received.confirm_self.as_deref() != Some("true") {
            return Err(UpdaterError::BadUpload(
                "/update-self replaces the updater itself: send the field confirm_self=true to confirm"
                    .into(),
            ));
        }
        let manifest = received.manifest(pushed_by);
        timings.receive_ms = ms(t);
        tracing::info!(
            sha256 = %manifest.sha256,
            bytes = manifest.size_bytes,
            files = manifest.files,
            "release received"
        );
        let (app, dir, m) = (self.clone(), staging.to_owned(), manifest.clone());
        let (toml, env) = blocking(move || {
            write_manifest(&dir, &m)?;
            let toml = SwarmToml::load(&dir)?;
            match purpose {
                // Fail now, not after the flip, on an agent command that cannot expand.
                Purpose::Agent => {
                    app.launch_for(&dir, None)?;
                }
                Purpose::Updater => {
                    crate::selfupdate::updater_binary(&dir)?;
                }
            }
            let env = app.env_for(&dir)?;
            Ok((toml, env))
        })
        .await?;
        let t = Instant::now();
        if let Some(cmd) = &toml.install.command {
            let timeout = toml
                .install
                .timeout_secs
                .map_or(self.config.install_timeout, Duration::from_secs);
            run_install(cmd, staging, &env, timeout).await?;
        }
        timings.install_ms = ms(t);
        Ok(manifest)
    }

    /// `POST /rollback`, holding the worker (`guard`). The swap is journaled
    /// until the agent on the final release has been probed, so a crash in
    /// between is repaired at start-up.
    pub async fn rollback(self: Arc<Self>, guard: OpGuard) -> OpResult {
        let layout = self.layout.clone();
        let (running, target) = blocking(move || {
            if !layout.prev().is_dir() || !layout.active().is_dir() {
                return Err(UpdaterError::NoPrevious);
            }
            Ok((
                Manifest::read(&layout.active()),
                Manifest::read(&layout.prev()),
            ))
        })
        .await?;
        let (layout, from, to) = (self.layout.clone(), running.clone(), target.clone());
        let swapped = blocking(move || {
            layout.begin_rollback(from.as_ref(), to.as_ref())?;
            layout.swap_prev()
        })
        .await;
        if let Err(e) = swapped {
            self.recover(guard, "a failed rollback swap").await;
            return Err(e);
        }
        let (p, _) = self.restart_and_probe("rollback", target.as_ref()).await;
        if p.healthy {
            self.end_rollback().await;
            tracing::info!("rolled back to {:?}", target.as_ref().map(|m| &m.sha256));
            return Ok((
                StatusCode::OK,
                OpResponse {
                    status: OpStatus::RolledBack,
                    release: target,
                    rolled_back: true,
                    error: None,
                    probes: vec![p],
                    stderr: None,
                    timings: None,
                },
            ));
        }
        let layout = self.layout.clone();
        if let Err(e) = blocking(move || layout.swap_prev()).await {
            self.recover(guard, "a failed swap back after a rollback")
                .await;
            return Err(e);
        }
        let (back, _) = self
            .restart_and_probe("rollback-check", running.as_ref())
            .await;
        self.end_rollback().await;
        let mut error = format!(
            "the previous release {} failed its health probe ({}); went back to {}",
            target
                .as_ref()
                .map_or("(no manifest)", |m| short(&m.sha256)),
            p.error.as_deref().unwrap_or("unhealthy"),
            running
                .as_ref()
                .map_or("(no manifest)", |m| short(&m.sha256)),
        );
        if !back.healthy {
            error.push_str(&format!(
                ", which is unhealthy too: {}",
                back.error.as_deref().unwrap_or("unhealthy")
            ));
        }
        tracing::warn!("{error}");
        Ok((
            StatusCode::CONFLICT,
            OpResponse {
                status: OpStatus::Error,
                release: running,
                rolled_back: false,
                error: Some(error),
                probes: vec![p, back],
                stderr: None,
                timings: None,
            },
        ))
    }

    async fn end_rollback(&self) {
        let layout = self.layout.clone();
        if let Err(e) = blocking(move || layout.end_rollback()).await {
            tracing::error!("removing the rollback journal: {e}");
        }
    }

    /// An operation failed half-way through changing the slots: repair the
    /// layout as a restart would and, when that leaves an agent to restart
    /// or an unconfirmed release to probe, hand `guard` to the reconcile
    /// that does it.
    async fn recover(self: &Arc<Self>, guard: OpGuard, what: &str) {
        let layout = self.layout.clone();
        match blocking(move || layout.repair()).await {
            Ok(r) => {
                for action in &r.actions {
                    tracing::warn!("repair after {what}: {action}");
                }
                if r.unconfirmed || r.restart {
                    tokio::spawn(self.clone().reconcile(guard, r.unconfirmed));
                }
            }
            Err(e) => tracing::error!(
                "repair after {what}: {e}; the next start of the updater repairs the layout"
            ),
        }
    }

    /// At start-up, after the repair and before anything is served: when
    /// the agent has to be (re)started — a crash left an unconfirmed release
    /// live, interrupted a revert or a rollback, or no agent of ours runs
    /// and `--start-agent` is on — take the worker now and return the
    /// reconcile to run, holding it. Requests meanwhile get 409 busy;
    /// `/health` answers.
    pub async fn start_up(
        self: &Arc<Self>,
        repair: &Repair,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let app = self.clone();
        let restart = repair.unconfirmed || repair.restart;
        let needed = blocking(move || {
            Ok(app.layout.resolved_current().is_some()
                && (restart || (app.config.start_agent && !app.supervisor.running(&app.matcher()))))
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("start-up: {e}");
            false
        });
        if !needed {
            return None;
        }
        let guard = self.try_begin("start-up").ok()?;
        Some(self.clone().reconcile(guard, repair.unconfirmed))
    }

    /// Holding the worker: restart the agent on `current` and probe it. An
    /// `unconfirmed` release (never probed) that is unhealthy goes to
    /// `failed/` and `prev` comes back, its agent restarted.
    pub async fn reconcile(self: Arc<Self>, guard: OpGuard, unconfirmed: bool) {
        let _guard = guard;
        let layout = self.layout.clone();
        let active = blocking(move || Ok(Manifest::read(&layout.active())))
            .await
            .ok()
            .flatten();
        let (p, _) = self.restart_and_probe("forward", active.as_ref()).await;
        if p.healthy {
            tracing::info!("start-up: agent healthy");
            return;
        }
        tracing::warn!("start-up: agent unhealthy: {:?}", p.error);
        if !unconfirmed {
            return;
        }
        let layout = self.layout.clone();
        let reverted = blocking(move || {
            if !layout.prev().is_dir() {
                return Ok(None);
            }
            layout.begin_rollback(active.as_ref(), None)?;
            layout.swap_prev()?;
            layout.fail_prev().map(Some)
        })
        .await;
        match reverted {
            Ok(None) => return,
            Ok(Some(name)) => {
                tracing::warn!(
                    "start-up: the unconfirmed release went to failed/{name}; restarting the previous one"
                );
                let layout = self.layout.clone();
                let prev = blocking(move || Ok(Manifest::read(&layout.active())))
                    .await
                    .ok()
                    .flatten();
                let (p, _) = self.restart_and_probe("rollback", prev.as_ref()).await;
                tracing::info!(healthy = p.healthy, "start-up: previous release restarted");
            }
            Err(e) => tracing::error!("start-up: reverting the unconfirmed release: {e}"),
        }
        self.end_rollback().await;
    }
}

/// Run blocking filesystem work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UpdaterError::Internal(format!("blocking task: {e}")))?
}

/// Run the install hook in `dir` with a timeout; on failure, the tail of its stderr.
async fn run_install(cmd: &[String], dir: &Path, env: &AgentEnv, timeout: Duration) -> Result<()> {
    let argv = cmd
        .iter()
        .map(|a| env.expand(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpdaterError::ReleaseConfig(format!("[install] command: {e}")))?;
    let Some((program, args)) = argv.split_first() else {
        return Err(UpdaterError::ReleaseConfig(
            "[install] command is empty".into(),
        ));
    };
    let program = resolve_program(program, dir);
    tracing::info!(?argv, "running the install hook");
    let mut command = tokio::process::Command::new(&program);
    command.args(args).current_dir(dir).envs(env.added.iter());
    let (finished, stderr) =
        run_bounded(&mut command, timeout)
            .await
            .map_err(|e| UpdaterError::Install {
                message: format!("cannot run the install hook {}: {e}", program.display()),
                stderr: String::new(),
            })?;
    match finished {
        Finished::Exited(status) if status.success() => Ok(()),
        Finished::Exited(status) => Err(UpdaterError::Install {
            message: format!("install hook {argv:?} failed ({status}); nothing was rotated"),
            stderr,
        }),
        Finished::WaitFailed(e) => Err(UpdaterError::Install {
            message: format!("waiting for the install hook: {e}"),
            stderr,
        }),
        Finished::TimedOut => Err(UpdaterError::Install {
            message: format!(
                "install hook {argv:?} timed out after {timeout:?}; nothing was rotated"
            ),
            stderr,
        }),
    }
}

/// How a bounded child run ended.
#[derive(Debug)]
pub enum Finished {
    Exited(std::process::ExitStatus),
    /// Killed (its whole process group) when the timeout expired.
    TimedOut,
    WaitFailed(std::io::Error),
}

/// Run `cmd` in a process group of its own with stdin and stdout closed,
/// killing the group after `timeout`; returns how it ended and the tail of
/// its stderr. Errs only when it cannot be started.
pub async fn run_bounded(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
) -> std::io::Result<(Finished, String)> {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let mut stderr = child.stderr.take();
    let reader = tokio::spawn(async move {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8192];
        if let Some(s) = stderr.as_mut() {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    let outcome = tokio::time::timeout(timeout, child.wait()).await;
    if outcome.is_err()
        && let Some(pid) = pid
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait().await;
    }
    // A grandchild may hold the pipe open; do not wait for it forever.
    let stderr = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let finished = match outcome {
        Ok(Ok(status)) => Finished::Exited(status),
        Ok(Err(e)) => Finished::WaitFailed(e),
        Err(_) => Finished::TimedOut,
    };
    Ok((finished, stderr))
}

pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

pub fn ms(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// An `App` on a temp install dir, with a real updater bundle; the
    /// agent command is `sleep`, which never answers a probe.
    fn app(tmp: &Path) -> Arc<App> {
        let ca = pki::Ca::generate().unwrap();
        let host = pki::HostName::new("w1").unwrap();
        let leaf = ca
            .issue(&pki::LeafSpec::updater(&host, "127.0.0.1", &[]).unwrap())
            .unwrap();
        let bundle = tmp.join("updater-bundle");
        pki::Bundle::write(&bundle, pki::BundleKind::Updater, ca.cert_pem(), &leaf).unwrap();
        let install = tmp.join("install");
        let args = crate::Args::try_parse_from([
            "worker-updater".as_ref(),
            "--updater-dir".as_ref(),
            bundle.as_os_str(),
            "--agent-dir".as_ref(),
            tmp.join("agent").as_os_str(),
            "--install-dir".as_ref(),
            install.as_os_str(),
            "--agent-cmd".as_ref(),
            "sleep 30".as_ref(),
            "--agent-url".as_ref(),
            "https://127.0.0.1:9/health".as_ref(),
            "--probe-attempts".as_ref(),
            "1".as_ref(),
            "--stop-grace-ms".as_ref(),
            "500".as_ref(),
        ] as [&std::ffi::OsStr; 15])
        .unwrap();
        Arc::new(App::new(Config::from_args(args).unwrap()).unwrap())
    }

    #[tokio::test]
    async fn start_up_takes_the_worker_before_anything_is_served() {
        let tmp = tempfile::tempdir().unwrap();
        let app = app(tmp.path());
        // No release: nothing to start, nothing held.
        let repair = app.layout.repair().unwrap();
        assert!(app.start_up(&repair).await.is_none());
        assert!(app.try_begin("update").is_ok());
        // A release and no agent running: the worker is held from the
        // moment start_up returns, before its reconcile ever runs.
        install(&app, "aaaa");
        let repair = app.layout.repair().unwrap();
        let reconcile = app.start_up(&repair).await.expect("a start-up reconcile");
        assert_eq!(app.busy().as_deref(), Some("start-up"));
        assert!(matches!(
            app.try_begin("update"),
            Err(UpdaterError::Busy("start-up"))
        ));
        // It holds the worker until it is done (the agent never answers).
        reconcile.await;
        assert!(app.busy().is_none());
        let stopped = app.supervisor.stop(&app.matcher()).await;
        assert_eq!(stopped.len(), 1, "the agent it started: {stopped:?}");
    }

    fn install(app: &App, sha: &str) {
        let staging = app.layout.prepare_staging().unwrap();
        let m = Manifest {
            sha256: sha.into(),
            size_bytes: 1,
            files: 0,
            git_commit: None,
            pushed_at: String::new(),
            pushed_by: "master".into(),
        };
        write_manifest(&staging, &m).unwrap();
        app.layout.flip_in(&m).unwrap();
        app.layout.confirm().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn restarting_the_agent_reads_its_files_off_the_async_thread() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let app = app(tmp.path());
        install(&app, "aaaa");
        // `.env.local` as a FIFO: reading it blocks until a writer comes.
        let fifo = app.layout.env_local();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let progressed = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let writer = {
            let (progressed, stalled) = (progressed.clone(), stalled.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !progressed.load(Ordering::SeqCst) {
                    if Instant::now() > deadline {
                        stalled.store(true, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::fs::write(&fifo, "X=1\n").unwrap();
            })
        };
        let op = tokio::spawn({
            let app = app.clone();
            async move { app.restart_and_probe("forward", None).await }
        });
        // The operation runs first and reaches the FIFO; on the one async
        // thread of this runtime, this task resumes only if it did not
        // block that thread.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        progressed.store(true, Ordering::SeqCst);
        let (_, spawned) = op.await.unwrap();
        writer.join().unwrap();
        assert!(
            !stalled.load(Ordering::SeqCst),
            "the async thread stalled on .env.local"
        );
        assert!(spawned.is_some());
        app.supervisor.stop(&app.matcher()).await;
    }
}
