//! `updater/trial.json`, the marker of a self-update whose new updater has
//! not yet been seen healthy: written (through the one atomic JSON write)
//! before the exec, removed by the watchdog; and arming it (the marker,
//! then the watchdog started from this known-good binary).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pki::wire::Manifest;
use serde::{Deserialize, Serialize};

use super::{HANDOFF_VAR, RELEASE_DIR_VAR, append_log, now_unix_ms};
use crate::agent::proc::{same_process, start_time};
use crate::config::Stash;
use crate::error::{Result, UpdaterError};
use crate::short;
use crate::slots::Layout;
use crate::slots::fsx::{fsync_dir, write_json_durable};

const TRIAL_FILE: &str = "trial.json";
const WATCHDOG_LOG: &str = "watchdog.log";

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
    pub(crate) fn path(layout: &Layout) -> PathBuf {
        layout.root().join(TRIAL_FILE)
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

    /// Write atomically and durably.
    pub(crate) fn write(&self, layout: &Layout) -> Result<()> {
        write_json_durable(&Trial::path(layout), self)
    }

    pub(crate) fn remove(layout: &Layout) -> Result<()> {
        let path = Trial::path(layout);
        match std::fs::remove_file(&path) {
            Ok(()) => fsync_dir(layout.root()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(UpdaterError::io(&path, e)),
        }
    }

    pub(crate) fn watchdog_alive(&self) -> bool {
        self.watchdog_pid
            .is_some_and(|pid| same_process(pid, self.watchdog_start_time))
    }
}

/// Put the previous updater release back if the one on trial is still
/// live; returns what was done, for the log.
pub(crate) fn revert_trial(layout: &Layout, trial: &Trial) -> Result<String> {
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

/// Write the trial marker, start the watchdog (this very binary, through
/// `/proc/self/exe`, so it is the known-good one even after the slots
/// moved), and record the watchdog in the marker.
pub(crate) fn arm_trial(
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
        updater_start_time: start_time(me),
        watchdog_pid: None,
        watchdog_start_time: None,
        deadline_unix_ms: now_unix_ms()
            .saturating_add(u64::try_from(trial_time.as_millis()).unwrap_or(u64::MAX)),
        started_at: crate::now_rfc3339(),
    };
    trial.write(layout)?;
    let log_path = layout.root().join(WATCHDOG_LOG);
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
        .current_dir(layout.install_dir())
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn()
        .map_err(|e| UpdaterError::Internal(format!("cannot start the watchdog: {e}")))?;
    let pid = i32::try_from(child.id())
        .map_err(|_| UpdaterError::Internal("watchdog pid out of range".into()))?;
    trial.watchdog_pid = Some(pid);
    trial.watchdog_start_time = start_time(pid);
    if let Err(e) = trial.write(layout) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        return Err(e);
    }
    Ok(trial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::write_manifest;

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
            release_id: None,
        };
        for sha in ["aaaa", "bbbb"] {
            let s = l.prepare_staging().unwrap();
            write_manifest(&s, &m(sha)).unwrap();
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
        write_manifest(&s, &m("cccc")).unwrap();
        l2.flip_in(&m("cccc")).unwrap();
        l2.confirm().unwrap();
        l2.abandon_active().unwrap();
        assert!(l2.resolved_current().is_none());
        assert!(std::fs::symlink_metadata(l2.current()).is_err());
    }
}
