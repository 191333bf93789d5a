//! `POST /verify` (issue 12): re-hash the live release and `prev` on disk
//! and compare each with the index kept beside its manifest, to find what
//! was modified, added or removed by hand (or by an app writing into its
//! own release) since the updater installed it.
//!
//! The scan builds the same canonical index the extractor builds
//! ([`pki::index`]): the manifest and index files at the root are no
//! entries, a file's mode is the canonical one its read-only stored mode
//! stands for (a file made writable is modified:
//! [`crate::store::canonical_mode`]); the index file must hash to the manifest's `release_id`, or
//! the slot is reported as not checkable (the index itself was altered).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use pki::index::{EntryKind, INDEX_FILE, IndexEntry, TreeIndex, sha256_hex};
use pki::wire::{MANIFEST_FILE, Manifest, SlotVerify, VerifyReport};

use crate::error::{Result, UpdaterError};
use crate::release::read_index;
use crate::state::{Daemon, OpGuard, blocking};
use crate::store::{canonical_mode, hash_file};

/// Verify `active` and `prev`, holding the worker (`guard`): nothing
/// flips under the scan.
pub async fn verify(d: Arc<Daemon>, guard: OpGuard) -> Result<VerifyReport> {
    let layout = d.layout.clone();
    let max = usize::try_from(d.config.caps.max_entries).unwrap_or(usize::MAX);
    let report = blocking(move || {
        let mut slots = Vec::new();
        for (name, dir) in [("active", layout.active()), ("prev", layout.prev())] {
            if dir.is_dir() {
                slots.push(verify_slot(name, &dir, max));
            }
        }
        let clean = slots.iter().all(|s| s.clean);
        Ok(VerifyReport { clean, slots })
    })
    .await;
    drop(guard);
    report
}

/// One slot against its kept index.
pub fn verify_slot(slot: &str, dir: &Path, max_entries: usize) -> SlotVerify {
    let release = Manifest::read(dir);
    let mut out = SlotVerify {
        slot: slot.to_owned(),
        release: release.clone(),
        clean: false,
        modified: Vec::new(),
        added: Vec::new(),
        missing: Vec::new(),
        error: None,
    };
    let expected = match read_index(dir, max_entries) {
        Ok(Some(i)) => i,
        Ok(None) => {
            out.error = Some(format!(
                "no {INDEX_FILE} kept with this release (installed by an updater older than release ids): push it again to be able to verify it"
            ));
            return out;
        }
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    if let Some(id) = release.as_ref().and_then(|m| m.release_id.as_deref())
        && expected.release_id() != id
    {
        out.error = Some(format!(
            "{INDEX_FILE} does not hash to the manifest's release_id {id}: the index itself was altered"
        ));
        return out;
    }
    match scan(dir, max_entries) {
        Ok(actual) => {
            let diff = expected.diff(&actual);
            out.clean = diff.is_empty();
            out.modified = diff.modified;
            out.added = diff.added;
            out.missing = diff.missing;
        }
        Err(e) => out.error = Some(e.to_string()),
    }
    out
}

/// The canonical index of the tree in `dir` as it is on disk now (every
/// file re-hashed), at most `max_entries` entries. What no release can
/// hold (a FIFO, a socket, a device, a name that is not UTF-8) still
/// becomes an entry, one no index can match.
pub fn scan(dir: &Path, max_entries: usize) -> Result<TreeIndex> {
    let mut entries = Vec::new();
    let mut todo = vec![(dir.to_owned(), String::new())];
    while let Some((abs, rel)) = todo.pop() {
        let listing = fs::read_dir(&abs).map_err(|e| UpdaterError::io(&abs, e))?;
        for item in listing {
            let item = item.map_err(|e| UpdaterError::io(&abs, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && (name == MANIFEST_FILE || name == INDEX_FILE) {
                continue;
            }
            let path = item.path();
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entries.len() >= max_entries {
                return Err(UpdaterError::Cap(format!(
                    "{} holds more than {max_entries} entries (--max-entries)",
                    dir.display()
                )));
            }
            let meta = fs::symlink_metadata(&path).map_err(|e| UpdaterError::io(&path, e))?;
            let ft = meta.file_type();
            let mode = meta.permissions().mode() & 0o7777;
            if ft.is_dir() {
                entries.push(IndexEntry::dir(key.clone(), mode));
                todo.push((path, key));
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| UpdaterError::io(&path, e))?;
                entries.push(IndexEntry::link(key, &target.to_string_lossy()));
            } else if ft.is_file() {
                let sha = hash_file(&path)?;
                // Stored read-only; the index has the canonical mode.
                entries.push(IndexEntry::file(
                    key,
                    canonical_mode(mode),
                    meta.size(),
                    sha,
                ));
            } else {
                entries.push(IndexEntry {
                    path: key,
                    kind: EntryKind::File,
                    mode,
                    size: 0,
                    sha256: Some(sha256_hex(b"not a regular file")),
                });
            }
        }
    }
    // Lossy names can collide: report them as a tree no index matches.
    TreeIndex::new(entries).map_err(UpdaterError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::write_index;

    #[test]
    fn a_tree_scans_to_its_index_and_every_change_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::write(d.join("a/b/f"), "hello").unwrap();
        fs::write(d.join("g"), "x").unwrap();
        std::os::unix::fs::symlink("a/b/f", d.join("l")).unwrap();
        // Files as the store installs them: read-only.
        for (p, m) in [("a", 0o755), ("a/b", 0o755), ("a/b/f", 0o444), ("g", 0o555)] {
            fs::set_permissions(d.join(p), fs::Permissions::from_mode(m)).unwrap();
        }
        let index = scan(d, 100).unwrap();
        assert_eq!(index.get("g").unwrap().mode, 0o755, "the canonical mode");
        write_index(d, &index).unwrap();
        let clean = verify_slot("active", d, 100);
        assert!(clean.clean, "{clean:?}");
        assert_eq!(scan(d, 100).unwrap(), index, "the index file is no entry");
        fs::write(d.join("a/b/f"), "hellO").unwrap();
        fs::write(d.join("new"), "n").unwrap();
        fs::remove_file(d.join("l")).unwrap();
        fs::set_permissions(d.join("g"), fs::Permissions::from_mode(0o444)).unwrap();
        let v = verify_slot("active", d, 100);
        assert!(!v.clean);
        assert_eq!(v.modified, ["a/b/f", "g"]);
        assert_eq!(v.added, ["new"]);
        assert_eq!(v.missing, ["l"]);
        // A stored file made writable (its content unchanged) is modified:
        // the shared inode is no longer protected.
        write_index(d, &scan(d, 100).unwrap()).unwrap();
        assert!(verify_slot("active", d, 100).clean);
        fs::set_permissions(d.join("g"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(verify_slot("active", d, 100).modified, ["g"]);
        assert!(scan(d, 2).is_err(), "cap");
    }

    #[test]
    fn no_index_or_a_forged_one_is_an_error_not_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("f"), "x").unwrap();
        let v = verify_slot("prev", d, 100);
        assert!(!v.clean && v.error.as_deref().unwrap_or("").contains("no .swarm-index"));
        // An index rewritten to match a tampered tree no longer hashes
        // to the manifest's release_id.
        let m = Manifest {
            sha256: "aa".into(),
            size_bytes: 1,
            files: 1,
            git_commit: None,
            pushed_at: "t".into(),
            pushed_by: "master".into(),
            release_id: Some(scan(d, 100).unwrap().release_id()),
        };
        crate::release::write_manifest(d, &m).unwrap();
        fs::write(d.join("f"), "y").unwrap();
        write_index(d, &scan(d, 100).unwrap()).unwrap();
        let v = verify_slot("prev", d, 100);
        assert!(!v.clean);
        assert!(
            v.error.as_deref().unwrap_or("").contains("altered"),
            "{v:?}"
        );
    }
}
