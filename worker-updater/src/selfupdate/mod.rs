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

mod handoff;
mod trial;
mod watchdog;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pki::wire::Manifest;

pub use handoff::{Handoff, update_self};
pub use trial::{Marker, Trial};
pub use watchdog::watchdog;

use crate::config::{Config, Stash};
use crate::release::updater_binary;
use crate::short;
use crate::slots::Layout;
use trial::revert_trial;

/// Set on every updater started from a slot: the release it runs from
/// (what `/health` reports).
pub const RELEASE_DIR_VAR: &str = "SWARM_UPDATER_RELEASE_DIR";
/// Set on a start-up hand-over so the process handed to never hands over again.
const HANDOFF_VAR: &str = "SWARM_UPDATER_HANDOFF";
/// How long past a trial's deadline a start waits for its verdict (the
/// watchdog's kill grace and revert fit well within it).
const VERDICT_SLACK_MS: u64 = 30_000;

/// The release this process runs from: `SWARM_UPDATER_RELEASE_DIR` when it
/// was started from a slot by an updater, else the slot its executable
/// lives in, else none (a base install outside `updater/`).
pub fn own_release(layout: &Layout) -> Option<Manifest> {
    if let Some(dir) = std::env::var_os(RELEASE_DIR_VAR) {
        return Manifest::read(Path::new(&dir));
    }
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let releases = layout.releases_dir().canonicalize().ok()?;
    let slot = exe.strip_prefix(&releases).ok()?.components().next()?;
    Manifest::read(&releases.join(slot))
}

/// The updater that should be running: `updater/current`'s binary (and its
/// release dir), or the base executable when `updater/` holds no release.
pub(crate) fn desired(layout: &Layout, base_exe: &Path) -> (PathBuf, Option<PathBuf>) {
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
pub(crate) fn updater_command(
    exe: &Path,
    release_dir: Option<&Path>,
    stash: &Stash,
) -> std::process::Command {
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

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn append_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// What every start does before binding (not in `--check` or
/// `--watchdog`): repair the updater's slots, settle a trial that nobody
/// watches any more, and hand over to the updater that should run. Returns
/// only if this process is that updater (or the hand-over failed).
pub fn prestart(config: &Config) {
    let layout = Layout::updater(&config.install_dir, config.failed_keep);
    if !layout.root().is_dir() {
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
            match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => tokio::time::sleep(Duration::from_millis(500)).await,
                _ => return,
            }
        }
    });
}
