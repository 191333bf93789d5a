//! The tar header guard, readers under tar-rs: [`CapReader`] caps the
//! decoded size, and [`TarGuard`] is a `Read` adapter that follows the tar stream header by
//! header, parsing every field exactly as tar-rs 0.4.46 does, and stops the
//! stream at the header block of any entry tar-rs would otherwise build or
//! buffer whole in memory.
//!
//! tar-rs (with `Archive::new`'s defaults: `entries()`, not raw, zero
//! blocks end the archive, not seekable) reads whole into memory the data
//! of GNU long names (`L`) and long links (`K`) and of PAX headers (`x`
//! when it applies them; `x` and `g` again when `Entry::pax_extensions` is
//! asked), and for a GNU sparse file (`S`) it reads the whole `isextended`
//! chain of extension blocks and builds a block list from it before it
//! returns the entry. So the guard:
//! - refuses an `L`, `K`, `x` or `g` entry whose size is over
//!   [`MAX_EXTENSION_BYTES`], whatever its magic;
//! - refuses every `S` entry outright, from its first header block;
//! - parses sizes as tar-rs does (octal text cut at the first NUL and
//!   trimmed of whitespace; base-256 whenever the first byte has its high
//!   bit set, from the last 8 bytes of the field), applies a PAX `size`
//!   record to the next entry that is not an extension header exactly as
//!   tar-rs's record parser finds it (NUL padding included), and keeps long
//!   names, long links and PAX data pending across extension headers as
//!   tar-rs does;
//! - stops the stream (an `InvalidData` error, no refusal) at a header
//!   tar-rs would reject itself (bad checksum, unparsable size, a second
//!   long name or PAX header for one member, size overflow), so a header
//!   it cannot follow can never be passed through.
//!
//! It refuses on the read that completes the header block: tar-rs reads a
//! header whole before it reads any of the entry's data, so nothing of a
//! refused entry is ever buffered. Past the end-of-archive block it only
//! passes bytes through. Errors quote at most [`MAX_QUOTED_CHARS`]
//! characters of a name, with control characters replaced.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;

use crate::error::UpdaterError;

/// Largest GNU long name / long link or PAX header data accepted (tar-rs
/// reads these whole into memory). Far above any path we accept.
pub(crate) const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
/// Most characters of a name quoted in an error.
pub(crate) const MAX_QUOTED_CHARS: usize = 80;
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

/// Why the guard stopped the stream. Turn it into the crate's error with
/// `UpdaterError::from` (a cap for oversized headers, an unsafe entry for a
/// sparse file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// An extension header larger than [`MAX_EXTENSION_BYTES`].
    Oversized {
        /// What it is: "GNU long name", "PAX extended header", …
        kind: &'static str,
        /// Its size as tar-rs would read it.
        size: u64,
    },
    /// A GNU sparse file (`S`), refused from its header block.
    Sparse {
        /// The entry's path as tar-rs would report it, quoted (capped,
        /// sanitised).
        path: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Oversized { kind, size } => write!(
                f,
                "the tarball has a {kind} of {size} bytes; extension headers are limited to {MAX_EXTENSION_BYTES} bytes"
            ),
            Refusal::Sparse { path } => write!(f, "unsafe entry {path:?}: GNU sparse file"),
        }
    }
}

impl From<Refusal> for UpdaterError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Oversized { .. } => UpdaterError::Cap(r.to_string()),
            Refusal::Sparse { path } => UpdaterError::unsafe_entry(path, "GNU sparse file"),
        }
    }
}

/// Where a [`TarGuard`] leaves its refusal, readable after tar-rs has
/// turned the failed read into its own error.
#[derive(Clone, Debug, Default)]
pub(crate) struct Verdict(Rc<RefCell<Option<Refusal>>>);

impl Verdict {
    /// The refusal, once the guard has refused.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        self.0.borrow().clone()
    }
}

/// What the data bytes of the current entry are kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Discard,
    LongName,
    Pax,
}

#[derive(Debug)]
enum State {
    /// Following headers and data.
    Headers,
    /// Past the end-of-archive block: bytes pass through.
    End,
    /// Stopped: every further read fails with this message.
    Failed(String),
}

/// Why tracking stopped.
enum Stop {
    Refused(Refusal),
    Malformed(String),
}

/// The guard: wrap the decoded tar stream in it and hand it to
/// `tar::Archive::new`.
pub(crate) struct TarGuard<R> {
    inner: R,
    block: [u8; BLOCK],
    filled: usize,
    /// Offset in the tar stream of the next byte (tar-rs's position).
    pos: u64,
    /// Data bytes of the current entry still to come, then its padding.
    data_left: u64,
    pad_left: u64,
    sink: Sink,
    /// Pending for the next member, as tar-rs keeps them: a GNU long name
    /// (its data), a GNU long link, PAX extended header data.
    long_name: Option<Vec<u8>>,
    long_link: bool,
    pax: Option<Vec<u8>>,
    state: State,
    verdict: Verdict,
    /// Header offset and size of every entry tar-rs would hand out.
    #[cfg(test)]
    handed_out: Vec<(u64, u64)>,
}

impl<R> TarGuard<R> {
    /// Guard the tar stream `inner`, read from its start.
    pub(crate) fn new(inner: R) -> Self {
        TarGuard {
            inner,
            block: [0; BLOCK],
            filled: 0,
            pos: 0,
            data_left: 0,
            pad_left: 0,
            sink: Sink::Discard,
            long_name: None,
            long_link: false,
            pax: None,
            state: State::Headers,
            verdict: Verdict::default(),
            #[cfg(test)]
            handed_out: Vec::new(),
        }
    }

    /// A handle on the guard's refusal, to keep before the guard moves
    /// into the archive.
    pub(crate) fn verdict(&self) -> Verdict {
        self.verdict.clone()
    }

    /// The guarded reader.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    fn track(&mut self, mut bytes: &[u8]) -> Result<(), Stop> {
        while !bytes.is_empty() && matches!(self.state, State::Headers) {
            if self.data_left > 0 {
                let k = take(self.data_left, bytes.len());
                let data = &bytes[..k];
                match self.sink {
                    Sink::Discard => {}
                    // Bounded: the entry is at most MAX_EXTENSION_BYTES.
                    Sink::LongName => self.long_name.get_or_insert_default().extend(data),
                    Sink::Pax => self.pax.get_or_insert_default().extend(data),
                }
                self.data_left -= k as u64;
                self.advance(k, &mut bytes);
            } else if self.pad_left > 0 {
                let k = take(self.pad_left, bytes.len());
                self.pad_left -= k as u64;
                self.advance(k, &mut bytes);
            } else {
                let k = (BLOCK - self.filled).min(bytes.len());
                self.block[self.filled..self.filled + k].copy_from_slice(&bytes[..k]);
                self.filled += k;
                self.advance(k, &mut bytes);
                if self.filled == BLOCK {
                    self.filled = 0;
                    self.on_header()?;
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, k: usize, bytes: &mut &[u8]) {
        self.pos += k as u64;
        *bytes = &bytes[k..];
    }

    /// A whole header block has arrived (`self.pos` is just past it).
    fn on_header(&mut self) -> Result<(), Stop> {
        let h = &self.block;
        if h.iter().all(|b| *b == 0) {
            // tar-rs ends the archive here (or fails, with a member pending).
            self.state = State::End;
            return Ok(());
        }
        let sum = h[..148]
            .iter()
            .chain(&h[156..])
            .fold(0u32, |a, b| a + u32::from(*b))
            + 8 * 32;
        let cksum = octal(&h[148..156]).map_err(|e| {
            Stop::Malformed(format!("{e} when getting cksum for {}", self.quoted_path()))
        })?;
        // tar-rs compares the checksum field cut to 32 bits.
        if sum != cksum as u32 {
            return Err(Stop::Malformed("archive header checksum mismatch".into()));
        }
        let typeflag = h[156];
        let recognized = is_ustar(h) || is_gnu(h);
        let extension = match typeflag {
            b'L' => Some("GNU long name"),
            b'K' => Some("GNU long link name"),
            b'x' => Some("PAX extended header"),
            b'g' => Some("PAX global header"),
            _ => None,
        };
        let mut size = num_field(&h[124..136]).map_err(|e| {
            Stop::Malformed(format!("{e} when getting size for {}", self.quoted_path()))
        })?;
        if extension.is_none()
            && let Some(pax_size) = self.pax.as_deref().and_then(pax_size)
        {
            size = pax_size;
        }
        let overflow = || Stop::Malformed("size overflow".into());
        let padded = size.checked_add(BLOCK as u64 - 1).ok_or_else(overflow)? & !(BLOCK as u64 - 1);
        self.pos.checked_add(padded).ok_or_else(overflow)?;
        if typeflag == b'S' {
            return Err(Stop::Refused(Refusal::Sparse {
                path: self.quoted_path(),
            }));
        }
        if let Some(kind) = extension
            && size > MAX_EXTENSION_BYTES
        {
            return Err(Stop::Refused(Refusal::Oversized { kind, size }));
        }
        self.sink = Sink::Discard;
        match typeflag {
            b'L' if recognized => {
                if self.long_name.is_some() {
                    return Err(Stop::Malformed(
                        "two long name entries describing the same member".into(),
                    ));
                }
                self.long_name = Some(Vec::new());
                self.sink = Sink::LongName;
            }
            b'K' if recognized => {
                if self.long_link {
                    return Err(Stop::Malformed(
                        "two long name entries describing the same member".into(),
                    ));
                }
                self.long_link = true;
            }
            b'x' if recognized => {
                if self.pax.is_some() {
                    return Err(Stop::Malformed(
                        "two pax extensions entries describing the same member".into(),
                    ));
                }
                self.pax = Some(Vec::new());
                self.sink = Sink::Pax;
            }
            _ => {
                // tar-rs hands this entry out with what was pending.
                #[cfg(test)]
                self.handed_out.push((self.pos - BLOCK as u64, size));
                self.long_name = None;
                self.long_link = false;
                self.pax = None;
            }
        }
        self.data_left = size;
        self.pad_left = padded - size;
        Ok(())
    }

    /// The path of the member in `self.block`, as tar-rs's `path_bytes`
    /// finds it (long name, else PAX `path`, else the header), quoted.
    fn quoted_path(&self) -> String {
        if let Some(name) = &self.long_name {
            return quote(name.strip_suffix(b"\0").unwrap_or(name));
        }
        if let Some(path) = self.pax.as_deref().and_then(|p| pax_value(p, b"path")) {
            return quote(path);
        }
        let h = &self.block;
        let name = cut_at_nul(&h[..100]);
        let prefix = cut_at_nul(&h[345..500]);
        if is_ustar(h) && !prefix.is_empty() {
            quote(&[prefix, b"/", name].concat())
        } else {
            quote(name)
        }
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let State::Failed(why) = &self.state {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        let n = self.inner.read(buf)?;
        match self.track(&buf[..n]) {
            Ok(()) => Ok(n),
            Err(stop) => {
                let why = match stop {
                    Stop::Refused(refusal) => {
                        let why = refusal.to_string();
                        *self.verdict.0.borrow_mut() = Some(refusal);
                        why
                    }
                    Stop::Malformed(why) => why,
                };
                self.state = State::Failed(why.clone());
                Err(io::Error::new(io::ErrorKind::InvalidData, why))
            }
        }
    }
}

/// `left` bounded by `len`.
fn take(left: u64, len: usize) -> usize {
    usize::try_from(left).map_or(len, |l| l.min(len))
}

fn cut_at_nul(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|b| *b == 0)
        .map_or(field, |i| &field[..i])
}

fn is_ustar(h: &[u8; BLOCK]) -> bool {
    &h[257..263] == b"ustar\0" && &h[263..265] == b"00"
}

fn is_gnu(h: &[u8; BLOCK]) -> bool {
    &h[257..263] == b"ustar " && &h[263..265] == b" \0"
}

/// A numeric header field as tar-rs reads it: base-256 when the first
/// byte's high bit is set (whatever the rest of that byte), else octal.
fn num_field(field: &[u8]) -> Result<u64, String> {
    if field[0] & 0x80 == 0 {
        return octal(field);
    }
    // An 8-byte field: the first byte without its flag, then the other 7.
    // A longer one: only its last 8 bytes (the first ones are ignored).
    let (first, rest) = if field.len() == 8 {
        (u64::from(field[0] ^ 0x80), &field[1..])
    } else {
        (0, &field[field.len().saturating_sub(8)..])
    };
    Ok(rest.iter().fold(first, |v, b| v << 8 | u64::from(*b)))
}

/// Octal text as tar-rs reads it: cut at the first NUL, trimmed of
/// (Unicode) whitespace, then `u64::from_str_radix(_, 8)` (a leading `+`
/// is accepted).
fn octal(field: &[u8]) -> Result<u64, String> {
    let text = cut_at_nul(field);
    let text = std::str::from_utf8(text)
        .map_err(|_| format!("numeric field did not have utf-8 text: {}", quote(text)))?;
    u64::from_str_radix(text.trim(), 8)
        .map_err(|_| format!("numeric field was not a number: {}", quote(text.as_bytes())))
}

/// PAX records as tar-rs iterates them: lines split at `\n`, stopping at
/// the first empty one; `Err` for a malformed record (a length that is not
/// the line's plus one, no space, no `=`).
fn pax_records(data: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), ()>> {
    data.split(|b| *b == b'\n')
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let space = line.iter().position(|b| *b == b' ').ok_or(())?;
            let len: usize = std::str::from_utf8(&line[..space])
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if line.len() + 1 != len {
                return Err(());
            }
            let record = &line[space + 1..];
            let eq = record.iter().position(|b| *b == b'=').ok_or(())?;
            Ok((&record[..eq], &record[eq + 1..]))
        })
}

/// The PAX `size` as tar-rs applies it: the first `size` record, read up
/// to the first malformed record; `None` when it does not parse.
fn pax_size(data: &[u8]) -> Option<u64> {
    for record in pax_records(data) {
        let (key, value) = record.ok()?;
        if key == b"size" {
            return std::str::from_utf8(value).ok()?.parse().ok();
        }
    }
    None
}

/// The first well-formed record with `key` (tar-rs's `path`/`linkpath`
/// lookup skips malformed records).
fn pax_value<'a>(data: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    pax_records(data)
        .filter_map(Result::ok)
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A name from a tarball made fit to quote in an answer or a log line: at
/// most [`MAX_QUOTED_CHARS`] characters, invalid UTF-8 and control
/// characters replaced, and the full length said when it was cut.
pub(crate) fn quote(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.chars().nth(MAX_QUOTED_CHARS).is_some() {
        out.push_str(&format!("… ({} bytes)", raw.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magic of a crafted header.
    #[derive(Clone, Copy)]
    enum Magic {
        Ustar,
        Gnu,
        Old,
    }

    /// A header block with `size_field` as its size and a valid checksum.
    fn block(name: &[u8], typeflag: u8, size_field: &[u8; 12], magic: Magic) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(size_field);
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        match magic {
            Magic::Ustar => h[257..265].copy_from_slice(b"ustar\x0000"),
            Magic::Gnu => h[257..265].copy_from_slice(b"ustar  \0"),
            Magic::Old => {}
        }
        seal(&mut h);
        h
    }

    /// Recompute the checksum of `h`.
    fn seal(h: &mut [u8; BLOCK]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn octal12(n: u64) -> [u8; 12] {
        let mut f = [0u8; 12];
        f.copy_from_slice(format!("{n:011o}\0").as_bytes());
        f
    }

    /// An entry: a header with an octal size, its data, padding.
    fn entry(name: &[u8], typeflag: u8, data: &[u8]) -> Vec<u8> {
        let mut out = block(name, typeflag, &octal12(data.len() as u64), Magic::Ustar).to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    fn end(mut tar: Vec<u8>) -> Vec<u8> {
        tar.resize(tar.len() + 2 * BLOCK, 0);
        tar
    }

    /// What tar-rs hands out of `tar` (header offset and size of each
    /// entry), and whether it ended without an error.
    fn tar_rs_view(tar: &[u8]) -> (Vec<(u64, u64)>, bool) {
        let mut archive = tar::Archive::new(tar);
        let mut seen = Vec::new();
        let Ok(entries) = archive.entries() else {
            return (seen, false);
        };
        for e in entries {
            match e {
                Ok(e) => seen.push((e.raw_header_position(), e.size())),
                Err(_) => return (seen, false),
            }
        }
        (seen, true)
    }

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Passed,
        Refused(Refusal),
        Malformed(String),
    }

    /// What the guard alone makes of `tar`, read through it in odd-sized
    /// reads.
    fn guard_view(tar: &[u8]) -> (Vec<(u64, u64)>, Outcome) {
        let mut g = TarGuard::new(tar);
        let verdict = g.verdict();
        let mut buf = [0u8; 333];
        let outcome = loop {
            match g.read(&mut buf) {
                Ok(0) => break Outcome::Passed,
                Ok(_) => {}
                Err(e) => match verdict.refusal() {
                    Some(r) => break Outcome::Refused(r),
                    None => break Outcome::Malformed(e.to_string()),
                },
            }
        };
        (g.handed_out, outcome)
    }

    /// The guard follows `tar` exactly as tar-rs does, and refuses nothing.
    fn same_view(tar: &[u8]) -> Vec<(u64, u64)> {
        let (theirs, _) = tar_rs_view(tar);
        let (ours, outcome) = guard_view(tar);
        assert_eq!(outcome, Outcome::Passed);
        assert_eq!(ours, theirs);
        ours
    }

    /// Drive tar-rs over the guard; the guard's refusal, if any.
    fn under_tar_rs(tar: &[u8]) -> (Option<Refusal>, u64) {
        let read = Rc::new(Cell::new(0u64));
        let counted = Counting {
            inner: tar,
            read: read.clone(),
        };
        let guard = TarGuard::new(counted);
        let verdict = guard.verdict();
        let mut archive = tar::Archive::new(guard);
        if let Ok(entries) = archive.entries() {
            for e in entries {
                match e {
                    Ok(mut e) => {
                        if e.pax_extensions().is_err() || io::copy(&mut e, &mut io::sink()).is_err()
                        {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        (verdict.refusal(), read.get())
    }

    struct Counting<R> {
        inner: R,
        read: Rc<Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    /// xorshift64*, so the generated cases are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    fn field<const N: usize>(bytes: &[u8]) -> [u8; N] {
        let mut f = [0u8; N];
        f[..bytes.len()].copy_from_slice(bytes);
        f
    }

    /// Size fields crafted around every rule of tar-rs's parser.
    fn crafted_sizes() -> Vec<[u8; 12]> {
        let mut out: Vec<[u8; 12]> = [
            &b"00000001000\0"[..],
            b"00000001000 ",
            b"1000",
            b"   1000    \0",
            b"\t1000\n\0",
            b"+1000\0",
            b"1000 7\0",
            b"2000000000\x007",
            b"0001\0\x01\x02\x03",
            b"\0" as &[u8],
            b"            ",
            b"8\0",
            b"-1\0",
            b"77777777777\0",
            b"777777777777",
            b"\xc3\xa9\0",
            b"\x0b1000\x0c\0",
        ]
        .iter()
        .map(|b| field(b))
        .collect();
        for first in [0x80u8, 0x81, 0xa5, 0xc0, 0xff] {
            let mut f = [0u8; 12];
            f[0] = first;
            f[1..4].copy_from_slice(&[0xff, 0x12, 0x34]);
            f[8..].copy_from_slice(&[0x01, 0x00, 0x00, 0x00]);
            out.push(f);
            let mut f = [0xffu8; 12];
            f[0] = first;
            out.push(f);
        }
        out
    }

    #[test]
    fn size_fields_parse_exactly_as_tar_rs_parses_them() {
        // The old guard's asserts, still true.
        assert_eq!(num_field(b"00000000012\0"), Ok(10));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 7;
        assert_eq!(num_field(&b256), Ok(7));
        let mut fields = crafted_sizes();
        let mut rng = Rng(0x5eed);
        let alphabet = b"0123478 \t\n\0+-x\x80\xff";
        for _ in 0..20_000 {
            let mut f = [0u8; 12];
            for b in &mut f {
                *b = *rng.pick(alphabet);
            }
            if rng.below(4) == 0 {
                f[0] = 0x80 | rng.next() as u8;
            }
            fields.push(f);
        }
        for f in &fields {
            let mut h = tar::Header::new_old();
            h.as_mut_bytes()[124..136].copy_from_slice(f);
            let theirs = h.entry_size().ok();
            assert_eq!(num_field(f).ok(), theirs, "size field {f:?}");
            let cksum: [u8; 8] = field(&f[4..]);
            h.as_mut_bytes()[148..156].copy_from_slice(&cksum);
            let theirs = h.cksum().ok();
            assert_eq!(
                octal(&cksum).ok().map(|v| v as u32),
                theirs,
                "cksum {cksum:?}"
            );
        }
        // The bypasses of issue 10, spelled out.
        assert_eq!(num_field(b"2000000000\x007"), Ok(256 << 20));
        let mut b256 = [0u8; 12];
        b256[0] = 0xff;
        b256[8] = 0x01;
        assert_eq!(num_field(&b256), Ok(1 << 24));
        b256[0] = 0x80;
        b256[11] = 7;
        assert_eq!(num_field(&b256), Ok((1 << 24) + 7));
        assert_eq!(num_field(b"00000000012\0"), Ok(10));
    }

    /// Pieces of PAX data around every rule of tar-rs's record parser.
    const PAX_PIECES: &[&[u8]] = &[
        b"13 size=1024\n",
        b"12 size=1024",
        b"11 size=+77\n",
        b"12 size= 777\n",
        b"12 SIZE=4096\n",
        b"10 size=5\n",
        b"13 size=xyzw\n",
        b"16 path=a/b/c/d\n",
        b"9 a=bcde\n",
        b"5 x=1\n",
        b"nonsense\n",
        b"\n",
        b"\0\0\0\0\0\0\0\0",
        b"\0",
        b"30 GNU.sparse.name=whatever\n",
        b"0013 size=2048\n",
        b"12 size=999\x00\n",
    ];

    /// A PAX header with `data`, then a file whose header says 3 bytes.
    fn pax_then_file(data: &[u8]) -> Vec<u8> {
        let mut tar = entry(b"pax", b'x', data);
        tar.extend(block(b"f", b'0', &octal12(3), Magic::Ustar));
        // Zeros: wherever the file's data ends, the archive ends there.
        tar.extend(vec![0u8; 8 * BLOCK]);
        end(tar)
    }

    #[test]
    fn pax_sizes_apply_exactly_as_tar_rs_applies_them() {
        // With the usual NUL padding inside the header's size, the record
        // still counts (the old guard gave up on it).
        let mut padded = b"13 size=1024\n".to_vec();
        padded.resize(BLOCK, 0);
        let seen = same_view(&pax_then_file(&padded));
        assert_eq!(seen, vec![(1024, 1024)]);
        for piece in PAX_PIECES {
            same_view(&pax_then_file(piece));
        }
        let mut rng = Rng(0xfeed);
        for _ in 0..3000 {
            let mut data = Vec::new();
            for _ in 0..rng.below(5) {
                data.extend_from_slice(rng.pick::<&[u8]>(PAX_PIECES));
            }
            same_view(&pax_then_file(&data));
        }
    }

    /// One random member (or extension header) for the differential test.
    fn random_member(rng: &mut Rng, tar: &mut Vec<u8>) {
        let typeflag = *rng.pick(b"0005xxLLKKg27\0");
        let magic = *rng.pick(&[Magic::Ustar, Magic::Ustar, Magic::Gnu, Magic::Old]);
        let data: Vec<u8> = match typeflag {
            b'x' | b'g' => (0..rng.below(4))
                .flat_map(|_| rng.pick(PAX_PIECES).to_vec())
                .collect(),
            _ => vec![b'd'; rng.below(1500) as usize],
        };
        let len = data.len() as u64;
        let size_field = match rng.below(6) {
            0 => field(format!("{len:o}\0").as_bytes()),
            1 => field(format!(" {len:o} ").as_bytes()),
            2 => field(format!("{len:o}\0{}", rng.below(8)).as_bytes()),
            3 => {
                let mut f = [0u8; 12];
                f[0] = 0x80 | rng.next() as u8;
                f[4..].copy_from_slice(&len.to_be_bytes());
                f
            }
            4 => field(format!("{:o}", rng.below(3000)).as_bytes()),
            _ => octal12(len),
        };
        let mut h = block(b"m", typeflag, &size_field, magic);
        if rng.below(40) == 0 {
            h[148] ^= 1; // a bad checksum now and then
        }
        tar.extend_from_slice(&h);
        tar.extend_from_slice(&data);
        tar.resize(tar.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    #[test]
    fn random_archives_are_followed_exactly_as_tar_rs_follows_them() {
        let mut rng = Rng(0xdecade);
        let mut malformed = 0;
        for _ in 0..3000 {
            let mut tar = Vec::new();
            for _ in 0..1 + rng.below(8) {
                random_member(&mut rng, &mut tar);
            }
            let tar = end(tar);
            let (theirs, ended_ok) = tar_rs_view(&tar);
            let (ours, outcome) = guard_view(&tar);
            assert_eq!(ours, theirs, "{outcome:?}");
            match outcome {
                Outcome::Passed => {}
                Outcome::Malformed(why) => {
                    assert!(!ended_ok, "the guard stopped ({why}) where tar-rs went on");
                    malformed += 1;
                }
                Outcome::Refused(r) => panic!("nothing here is over a cap: {r}"),
            }
        }
        assert!(malformed > 0, "the generator never made a bad header");
    }

    #[test]
    fn archives_tar_rs_writes_pass_untouched() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file", "d".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        b.append_pax_extensions([("path", &b"pax/named"[..]), ("comment", &[b'c'; 3000][..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(7);
        h.set_mode(0o644);
        b.append_data(&mut h, "short", &b"content"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "l", "x".repeat(200)).unwrap();
        let tar = b.into_inner().unwrap();
        assert_eq!(same_view(&tar).len(), 3);
        assert_eq!(under_tar_rs(&tar).0, None);
    }

    fn oversized(kind: &'static str, size: u64) -> Option<Refusal> {
        Some(Refusal::Oversized { kind, size })
    }

    #[test]
    fn base_256_sizes_are_read_whatever_their_first_byte() {
        for first in [0x80u8, 0x81, 0xc0, 0xfe, 0xff] {
            let mut f = [0u8; 12];
            f[0] = first;
            f[1..4].copy_from_slice(&[0xff, 0xff, 0xff]); // ignored by tar-rs
            f[8] = 0x01; // 16 MiB
            let tar = end(block(b"././@LongLink", b'L', &f, Magic::Gnu).to_vec());
            let (refused, read) = under_tar_rs(&tar);
            assert_eq!(refused, oversized("GNU long name", 1 << 24), "{first:#x}");
            assert_eq!(read, BLOCK as u64, "refused from its header block");
        }
    }

    #[test]
    fn octal_sizes_with_an_embedded_nul_are_read_up_to_it() {
        // tar-rs reads "2000000000" (256 MiB) and ignores the "7".
        let tar = end(block(b"././@LongLink", b'L', b"2000000000\x007", Magic::Gnu).to_vec());
        assert_eq!(under_tar_rs(&tar).0, oversized("GNU long name", 256 << 20));
        let tar = end(block(b"p", b'x', b" 400000 \0\x01\x02\x03", Magic::Ustar).to_vec());
        assert_eq!(
            under_tar_rs(&tar).0,
            oversized("PAX extended header", 0o400000)
        );
    }

    /// A PAX size with NUL padding, then a file whose data starts with a
    /// fake header covering the real entry that follows it, `hidden`.
    fn fake_header_hides(hidden: Vec<u8>) -> Vec<u8> {
        let mut pax = b"13 size=1024\n".to_vec();
        pax.resize(BLOCK, 0);
        let mut tar = entry(b"pax", b'x', &pax);
        tar.extend(block(b"f", b'0', &octal12(0), Magic::Ustar));
        let cover = BLOCK as u64 + hidden.len() as u64;
        tar.extend(block(b"fake", b'0', &octal12(cover), Magic::Ustar));
        tar.extend([0u8; BLOCK]);
        tar.extend(hidden);
        tar.extend(entry(b"after", b'0', b"x"));
        end(tar)
    }

    #[test]
    fn a_fake_header_in_file_data_cannot_hide_a_long_name() {
        let hidden = entry(b"././@LongLink", b'L', &vec![b'n'; 100_000]);
        let (refused, _) = under_tar_rs(&fake_header_hides(hidden));
        assert_eq!(refused, oversized("GNU long name", 100_000));
        // The same layout with a modest long name: tar-rs and the guard
        // agree that the fake header is data.
        let mut hidden = entry(b"././@LongLink", b'L', b"a/long/name\0");
        hidden.extend(entry(b"ignored", b'0', b"x"));
        let seen = same_view(&fake_header_hides(hidden));
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0], (1024, 1024));
    }

    /// A GNU sparse header with `isextended`, then `chain` extension blocks
    /// that each say another follows (tar-rs reads them all before it
    /// returns the entry).
    fn sparse_chain(name: &[u8], chain: usize) -> Vec<u8> {
        let mut h = block(name, b'S', &octal12(0), Magic::Gnu);
        h[482] = 1;
        h[483..495].copy_from_slice(b"00000000000\0");
        seal(&mut h);
        let mut tar = h.to_vec();
        let mut ext = [0u8; BLOCK];
        for i in 0..21 {
            ext[i * 24..i * 24 + 12].copy_from_slice(b"00000000000\0");
            ext[i * 24 + 12..i * 24 + 24].copy_from_slice(b"00000000000\0");
        }
        ext[504] = 1;
        for _ in 0..chain {
            tar.extend_from_slice(&ext);
        }
        end(tar)
    }

    #[test]
    fn gnu_sparse_files_are_refused_from_their_first_header_block() {
        let (refused, read) = under_tar_rs(&sparse_chain(b"sparse", 10_000));
        assert_eq!(
            refused,
            Some(Refusal::Sparse {
                path: "sparse".into()
            })
        );
        assert_eq!(read, BLOCK as u64, "no extension block was read");
        // Without the chain, and named by a long name that is not quoted
        // whole.
        let mut name = vec![b'n'; 10_000];
        name[3] = b'\n';
        name.push(0);
        let mut tar = entry(b"././@LongLink", b'L', &name);
        tar.extend(sparse_chain(b"short", 0));
        let Some(Refusal::Sparse { path }) = under_tar_rs(&tar).0 else {
            panic!("not refused as sparse");
        };
        assert!(path.starts_with("nnn\u{fffd}nnn"), "{path}");
        assert!(path.ends_with("… (10000 bytes)"), "{path}");
        assert_eq!(
            path.chars().count(),
            MAX_QUOTED_CHARS + "… (10000 bytes)".len() - 2
        );
        let e = UpdaterError::from(Refusal::Sparse { path: path.clone() });
        assert!(matches!(e, UpdaterError::Unsafe { .. }), "{e:?}");
    }

    #[test]
    fn every_extension_type_is_capped_whatever_its_magic() {
        let big = vec![b'e'; MAX_EXTENSION_BYTES as usize + 1];
        let n = big.len() as u64;
        for (typeflag, kind) in [
            (b'L', "GNU long name"),
            (b'K', "GNU long link name"),
            (b'x', "PAX extended header"),
            (b'g', "PAX global header"),
        ] {
            for magic in [Magic::Ustar, Magic::Gnu, Magic::Old] {
                let mut tar = block(b"ext", typeflag, &octal12(n), magic).to_vec();
                tar.extend(&big);
                let (refused, read) = under_tar_rs(&end(tar));
                assert_eq!(refused, oversized(kind, n));
                assert_eq!(read, BLOCK as u64);
            }
        }
        // At the cap exactly: accepted.
        let mut pax = b"16 path=a/b/c/d\n".to_vec();
        pax.resize(MAX_EXTENSION_BYTES as usize, b'\n');
        let mut tar = entry(b"pax", b'x', &pax);
        tar.extend(entry(b"f", b'0', b"x"));
        assert_eq!(same_view(&end(tar)).len(), 1);
    }

    #[test]
    fn headers_tar_rs_rejects_stop_the_stream() {
        let mut h = block(b"f", b'0', &octal12(1), Magic::Ustar);
        h[0] = b'g'; // checksum now wrong
        let (_, outcome) = guard_view(&end(h.to_vec()));
        assert_eq!(
            outcome,
            Outcome::Malformed("archive header checksum mismatch".into())
        );
        let h = block(b"f\x07", b'0', &field(b"12x4"), Magic::Ustar);
        let (_, outcome) = guard_view(&end(h.to_vec()));
        let Outcome::Malformed(why) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            why,
            "numeric field was not a number: 12x4 when getting size for f\u{fffd}"
        );
        let mut tar = entry(b"././@LongLink", b'L', b"a\0");
        tar.extend(entry(b"././@LongLink", b'L', b"b\0"));
        let (_, outcome) = guard_view(&end(tar.clone()));
        assert!(matches!(outcome, Outcome::Malformed(_)), "{outcome:?}");
        assert!(!tar_rs_view(&end(tar)).1);
        // Sticky: a later read fails too, without reading on.
        let mut g = TarGuard::new(&h[..]);
        let mut buf = [0u8; BLOCK];
        assert!(g.read(&mut buf).is_err());
        assert!(g.read(&mut buf).is_err());
    }

    #[test]
    fn quotes_are_capped_and_sanitised() {
        assert_eq!(quote(b"bin/run"), "bin/run");
        assert_eq!(quote(b"a\x1b[31mb\xff"), "a\u{fffd}[31mb\u{fffd}");
        let q = quote(&[b'x'; 1 << 20]);
        assert!(q.len() < 120, "{q}");
        assert!(q.ends_with("… (1048576 bytes)"), "{q}");
    }
}
