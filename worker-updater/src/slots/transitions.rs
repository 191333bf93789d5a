//! Slot transitions: staging, the flip (journal, one `syncfs`, one
//! `RENAME_EXCHANGE`, `current` re-pointed), confirm, revert, the rollback
//! swaps, `failed/` retention and `GET /releases`. Each leaves
//! `releases/active` (and so `current`) on one whole release.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use pki::wire::{FailedRelease, Manifest, Releases};

use super::Layout;
use super::fsx::{
    exchange, fsync_dir, remove_file, remove_tree, rename, sync_fs, temp_sibling,
    write_json_durable,
};
use super::journal::Journal;
use crate::error::{Result, UpdaterError};

impl Layout {
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

    /// Rename `active.new/` to a trash name of its own, for the caller to
    /// delete later; `None` when there is none.
    pub fn staging_to_trash(&self) -> Result<Option<PathBuf>> {
        if fs::symlink_metadata(self.staging()).is_err() {
            return Ok(None);
        }
        let t = self.trash_name("staging");
        rename(&self.staging(), &t)?;
        Ok(Some(t))
    }

    /// Promote the complete staging release `incoming`: journal it, sync
    /// once, swap it into `active` atomically, keep the old one as
    /// `active.old`, and point `current` at `releases/active`.
    ///
    /// An `Err` means nothing rotated: a step after the exchange that fails
    /// (a full disk, say) is undone before returning, so a 507 or a 500
    /// never leaves the pushed release live.
    pub fn flip_in(&self, incoming: &Manifest) -> Result<()> {
        self.journal_flip(incoming)?;
        sync_fs(&self.releases)?;
        remove_tree(&self.old())?;
        let swapped = self.active().is_dir();
        if swapped {
            exchange(&self.staging(), &self.active())?;
        } else {
            rename(&self.staging(), &self.active())?;
        }
        crate::crashpoint::at("flip-exchanged");
        let finish = || -> Result<()> {
            if swapped {
                rename(&self.staging(), &self.old())?;
            }
            fsync_dir(&self.releases)?;
            self.point_current()
        };
        if let Err(e) = finish() {
            if let Err(undo) = self.unflip(swapped) {
                tracing::error!("undoing a failed flip: {undo}; the repair finishes it");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Put the release that was live before a failed [`Layout::flip_in`]
    /// back in `active` (renames only: it must work on a full disk).
    fn unflip(&self, swapped: bool) -> Result<()> {
        if swapped {
            if self.old().is_dir() {
                rename(&self.old(), &self.staging())?;
            }
            exchange(&self.staging(), &self.active())?;
        } else {
            rename(&self.active(), &self.staging())?;
            remove_file(&self.current())?;
        }
        self.remove_journal()?;
        fsync_dir(&self.releases)
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
    /// is returned for the caller to delete later (`store::gc::sweep_in_background`).
    /// A trash dir left by a crash is removed by the start-up repair.
    pub fn confirm_to_trash(&self) -> Result<Option<PathBuf>> {
        let mut trash = None;
        if self.old().is_dir() {
            if self.prev().exists() {
                // A good release with an id is kept for `rollback --to`;
                // one rename, so a crash leaves it in one place or the other.
                let keep = (self.kept_keep > 0)
                    .then(|| Manifest::read(&self.prev()))
                    .flatten()
                    .filter(|m| m.release_id.is_some());
                if let Some(m) = keep {
                    fs::create_dir_all(self.kept())
                        .map_err(|e| UpdaterError::io(self.kept(), e))?;
                    let dest = self.kept().join(self.kept_name(&m));
                    rename(&self.prev(), &dest)?;
                    fsync_dir(&self.kept())?;
                } else {
                    let t = self.trash_name("prev");
                    rename(&self.prev(), &t)?;
                    trash = Some(t);
                }
            }
            rename(&self.old(), &self.prev())?;
            fsync_dir(&self.releases)?;
        }
        self.remove_journal()?;
        fsync_dir(&self.releases)?;
        Ok(trash)
    }

    /// The release in `active` failed: move it to `failed/` and put the one
    /// it replaced back. Returns the name under `failed/` and whether a
    /// release was restored (false on a first install: `current` is removed).
    ///
    /// The journal is marked `reverting` first ([`Layout::mark_reverting`],
    /// a rename: it needs no free space), so a crash between the exchange
    /// and the move to `failed/` is finished by [`Layout::repair`] instead
    /// of being mistaken for a flip to roll forward.
    pub fn revert(&self, manifest: &Manifest) -> Result<(String, bool)> {
        self.ensure_dirs()?;
        if self.read_journal().is_none() {
            write_json_durable(
                &self.reverting_journal(),
                &Journal {
                    manifest: manifest.clone(),
                    reverting: true,
                },
            )?;
        }
        self.mark_reverting()?;
        crate::crashpoint::at("revert-marked");
        let name = self.failed_name(manifest);
        let dest = self.failed().join(&name);
        let restored = if self.old().is_dir() {
            exchange(&self.active(), &self.old())?;
            crate::crashpoint::at("revert-exchanged");
            rename(&self.old(), &dest)?;
            true
        } else {
            rename(&self.active(), &dest)?;
            remove_file(&self.current())?;
            false
        };
        self.remove_journal()?;
        fsync_dir(&self.releases)?;
        fsync_dir(&self.root)?;
        self.prune_failed();
        Ok((name, restored))
    }

    /// Swap `active` and `prev` atomically (rollback, and its undo).
    pub fn swap_prev(&self) -> Result<()> {
        if !self.prev().is_dir() {
            return Err(UpdaterError::NoPrevious);
        }
        sync_fs(&self.releases)?;
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

    /// A name in `kept/` for `manifest`: a sequence number one above the
    /// highest there (so names sort by age, whatever the clock does), then
    /// its id's prefix.
    fn kept_name(&self, manifest: &Manifest) -> String {
        let next = fs::read_dir(self.kept())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.split('-').next()?.parse::<u64>().ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
            + 1;
        let id: String = manifest.id().chars().take(12).collect();
        format!("{next:010}-{id}")
    }

    /// The releases in `kept/`, newest first: (dir, manifest).
    pub fn kept_releases(&self) -> Vec<(PathBuf, Manifest)> {
        let mut v: Vec<(String, PathBuf)> = fs::read_dir(self.kept())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.0.cmp(&a.0));
        v.into_iter()
            .filter_map(|(_, p)| Manifest::read(&p).map(|m| (p, m)))
            .collect()
    }

    /// Move the kept releases beyond the newest `kept_keep` to trash
    /// names (one rename each); the caller deletes them off the request
    /// path. Only renamed trash is ever deleted, and leftover trash is
    /// deleted at start-up, so a kill at any point leaves every kept
    /// release whole.
    pub fn prune_kept(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (dir, _) in self.kept_releases().into_iter().skip(self.kept_keep) {
            let t = self.trash_name("kept");
            match rename(&dir, &t) {
                Ok(()) => out.push(t),
                Err(e) => tracing::warn!("pruning {}: {e}", dir.display()),
            }
        }
        out
    }

    /// Put the kept release `dir` in `prev`, keeping the `prev` it
    /// replaces in `kept/` (two renames: a crash between them leaves both
    /// in `kept/` and no `prev`, which is a valid layout).
    pub fn promote_kept(&self, dir: &Path) -> Result<()> {
        if let Some(m) = Manifest::read(&self.prev()) {
            let dest = self.kept().join(self.kept_name(&m));
            rename(&self.prev(), &dest)?;
        } else if self.prev().exists() {
            rename(&self.prev(), &self.trash_name("prev"))?;
        }
        crate::crashpoint::at("kept-demoted");
        rename(dir, &self.prev())?;
        fsync_dir(&self.kept())?;
        fsync_dir(&self.releases)
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
        let active = Manifest::read(&self.active());
        let prev = Manifest::read(&self.prev());
        let kept = active
            .iter()
            .chain(prev.iter())
            .cloned()
            .chain(self.kept_releases().into_iter().map(|(_, m)| m))
            .collect();
        Releases {
            active,
            prev,
            failed,
            kept,
        }
    }

    /// Move the release at `dir` to `failed/` under a name for `manifest`.
    pub(crate) fn park_failed(&self, dir: &Path, manifest: &Manifest) -> Result<String> {
        let name = self.failed_name(manifest);
        rename(dir, &self.failed().join(&name))?;
        fsync_dir(&self.releases)?;
        self.prune_failed();
        Ok(name)
    }

    /// Atomically (re)point `current` at `releases/active`: a temp symlink
    /// renamed over it, then the install dir fsynced.
    /// Nothing is written when it points there already (a full disk has
    /// no room for the temp link, and nothing would change).
    pub(crate) fn point_current(&self) -> Result<()> {
        if fs::read_link(self.current()).ok().as_deref() == Some(Path::new("releases/active")) {
            return Ok(());
        }
        let tmp = temp_sibling(&self.current());
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink("releases/active", &tmp)
            .map_err(|e| UpdaterError::io(&tmp, e))?;
        rename(&tmp, &self.current())?;
        fsync_dir(&self.root)
    }

    /// A trash name no other call in this process (or a previous one)
    /// uses, so a delete still running never meets the next one's trash.
    pub(crate) fn trash_name(&self, what: &str) -> PathBuf {
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

    pub(crate) fn failed_name(&self, manifest: &Manifest) -> String {
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
    pub(crate) fn prune_failed(&self) {
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
pub(crate) fn unknown_manifest() -> Manifest {
    Manifest {
        sha256: "unknown".into(),
        size_bytes: 0,
        files: 0,
        git_commit: None,
        pushed_at: String::new(),
        pushed_by: String::new(),
        release_id: None,
    }
}
