//! Finds private keys inside files the packer is about to ship, by content:
//! PEM private-key blocks anywhere in a file (also inside JSON or source
//! strings, where line breaks are written `\n`), and DER private keys by
//! their ASN.1 structure, whatever the file is called.
//!
//! Invariants:
//! - The whole file is read, in [`CHUNK`]-byte reads through one window of
//!   at most [`CHUNK`] + [`BLOCK_MAX`] bytes: memory is constant whatever
//!   the file's size, and a block split across two reads is still found.
//! - A file over [`SCAN_CEILING`] is refused ([`io::ErrorKind::FileTooLarge`],
//!   source [`TooLargeToScan`]), never shipped unscanned and never silently
//!   left out: the packer stops with a message that names the file, and the
//!   operator excludes it or names it in `[release] include` (an included
//!   file is not scanned). Leaving it out instead would change what is
//!   deployed without anyone deciding it; the ceiling equals the updater's
//!   default `--max-unpacked-bytes`, so a default fleet could not take such a
//!   file anyway, and it bounds the time one file can cost.
//! - Text that merely mentions a marker is not a key: a PEM block counts
//!   only with a base64 body of at least [`MIN_BODY`] characters (starting
//!   the way a DER or OpenSSH key must) and an END line with the same label,
//!   or with an RFC 1421 `Proc-Type:`/`DEK-Info:` header right after BEGIN
//!   (old encrypted keys). In a `*.pem` file any `PRIVATE KEY` text counts,
//!   as before.
//! - A DER key is the whole file: one SEQUENCE whose length is exactly the
//!   file's (at most [`DER_MAX`] bytes), shaped like PKCS#8 (plain or
//!   encrypted), SEC1, PKCS#1, OpenSSL DSA or PKCS#12. Random or compressed
//!   data practically never is.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek};

use memchr::memmem;

/// Bytes asked of the reader at a time.
pub(crate) const CHUNK: usize = 64 * 1024;
/// The longest PEM block considered, BEGIN to END (a 16384-bit RSA key is
/// about 13 KiB of PEM, an armored PGP key with subkeys well under this).
pub(crate) const BLOCK_MAX: usize = 64 * 1024;
/// The largest file the scanner reads; see the module invariants.
pub(crate) const SCAN_CEILING: u64 = 4 << 30;
/// The largest file looked at as a DER key.
pub(crate) const DER_MAX: usize = 64 * 1024;
/// Base64 characters a PEM body needs to count as a key.
pub(crate) const MIN_BODY: usize = 16;

const BEGIN: &[u8] = b"-----BEGIN ";
const END: &[u8] = b"-----END ";
const DASHES: &[u8] = b"-----";
const PEM_FILE_MARKER: &[u8] = b"PRIVATE KEY";
/// Longest PEM label accepted (`SSH2 ENCRYPTED PRIVATE KEY` is 26).
const LABEL_MAX: usize = 64;
/// Header lines (`Proc-Type:`, `Comment:` …) allowed before a PEM body.
const HEADERS_MAX: usize = 8;

/// A private key found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyFinding {
    pub(crate) kind: KeyKind,
    /// Where it starts, in bytes from the start of the file.
    pub(crate) offset: u64,
}

/// What kind of private key was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// A PEM block; `escaped` when its line breaks were written `\n`
    /// (a JSON or source string). The label is `[A-Z0-9 ]`, at most 64.
    Pem { label: String, escaped: bool },
    /// An old-style encrypted PEM key (`Proc-Type:`/`DEK-Info:` header).
    LegacyEncryptedPem { label: String },
    /// `PRIVATE KEY` text in a `*.pem` file.
    PemFileMarker,
    /// A DER-encoded key: the whole file.
    Der(DerKey),
}

/// The ASN.1 structures recognised as DER private keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DerKey {
    /// PKCS#8 `PrivateKeyInfo` / RFC 5958 `OneAsymmetricKey`.
    Pkcs8,
    /// PKCS#8 `EncryptedPrivateKeyInfo` (PBES1/PBES2/PKCS#12 PBE).
    EncryptedPkcs8,
    /// SEC1 `ECPrivateKey`.
    Sec1,
    /// PKCS#1 `RSAPrivateKey`.
    Pkcs1,
    /// OpenSSL's traditional DSA private key.
    Dsa,
    /// A PKCS#12 `PFX` key store.
    Pkcs12,
}

impl fmt::Display for KeyFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            KeyKind::Pem { label, escaped } => {
                let how = if *escaped {
                    " (escaped, in a string)"
                } else {
                    ""
                };
                write!(f, "PEM {label} block{how}")?;
            }
            KeyKind::LegacyEncryptedPem { label } => write!(f, "encrypted PEM {label} block")?,
            KeyKind::PemFileMarker => f.write_str("PRIVATE KEY marker in a .pem file")?,
            KeyKind::Der(k) => {
                let what = match k {
                    DerKey::Pkcs8 => "PKCS#8",
                    DerKey::EncryptedPkcs8 => "encrypted PKCS#8",
                    DerKey::Sec1 => "SEC1 EC",
                    DerKey::Pkcs1 => "PKCS#1 RSA",
                    DerKey::Dsa => "DSA",
                    DerKey::Pkcs12 => "PKCS#12 key store",
                };
                write!(f, "DER {what} private key")?;
            }
        }
        write!(f, " at byte {}", self.offset)
    }
}

/// The cause of a refused scan: the file is over the ceiling.
#[derive(Debug, thiserror::Error)]
#[error(
    "too large to scan for private keys ({size} bytes, the ceiling is {ceiling}); \
     exclude it, or name it in swarm.toml [release] include to ship it unscanned"
)]
pub(crate) struct TooLargeToScan {
    pub(crate) size: u64,
    pub(crate) ceiling: u64,
}

fn too_large(size: u64, ceiling: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        TooLargeToScan { size, ceiling },
    )
}

/// How to scan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScanOptions {
    /// Any `PRIVATE KEY` text counts (the rule for `*.pem` files).
    pub(crate) any_marker: bool,
    /// Refuse past this many bytes.
    pub(crate) ceiling: u64,
}

impl ScanOptions {
    /// The options for a file of this name.
    pub(crate) fn for_name(name: &str) -> ScanOptions {
        ScanOptions {
            any_marker: name.ends_with(".pem"),
            ceiling: SCAN_CEILING,
        }
    }
}

/// Scan the file at `path` (options from its name): `Ok(None)` when it
/// holds no private key, an error of kind `FileTooLarge` over the ceiling.
/// (The packer uses [`scan_open_file`] on the handle it packs.)
#[cfg(test)]
pub(crate) fn scan_file(path: &std::path::Path) -> io::Result<Option<KeyFinding>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut f = File::open(path)?;
    scan_open_file(&mut f, &name)
}

/// Scan an open file (options from `name`) and rewind it, so the packer
/// reads one handle for both the verdict and the tarball.
pub(crate) fn scan_open_file(f: &mut File, name: &str) -> io::Result<Option<KeyFinding>> {
    let opts = ScanOptions::for_name(name);
    let size = f.metadata()?.len();
    if size > opts.ceiling {
        return Err(too_large(size, opts.ceiling));
    }
    let found = scan_reader(&mut *f, opts)?;
    f.rewind()?;
    Ok(found)
}

/// Scan everything `r` yields. A caller that packs the same handle
/// afterwards rewinds it first.
pub(crate) fn scan_reader<R: Read>(r: R, opts: ScanOptions) -> io::Result<Option<KeyFinding>> {
    Scanner::new(opts).run(r)
}

/// The streaming state: one window of unsearched (or pending) bytes.
struct Scanner {
    opts: ScanOptions,
    /// Bytes not yet ruled out; `window[0]` is at file offset `base`.
    window: Vec<u8>,
    base: u64,
    /// The first bytes of the file while it may still be a DER key.
    head: Vec<u8>,
    maybe_der: bool,
    total: u64,
    begin: memmem::Finder<'static>,
    marker: memmem::Finder<'static>,
}

/// What a candidate PEM block turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Key(KeyKind),
    NotAKey,
    /// The window ends before a verdict; read more.
    NeedMore,
}

impl Scanner {
    fn new(opts: ScanOptions) -> Scanner {
        Scanner {
            opts,
            window: Vec::with_capacity(CHUNK + BLOCK_MAX),
            base: 0,
            head: Vec::new(),
            maybe_der: true,
            total: 0,
            begin: memmem::Finder::new(BEGIN),
            marker: memmem::Finder::new(PEM_FILE_MARKER),
        }
    }

    fn run<R: Read>(mut self, mut r: R) -> io::Result<Option<KeyFinding>> {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            // A full chunk per search (short reads are topped up), so a
            // pending block is judged again at most BLOCK_MAX / CHUNK times.
            let mut n = 0;
            while n < CHUNK {
                match r.read(&mut chunk[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.total += n as u64;
            if self.total > self.opts.ceiling {
                return Err(too_large(self.total, self.opts.ceiling));
            }
            let start = self.window.len();
            self.window.extend_from_slice(&chunk[..n]);
            if self.maybe_der {
                self.collect_head(start);
            }
            let eof = n < CHUNK;
            if let Some(found) = self.search(eof) {
                return Ok(Some(found));
            }
            if eof {
                return Ok(self.der_verdict());
            }
        }
    }

    fn collect_head(&mut self, start: usize) {
        let new = &self.window[start..];
        let want = (DER_MAX + 1).saturating_sub(self.head.len());
        self.head.extend_from_slice(&new[..new.len().min(want)]);
        if self.head.first().is_some_and(|b| *b != 0x30) || self.head.len() > DER_MAX {
            self.maybe_der = false;
            self.head = Vec::new();
        }
    }

    fn der_verdict(&self) -> Option<KeyFinding> {
        if !self.maybe_der {
            return None;
        }
        der_key(&self.head).map(|k| KeyFinding {
            kind: KeyKind::Der(k),
            offset: 0,
        })
    }

    /// Search the window; keep what a later read may still complete.
    fn search(&mut self, eof: bool) -> Option<KeyFinding> {
        let mut keep_from = self.window.len().saturating_sub(BEGIN.len() - 1);
        if self.opts.any_marker
            && let Some(p) = self.marker.find(&self.window)
        {
            return Some(KeyFinding {
                kind: KeyKind::PemFileMarker,
                offset: self.base + p as u64,
            });
        }
        let mut from = 0;
        while let Some(rel) = self.begin.find(&self.window[from..]) {
            let p = from + rel;
            match pem_block(&self.window[p..], eof) {
                Verdict::Key(kind) => {
                    return Some(KeyFinding {
                        kind,
                        offset: self.base + p as u64,
                    });
                }
                Verdict::NotAKey => from = p + 1,
                Verdict::NeedMore => {
                    keep_from = p;
                    break;
                }
            }
        }
        // Both markers are 11 bytes: the last 10 cannot hold a whole one,
        // so nothing kept here has been judged already.
        self.window.drain(..keep_from);
        self.base += keep_from as u64;
        None
    }
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// The label after `-----BEGIN ` or `-----END ` at `s[0..]`, and where
/// the text after its closing dashes starts. `Err(true)` asks for more.
fn label(s: &[u8], eof: bool) -> Result<(&[u8], usize), bool> {
    for (i, &b) in s.iter().enumerate().take(LABEL_MAX + 1) {
        if b == b'-' {
            if s.len() < i + DASHES.len() {
                return Err(!eof);
            }
            return if &s[i..i + DASHES.len()] == DASHES && i > 0 {
                Ok((&s[..i], i + DASHES.len()))
            } else {
                Err(false)
            };
        }
        if !(b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ') {
            return Err(false);
        }
    }
    Err(s.len() <= LABEL_MAX && !eof)
}

fn is_private_label(l: &[u8]) -> bool {
    l.ends_with(b"PRIVATE KEY") || l.ends_with(b"PRIVATE KEY BLOCK")
}

/// One logical line of a PEM body while it is read.
#[derive(Default)]
struct Line {
    base64: usize,
    /// Whitespace or a quote after base64 text in this line.
    gap: bool,
    /// A byte that is neither base64, whitespace nor a quote.
    other: bool,
    colon: bool,
}

/// Judge the candidate block at `s` (which starts with `-----BEGIN `).
fn pem_block(s: &[u8], eof: bool) -> Verdict {
    let eof = eof || s.len() >= BLOCK_MAX;
    let s = &s[..s.len().min(BLOCK_MAX)];
    let more = |need: bool| {
        if need && !eof {
            Verdict::NeedMore
        } else {
            Verdict::NotAKey
        }
    };
    let (name, after) = match label(&s[BEGIN.len()..], eof) {
        Ok(l) => l,
        Err(need) => return more(need),
    };
    if !is_private_label(name) {
        return Verdict::NotAKey;
    }
    let label_str = String::from_utf8_lossy(name).into_owned();
    let mut i = BEGIN.len() + after;
    let mut line = Line::default();
    let mut line_start = i;
    let mut seen_text = false;
    let mut headers = 0;
    let mut body = 0usize;
    let mut body_head = [0u8; 19];
    let mut escaped = false;
    while i < s.len() {
        let b = s[i];
        let mut line_break = false;
        match b {
            b'\n' => line_break = true,
            b' ' | b'\t' | b'\r' | b'"' | b'\'' => {
                if line.base64 > 0 {
                    line.gap = true;
                }
            }
            b'\\' => {
                let mut j = i + 1;
                while j < s.len() && s[j] == b'\\' {
                    j += 1;
                }
                let Some(&e) = s.get(j) else {
                    return more(true);
                };
                match e {
                    b'n' | b'\n' => {
                        line_break = true;
                        escaped |= e == b'n';
                    }
                    b'r' | b't' => {
                        if line.base64 > 0 {
                            line.gap = true;
                        }
                    }
                    b'/' => {
                        if line.gap {
                            line.other = true;
                        }
                        if body + line.base64 < body_head.len() {
                            body_head[body + line.base64] = b'/';
                        }
                        line.base64 += 1;
                    }
                    _ => line.other = true,
                }
                i = j;
            }
            b'-' if s[i..].starts_with(END) || END.starts_with(&s[i..]) => {
                if s.len() < i + END.len() {
                    return more(true);
                }
                let (end_name, _) = match label(&s[i + END.len()..], eof) {
                    Ok(l) => l,
                    Err(need) => return more(need),
                };
                if line.other || end_name != name {
                    return Verdict::NotAKey;
                }
                body += line.base64;
                let head = &body_head[..body.min(body_head.len())];
                return if body >= MIN_BODY && body_starts_right(name, head) {
                    Verdict::Key(KeyKind::Pem {
                        label: label_str,
                        escaped,
                    })
                } else {
                    Verdict::NotAKey
                };
            }
            _ if is_base64(b) => {
                if line.gap {
                    line.other = true;
                }
                if body + line.base64 < body_head.len() {
                    body_head[body + line.base64] = b;
                }
                line.base64 += 1;
            }
            b':' => {
                line.other = true;
                line.colon = true;
            }
            _ => line.other = true,
        }
        if line_break {
            let l = std::mem::take(&mut line);
            if l.other {
                let text = s[line_start..i].trim_ascii_start();
                let legacy = text.starts_with(b"Proc-Type:") || text.starts_with(b"DEK-Info:");
                if !seen_text && legacy {
                    return Verdict::Key(KeyKind::LegacyEncryptedPem { label: label_str });
                }
                headers += 1;
                if !l.colon || body > 0 || headers > HEADERS_MAX {
                    return Verdict::NotAKey;
                }
            }
            body += l.base64;
            seen_text |= l.other || l.base64 > 0;
            line_start = i + 1;
        }
        i += 1;
    }
    more(true)
}

/// Whether a body starts the way a key with this label must: DER (a
/// SEQUENCE, base64 `M`) for the PKCS/SEC1 labels, `openssh-key-v1` for
/// OpenSSH; other labels (PGP, …) are not checked.
fn body_starts_right(label: &[u8], head: &[u8]) -> bool {
    if label == b"OPENSSH PRIVATE KEY" {
        return head.starts_with(b"b3BlbnNzaC1rZXktdjE");
    }
    let der_labels: &[&[u8]] = &[
        b"PRIVATE KEY",
        b"ENCRYPTED PRIVATE KEY",
        b"RSA PRIVATE KEY",
        b"EC PRIVATE KEY",
        b"DSA PRIVATE KEY",
        b"ANY PRIVATE KEY",
    ];
    if der_labels.contains(&label) {
        return head.first() == Some(&b'M');
    }
    true
}

mod der;

pub(crate) use der::der_key;

#[cfg(test)]
mod tests;
