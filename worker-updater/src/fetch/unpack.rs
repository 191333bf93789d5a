//! Turning a downloaded object into its content: the zstd frame is
//! decompressed (window capped as for uploads) into `<fetch dir>/<sha256>`,
//! at most the index's size, hashed as it is written; content that does not
//! hash to the index's SHA-256 (an object altered in the store) is refused
//! before anything uses it.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, UpdaterError};

/// Decompress `part` into `dir/<sha>`: exactly `size` bytes hashing to
/// `sha`, else refused (and both files removed).
pub(super) fn unpack(part: &Path, sha: &str, size: u64, dir: &Path) -> Result<PathBuf> {
    let out = dir.join(sha);
    let result = unpack_to(part, &out, sha, size);
    if result.is_err() {
        let _ = fs::remove_file(&out);
        let _ = fs::remove_file(part);
    }
    result.map(|()| out)
}

fn unpack_to(part: &Path, out: &Path, sha: &str, size: u64) -> Result<()> {
    let src = fs::File::open(part).map_err(|e| UpdaterError::io(part, e))?;
    let mut dec = zstd::stream::read::Decoder::new(src)
        .map_err(|e| UpdaterError::Internal(format!("zstd decoder: {e}")))?;
    dec.window_log_max(crate::receive::decode::ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| UpdaterError::Internal(format!("zstd decoder: {e}")))?;
    let dst = fs::File::create(out).map_err(|e| UpdaterError::io(out, e))?;
    let mut w = io::BufWriter::with_capacity(256 * 1024, &dst);
    let mut limited = (&mut dec).take(size.saturating_add(1));
    let (got, n_total) = pki::index::copy_hashing(&mut limited, &mut w).map_err(|e| match e {
        pki::index::CopyError::Read(e) => UpdaterError::BadUpload(format!(
            "object {sha} from the store is not a zstd frame we accept ({e}): refused"
        )),
        pki::index::CopyError::Write(e) => UpdaterError::io(out, e),
    })?;
    w.flush().map_err(|e| UpdaterError::io(out, e))?;
    if n_total != size || got != sha {
        return Err(UpdaterError::BadUpload(format!(
            "object {sha} from the store holds {} bytes hashing to {got}, not the {size} bytes the index names: refused (altered in the store?); nothing was installed",
            if n_total > size {
                format!("more than {size}")
            } else {
                n_total.to_string()
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(bytes, 3).unwrap()
    }

    #[test]
    fn only_the_content_the_index_names_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let sha = pki::index::sha256_hex(b"hello");
        let part = tmp.path().join("p.part");
        std::fs::write(&part, frame(b"hello")).unwrap();
        let out = unpack(&part, &sha, 5, tmp.path()).unwrap();
        assert_eq!(std::fs::read(out).unwrap(), b"hello");

        // Other bytes under that name: refused, both files gone.
        std::fs::write(&part, frame(b"hellO")).unwrap();
        let e = unpack(&part, &sha, 5, tmp.path()).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(!part.exists() && !tmp.path().join(&sha).exists());

        // More bytes than the index says: read no further than size + 1.
        std::fs::write(&part, frame(&vec![b'x'; 1 << 20])).unwrap();
        let e = unpack(&part, &sha, 5, tmp.path()).unwrap_err();
        assert!(e.to_string().contains("more than 5"), "{e}");

        // Not zstd at all.
        std::fs::write(&part, b"plain text").unwrap();
        assert!(unpack(&part, &sha, 5, tmp.path()).is_err());
    }
}
