//! The start-up repair: bring a slot set back to a rest state after a
//! crash, from the slot directories and the journals alone, before the
//! first request is served.

use std::fs;
use std::path::Path;

use pki::wire::Manifest;

use super::Layout;
use super::fsx::{
    delete_trash, exchange, fsync_dir, is_leftover, remove_file, remove_tree, rename,
};
use super::transitions::unknown_manifest;
use crate::error::{Result, UpdaterError};

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
    /// A rollback crashed after its swap and before its target was proven
    /// healthy (its journal is kept): the caller re-probes `current` and
    /// undoes the rollback if it is unhealthy.
    pub rollback_unconfirmed: bool,
}

impl Layout {
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
    ///    flip happened, the probe never gave its verdict. Everything stays
    ///    (`active.old`, `prev` and the journal) and [`Repair::unconfirmed`]
    ///    asks the caller to restart and probe the agent, then confirm
    ///    (`active.old` becomes `prev`) or revert (`prev` untouched): a
    ///    crash never costs the last good release;
    /// 6. `active.old` next to `active` and no journal that explains it: it
    ///    goes to `failed/` (never into `prev`, which stays the last good
    ///    release);
    /// 7. no `active` but a `prev`: `prev` becomes `active`;
    /// 8. a rollback journal: when its target is live and no verdict was
    ///    recorded, the journal stays and [`Repair::rollback_unconfirmed`]
    ///    asks the caller to re-probe it (and undo the rollback if it is
    ///    unhealthy); when the verdict "undo" was recorded, the swap back is
    ///    done now; otherwise (the swap had not happened, or was undone)
    ///    the journal goes. [`Repair::restart`] asks for the agent on
    ///    `current` in every case;
    /// 9. `current` is re-pointed at `releases/active`, or removed if there
    ///    is no release at all.
    ///
    /// The caller first kills what a crash left of an install hook
    /// ([`Layout::read_hook`]), so nothing writes into staging meanwhile.
    pub fn repair_pending(&self) -> Result<Repair> {
        self.ensure_dirs()?;
        let mut r = Repair::default();
        for dir in [&self.root, &self.releases] {
            let entries = fs::read_dir(dir).map_err(|e| UpdaterError::io(dir, e))?;
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if !is_leftover(&name) {
                    continue;
                }
                if name.starts_with(".trash-") {
                    // Garbage only; a delete of it may still be running in
                    // the background when a failed operation repairs.
                    delete_trash(&e.path());
                } else {
                    remove_tree(&e.path())?;
                }
                r.actions
                    .push(format!("removed leftover {}", e.path().display()));
            }
        }
        let journal = self.read_journal();
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
            r.actions.push(
                "an update crashed after its flip, before its verdict: kept it live for a new probe, active.old and prev as they were"
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
        if !r.unconfirmed {
            self.remove_journal()?;
        }
        if self.rollback_pending() {
            self.repair_rollback(&mut r)?;
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

    /// [`Layout::repair_pending`], then roll an unconfirmed update forward
    /// (`active.old` becomes `prev`) and take an unconfirmed rollback as
    /// done: for `updater/`, whose caller checks the live release itself.
    pub fn repair(&self) -> Result<Repair> {
        let mut r = self.repair_pending()?;
        if r.unconfirmed && self.old().is_dir() {
            self.confirm()?;
            r.actions.push(
                "rolled the unconfirmed update forward: the release it replaced is prev".into(),
            );
        } else if r.unconfirmed {
            self.remove_journal()?;
        }
        if r.rollback_unconfirmed {
            self.end_rollback()?;
            r.rollback_unconfirmed = false;
        }
        Ok(r)
    }

    /// Rule 8: a rollback journal. Each swap is one RENAME_EXCHANGE, so the
    /// slots are whole; what is left to decide is whether the target still
    /// has to prove itself, and whether a decided undo still has to happen.
    fn repair_rollback(&self, r: &mut Repair) -> Result<()> {
        // The agent may be the wrong one, or not running.
        r.restart = true;
        let journal = self.read_rollback().unwrap_or_default();
        let active = Manifest::read(&self.active());
        let target_live =
            journal.to.is_some() && active == journal.to && journal.from != journal.to;
        if target_live && journal.undo && self.prev().is_dir() {
            exchange(&self.active(), &self.prev())?;
            fsync_dir(&self.releases)?;
            self.end_rollback()?;
            r.actions.push(
                "a rollback's target had failed its probe: finished the swap back; the agent is restarted on the release that ran before"
                    .into(),
            );
        } else if target_live && !journal.undo {
            r.rollback_unconfirmed = true;
            r.actions.push(
                "a rollback was interrupted before its target was proven healthy: it is probed again, and undone if unhealthy"
                    .into(),
            );
        } else {
            self.end_rollback()?;
            r.actions.push(
                "a rollback was interrupted: the agent is restarted on the release current holds"
                    .into(),
            );
        }
        Ok(())
    }
}
