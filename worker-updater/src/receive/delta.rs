//! Delta pushes (issue 12): the tarball holds only the files the worker
//! does not have, plus every directory and link; the new release's index
//! comes whole (`index`) or as a patch of the base's (`index_patch`, with
//! the `release_id` it must give), and `base` is the `release_id` of the
//! kept release (active, prev or `kept/`) whose index the patch applies to.
//! [`materialize`] completes staging from the content store (content of
//! any kept release), then the push goes through the same hook, flip,
//! restart, probe and revert as any other.
//!
//! Rules (each a 400 with staging removed, nothing rotated, unless said):
//! - the index parses, is sorted and has no path twice, at most
//!   `max_entries` entries, every path normalized and not reserved, every
//!   mode one the extractor would install;
//! - everything received is in the index, exactly (type, mode, size and
//!   the SHA-256 of the content as received): a file whose hash differs is
//!   refused;
//! - what the index has and the upload does not must be a regular file
//!   whose content the store holds (trusted by its seal, else re-hashed,
//!   see [`crate::store`]); it is hardlinked from the store. Content that
//!   some kept release lists but the store no longer has (changed on the
//!   worker, dropped) → 412 ([`UpdaterError::NoBase`]); content no kept
//!   release lists → 400;
//! - a file left out must sit in a directory of the index (never below a
//!   link);
//! - a base that is not kept → 412, which the master answers with a full
//!   push.

use std::path::Path;

use pki::index::{EntryKind, INDEX_FILE, TreeIndex};
use pki::wire::MANIFEST_FILE;

use super::extract::{Caps, normalize};
use crate::error::{Result, UpdaterError};
use crate::store::Session;

/// Complete `staging` (which holds what was `received`) into the release
/// `want` describes: what was received goes into the store, what was not
/// is linked from it. `kept_lists(sha256, size)` says whether a kept
/// release lists that content (only asked when the store lacks it).
/// Returns the bytes reused.
pub fn materialize(
    staging: &Path,
    received: &TreeIndex,
    want: &TreeIndex,
    store: &mut Session,
    kept_lists: &mut dyn FnMut(&str, u64) -> bool,
    caps: &Caps,
) -> Result<u64> {
    check_index(want, caps)?;
    for got in received.entries() {
        match want.get(&got.path) {
            Some(w) if w == got => {}
            Some(_) => {
                return Err(UpdaterError::BadUpload(format!(
                    "{:?} in the upload differs from the index sent with it (type, mode, size or content)",
                    got.path
                )));
            }
            None => {
                return Err(UpdaterError::BadUpload(format!(
                    "{:?} is in the upload but not in the index sent with it",
                    got.path
                )));
            }
        }
    }
    for w in want.entries() {
        if w.kind == EntryKind::File && received.get(&w.path).is_some() {
            store.adopt(&staging.join(&w.path), w)?;
        }
    }
    let mut todo = Vec::new();
    for w in want.entries() {
        if received.get(&w.path).is_some() {
            continue;
        }
        if w.kind != EntryKind::File {
            return Err(UpdaterError::BadUpload(format!(
                "{:?} ({:?}) is in the index but not in the upload: a delta sends every directory and link",
                w.path, w.kind
            )));
        }
        // The link lands in a directory the index names (and so the
        // upload brought), never through a link nor in a missing one.
        if let Some((parent, _)) = w.path.rsplit_once('/')
            && want.get(parent).is_none_or(|p| p.kind != EntryKind::Dir)
        {
            return Err(UpdaterError::unsafe_entry(
                &w.path,
                "its parent is not a directory of the index",
            ));
        }
        todo.push(w);
    }
    // What the store holds sealed, linked at once; the rest one by one.
    let left = store.link_sealed(staging, &todo)?;
    let reused: u64 = todo.iter().map(|w| w.size).sum();
    if todo.len() > left.len() {
        crate::crashpoint::at("delta-copying");
    }
    for w in left.into_iter().filter_map(|i| todo.get(i)) {
        if !store.link_to(&staging.join(&w.path), w)? {
            let sha = w.sha256.as_deref().unwrap_or_default();
            if kept_lists(sha, w.size) {
                return Err(UpdaterError::NoBase(format!(
                    "the kept copy of {:?} no longer has the content it was installed with (changed on the worker?): push the whole release",
                    w.path
                )));
            }
            return Err(UpdaterError::BadUpload(format!(
                "{:?} is missing from the upload and from every release this worker keeps",
                w.path
            )));
        }
    }
    Ok(reused)
}

/// Every extraction rule that applies to an index entry by itself.
fn check_index(want: &TreeIndex, caps: &Caps) -> Result<()> {
    if want.entries().len() as u64 > caps.max_entries {
        return Err(UpdaterError::Cap(format!(
            "the index has more than {} entries (--max-entries)",
            caps.max_entries
        )));
    }
    for e in want.entries() {
        let comps = normalize(e.path.as_bytes(), caps)
            .map_err(|why| UpdaterError::unsafe_entry(&e.path, why))?;
        if comps.join("/") != e.path || comps.is_empty() {
            return Err(UpdaterError::unsafe_entry(
                &e.path,
                "an index path must be normalized (no `.`, empty or trailing components)",
            ));
        }
        if e.path == MANIFEST_FILE || e.path == INDEX_FILE {
            return Err(UpdaterError::unsafe_entry(&e.path, "reserved name"));
        }
        let ok = match e.kind {
            EntryKind::File => e.mode == pki::index::file_mode(e.mode) && e.sha256.is_some(),
            EntryKind::Dir => e.mode == pki::index::dir_mode(e.mode),
            EntryKind::Link => e.mode == pki::index::LINK_MODE && e.sha256.is_some(),
        };
        if !ok {
            return Err(UpdaterError::unsafe_entry(
                &e.path,
                format!("mode {:o} or digest not what the updater installs", e.mode),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use pki::index::{IndexEntry, sha256_hex};

    use super::*;
    use crate::store::Store;

    #[test]
    fn content_is_linked_only_below_a_directory_of_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("store"));
        // The store holds "kept" (from an earlier release).
        let old = tmp.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::write(old.join("f"), b"kept").unwrap();
        let kept = IndexEntry::file("f", 0o644, 4, sha256_hex(b"kept"));
        let mut s = store.begin().unwrap();
        s.adopt(&old.join("f"), &kept).unwrap();
        // Received: a directory `x` and a link `d -> x`.
        let staging = tmp.path().join("staging");
        fs::create_dir_all(staging.join("x")).unwrap();
        std::os::unix::fs::symlink("x", staging.join("d")).unwrap();
        let received = TreeIndex::new(vec![
            IndexEntry::dir("x", 0o755),
            IndexEntry::link("d", "x"),
        ])
        .unwrap();
        let file = |p: &str| IndexEntry::file(p, 0o644, 4, sha256_hex(b"kept"));
        let mut none = |_: &str, _: u64| false;
        for (path, why) in [("d/f", "below a link"), ("y/f", "no directory")] {
            let mut want = received.entries().to_vec();
            want.push(file(path));
            let want = TreeIndex::new(want).unwrap();
            let r = materialize(
                &staging,
                &received,
                &want,
                &mut s,
                &mut none,
                &Caps::default(),
            );
            assert!(
                matches!(r, Err(UpdaterError::Unsafe { .. })),
                "{why}: {r:?}"
            );
            assert!(!staging.join("x/f").exists(), "{why}: nothing written");
        }
        // Below a directory of the index: linked.
        let mut want = received.entries().to_vec();
        want.push(file("x/f"));
        let want = TreeIndex::new(want).unwrap();
        let r = materialize(
            &staging,
            &received,
            &want,
            &mut s,
            &mut none,
            &Caps::default(),
        );
        assert_eq!(r.unwrap(), 4);
        assert_eq!(fs::read(staging.join("x/f")).unwrap(), b"kept");
    }
}
