//! The install directory and its release slots: staging, the atomic flip,
//! confirmation, revert, rollback swaps, `failed/` retention, and the
//! start-up repair of whatever a crash left behind.
//!
//! ```text
//! current -> releases/active    (relative symlink, replaced only by rename(2))
//! releases/active/              live release
//! releases/prev/                last good release
//! releases/active.new/          staging (mid-update only)
//! releases/active.old/          the release that was live before the update
//!                               in flight, kept until the new one is healthy
//! releases/.incoming.json       journal: manifest of the update in flight,
//!                               marked `reverting` once its probe failed
//! releases/.rollback.json       journal: a rollback (or a start-up revert)
//!                               in flight
//! releases/failed/<time>-<sha>/ releases that failed their probe
//! releases/.trash-prev-<pid>-<n>/ a dropped `prev`, deleted in the
//!                               background after the update answered
//! ```
//!
//! The flip swaps `active.new` and `active` with one `renameat2(RENAME_EXCHANGE)`,
//! so `releases/active` (and with it `current`) is a whole release at every
//! instant. One `syncfs` runs before it (staging, manifest and journal reach
//! the disk together), and the directories are fsynced after each rename.
//! `prev` is replaced only once the new release has passed its probe, so a
//! failed release never evicts the last good one. There is no fallback for
//! filesystems without `RENAME_EXCHANGE`: [`check_exchange`] refuses them at
//! start-up.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use pki::wire::{FailedRelease, Manifest, Releases};
use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdaterError};

/// Paths of one set of release slots: the agent's (`<install>/current`,
/// `<install>/releases/`) or the updater's own (`<install>/updater/current`,
/// `<install>/updater/releases/`). Every operation below works the same on
/// both; only [`Layout::root`] differs.
#[derive(Clone, Debug)]
pub struct Layout {
    pub install: PathBuf,
    /// The directory holding `current` and `releases/`.
    pub root: PathBuf,
    pub releases: PathBuf,
    /// How many failed releases to keep.
    pub failed_keep: usize,
}

/// What the start-up repair did.
#[derive(Clone, Debug, Default)]
pub struct Repair {
    /// Human-readable actions, for the log.
    pub actions: Vec<String>,
    /// An update crashed after its flip: the live release was never probed.
    pub unconfirmed: bool,
    /// An operation was interrupted after it had changed which release is
    /// live (a revert): the agent must be restarted on `current`.
    pub restart: bool,
}

/// `releases/.incoming.json`: the update in flight. Older updaters wrote the
/// bare manifest, which still reads (`reverting` false).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    #[serde(flatten)]
    manifest: Manifest,
    /// The release failed its probe and is being moved out of `active`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reverting: bool,
}

impl Layout {
    /// The agent's slots: `<install>/current`, `<install>/releases/`.
    pub fn new(install: &Path, failed_keep: usize) -> Layout {
        Layout::rooted(install, install, failed_keep)
    }
    /// The updater's own slots: `<install>/updater/current`,
    /// `<install>/updater/releases/` (self-update only).
    pub fn updater(install: &Path, failed_keep: usize) -> Layout {
        Layout::rooted(install, &install.join("updater"), failed_keep)
    }
    fn rooted(install: &Path, root: &Path, failed_keep: usize) -> Layout {
        Layout {
            install: install.to_owned(),
            root: root.to_owned(),
            releases: root.join("releases"),
            failed_keep,
        }
    }
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }
    pub fn active(&self) -> PathBuf {
        self.releases.join("active")
    }
    pub fn prev(&self) -> PathBuf {
        self.releases.join("prev")
    }
    pub fn staging(&self) -> PathBuf {
        self.releases.join("active.new")
    }
    pub fn old(&self) -> PathBuf {
        self.releases.join("active.old")
    }
    pub fn failed(&self) -> PathBuf {
        self.releases.join("failed")
    }
    pub fn journal(&self) -> PathBuf {
        self.releases.join(".incoming.json")
    }
    pub fn rollback_journal(&self) -> PathBuf {
        self.releases.join(".rollback.json")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.install.join("agent.pid")
    }
    pub fn spawn_log(&self) -> PathBuf {
        self.install.join("agent.spawn.log")
    }
    pub fn env_local(&self) -> PathBuf {
        self.install.join(".env.local")
    }

    /// The directory `current` resolves to (e.g. `<install>/releases/active`).
    pub fn resolved_current(&self) -> Option<PathBuf> {
        fs::canonicalize(self.current()).ok().filter(|p| p.is_dir())
    }

    /// Create the install skeleton if missing.
    pub fn ensure_dirs(&self) -> Result<()> {
        for d in [&self.install, &self.root, &self.releases, &self.failed()] {
            fs::create_dir_all(d).map_err(|e| UpdaterError::io(d, e))?;
        }
        Ok(())
    }

    /// A fresh, empty `active.new/` (a stale one is removed first).
    pub fn prepare_staging(&self) -> Result<PathBuf> {
        self.ensure_dirs()?;
        let staging = self.staging();
        remove_tree(&staging)?;
        fs::create_dir(&staging).map_err(|e| UpdaterError::io(&staging, e))?;
        Ok(staging)
    }

    /// Remove `active.new/` (after a rejected upload or failed install).
    pub fn discard_staging(&self) {
        if let Err(e) = remove_tree(&self.staging()) {
            tracing::error!("removing the staging dir: {e}");
        }
    }

    /// Promote the complete staging release `incoming`: journal it, sync
    /// once, swap it into `active` atomically, keep the old one as
    /// `active.old`, and point `current` at `releases/active`.
    pub fn flip_in(&self, incoming: &Manifest) -> Result<()> {
        self.write_journal(
            &Journal {
                manifest: incoming.clone(),
                reverting: false,
            },
            false,
        )?;
        self.sync_fs()?;
        remove_tree(&self.old())?;
        if self.active().is_dir() {
            exchange(&self.staging(), &self.active())?;
            rename(&self.staging(), &self.old())?;
        } else {
            rename(&self.staging(), &self.active())?;
        }
        fsync_dir(&self.releases)?;
        self.point_current()
    }

    /// The release in `active` is healthy: the one it replaced becomes
    /// `prev` (the former `prev` is dropped, deleted before returning), the
    /// journal goes.
    pub fn confirm(&self) -> Result<()> {
        if let Some(trash) = self.confirm_to_trash()? {
            remove_tree(&trash)?;
        }
        Ok(())
    }

    /// [`Layout::confirm`], except that the dropped `prev` is only renamed
    /// to a trash name of its own (`releases/.trash-prev-<pid>-<n>`), which
    /// is returned for the caller to delete later ([`delete_in_background`]).
    /// A trash dir left by a crash is removed by the start-up repair.
    pub fn confirm_to_trash(&self) -> Result<Option<PathBuf>> {
        let mut trash = None;
        if self.old().is_dir() {
            if self.prev().exists() {
                let t = self.trash_name("prev");
                rename(&self.prev(), &t)?;
                trash = Some(t);
            }
            rename(&self.old(), &self.prev())?;
            fsync_dir(&self.releases)?;
        }
        remove_file(&self.journal())?;
        fsync_dir(&self.releases)?;
        Ok(trash)
    }

    /// The release in `active` failed: move it to `failed/` and put the one
    /// it replaced back. Returns the name under `failed/` and whether a
    /// release was restored (false on a first install: `current` is removed).
    ///
    /// The journal is marked `reverting` (durably) first, so a crash between
    /// the exchange and the move to `failed/` is finished by [`Layout::repair`]
    /// instead of being mistaken for a flip to roll forward.
    pub fn revert(&self, manifest: &Manifest) -> Result<(String, bool)> {
        self.ensure_dirs()?;
        self.write_journal(
            &Journal {
                manifest: manifest.clone(),
                reverting: true,
            },
            true,
        )?;
        let name = self.failed_name(manifest);
        let dest = self.failed().join(&name);
        let restored = if self.old().is_dir() {
            exchange(&self.active(), &self.old())?;
            rename(&self.old(), &dest)?;
            true
        } else {
            rename(&self.active(), &dest)?;
            remove_file(&self.current())?;
            false
        };
        remove_file(&self.journal())?;
        fsync_dir(&self.releases)?;
        fsync_dir(&self.root)?;
        self.prune_failed();
        Ok((name, restored))
    }

    /// Record (durably) that a rollback from `from` to `to` is starting: a
    /// crash before [`Layout::end_rollback`] makes the next start-up repair
    /// restart the agent on whatever `current` holds then.
    pub fn begin_rollback(&self, from: Option<&Manifest>, to: Option<&Manifest>) -> Result<()> {
        self.ensure_dirs()?;
        let path = self.rollback_journal();
        let tmp = self
            .releases
            .join(format!(".rollback.json.tmp-{}", std::process::id()));
        let json = serde_json::to_vec(&serde_json::json!({ "from": from, "to": to }))
            .map_err(|e| UpdaterError::Internal(format!("serializing the journal: {e}")))?;
        fs::write(&tmp, json).map_err(|e| UpdaterError::io(&tmp, e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| UpdaterError::io(&tmp, e))?;
        rename(&tmp, &path)?;
        fsync_dir(&self.releases)
    }

    /// The rollback is over (whatever its outcome): drop its journal.
    pub fn end_rollback(&self) -> Result<()> {
        remove_file(&self.rollback_journal())?;
        fsync_dir(&self.releases)
    }

    /// Swap `active` and `prev` atomically (rollback, and its undo).
    pub fn swap_prev(&self) -> Result<()> {
        if !self.prev().is_dir() {
            return Err(UpdaterError::NoPrevious);
        }
        self.sync_fs()?;
        exchange(&self.active(), &self.prev())?;
        fsync_dir(&self.releases)?;
        self.point_current()
    }

    /// Move the release in `prev` to `failed/` (it failed after a crash repair).
    pub fn fail_prev(&self) -> Result<String> {
        let manifest = Manifest::read(&self.prev()).unwrap_or_else(unknown_manifest);
        let name = self.failed_name(&manifest);
        rename(&self.prev(), &self.failed().join(&name))?;
        fsync_dir(&self.releases)?;
        self.prune_failed();
        Ok(name)
    }

    /// The confirmed release in `active` turned out bad after all (an
    /// updater trial that failed): `prev` goes back to `active` and the bad
    /// one to `failed/`; with no `prev`, the bad one goes to `failed/` and
    /// `current` is removed. Returns the name under `failed/`.
    pub fn abandon_active(&self) -> Result<String> {
        self.ensure_dirs()?;
        if self.prev().is_dir() {
            self.swap_prev()?;
            return self.fail_prev();
        }
        let manifest = Manifest::read(&self.active()).unwrap_or_else(unknown_manifest);
        let name = self.failed_name(&manifest);
        if self.active().is_dir() {
            rename(&self.active(), &self.failed().join(&name))?;
        }
        remove_file(&self.current())?;
        fsync_dir(&self.releases)?;
        fsync_dir(&self.root)?;
        self.prune_failed();
        Ok(name)
    }

    /// `GET /releases`.
    pub fn releases(&self) -> Releases {
        let mut failed: Vec<FailedRelease> = fs::read_dir(self.failed())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| FailedRelease {
                        name: e.file_name().to_string_lossy().into_owned(),
                        manifest: Manifest::read(&e.path()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        failed.sort_by(|a, b| b.name.cmp(&a.name));
        Releases {
            active: Manifest::read(&self.active()),
            prev: Manifest::read(&self.prev()),
            failed,
        }
    }

    /// Bring the layout back to a rest state after a crash, before serving:
    /// `current` ends on one whole release (or is absent when there is none).
    ///
    /// Rules, in order:
    /// 1. leftover temp symlinks and trash dirs are removed;
    /// 2. `active.new` is either staging that never went live (removed) or,
    ///    when the journal's release is already in `active`, the old release
    ///    swapped out by the flip (kept as `active.old`);
    /// 3. `active.old` with no `active` (a damaged layout): the old release
    ///    goes back to `active`;
    /// 4. `active.old` next to `active` while the journal is `reverting`, or
    ///    names the release in `active.old`: a revert was interrupted. It is
    ///    finished (the exchange redone if it had not happened, the failed
    ///    release moved to `failed/`), `prev` is untouched, and
    ///    [`Repair::restart`] asks for the agent to be restarted;
    /// 5. `active.old` next to `active` whose release the journal names: the
    ///    flip happened, the probe never confirmed it. The layout rolls
    ///    forward (`active.old` becomes `prev`) and [`Repair::unconfirmed`]
    ///    asks the caller to restart and probe the agent, reverting to `prev`
    ///    if it is unhealthy;
    /// 6. `active.old` next to `active` and no journal that explains it: it
    ///    goes to `failed/` (never into `prev`, which stays the last good
    ///    release);
    /// 7. no `active` but a `prev`: `prev` becomes `active`;
    /// 8. a rollback journal: the rollback was interrupted before or after
    ///    its atomic swap; the slots stay as they are and
    ///    [`Repair::restart`] asks for the agent on `current`;
    /// 9. `current` is re-pointed at `releases/active`, or removed if there
    ///    is no release at all.
    pub fn repair(&self) -> Result<Repair> {
        self.ensure_dirs()?;
        let mut r = Repair::default();
        for dir in [&self.root, &self.releases] {
            let entries = fs::read_dir(dir).map_err(|e| UpdaterError::io(dir, e))?;
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".trash-") {
                    // Garbage only; a delete of it may still be running in
                    // the background when a failed operation repairs.
                    delete_trash(&e.path());
                    r.actions
                        .push(format!("removed leftover {}", e.path().display()));
                } else if name.starts_with(".current.tmp")
                    || name.starts_with(".exchange-check-")
                    || name.starts_with(".incoming.json.tmp")
                    || name.starts_with(".rollback.json.tmp")
                {
                    remove_tree(&e.path())?;
                    r.actions
                        .push(format!("removed leftover {}", e.path().display()));
                }
            }
        }
        let journal: Option<Journal> = fs::read(self.journal())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let reverting = journal.as_ref().is_some_and(|j| j.reverting);
        let journal = journal.map(|j| j.manifest);
        let active = Manifest::read(&self.active());
        let flipped = matches!((&journal, &active), (Some(j), Some(a)) if j == a);
        if self.staging().exists() {
            if flipped && !reverting && !self.old().exists() {
                rename(&self.staging(), &self.old())?;
                r.actions
                    .push("kept the release swapped out by the flip as active.old".into());
            } else {
                remove_tree(&self.staging())?;
                r.actions
                    .push("removed unfinished staging active.new".into());
            }
        }
        let old = Manifest::read(&self.old());
        let old_failed = matches!((&journal, &old), (Some(j), Some(o)) if j == o) && !flipped;
        if self.old().is_dir() && !self.active().is_dir() {
            rename(&self.old(), &self.active())?;
            r.actions.push("restored active.old as active".into());
        } else if self.old().is_dir() && (reverting || old_failed) {
            if flipped {
                // Marked, but the exchange had not happened yet.
                exchange(&self.active(), &self.old())?;
            }
            let failed = journal.or(old).unwrap_or_else(unknown_manifest);
            let name = self.park_failed(&self.old(), &failed)?;
            r.restart = true;
            r.actions.push(format!(
                "a revert was interrupted: finished it, the failed release is in failed/{name} and prev is unchanged"
            ));
        } else if self.old().is_dir() && flipped {
            r.unconfirmed = true;
            self.confirm()?;
            r.actions.push(
                "an update crashed after its flip: kept it live, the release it replaced is prev"
                    .into(),
            );
        } else if self.old().is_dir() {
            let name = self.park_failed(&self.old(), &old.unwrap_or_else(unknown_manifest))?;
            r.actions.push(format!(
                "active.old matched no update in flight; moved it to failed/{name} (prev is unchanged)"
            ));
        } else if reverting && flipped {
            // A first install's revert, interrupted: nothing to restore.
            let failed = journal.unwrap_or_else(unknown_manifest);
            let name = self.park_failed(&self.active(), &failed)?;
            r.actions.push(format!(
                "a revert was interrupted: the failed first install is in failed/{name}"
            ));
        } else if reverting {
            // The revert had finished; only the journal was left.
            r.restart = true;
        } else if flipped {
            // First install flipped but never confirmed.
            r.unconfirmed = true;
        }
        if !self.active().is_dir() && self.prev().is_dir() {
            rename(&self.prev(), &self.active())?;
            r.actions.push("no active release: promoted prev".into());
        }
        if self.journal().exists() {
            remove_file(&self.journal())?;
        }
        if self.rollback_journal().exists() {
            // Each swap is one RENAME_EXCHANGE: the slots are whole either
            // way; the agent may be the wrong one, or not running.
            r.restart = true;
            remove_file(&self.rollback_journal())?;
            r.actions.push(
                "a rollback was interrupted: the agent is restarted on the release current holds"
                    .into(),
            );
        }
        fsync_dir(&self.releases)?;
        if self.active().is_dir() {
            if fs::read_link(self.current()).ok().as_deref() != Some(Path::new("releases/active")) {
                r.actions
                    .push("re-pointed current at releases/active".into());
            }
            self.point_current()?;
        } else if fs::symlink_metadata(self.current()).is_ok() {
            remove_file(&self.current())?;
            fsync_dir(&self.root)?;
            r.actions
                .push("removed current: there is no release".into());
        }
        Ok(r)
    }

    /// Move the release at `dir` to `failed/` under a name for `manifest`.
    fn park_failed(&self, dir: &Path, manifest: &Manifest) -> Result<String> {
        let name = self.failed_name(manifest);
        rename(dir, &self.failed().join(&name))?;
        fsync_dir(&self.releases)?;
        self.prune_failed();
        Ok(name)
    }

    /// Write the journal (temp file, rename); with `durable`, fsync the file
    /// and the directory too (the flip's `syncfs` covers the first write).
    fn write_journal(&self, journal: &Journal, durable: bool) -> Result<()> {
        let path = self.journal();
        let tmp = self
            .releases
            .join(format!(".incoming.json.tmp-{}", std::process::id()));
        let json = serde_json::to_vec(journal)
            .map_err(|e| UpdaterError::Internal(format!("serializing the journal: {e}")))?;
        fs::write(&tmp, json).map_err(|e| UpdaterError::io(&tmp, e))?;
        if durable {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| UpdaterError::io(&tmp, e))?;
        }
        rename(&tmp, &path)?;
        if durable {
            fsync_dir(&self.releases)?;
        }
        Ok(())
    }

    /// Atomically (re)point `current` at `releases/active`: a temp symlink
    /// renamed over it, then the install dir fsynced.
    fn point_current(&self) -> Result<()> {
        let tmp = self
            .root
            .join(format!(".current.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink("releases/active", &tmp)
            .map_err(|e| UpdaterError::io(&tmp, e))?;
        rename(&tmp, &self.current())?;
        fsync_dir(&self.root)
    }

    /// One sync of the install filesystem.
    fn sync_fs(&self) -> Result<()> {
        let f = File::open(&self.releases).map_err(|e| UpdaterError::io(&self.releases, e))?;
        nix::unistd::syncfs(&f).map_err(|e| UpdaterError::io(&self.releases, e.into()))
    }

    /// A trash name no other call in this process (or a previous one)
    /// uses, so a delete still running never meets the next one's trash.
    fn trash_name(&self, what: &str) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut path = self
            .releases
            .join(format!(".trash-{what}-{}-{n}", std::process::id()));
        let mut k = 0;
        while fs::symlink_metadata(&path).is_ok() {
            k += 1;
            path = self
                .releases
                .join(format!(".trash-{what}-{}-{n}-{k}", std::process::id()));
        }
        path
    }

    fn failed_name(&self, manifest: &Manifest) -> String {
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_else(|_| "unknown".into());
        let sha: String = manifest.sha256.chars().take(12).collect();
        let base = format!("{stamp}-{sha}");
        let mut name = base.clone();
        let mut n = 1;
        while self.failed().join(&name).exists() {
            n += 1;
            name = format!("{base}-{n}");
        }
        name
    }

    /// Keep the newest `failed_keep` failed releases.
    fn prune_failed(&self) {
        let Ok(rd) = fs::read_dir(self.failed()) else {
            return;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let excess = names.len().saturating_sub(self.failed_keep);
        for name in &names[..excess] {
            if let Err(e) = remove_tree(&self.failed().join(name)) {
                tracing::warn!("pruning failed/{name}: {e}");
            }
        }
    }
}

/// A placeholder manifest for a release whose own is unreadable.
fn unknown_manifest() -> Manifest {
    Manifest {
        sha256: "unknown".into(),
        size_bytes: 0,
        files: 0,
        git_commit: None,
        pushed_at: String::new(),
        pushed_by: String::new(),
    }
}

/// Swap two directory entries atomically with `renameat2(RENAME_EXCHANGE)`.
/// There is deliberately no fallback: three renames leave moments with no
/// `active` at all. [`check_exchange`] refuses filesystems without it at
/// start-up.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(|e| {
        UpdaterError::io(
            a,
            io::Error::other(format!(
                "renameat2(RENAME_EXCHANGE) with {}: {e}{}",
                b.display(),
                if exchange_unsupported(e) {
                    " (this filesystem does not support RENAME_EXCHANGE, which swarm requires)"
                } else {
                    ""
                }
            )),
        )
    })
}

/// The errors `renameat2` gives when the filesystem (or kernel) cannot
/// exchange.
fn exchange_unsupported(e: nix::errno::Errno) -> bool {
    matches!(
        e,
        nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS | nix::errno::Errno::EOPNOTSUPP
    )
}

/// Check that `dir`'s filesystem can swap two directories with
/// `renameat2(RENAME_EXCHANGE)`, by doing it on two temporary directories
/// (removed again). The `Err` says what is missing, for the operator.
pub fn check_exchange(dir: &Path) -> std::result::Result<(), String> {
    let pid = std::process::id();
    let a = dir.join(format!(".exchange-check-{pid}-a"));
    let b = dir.join(format!(".exchange-check-{pid}-b"));
    let cleanup = || {
        let _ = fs::remove_dir_all(&a);
        let _ = fs::remove_dir_all(&b);
    };
    cleanup();
    let result = (|| {
        fs::create_dir(&a).map_err(|e| format!("creating {}: {e}", a.display()))?;
        fs::create_dir(&b).map_err(|e| format!("creating {}: {e}", b.display()))?;
        fs::create_dir(a.join("a")).map_err(|e| format!("creating in {}: {e}", a.display()))?;
        match renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) if b.join("a").is_dir() && !a.join("a").exists() => Ok(()),
            Ok(()) => Err(format!(
                "renameat2(RENAME_EXCHANGE) in {} reported success but did not swap",
                dir.display()
            )),
            Err(e) if exchange_unsupported(e) => Err(format!(
                "the filesystem of {} does not support renameat2(RENAME_EXCHANGE) ({e}); swarm swaps release slots with it so that `current` is a whole release at every instant. Put the install dir on a local filesystem that has it (ext4, xfs, btrfs, tmpfs; not NFS or FAT)",
                dir.display()
            )),
            Err(e) => Err(format!(
                "renameat2(RENAME_EXCHANGE) in {}: {e}",
                dir.display()
            )),
        }
    })();
    cleanup();
    result
}

/// [`check_exchange`] on every directory the updater swaps releases in:
/// `releases/` and `updater/releases/` when they exist, else the install dir.
pub fn check_install_exchange(install: &Path) -> std::result::Result<(), String> {
    let mut dirs: Vec<PathBuf> = [
        Layout::new(install, 0).releases,
        Layout::updater(install, 0).releases,
    ]
    .into_iter()
    .filter(|d| d.is_dir())
    .collect();
    if dirs.is_empty() {
        dirs.push(install.to_owned());
    }
    dirs.iter().try_for_each(|d| check_exchange(d))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| {
        UpdaterError::io(
            from,
            io::Error::new(e.kind(), format!("rename to {}: {e}", to.display())),
        )
    })
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UpdaterError::io(path, e)),
    }
}

/// Remove a directory tree (or file, or link) if it exists.
pub fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(UpdaterError::io(path, e)),
    };
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(|e| UpdaterError::io(path, e))
}

/// Delete a trash dir; failures are logged, never fatal (it is garbage,
/// and the next start-up repair tries again). A concurrent delete of the
/// same tree is not a failure.
pub fn delete_trash(path: &Path) {
    if let Err(e) = remove_tree(path)
        && fs::symlink_metadata(path).is_ok()
    {
        tracing::warn!("deleting {}: {e}", path.display());
    }
}

/// Delete a trash dir on the blocking pool, without waiting for it: the
/// release an update replaced goes once the update has answered.
pub fn delete_in_background(path: PathBuf) {
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        delete_trash(&path);
        tracing::debug!(
            "deleted {} in {} ms",
            path.display(),
            t.elapsed().as_millis()
        );
    });
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| UpdaterError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sha: &str) -> Manifest {
        Manifest {
            sha256: sha.into(),
            size_bytes: 1,
            files: 1,
            git_commit: None,
            pushed_at: "2025-01-01T00:00:00Z".into(),
            pushed_by: "master".into(),
        }
    }

    fn stage(l: &Layout, sha: &str) -> Manifest {
        let s = l.prepare_staging().unwrap();
        let m = manifest(sha);
        crate::release::write_manifest(&s, &m).unwrap();
        m
    }

    fn live(l: &Layout) -> Option<String> {
        Manifest::read(&l.current()).map(|m| m.sha256)
    }

    #[test]
    fn update_confirm_revert_rollback() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 2);
        assert_eq!(l.repair().unwrap().actions.len(), 0);
        let a = stage(&l, "aaaa");
        l.flip_in(&a).unwrap();
        assert_eq!(live(&l).as_deref(), Some("aaaa"));
        l.confirm().unwrap();
        let b = stage(&l, "bbbb");
        l.flip_in(&b).unwrap();
        assert_eq!(live(&l).as_deref(), Some("bbbb"));
        assert!(l.old().is_dir());
        l.confirm().unwrap();
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
        // A failing update keeps prev.
        let c = stage(&l, "cccc");
        l.flip_in(&c).unwrap();
        let (name, restored) = l.revert(&c).unwrap();
        assert!(restored);
        assert!(name.contains("cccc"));
        assert_eq!(live(&l).as_deref(), Some("bbbb"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
        assert_eq!(l.releases().failed.len(), 1);
        l.swap_prev().unwrap();
        assert_eq!(live(&l).as_deref(), Some("aaaa"));
        assert_eq!(
            fs::read_link(l.current()).unwrap(),
            PathBuf::from("releases/active")
        );
    }

    #[test]
    fn confirm_to_trash_leaves_the_old_prev_for_later_and_repair_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 2);
        let mut trashes = Vec::new();
        for sha in ["aaaa", "bbbb", "cccc", "dddd"] {
            let m = stage(&l, sha);
            l.flip_in(&m).unwrap();
            trashes.extend(l.confirm_to_trash().unwrap());
        }
        // aaaa and bbbb were dropped, each under a name of its own, and
        // still there: nothing waited for their delete.
        assert_eq!(trashes.len(), 2, "{trashes:?}");
        assert_ne!(trashes[0], trashes[1]);
        for (t, sha) in trashes.iter().zip(["aaaa", "bbbb"]) {
            assert_eq!(Manifest::read(t).unwrap().sha256, sha);
        }
        assert_eq!(live(&l).as_deref(), Some("dddd"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "cccc");
        assert!(!l.journal().exists() && !l.old().exists());
        // One delete done, one left as a crash would leave it: the repair
        // removes it and touches nothing else.
        delete_trash(&trashes[0]);
        delete_trash(&trashes[0]);
        assert!(!trashes[0].exists());
        let r = l.repair().unwrap();
        assert!(!trashes[1].exists(), "{r:?}");
        assert!(!r.unconfirmed && !r.restart, "{r:?}");
        assert_eq!(live(&l).as_deref(), Some("dddd"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "cccc");
    }

    #[test]
    fn first_install_failure_leaves_nothing_live() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 2);
        let a = stage(&l, "aaaa");
        l.flip_in(&a).unwrap();
        let (_, restored) = l.revert(&a).unwrap();
        assert!(!restored);
        assert!(fs::symlink_metadata(l.current()).is_err());
        assert!(!l.active().exists());
        let b = stage(&l, "bbbb");
        l.flip_in(&b).unwrap();
        l.confirm().unwrap();
        assert_eq!(live(&l).as_deref(), Some("bbbb"));
    }

    #[test]
    fn repair_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 2);
        let a = stage(&l, "aaaa");
        l.flip_in(&a).unwrap();
        l.confirm().unwrap();
        // Crash mid-staging: staging removed, nothing else.
        stage(&l, "bbbb");
        let r = l.repair().unwrap();
        assert!(!r.unconfirmed);
        assert!(!l.staging().exists());
        assert_eq!(live(&l).as_deref(), Some("aaaa"));
        // Crash between the exchange and the rename of the old release.
        let b = stage(&l, "bbbb");
        fs::write(l.journal(), serde_json::to_vec(&b).unwrap()).unwrap();
        exchange(&l.staging(), &l.active()).unwrap();
        let r = l.repair().unwrap();
        assert!(r.unconfirmed, "{r:?}");
        assert_eq!(live(&l).as_deref(), Some("bbbb"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
        assert!(!l.journal().exists() && !l.old().exists() && !l.staging().exists());
        // current missing and a stray temp link.
        fs::remove_file(l.current()).unwrap();
        std::os::unix::fs::symlink("nowhere", l.install.join(".current.tmp-1")).unwrap();
        l.repair().unwrap();
        assert_eq!(live(&l).as_deref(), Some("bbbb"));
        assert!(fs::symlink_metadata(l.install.join(".current.tmp-1")).is_err());
        // active gone, prev there: prev promoted.
        remove_tree(&l.active()).unwrap();
        l.repair().unwrap();
        assert_eq!(live(&l).as_deref(), Some("aaaa"));
    }

    /// prev=aaaa, active=bbbb, then cccc flipped in and failed.
    fn failed_update(l: &Layout) -> Manifest {
        for sha in ["aaaa", "bbbb"] {
            let m = stage(l, sha);
            l.flip_in(&m).unwrap();
            l.confirm().unwrap();
        }
        let c = stage(l, "cccc");
        l.flip_in(&c).unwrap();
        c
    }

    fn failed_shas(l: &Layout) -> Vec<String> {
        l.releases()
            .failed
            .into_iter()
            .filter_map(|f| f.manifest.map(|m| m.sha256))
            .collect()
    }

    #[test]
    fn repair_finishes_an_interrupted_revert_and_keeps_prev() {
        // Killed between revert's exchange and its move to failed/ (the
        // reviewer's repro: the exchange alone, journal as the flip left it).
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 5);
        failed_update(&l);
        exchange(&l.active(), &l.old()).unwrap();
        let r = l.repair().unwrap();
        assert!(!r.unconfirmed && r.restart, "{r:?}");
        assert_eq!(live(&l).as_deref(), Some("bbbb"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
        assert_eq!(failed_shas(&l), ["cccc"]);
        assert!(!l.old().exists() && !l.journal().exists());

        // Killed after revert marked the journal, before its exchange.
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 5);
        let c = failed_update(&l);
        l.write_journal(
            &Journal {
                manifest: c,
                reverting: true,
            },
            true,
        )
        .unwrap();
        let r = l.repair().unwrap();
        assert!(!r.unconfirmed && r.restart, "{r:?}");
        assert_eq!(live(&l).as_deref(), Some("bbbb"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
        assert_eq!(failed_shas(&l), ["cccc"]);

        // Killed after the revert moved the release out, before the journal went.
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 5);
        let c = failed_update(&l);
        l.write_journal(
            &Journal {
                manifest: c,
                reverting: true,
            },
            true,
        )
        .unwrap();
        exchange(&l.active(), &l.old()).unwrap();
        rename(&l.old(), &l.failed().join("x-cccc")).unwrap();
        let r = l.repair().unwrap();
        assert!(!r.unconfirmed && r.restart, "{r:?}");
        assert_eq!(live(&l).as_deref(), Some("bbbb"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");

        // A first install's revert, marked but not done: nothing stays live.
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 5);
        let a = stage(&l, "aaaa");
        l.flip_in(&a).unwrap();
        l.write_journal(
            &Journal {
                manifest: a,
                reverting: true,
            },
            true,
        )
        .unwrap();
        let r = l.repair().unwrap();
        assert!(!r.unconfirmed, "{r:?}");
        assert!(!l.active().exists() && fs::symlink_metadata(l.current()).is_err());
        assert_eq!(failed_shas(&l), ["aaaa"]);
    }

    #[test]
    fn repair_after_a_crash_inside_confirm_rolls_forward() {
        // Killed after confirm moved prev to the trash, before active.old
        // took its place: the trash goes, the flip rolls forward.
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 5);
        failed_update(&l);
        rename(&l.prev(), &l.trash_name("prev")).unwrap();
        let r = l.repair().unwrap();
        assert!(r.unconfirmed && !r.restart, "{r:?}");
        assert_eq!(live(&l).as_deref(), Some("cccc"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "bbbb");
        assert!(failed_shas(&l).is_empty());
        // Killed after active.old became prev, before the journal went.
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 5);
        failed_update(&l);
        remove_tree(&l.prev()).unwrap();
        rename(&l.old(), &l.prev()).unwrap();
        let r = l.repair().unwrap();
        assert!(r.unconfirmed, "{r:?}");
        assert_eq!(live(&l).as_deref(), Some("cccc"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "bbbb");
    }

    #[test]
    fn an_unexplained_active_old_never_evicts_prev() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 5);
        failed_update(&l);
        remove_file(&l.journal()).unwrap();
        let r = l.repair().unwrap();
        assert!(!r.unconfirmed, "{r:?}");
        assert_eq!(live(&l).as_deref(), Some("cccc"));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
        assert_eq!(failed_shas(&l), ["bbbb"]);
    }

    #[test]
    fn old_journals_without_the_reverting_mark_still_read() {
        let j: Journal =
            serde_json::from_slice(&serde_json::to_vec(&manifest("aaaa")).unwrap()).unwrap();
        assert_eq!((j.manifest.sha256.as_str(), j.reverting), ("aaaa", false));
    }

    #[test]
    fn exchange_never_falls_back_to_renames() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = a.join("b");
        fs::create_dir_all(&b).unwrap();
        // RENAME_EXCHANGE refuses (EINVAL) to swap a directory with its own
        // child; a three-rename fallback would have moved `a` away.
        let e = exchange(&a, &b).unwrap_err();
        assert!(e.to_string().contains("RENAME_EXCHANGE"), "{e}");
        assert!(b.is_dir(), "a and a/b untouched");
        assert!(!tmp.path().join("a.swap").exists());
    }

    #[test]
    fn exchange_check_passes_here_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        check_exchange(tmp.path()).unwrap();
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        check_install_exchange(tmp.path()).unwrap();
        assert!(check_exchange(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn repair_after_an_interrupted_rollback_restarts_on_a_whole_release() {
        for swapped in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let l = Layout::new(tmp.path(), 5);
            for sha in ["aaaa", "bbbb"] {
                let m = stage(&l, sha);
                l.flip_in(&m).unwrap();
                l.confirm().unwrap();
            }
            l.begin_rollback(Some(&manifest("bbbb")), Some(&manifest("aaaa")))
                .unwrap();
            if swapped {
                l.swap_prev().unwrap();
            }
            let r = l.repair().unwrap();
            assert!(r.restart && !r.unconfirmed, "{r:?}");
            let (live_sha, prev_sha) = if swapped {
                ("aaaa", "bbbb")
            } else {
                ("bbbb", "aaaa")
            };
            assert_eq!(live(&l).as_deref(), Some(live_sha));
            assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, prev_sha);
            assert!(!l.rollback_journal().exists());
            assert!(l.releases().failed.is_empty());
            // At rest: the next repair has nothing to do.
            let again = l.repair().unwrap();
            assert!(again.actions.is_empty() && !again.restart, "{again:?}");
        }
    }

    #[test]
    fn failed_retention() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 2);
        for i in 0..4 {
            let m = stage(&l, &format!("{i}{i}{i}"));
            l.flip_in(&m).unwrap();
            l.revert(&m).unwrap();
        }
        assert_eq!(l.releases().failed.len(), 2);
    }
}
