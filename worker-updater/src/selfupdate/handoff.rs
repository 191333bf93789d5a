//! `/update-self`: [`stage`] the tree into the updater's own slots, check
//! the new binary with `--check`, confirm, arm the trial, and hand back the
//! [`Handoff`] that execs the new updater once the answer has left.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::receive::Form;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pki::wire::{OpResponse, OpStatus, Timings};
use tokio::sync::oneshot;

use super::trial::{arm_trial, revert_trial};
use super::{Trial, updater_command};
use crate::agent::proc::same_process;
use crate::config::Stash;
use crate::error::{Result, UpdaterError};
use crate::ms;
use crate::ops::hook::{Finished, run_bounded};
use crate::ops::stage::{StageError, Staged, stage};
use crate::release::{Purpose, updater_binary_in};
use crate::slots::Layout;
use crate::state::{Daemon, OpGuard, blocking};

/// Longest wait for the response body to be taken before the hand-over
/// starts anyway (the server's shutdown grace bounds the rest).
const SEND_WAIT: Duration = Duration::from_secs(3);

/// A self-update that passed its check, waiting for its 200 to be sent:
/// `Handoff::exec` then replaces this process with the new updater.
#[derive(Debug)]
pub struct Handoff {
    exe: PathBuf,
    release_dir: PathBuf,
    stash: Stash,
    layout: Layout,
    trial: Trial,
}

impl Handoff {
    /// Once `sent` fires (the response body was taken or dropped), ask
    /// the server to stop and drain its connections, then exec the new
    /// updater ([`Daemon::request_handoff`]): the answer is flushed and its
    /// connection closed before this process is replaced, instead of a
    /// fixed pause. The worker stays held until the exec.
    pub fn exec_after(self, d: Arc<Daemon>, sent: oneshot::Receiver<()>, guard: OpGuard) {
        let exec: crate::state::HandoffFn = Box::new(move || {
            self.exec();
            drop(guard);
        });
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SEND_WAIT, sent).await;
            tracing::info!("answer sent; draining connections before the exec");
            d.request_handoff(exec);
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
        // The agent's listen sockets go through the exec (issue 14).
        let sockets = crate::agent::sockets::Sockets::global();
        let mut cmd = updater_command(&self.exe, Some(&self.release_dir), &self.stash);
        match sockets.exec_env() {
            Some(env) => {
                cmd.envs(env);
            }
            None => {
                for var in ["LISTEN_FDS", "LISTEN_PID", crate::agent::sockets::HELD_VAR] {
                    cmd.env_remove(var);
                }
            }
        }
        let err = cmd.exec();
        sockets.after_failed_exec();
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

/// `POST /update-self`, with the worker already taken: receive into
/// `updater/releases/active.new`, hook, flip `updater/current`, check
/// the new binary, confirm, arm the trial. Returns the 200 body and
/// what to exec once it is sent. On any failure the updater's slots are
/// as they were and this process keeps serving.
pub async fn update_self(
    d: Arc<Daemon>,
    form: Form,
    pushed_by: String,
) -> Result<(OpResponse, Handoff)> {
    let t0 = Instant::now();
    let mut timings = Timings::default();
    let layout = d.updater_layout.clone();
    let staged = stage(
        &d,
        &layout,
        crate::ops::stage::Source::Form(form),
        pushed_by,
        Purpose::Updater,
        &mut timings,
    )
    .await;
    let Staged { spec, previous } = match staged {
        Ok(s) => s,
        Err(StageError::Before(e)) => return Err(e),
        // Only agent releases are compared with the active one.
        Err(StageError::Unchanged(_)) => {
            return Err(UpdaterError::Internal(
                "a self-update staged as unchanged".into(),
            ));
        }
        Err(StageError::Flip(e)) => {
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
    };
    let Some(manifest) = spec.manifest.clone() else {
        // stage() flips only a release with a manifest.
        return Err(UpdaterError::Internal(
            "staged release without a manifest".into(),
        ));
    };

    let t = Instant::now();
    let checked = check_new(&d, &layout, spec.updater_binary()).await;
    timings.probe_ms = ms(t);
    let (exe, release_dir) = match checked {
        Ok(ok) => ok,
        Err((message, stderr)) => {
            let (l, m) = (layout.clone(), manifest.clone());
            let message = match blocking(move || l.revert(&m)).await {
                Ok((name, _)) => format!(
                    "{message}; the previous updater keeps running and the tree is in updater/releases/failed/{name}"
                ),
                Err(re) => {
                    format!("{message}; putting the previous updater release back failed too: {re}")
                }
            };
            tracing::warn!("{message}");
            return Err(UpdaterError::SelfCheck { message, stderr });
        }
    };

    let (l, m, config_trial) = (layout.clone(), manifest.clone(), d.config.self_trial);
    let stash = d.config.stash.clone();
    let prev_sha = previous.manifest.as_ref().map(|p| p.sha256.clone());
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
        timings: Some(timings),
        ..OpResponse::new(OpStatus::Updated, Some(manifest))
    };
    let handoff = Handoff {
        exe,
        release_dir,
        stash: d.config.stash.clone(),
        layout,
        trial,
    };
    Ok((body, handoff))
}

/// Run the new `updater/current` binary with the rebuilt argv and
/// `--check`, bounded. `Ok((exe, release dir))`, or the reason and its
/// stderr tail.
async fn check_new(
    d: &Daemon,
    layout: &Layout,
    binary: &str,
) -> std::result::Result<(PathBuf, PathBuf), (String, String)> {
    let (l, binary) = (layout.clone(), binary.to_owned());
    let (release_dir, exe) = tokio::task::spawn_blocking(move || {
        let release_dir = l.resolved_current().ok_or_else(|| {
            (
                "updater/current does not resolve after the flip".to_owned(),
                String::new(),
            )
        })?;
        let exe =
            updater_binary_in(&l.current(), &binary).map_err(|e| (e.to_string(), String::new()))?;
        Ok::<_, (String, String)>((release_dir, exe))
    })
    .await
    .map_err(|e| (format!("blocking task: {e}"), String::new()))??;
    let mut cmd = updater_command(&exe, Some(&release_dir), &d.config.stash);
    cmd.arg("--check").current_dir(&d.config.install_dir);
    let mut cmd = tokio::process::Command::from(cmd);
    let timeout = d.config.self_check_timeout;
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
