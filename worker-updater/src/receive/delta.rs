//! Delta pushes (issue 12): the tarball holds only the files the worker
//! does not have, plus every directory and link; the new release's index
//! comes whole (`index`) or as a patch of the base's (`index_patch`, with
//! the `release_id` it must give), and `base` is the `release_id` of the
//! live release the delta is against. [`materialize`] completes staging from
//! the live release, then the push goes through the same hook, flip,
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
//!   whose content the base has (same SHA-256 and size); it is copied from
//!   the base, hashed as it is read, and refused if the copy does not hash
//!   to the index (a kept file changed on the worker is re-hashed, never
//!   trusted). A file missing from the upload and from the base → 400;
//! - a base that is not the live release → 412 ([`UpdaterError::NoBase`]),
//!   which the master answers with a full push.
//!
//! Unchanged content is copied, not hardlinked: without a read-only content
//! store, a hardlink would let an app writing into its live release change
//! the new release too (see `wiki/security.md`).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use pki::index::{EntryKind, INDEX_FILE, IndexEntry, TreeIndex};
use pki::wire::MANIFEST_FILE;
use sha2::{Digest, Sha256};

use super::extract::{Caps, normalize};
use crate::error::{Result, UpdaterError};

/// Complete `staging` (which holds what was `received`) into the release
/// `want` describes, copying what is missing from `base_dir` (the live
/// release, whose kept index is `base`). Returns the bytes reused.
pub fn materialize(
    staging: &Path,
    received: &TreeIndex,
    want: &TreeIndex,
    base_dir: &Path,
    base: &TreeIndex,
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
    let by_content: HashMap<(&str, u64), &str> = base
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| Some(((e.sha256.as_deref()?, e.size), e.path.as_str())))
        .collect();
    let mut reused = 0;
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
        let sha = w.sha256.as_deref().unwrap_or_default();
        let Some(from) = by_content.get(&(sha, w.size)) else {
            return Err(UpdaterError::BadUpload(format!(
                "{:?} is missing from the upload and from every release this worker keeps",
                w.path
            )));
        };
        copy_checked(&base_dir.join(from), &staging.join(&w.path), w)?;
        if reused == 0 {
            crate::crashpoint::at("delta-copying");
        }
        reused += w.size;
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

/// Copy the kept file `from` to the new `to`, hashing what is read: it
/// must be the content `want` names (a kept file changed on the worker
/// since it was installed is refused, not reused).
fn copy_checked(from: &Path, to: &Path, want: &IndexEntry) -> Result<()> {
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(from)
        .map_err(|e| UpdaterError::NoBase(format!("the kept copy {}: {e}", from.display())))?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| UpdaterError::io(to, e))?;
    let mut out = io::BufWriter::with_capacity(256 * 1024, &dst);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UpdaterError::io(from, e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
        out.write_all(&buf[..n])
            .map_err(|e| UpdaterError::io(to, e))?;
    }
    out.flush().map_err(|e| UpdaterError::io(to, e))?;
    drop(out);
    let sha = hex::encode(hasher.finalize());
    if size != want.size || Some(sha.as_str()) != want.sha256.as_deref() {
        return Err(UpdaterError::NoBase(format!(
            "the kept copy of {:?} ({}) no longer has the content it was installed with (changed on the worker?): push the whole release",
            want.path,
            from.display()
        )));
    }
    dst.set_permissions(fs::Permissions::from_mode(want.mode))
        .map_err(|e| UpdaterError::io(to, e))
}
