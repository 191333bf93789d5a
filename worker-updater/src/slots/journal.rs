//! The slot journals: `releases/.incoming.json` (the update in flight),
//! `releases/.reverting.json` (the same journal, renamed once its probe
//! failed: the verdict, recorded without needing a free block), and
//! `releases/.rollback.json` (a rollback in flight, with its verdict once
//! the target failed its probe), plus `releases/.hook.json` (the process
//! group of an install hook that is running). All are written through
//! [`fsx`](super::fsx), so a crash leaves the old journal or the new one.

use pki::wire::Manifest;
use serde::{Deserialize, Serialize};

use super::Layout;
use super::fsx::{fsync_dir, remove_file, rename, write_json_durable, write_json_unsynced};
use crate::error::Result;

/// `releases/.incoming.json`: the update in flight. Older updaters wrote the
/// bare manifest, which still reads (`reverting` false).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Journal {
    #[serde(flatten)]
    pub(crate) manifest: Manifest,
    /// The release failed its probe and is being moved out of `active`
    /// (older updaters marked it here; now the journal is renamed to
    /// `.reverting.json`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) reverting: bool,
}

/// `releases/.rollback.json`: a rollback from `from` to `to`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackJournal {
    pub from: Option<Manifest>,
    pub to: Option<Manifest>,
    /// The verdict: `to` failed its probe, the swap back to `from` is due.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undo: bool,
}

/// `releases/.hook.json`: the install hook running now, so that a
/// restarted updater kills what a crash left of it before touching staging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookJournal {
    /// The hook's process group (its leader's pid).
    pub pgid: i32,
    /// `/proc/sys/kernel/random/boot_id` when it started: after a reboot
    /// the number names nothing of ours.
    pub boot_id: String,
    /// The hook's `SWARM_RELEASE_DIR` (the staging dir): every process of
    /// the hook carries it in its environment.
    pub release_dir: String,
}

impl Layout {
    /// Journal the update about to be flipped in, unsynced: the flip's one
    /// `syncfs` right after covers it.
    pub(crate) fn journal_flip(&self, incoming: &Manifest) -> Result<()> {
        write_json_unsynced(
            &self.journal(),
            &Journal {
                manifest: incoming.clone(),
                reverting: false,
            },
        )
    }

    /// Write the update journal durably (tests: an older updater's mark).
    #[cfg(test)]
    pub(crate) fn write_journal_durable(&self, journal: &Journal) -> Result<()> {
        write_json_durable(&self.journal(), journal)
    }

    /// Record the verdict "unhealthy" on the update in flight, durably and
    /// without allocating anything (a full disk must not stop a revert):
    /// `.incoming.json` is renamed to `.reverting.json`. A no-op when it
    /// is marked already.
    pub fn mark_reverting(&self) -> Result<()> {
        if self.journal().exists() {
            rename(&self.journal(), &self.reverting_journal())?;
            fsync_dir(&self.releases)?;
        }
        Ok(())
    }

    /// The update journal, if there is a readable one: `.reverting.json`
    /// (marked) before `.incoming.json`.
    pub(crate) fn read_journal(&self) -> Option<Journal> {
        let read = |p: std::path::PathBuf| {
            std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Journal>(&b).ok())
        };
        if let Some(mut j) = read(self.reverting_journal()) {
            j.reverting = true;
            return Some(j);
        }
        read(self.journal())
    }

    /// Drop both names of the update journal.
    pub(crate) fn remove_journal(&self) -> Result<()> {
        remove_file(&self.journal())?;
        remove_file(&self.reverting_journal())
    }

    /// The manifest of the update in flight, if any (marked or not).
    pub fn pending_update(&self) -> Option<Manifest> {
        self.read_journal().map(|j| j.manifest)
    }

    /// Record (durably) that a rollback from `from` to `to` is starting: a
    /// crash before [`Layout::end_rollback`] makes the next start-up repair
    /// re-probe `to` when it is live, and undo the rollback if it fails.
    pub fn begin_rollback(&self, from: Option<&Manifest>, to: Option<&Manifest>) -> Result<()> {
        self.ensure_dirs()?;
        write_json_durable(
            &self.rollback_journal(),
            &RollbackJournal {
                from: from.cloned(),
                to: to.cloned(),
                undo: false,
            },
        )
    }

    /// Record the verdict of a rollback: its target failed, the swap back is
    /// due. Rewritten in place (temp sibling); with no room for that, the
    /// journal is renamed to `.rollback-undo.json`, which says the same.
    pub fn mark_rollback_undo(&self) -> Result<()> {
        let mut j = self.read_rollback().unwrap_or_default();
        j.undo = true;
        match write_json_durable(&self.rollback_journal(), &j) {
            Err(crate::error::UpdaterError::NoSpace { .. }) => {
                rename(&self.rollback_journal(), &self.rollback_undo_journal())?;
                fsync_dir(&self.releases)
            }
            other => other,
        }
    }

    /// The rollback journal, if there is a readable one.
    pub fn read_rollback(&self) -> Option<RollbackJournal> {
        let read = |p: std::path::PathBuf| {
            std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<RollbackJournal>(&b).ok())
        };
        if let Some(mut j) = read(self.rollback_undo_journal()) {
            j.undo = true;
            return Some(j);
        }
        read(self.rollback_journal())
    }

    /// Whether a rollback journal (of either name) is there.
    pub(crate) fn rollback_pending(&self) -> bool {
        self.rollback_journal().exists() || self.rollback_undo_journal().exists()
    }

    /// The rollback is over (whatever its outcome): drop its journal.
    pub fn end_rollback(&self) -> Result<()> {
        remove_file(&self.rollback_journal())?;
        remove_file(&self.rollback_undo_journal())?;
        fsync_dir(&self.releases)
    }

    /// Record the install hook's process group (durably).
    pub fn begin_hook(&self, hook: &HookJournal) -> Result<()> {
        write_json_durable(&self.hook_journal(), hook)
    }

    /// The hook journal, if there is a readable one.
    pub fn read_hook(&self) -> Option<HookJournal> {
        std::fs::read(self.hook_journal())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The hook's group is dead: drop its journal.
    pub fn end_hook(&self) -> Result<()> {
        if !self.hook_journal().exists() {
            return Ok(());
        }
        remove_file(&self.hook_journal())?;
        fsync_dir(&self.releases)
    }
}
