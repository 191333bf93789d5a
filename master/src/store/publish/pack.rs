//! Packing the contents the store lacks: one zstd frame per chunk of
//! about [`CHUNK_BYTES`] of contents (a larger file is a chunk of its own),
//! frames back to back in a temporary file until it holds [`PACK_BYTES`],
//! every file read once, streamed, and checked against the index as it is
//! read. The same contents in the same order always give the same bytes
//! (one thread, a fixed level), so a pack's key is its bytes' SHA-256.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use pki::store::{Chunk, PackRef};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Contents per chunk (before compression): a worker downloads a whole
/// chunk for any content in it, so this bounds what a one-file change
/// costs a worker that lacks only that file.
const CHUNK_BYTES: u64 = 1 << 20;
/// A pack is closed once it holds this many bytes.
const PACK_BYTES: u64 = 64 << 20;
/// zstd level of the chunks: packing is once per release, not per host,
/// so a little more time than the direct push's level 1 buys fewer bytes.
const LEVEL: i32 = 3;

/// One pack written.
pub(super) struct Built {
    pub(super) file: tempfile::NamedTempFile,
    pub(super) pack: PackRef,
    /// Its chunks (`pack` 0: the caller numbers them).
    pub(super) chunks: Vec<Chunk>,
}

/// The error of a file that is not what the index says any more.
pub(super) fn changed(path: &Path) -> Error {
    Error::Other(format!(
        "{} changed since the release was packed: push again",
        path.display()
    ))
}

/// Pack `contents` (`sha256`, size, the file holding it), in that order.
pub(super) fn build(contents: Vec<(String, u64, PathBuf)>) -> Result<Vec<Built>> {
    let mut built = Vec::new();
    let mut pack: Option<Writer> = None;
    let mut rest = contents.into_iter().peekable();
    while rest.peek().is_some() {
        let mut group = Vec::new();
        let mut bytes = 0u64;
        while let Some(next) = rest.peek() {
            if !group.is_empty() && bytes.saturating_add(next.1) > CHUNK_BYTES {
                break;
            }
            bytes = bytes.saturating_add(next.1);
            group.extend(rest.next());
        }
        let w = match &mut pack {
            Some(w) => w,
            None => pack.insert(Writer::new()?),
        };
        w.chunk(&group, bytes)?;
        if w.written >= PACK_BYTES {
            built.extend(pack.take().map(Writer::finish).transpose()?);
        }
    }
    built.extend(pack.map(Writer::finish).transpose()?);
    Ok(built)
}

/// A pack being written: counted and hashed as it goes.
struct Writer {
    out: BufWriter<tempfile::NamedTempFile>,
    hash: Sha256,
    written: u64,
    chunks: Vec<Chunk>,
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Writer {
    fn new() -> Result<Writer> {
        let file =
            tempfile::NamedTempFile::new().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        Ok(Writer {
            out: BufWriter::with_capacity(256 * 1024, file),
            hash: Sha256::new(),
            written: 0,
            chunks: Vec::new(),
        })
    }

    /// Append one frame holding `group` (`bytes` in all).
    fn chunk(&mut self, group: &[(String, u64, PathBuf)], bytes: u64) -> Result<()> {
        let offset = self.written;
        let tmp = std::env::temp_dir();
        let mut enc =
            zstd::stream::write::Encoder::new(&mut *self, LEVEL).map_err(|e| Error::io(&tmp, e))?;
        enc.include_contentsize(true)
            .and_then(|()| enc.set_pledged_src_size(Some(bytes)))
            .map_err(|e| Error::io(&tmp, e))?;
        for (sha, size, path) in group {
            let mut src = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // One byte past `size` is enough to tell the file grew.
            let mut limited = (&mut src).take(size.saturating_add(1));
            let (got, n) =
                pki::index::copy_hashing(&mut limited, &mut enc).map_err(|e| match e {
                    pki::index::CopyError::Read(e) => Error::io(path, e),
                    pki::index::CopyError::Write(e) => Error::io(&tmp, e),
                })?;
            if n != *size || got != *sha {
                return Err(changed(path));
            }
        }
        enc.finish().map_err(|e| Error::io(&tmp, e))?;
        self.chunks.push(Chunk {
            pack: 0,
            offset,
            len: self.written - offset,
            contents: group.iter().map(|(s, n, _)| (s.clone(), *n)).collect(),
        });
        Ok(())
    }

    fn finish(self) -> Result<Built> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(std::env::temp_dir(), e.into_error()))?;
        Ok(Built {
            file,
            pack: PackRef {
                sha256: hex::encode(self.hash.finalize()),
                size: self.written,
            },
            chunks: self.chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(dir: &Path, name: &str, bytes: &[u8]) -> (String, u64, PathBuf) {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        (pki::index::sha256_hex(bytes), bytes.len() as u64, p)
    }

    /// Chunks decompress to their contents back to back; the same input
    /// gives the same pack; a file that changed is refused.
    #[test]
    fn packs_are_deterministic_frames_of_their_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(3 << 19)).map(|i: u32| (i % 251) as u8).collect();
        let contents = vec![
            content(tmp.path(), "a", b"alpha"),
            content(tmp.path(), "b", &big),
            content(tmp.path(), "c", b"gamma"),
        ];
        let built = build(contents.clone()).unwrap();
        assert_eq!(built.len(), 1);
        let p = &built[0];
        // Each alone: "b" would overflow a chunk after "a", "c" after "b".
        assert_eq!(p.chunks.len(), 3, "{:?}", p.chunks);
        let bytes = std::fs::read(p.file.path()).unwrap();
        assert_eq!(pki::index::sha256_hex(&bytes), p.pack.sha256);
        assert_eq!(bytes.len() as u64, p.pack.size);
        for (c, want) in p.chunks.iter().zip([&b"alpha"[..], &big, b"gamma"]) {
            let frame = &bytes[c.offset as usize..(c.offset + c.len) as usize];
            assert_eq!(zstd::stream::decode_all(frame).unwrap(), want);
        }
        // Small contents share a frame.
        let small = vec![
            content(tmp.path(), "d", b"delta"),
            content(tmp.path(), "e", b"epsilon"),
        ];
        let two = build(small).unwrap();
        assert_eq!(two[0].chunks.len(), 1);
        let bytes = std::fs::read(two[0].file.path()).unwrap();
        assert_eq!(
            zstd::stream::decode_all(&bytes[..]).unwrap(),
            b"deltaepsilon"
        );
        assert_eq!(build(contents.clone()).unwrap()[0].pack, p.pack);

        std::fs::write(&contents[2].2, b"GAMMA").unwrap();
        let e = build(contents).err().expect("a changed file");
        assert!(e.to_string().contains("changed since"), "{e}");
    }
}
