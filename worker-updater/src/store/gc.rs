//! Garbage collection of the content store (issue 12), after an
//! operation and at start-up, off the request path: delete the trash an
//! operation left (renamed release dirs), then remove every object no
//! release links any more. Every release, kept, failed or in flight
//! (staging), holds a hardlink to each of its objects, so an object whose
//! link count is 1 is referenced by nothing: removing it can never break
//! a release, and a kill at any point leaves at worst an object the next
//! collection removes. Objects whose seal changed are re-hashed here
//! (dropped when they no longer match), so the next push need not.
//!
//! Deleting a release's links changes each shared object's ctime: an
//! object whose seal held just before its trash was deleted, and whose
//! inode, size and mtime still hold after, is sealed again without a
//! re-hash (a write in the few milliseconds of that delete is the one
//! change this lets through; see `wiki/security.md`).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{LEDGER, Seal, Session, Store, parse_name};
use crate::error::{Result, UpdaterError};
use crate::slots::{delete_trash, remove_tree};

/// What a collection did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Objects no release links, removed.
    pub removed: u64,
    /// Objects whose content no longer matched their name, dropped.
    pub dropped: u64,
}

/// [`sweep`] on the blocking pool, without waiting for it.
pub fn sweep_in_background(store: Store, trash: Vec<PathBuf>) {
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        match sweep(&store, &trash) {
            Ok(c) => tracing::debug!(
                "content store {}: {} removed, {} dropped in {} ms",
                store.dir().display(),
                c.removed,
                c.dropped,
                t.elapsed().as_millis()
            ),
            Err(e) => tracing::warn!("content store {}: {e}", store.dir().display()),
        }
    });
}

/// Delete `trash`, then collect `store`.
pub fn sweep(store: &Store, trash: &[PathBuf]) -> Result<Collected> {
    if !store.dir().is_dir() {
        trash.iter().for_each(|t| delete_trash(t));
        return Ok(Collected::default());
    }
    let mut s = store.begin()?;
    let unlinking = s.sealed_in(trash);
    for t in trash {
        delete_trash(t);
    }
    s.resettle(&unlinking);
    collect(s)
}

impl Session {
    /// The objects `trash` links whose seals hold now.
    fn sealed_in(&self, trash: &[PathBuf]) -> BTreeSet<String> {
        let by_ino: HashMap<u64, &String> = self.ledger.iter().map(|(k, s)| (s.ino, k)).collect();
        let mut out = BTreeSet::new();
        let mut todo: Vec<PathBuf> = trash.to_vec();
        while let Some(dir) = todo.pop() {
            let Ok(listing) = fs::read_dir(&dir) else {
                continue;
            };
            for item in listing.flatten() {
                let Ok(meta) = item.metadata() else { continue };
                if meta.is_dir() {
                    todo.push(item.path());
                } else if meta.is_file()
                    && let Some(name) = by_ino.get(&meta.ino())
                    && fs::symlink_metadata(self.object(name))
                        .is_ok_and(|m| self.ledger.get(*name) == Some(&Seal::of(&m)))
                {
                    out.insert((*name).clone());
                }
            }
        }
        out
    }

    /// Seal again the objects of `unlinking` whose inode, size and mtime
    /// are as sealed (only the ctime moved: the links just deleted).
    fn resettle(&mut self, unlinking: &BTreeSet<String>) {
        for name in unlinking {
            let Ok(meta) = fs::symlink_metadata(self.object(name)) else {
                continue;
            };
            let now = Seal::of(&meta);
            if let Some(old) = self.ledger.get_mut(name)
                && (old.ino, old.size, old.mtime, old.mtime_nsec)
                    == (now.ino, now.size, now.mtime, now.mtime_nsec)
            {
                *old = now;
            }
        }
    }
}

/// Remove the objects nothing links, re-hash those whose seal changed,
/// drop leftovers (a ledger's temp file), write the ledger durably.
pub fn collect(mut s: Session) -> Result<Collected> {
    let mut out = Collected::default();
    let mut seen = BTreeSet::new();
    let dir = s.dir.clone();
    let listing = fs::read_dir(&dir).map_err(|e| UpdaterError::io(&dir, e))?;
    for item in listing {
        let item = item.map_err(|e| UpdaterError::io(&dir, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name == LEDGER {
            continue;
        }
        let path = item.path();
        if parse_name(&name).is_none() {
            remove_tree(&path)?;
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| UpdaterError::io(&path, e))?;
        if meta.is_file() && meta.nlink() <= 1 {
            if out.removed == 0 {
                crate::crashpoint::at("gc-unlinking");
            }
            unlink(&path)?;
            s.ledger.remove(&name);
            out.removed += 1;
            continue;
        }
        if s.trusted(&name)? {
            seen.insert(name);
        } else {
            out.dropped += 1;
        }
    }
    s.ledger.retain(|k, _| seen.contains(k));
    s.commit_durable()?;
    Ok(out)
}

fn unlink(path: &Path) -> Result<()> {
    crate::slots::fsx::remove_file(path)
}
