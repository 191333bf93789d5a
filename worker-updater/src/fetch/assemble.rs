//! Writing the fetched release's skeleton into staging through the one
//! extractor: the index's directories and its links (targets as the
//! document gives them, each checked against its index hash) become a zstd
//! tar stream that [`crate::receive::extract`] reads, so they meet every
//! rule an upload does (paths, link targets, modes, caps, nothing outside
//! staging). The files are then linked from the content store, as for a
//! delta push (`ops::materialize::delta`), the fetched contents first
//! stored there: no content is written twice.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use pki::index::{EntryKind, TreeIndex, sha256_hex};

use crate::error::{Result, UpdaterError};
use crate::receive::{Caps, Extracted};

/// Write `want`'s directories and links into `staging`.
pub(super) fn assemble(
    want: &TreeIndex,
    links: &HashMap<String, String>,
    staging: &Path,
    caps: &Caps,
) -> Result<Extracted> {
    for e in want.entries() {
        if e.kind == EntryKind::Link {
            let ok = links.get(&e.path).is_some_and(|t| {
                t.len() as u64 == e.size && Some(sha256_hex(t.as_bytes())) == e.sha256
            });
            if !ok {
                return Err(UpdaterError::BadUpload(format!(
                    "link {:?}: the request's target does not match the index",
                    e.path
                )));
            }
        }
    }
    let (reader, writer) = io::pipe().map_err(|e| UpdaterError::Internal(format!("pipe: {e}")))?;
    std::thread::scope(|s| {
        let producer = s.spawn(move || write_tar(writer, want, links));
        let extracted = crate::receive::extract::extract(reader, staging, caps);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the tar writer panicked")));
        match (extracted, produced) {
            (Ok(x), Ok(())) => Ok(x),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(UpdaterError::Internal(format!(
                "writing the fetched tree: {e}"
            ))),
        }
    })
}

fn write_tar(
    writer: io::PipeWriter,
    want: &TreeIndex,
    links: &HashMap<String, String>,
) -> io::Result<()> {
    let z = zstd::stream::write::Encoder::new(writer, 1)?;
    let mut tar = tar::Builder::new(z);
    for e in want.entries() {
        match e.kind {
            EntryKind::Dir => {
                let mut h = header(tar::EntryType::Directory, e.mode, 0);
                tar.append_data(&mut h, format!("{}/", e.path), io::empty())?;
            }
            EntryKind::Link => {
                let target = links.get(&e.path).map(String::as_str).unwrap_or_default();
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, &e.path, target)?;
            }
            // Linked from the content store (materialize).
            EntryKind::File => {}
        }
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_cksum();
    h
}
