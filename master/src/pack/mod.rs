//! The release: the working tree at `--root` (staged, unstaged and
//! untracked files) minus `.git/`, what `.gitignore`/`.swarmignore`/`--exclude`
//! leave out, and secrets. It is scanned once ([`scan`]: the walk, the
//! secret checks and the canonical index, with file hashes from the
//! [`cache`] where a file's stat is unchanged) and then packed as a zstd
//! tar straight into each upload ([`stream`]): the master never writes a
//! temporary tarball.
//!
//! This file holds the types; [`scan`] walks, [`stream`] packs,
//! [`secrets`] decides what stays home, [`git`] reads the commit and the
//! dirty bit, and the master's copies of the `swarm.toml` schema
//! ([`swarm_toml`]) and of the symlink rule ([`link_rule`]) each live in
//! one file of their own.
//!
//! Invariants: `.env.local` never ships; other secrets (`.env*`, `*.key`,
//! any file [`crate::keyscan`] finds a private key in, read whole or
//! remembered by the cache for an unchanged stat) ship only when
//! `swarm.toml`'s `[release] include` names them, and every file left out
//! is listed in `skipped_secrets`; entries are sorted, owned by 0:0, with
//! modes 0755/0644 and each file's own mtime, so a tree whose contents and
//! mtimes are unchanged packs to the same bytes, every time it is packed
//! (touching a file changes the digest); symlinks must stay inside the
//! tree; what is packed is what was scanned: a file whose size or content
//! changed since the scan fails the pack, never ships under a stale index.

mod cache;
mod git;
mod link_rule;
mod scan;
mod secrets;
mod stream;
mod swarm_toml;

use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Serialize;

use crate::error::Error;
use pki::index::TreeIndex;

pub(crate) use scan::{PackProgress, scan};
pub(crate) use stream::{Digest, Have, Next, Recording};

/// What to pack.
#[derive(Clone, Debug)]
pub(crate) struct PackOptions {
    pub(crate) root: PathBuf,
    pub(crate) excludes: Vec<String>,
    /// Where the per-file hash cache lives (`None`: hash every file).
    pub(crate) cache_dir: Option<PathBuf>,
}

/// One entry of a scanned tree, in the order it is packed.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    rel: String,
    mtime: i64,
    kind: ItemKind,
}

#[derive(Clone, Debug)]
enum ItemKind {
    Dir,
    /// The link's target as read (checked to stay inside the tree).
    Link(PathBuf),
    File {
        mode: u32,
        size: u64,
        sha256: String,
    },
}

/// A scanned tree: what will be packed, its index and what is known about
/// it. Packing it ([`Tree::stream`], [`Tree::pack_in_memory`]) reads the
/// files again and checks each against the index.
#[derive(Debug)]
pub(crate) struct Tree {
    root: PathBuf,
    items: Vec<Item>,
    /// The tree's canonical index.
    pub(crate) index: TreeIndex,
    pub(crate) info: ReleaseInfo,
    /// The whole pack's digest and size, once one was packed.
    whole: OnceLock<Digest>,
}

impl Tree {
    /// The whole pack's digest and size, if one was packed whole (every
    /// whole pack of a tree is the same bytes).
    pub(crate) fn whole(&self) -> Option<&Digest> {
        self.whole.get()
    }

    /// What is known about the release, with the whole pack's digest and
    /// size when one was packed.
    pub(crate) fn info_now(&self) -> ReleaseInfo {
        let mut info = self.info.clone();
        if let Some(d) = self.whole() {
            info.sha256 = Some(d.sha256.clone());
            info.size_bytes = Some(d.size);
        }
        info
    }
}

/// What is known about a release.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ReleaseInfo {
    pub(crate) root: PathBuf,
    /// SHA-256 (hex) of the whole upload (the zstd-compressed tar), once
    /// one was packed whole (a run that sent only deltas has none).
    pub(crate) sha256: Option<String>,
    /// SHA-256 of the tree's canonical index ([`pki::index`]): what the
    /// updater computes as it extracts, whatever the compression. The
    /// release's name.
    pub(crate) release_id: String,
    /// Bytes of the whole upload, once one was packed whole.
    pub(crate) size_bytes: Option<u64>,
    /// Bytes of the tree's regular files (what a whole pack reads).
    pub(crate) tree_bytes: u64,
    /// Regular files in the release.
    pub(crate) files: u64,
    pub(crate) git_commit: Option<String>,
    /// Whether the tree had uncommitted changes against `git_commit`
    /// (`None`: unknown: not a checkout, or no git installed).
    pub(crate) git_dirty: Option<bool>,
    /// Secrets left out (relative paths).
    pub(crate) skipped_secrets: Vec<String>,
    /// `[install] timeout_secs` of the tree's `swarm.toml`, if any.
    #[serde(skip)]
    pub(crate) install_timeout_secs: Option<u64>,
    /// `[agent] probe_deadline_secs` of the tree's `swarm.toml`, if any.
    #[serde(skip)]
    pub(crate) probe_deadline_secs: Option<u64>,
    /// Where the tree's updater binary is (`[updater] binary`, default
    /// `bin/worker-updater`), and whether the release ships it executable.
    #[serde(skip)]
    pub(crate) updater_binary: String,
    #[serde(skip)]
    pub(crate) ships_updater: bool,
    /// `[rollout]` of the tree's `swarm.toml`: the plan's defaults.
    #[serde(skip)]
    pub(crate) rollout: pki::rollout::RolloutSection,
}

pub(super) fn pack_err(root: &std::path::Path, message: impl Into<String>) -> Error {
    Error::Pack {
        root: root.to_owned(),
        message: message.into(),
    }
}

/// zstd level 1, by measurement (84 MB of half text, half noise, one
/// core): gzip -1 2.99 s → 71.3 MB; zstd -1 0.32 s → 69.6 MB; zstd -3
/// 0.44 s → 67.6 MB; zstd -6 0.93 s → 67.4 MB. Level 3's 3 % fewer bytes
/// cost 40 % more packing time, which a LAN does not pay back (2 MB is
/// 16 ms at 1 Gbit/s). Its window (512 KiB) is far below what updaters
/// accept (8 MiB, `ZSTD_WINDOW_LOG_MAX`).
const COMPRESSION_LEVEL: i32 = 1;

#[cfg(test)]
mod tests;
