//! Turning a downloaded range of a pack into contents: each chunk in it is
//! one zstd frame (window capped as for uploads) of the contents its
//! document lists, back to back. Every content is hashed as it is
//! decompressed, never read past its listed size, and refused unless it
//! hashes to its name (an altered pack); the ones this worker needs are
//! written to `<fetch dir>/<sha256>`. A frame holding more than its list
//! is refused too.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use pki::store::Chunk;

use crate::error::{Result, UpdaterError};

/// The contents of `chunks` (all within the range that starts at byte
/// `start` of its pack, downloaded to `part`) that are in `needed`, as
/// `(sha256, file)` in `dir`. On a refusal `part` is removed, so the next
/// push downloads it again.
pub(super) fn unpack(
    part: &Path,
    start: u64,
    chunks: &[Chunk],
    needed: &HashSet<(String, u64)>,
    dir: &Path,
) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut written = HashSet::new();
    for c in chunks {
        match unpack_chunk(part, start, c, needed, dir, &mut out, &mut written) {
            Ok(()) => {}
            Err(e) => {
                let _ = fs::remove_file(part);
                for (_, p) in &out {
                    let _ = fs::remove_file(p);
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn unpack_chunk(
    part: &Path,
    start: u64,
    c: &Chunk,
    needed: &HashSet<(String, u64)>,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
    written: &mut HashSet<String>,
) -> Result<()> {
    let mut file = fs::File::open(part).map_err(|e| UpdaterError::io(part, e))?;
    file.seek(SeekFrom::Start(c.offset - start))
        .map_err(|e| UpdaterError::io(part, e))?;
    let frame = BufReader::with_capacity(128 * 1024, file.take(c.len));
    let mut dec = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(|e| UpdaterError::Internal(format!("zstd decoder: {e}")))?
        .single_frame();
    dec.window_log_max(crate::receive::decode::ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| UpdaterError::Internal(format!("zstd decoder: {e}")))?;
    for (sha, size) in &c.contents {
        let key = (sha.clone(), *size);
        let wanted = needed.contains(&key) && written.insert(sha.clone());
        let mut limited = (&mut dec).take(*size);
        let (got, n) = if wanted {
            let path = dir.join(sha);
            let dst = fs::File::create(&path).map_err(|e| UpdaterError::io(&path, e))?;
            out.push((sha.clone(), path.clone()));
            let mut w = io::BufWriter::with_capacity(256 * 1024, dst);
            let r = pki::index::copy_hashing(&mut limited, &mut w);
            w.flush().map_err(|e| UpdaterError::io(&path, e))?;
            r.map_err(|e| copy_error(e, c, &path))?
        } else {
            pki::index::copy_hashing(&mut limited, &mut io::sink())
                .map_err(|e| copy_error(e, c, dir))?
        };
        if n != *size || got != *sha {
            return Err(UpdaterError::BadUpload(format!(
                "content {sha} from the store (pack chunk at {}) holds {n} bytes hashing to {got}, not the {size} bytes its name says: refused (altered in the store?); nothing was installed",
                c.offset
            )));
        }
    }
    let mut one = [0u8; 1];
    let more = dec
        .read(&mut one)
        .map_err(|e| copy_error(pki::index::CopyError::Read(e), c, dir))?;
    if more != 0 {
        return Err(UpdaterError::BadUpload(format!(
            "the pack chunk at {} holds more than the contents its document lists: refused (altered in the store?)",
            c.offset
        )));
    }
    Ok(())
}

fn copy_error(e: pki::index::CopyError, c: &Chunk, path: &Path) -> UpdaterError {
    match e {
        pki::index::CopyError::Read(e) => UpdaterError::BadUpload(format!(
            "the pack chunk at {} from the store is not a zstd frame we accept ({e}): refused",
            c.offset
        )),
        pki::index::CopyError::Write(e) => UpdaterError::io(path, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_of(contents: &[&[u8]], offset: u64, frame_len: u64) -> Chunk {
        Chunk {
            pack: 0,
            offset,
            len: frame_len,
            contents: contents
                .iter()
                .map(|c| (pki::index::sha256_hex(c), c.len() as u64))
                .collect(),
        }
    }

    #[test]
    fn only_the_contents_the_document_names_are_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let part = tmp.path().join("p.part");
        let frame = zstd::bulk::compress(b"helloworld", 3).unwrap();
        // The range starts 100 bytes into the pack; garbage before the frame.
        let mut bytes = vec![0u8; 7];
        bytes.extend_from_slice(&frame);
        std::fs::write(&part, &bytes).unwrap();
        let c = chunk_of(&[b"hello", b"world"], 107, frame.len() as u64);
        let need: HashSet<(String, u64)> = [(pki::index::sha256_hex(b"world"), 5)].into();
        let got = unpack(&part, 100, std::slice::from_ref(&c), &need, tmp.path()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(std::fs::read(&got[0].1).unwrap(), b"world");

        // Other bytes under those names: refused, the part removed.
        let evil = zstd::bulk::compress(b"hellOworld", 3).unwrap();
        std::fs::write(&part, &evil).unwrap();
        let c = chunk_of(&[b"hello", b"world"], 0, evil.len() as u64);
        let e = unpack(&part, 0, &[c], &need, tmp.path()).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(!part.exists());

        // More than listed.
        let long = zstd::bulk::compress(b"helloworld!", 3).unwrap();
        std::fs::write(&part, &long).unwrap();
        let c = chunk_of(&[b"hello", b"world"], 0, long.len() as u64);
        let e = unpack(&part, 0, &[c], &need, tmp.path()).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");

        // Not zstd at all.
        std::fs::write(&part, b"plain text, not a frame").unwrap();
        let c = chunk_of(&[b"hello", b"world"], 0, 23);
        assert!(unpack(&part, 0, &[c], &need, tmp.path()).is_err());
    }
}
