//! The slot journals: `releases/.incoming.json` (the update in flight,
//! marked `reverting` before a revert starts) and `releases/.rollback.json`
//! (a rollback, or a start-up revert, in flight). Both are written through
//! [`fsx`](super::fsx), so a crash leaves the old journal or the new one.

use pki::wire::Manifest;
use serde::{Deserialize, Serialize};

use super::Layout;
use super::fsx::{fsync_dir, remove_file, write_json_durable, write_json_unsynced};
use crate::error::Result;

/// `releases/.incoming.json`: the update in flight. Older updaters wrote the
/// bare manifest, which still reads (`reverting` false).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Journal {
    #[serde(flatten)]
    pub(crate) manifest: Manifest,
    /// The release failed its probe and is being moved out of `active`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) reverting: bool,
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

    /// Write the update journal durably (a revert marks it before it moves anything).
    pub(crate) fn write_journal_durable(&self, journal: &Journal) -> Result<()> {
        write_json_durable(&self.journal(), journal)
    }

    /// The update journal, if there is a readable one.
    pub(crate) fn read_journal(&self) -> Option<Journal> {
        std::fs::read(self.journal())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Record (durably) that a rollback from `from` to `to` is starting: a
    /// crash before [`Layout::end_rollback`] makes the next start-up repair
    /// restart the agent on whatever `current` holds then.
    pub fn begin_rollback(&self, from: Option<&Manifest>, to: Option<&Manifest>) -> Result<()> {
        self.ensure_dirs()?;
        write_json_durable(
            &self.rollback_journal(),
            &serde_json::json!({ "from": from, "to": to }),
        )
    }

    /// The rollback is over (whatever its outcome): drop its journal.
    pub fn end_rollback(&self) -> Result<()> {
        remove_file(&self.rollback_journal())?;
        fsync_dir(&self.releases)
    }
}
