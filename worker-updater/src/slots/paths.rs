//! Paths of one set of release slots (the agent's or the updater's own).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Result, UpdaterError};

/// Paths of one set of release slots: the agent's (`<install>/current`,
/// `<install>/releases/`) or the updater's own (`<install>/updater/current`,
/// `<install>/updater/releases/`). Every operation below works the same on
/// both; only [`Layout::root`] differs.
#[derive(Clone, Debug)]
pub struct Layout {
    pub(super) install: PathBuf,
    /// The directory holding `current` and `releases/`.
    pub(super) root: PathBuf,
    pub(super) releases: PathBuf,
    /// How many failed releases to keep.
    pub(super) failed_keep: usize,
    /// How many good releases `kept/` holds besides `active` and `prev`
    /// (0: a `prev` that is replaced is deleted).
    pub(super) kept_keep: usize,
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
            kept_keep: 0,
        }
    }
    /// These slots, keeping `n` good releases in `kept/` besides `active`
    /// and `prev` (issue 12).
    pub fn keeping(mut self, n: usize) -> Layout {
        self.kept_keep = n;
        self
    }
    /// The install dir both slot sets live in.
    pub fn install_dir(&self) -> &Path {
        &self.install
    }
    /// The directory holding `current` and `releases/`.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `releases/` of this slot set.
    pub fn releases_dir(&self) -> &Path {
        &self.releases
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
    /// Good releases older than `prev`, newest name last
    /// (`<sequence>-<release_id prefix>`).
    pub fn kept(&self) -> PathBuf {
        self.releases.join("kept")
    }
    /// The content store every release's files are hardlinks into
    /// (`crate::store`).
    pub fn store(&self) -> PathBuf {
        self.releases.join("store")
    }
    pub fn journal(&self) -> PathBuf {
        self.releases.join(".incoming.json")
    }
    /// The update journal once its probe failed (renamed, see
    /// [`Layout::mark_reverting`]).
    pub fn reverting_journal(&self) -> PathBuf {
        self.releases.join(".reverting.json")
    }
    pub fn rollback_journal(&self) -> PathBuf {
        self.releases.join(".rollback.json")
    }
    /// The rollback journal renamed for lack of space to rewrite it
    /// ([`Layout::mark_rollback_undo`]).
    pub fn rollback_undo_journal(&self) -> PathBuf {
        self.releases.join(".rollback-undo.json")
    }
    /// The running install hook's process group.
    pub fn hook_journal(&self) -> PathBuf {
        self.releases.join(".hook.json")
    }

    /// Where the live release runs from, as `current` resolves to it
    /// (`releases/active` under the canonical `releases/`).
    pub fn live_dir(&self) -> PathBuf {
        fs::canonicalize(&self.releases)
            .unwrap_or_else(|_| self.releases.clone())
            .join("active")
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
}
