//! The install directory's release slots and every change to them.
//!
//! ```text
//! current -> releases/active    (relative symlink, replaced only by rename(2))
//! releases/active/              live release
//! releases/prev/                last good release
//! releases/active.new/          staging (mid-update only)
//! releases/active.old/          the release that was live before the update
//!                               in flight, kept until the new one is healthy
//! releases/.incoming.json       journal: manifest of the update in flight
//! releases/.reverting.json      the same, renamed once its probe failed
//! releases/.rollback.json       journal: a rollback in flight (`undo` once
//!                               its target failed its probe; renamed to
//!                               `.rollback-undo.json` on a full disk)
//! releases/.hook.json           the running install hook's process group
//! releases/failed/<time>-<sha>/ releases that failed their probe
//! releases/.trash-prev-<pid>-<n>/ a dropped `prev`, deleted in the
//!                               background after the update answered
//! releases/.dirs/               empty directories made ahead of time for
//!                               the next extraction ([`dirs`])
//! ```
//!
//! `paths` names them, `transitions` moves them, `journal` records
//! what is in flight, `repair` finishes what a crash interrupted, and
//! [`fsx`] holds the filesystem primitives (one atomic JSON write, the
//! exchange, the syncs). The flip swaps `active.new` and `active` with one
//! `renameat2(RENAME_EXCHANGE)`, so `releases/active` (and with it
//! `current`) is a whole release at every instant. One `syncfs` runs before
//! it (staging, manifest and journal reach the disk together), and the
//! directories are fsynced after each rename. `prev` is replaced only once
//! the new release has passed its probe, so a failed release never evicts
//! the last good one. There is no fallback for filesystems without
//! `RENAME_EXCHANGE`: [`check_install_exchange`] refuses them at start-up.

pub mod dirs;
pub mod fsx;
mod journal;
mod paths;
mod repair;
mod transitions;

use std::path::{Path, PathBuf};

pub use fsx::{check_exchange, delete_trash, remove_tree};
pub use journal::{HookJournal, RollbackJournal};
pub use paths::Layout;
pub use repair::Repair;

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

#[cfg(test)]
mod tests;
