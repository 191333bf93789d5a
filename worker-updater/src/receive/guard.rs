//! The tar header guard: readers under tar-rs that cap the decoded size
//! ([`CapReader`]) and refuse oversized GNU long-name/PAX extension
//! headers from their header block ([`HeaderGuard`]), before tar-rs would
//! buffer them whole.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::rc::Rc;

/// Largest GNU long name / long link or PAX extended header (tar-rs reads
/// these whole into memory). Far above any path we accept.
pub(crate) const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
const BLOCK: usize = 512;

/// Counts decoded bytes and fails once `cap` is passed.
pub(super) struct CapReader<R> {
    pub(super) inner: R,
    pub(super) read: u64,
    pub(super) cap: u64,
    pub(super) tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for CapReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.cap {
            self.tripped.set(true);
            return Err(io::Error::other("uncompressed size cap exceeded"));
        }
        Ok(n)
    }
}

/// Follows the tar stream's 512-byte blocks as tar-rs reads them (headers,
/// data, padding, PAX `size` overrides, GNU sparse extension blocks) and
/// fails a read that completes the header of an extension entry larger than
/// [`MAX_EXTENSION_BYTES`], before tar-rs reads that entry into memory.
/// Past the end-of-archive block (or a header it cannot size, which tar-rs
/// refuses itself) it only passes bytes through.
pub(super) struct HeaderGuard<R> {
    pub(super) inner: R,
    header: [u8; BLOCK],
    filled: usize,
    /// Data and padding bytes before the next header.
    remaining: u64,
    /// The data of the PAX header being read (bounded by the limit).
    pax: Option<Vec<u8>>,
    /// A PAX `size` for the next entry that is not an extension header.
    pending_size: Option<u64>,
    /// Inside GNU sparse extension blocks; the data size that follows them.
    sparse: Option<u64>,
    done: bool,
    refused: Rc<RefCell<Option<String>>>,
}

impl<R> HeaderGuard<R> {
    pub(super) fn new(inner: R, refused: Rc<RefCell<Option<String>>>) -> Self {
        HeaderGuard {
            inner,
            header: [0; BLOCK],
            filled: 0,
            remaining: 0,
            pax: None,
            pending_size: None,
            sparse: None,
            done: false,
            refused,
        }
    }

    fn track(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() && !self.done {
            if self.remaining > 0 {
                let k = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                if let Some(pax) = &mut self.pax {
                    let room = MAX_EXTENSION_BYTES as usize - pax.len();
                    pax.extend_from_slice(&bytes[..k.min(room)]);
                }
                self.remaining -= k as u64;
                bytes = &bytes[k..];
                if self.remaining == 0
                    && let Some(pax) = self.pax.take()
                {
                    self.pending_size = pax_size(&pax);
                }
                continue;
            }
            let k = (BLOCK - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + k].copy_from_slice(&bytes[..k]);
            self.filled += k;
            bytes = &bytes[k..];
            if self.filled == BLOCK {
                self.filled = 0;
                self.on_header()?;
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> Result<(), String> {
        let h = &self.header;
        if let Some(size) = self.sparse {
            // A GNU sparse extension block: byte 504 says another follows.
            if h[504] == 0 {
                self.sparse = None;
                self.remaining = padded(size);
            }
            return Ok(());
        }
        if h.iter().all(|b| *b == 0) {
            self.done = true;
            return Ok(());
        }
        let Some(size) = header_size(&h[124..136]) else {
            self.done = true;
            return Ok(());
        };
        let kind = match h[156] {
            b'L' => Some("GNU long name"),
            b'K' => Some("GNU long link name"),
            b'x' => Some("PAX extended header"),
            b'g' => Some("PAX global header"),
            _ => None,
        };
        if let Some(kind) = kind {
            if size > MAX_EXTENSION_BYTES {
                return Err(format!(
                    "the tarball has a {kind} of {size} bytes; extension headers are limited to {MAX_EXTENSION_BYTES} bytes"
                ));
            }
            if h[156] == b'x' {
                self.pax = Some(Vec::new());
            }
            self.remaining = padded(size);
            return Ok(());
        }
        let size = self.pending_size.take().unwrap_or(size);
        if h[156] == b'S' && h[482] != 0 {
            self.sparse = Some(size);
        } else {
            self.remaining = padded(size);
        }
        Ok(())
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(why) = self.track(&buf[..n]) {
            *self.refused.borrow_mut() = Some(why.clone());
            return Err(io::Error::other(why));
        }
        Ok(n)
    }
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

/// A tar numeric field: octal text, or base-256 when the high bit is set.
pub(super) fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] != 0x80 {
            return None; // negative, or too large for us
        }
        return field[1..]
            .iter()
            .try_fold(0u64, |v, b| v.checked_mul(256).map(|v| v + u64::from(*b)));
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The `size` record of PAX extended header data (`"<len> size=<n>\n"`).
pub(super) fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    let mut size = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > rest.len() {
            return size;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"size=") {
            size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
        }
        rest = &rest[len..];
    }
    size
}
