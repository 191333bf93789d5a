//! Safe extraction of a gzip or zstd tarball into an empty staging
//! directory, told apart by their magic numbers (`1f 8b`, `28 b5 2f fd`).
//! Every gzip member is read (`Members`), as `tar xzf` does, and every zstd
//! frame, as `zstd -d` does; after the end-of-archive blocks only zeros may
//! follow. A zstd frame may ask for a window of at most 8 MiB
//! (`decode::ZSTD_WINDOW_LOG_MAX`: the decoder's memory is bounded by it);
//! the `decode` module decompresses.
//!
//! tar-rs is used only to *parse* the stream; every entry is validated here,
//! from its raw path bytes and header, before anything is written, and every
//! file, directory and link is created by this code (never `unpack`, which
//! silently skips `..`, re-roots absolute paths and follows links).
//!
//! The policy (also in `wiki/security.md`, "Extraction"):
//! - paths: UTF-8, relative, no `..`, no NUL, at most `max_path_bytes` bytes,
//!   255 bytes per component and `max_path_depth` components; `.` and empty
//!   components are dropped; the root manifest and index names are reserved;
//! - types: regular files and directories; symbolic links only when their
//!   target is relative, of the form `../../a/b` (all `..` first, then names)
//!   and does not climb above the release root from where the link sits;
//!   no entry may sit below a link. Hardlinks, devices, FIFOs, GNU sparse
//!   files (old-style or PAX) and any other type are refused;
//! - duplicates (the same path twice) are refused;
//! - caps: entries (implied parent directories included), uncompressed
//!   bytes (the decoded stream, headers included);
//!   a GNU long name/link or PAX header larger than
//!   `MAX_EXTENSION_BYTES`, or any GNU
//!   sparse header, is refused from its header block by
//!   `TarGuard`, before tar-rs would buffer it whole;
//! - modes: files `mode & 0o755 | 0o600`, directories `mode & 0o755 | 0o700`
//!   (no setuid/setgid/sticky, nothing writable by others, exec bits kept).
//!
//! As it writes, it builds the tree's canonical index ([`pki::index`]):
//! every file's content is hashed as it is received, so the `release_id`
//! costs no second read.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use pki::index::{INDEX_FILE, IndexEntry, TreeIndex};
use pki::wire::MANIFEST_FILE;
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::guard::{CapReader, TarGuard, quote};
use crate::error::{Result, UpdaterError};
use crate::slots::dirs::DirPool;

/// Longest single path component (NAME_MAX).
const MAX_COMPONENT_BYTES: usize = 255;

/// Limits applied to every upload.
#[derive(Clone, Debug)]
pub struct Caps {
    /// Compressed bytes (the upload as sent).
    pub max_compressed: u64,
    /// Decompressed bytes (the tar stream, headers included).
    pub max_unpacked: u64,
    /// Tar entries (of every type) plus the parent directories created
    /// for them without an entry of their own.
    pub max_entries: u64,
    /// Bytes in one entry's path (or link target).
    pub max_path_bytes: usize,
    /// Components in one entry's path.
    pub max_path_depth: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max_compressed: 1 << 30,
            max_unpacked: 4 << 30,
            max_entries: 200_000,
            max_path_bytes: 1024,
            max_path_depth: 64,
        }
    }
}

/// What an extraction produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files written.
    pub files: u64,
    /// Bytes of regular file contents written.
    pub file_bytes: u64,
    /// The canonical index of the tree written.
    pub index: TreeIndex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Link,
}

/// Extract the gzip tarball read from `reader` into `dest`, which must be an
/// existing empty directory. On error, `dest` may hold a partial tree: the
/// caller removes it. Nothing is ever written outside `dest`.
pub fn extract(reader: impl Read, dest: &Path, caps: &Caps) -> Result<Extracted> {
    let tripped = Rc::new(Cell::new(false));
    let decoded = CapReader {
        inner: super::decode::open(reader)?,
        read: 0,
        cap: caps.max_unpacked,
        tripped: tripped.clone(),
    };
    let cap_error = || {
        UpdaterError::Cap(format!(
            "the tarball unpacks to more than {} bytes (--max-unpacked-bytes)",
            caps.max_unpacked
        ))
    };
    let guard = TarGuard::new(decoded);
    let verdict = guard.verdict();
    let stream_error = |e: io::Error, what: &str| {
        if let Some(refusal) = verdict.refusal() {
            refusal.into()
        } else if tripped.get() {
            cap_error()
        } else {
            UpdaterError::BadUpload(format!("{what}: {e} (send a gzip- or zstd-compressed tar)"))
        }
    };
    let mut archive = tar::Archive::new(guard);
    let mut x = Extractor {
        dest,
        caps,
        kinds: HashMap::new(),
        explicit: HashSet::new(),
        implied_at: HashMap::new(),
        out: Extracted::default(),
        entries: 0,
        index: Vec::new(),
        pool: DirPool::beside(dest),
    };
    let entries = archive
        .entries()
        .map_err(|e| stream_error(e, "reading the tarball"))?;
    for entry in entries {
        let entry = entry.map_err(|e| stream_error(e, "reading the tarball"))?;
        x.entry(entry).map_err(|e| match e {
            UpdaterError::Io { source, .. }
                if tripped.get() || verdict.refusal().is_some() || is_stream_error(&source) =>
            {
                stream_error(source, "reading the tarball")
            }
            other => other,
        })?;
    }
    // Read the gzip stream to its end, every member: this checks their CRC
    // and length, and counts any trailing bytes against the cap. Past the
    // end-of-archive blocks only zero padding may follow: anything else is
    // content we would drop silently (a second archive after the first).
    let mut decoded = archive.into_inner();
    let mut rest = ZerosOnly(0);
    match io::copy(&mut decoded, &mut rest) {
        Ok(_) => {}
        Err(_) if rest.0 > 0 => {
            return Err(UpdaterError::BadUpload(
                "the tarball has data after the end of its tar archive (two archives concatenated?); send one archive"
                    .into(),
            ));
        }
        Err(e) => return Err(stream_error(e, "finishing the gzip stream")),
    }
    // Whatever follows the last gzip member (padding) is read and ignored so
    // the sender is never blocked; its bytes were hashed on the way in.
    if let Some(mut raw) = decoded.into_inner().inner.into_inner() {
        io::copy(&mut raw, &mut io::sink()).map_err(|e| stream_error(e, "reading the upload"))?;
    }
    let mut out = x.out;
    out.index = TreeIndex::new(x.index).map_err(UpdaterError::BadUpload)?;
    Ok(out)
}

/// A sink for what follows the end-of-archive blocks: zeros pass, the
/// first other byte fails the write (and is counted in `.0`).
struct ZerosOnly(u64);

impl io::Write for ZerosOnly {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.iter().any(|b| *b != 0) {
            self.0 += 1;
            return Err(io::Error::other("data after the end of the archive"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Errors from the decoding stream (not from our own writes).
fn is_stream_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
    )
}

struct Extractor<'a> {
    dest: &'a Path,
    caps: &'a Caps,
    /// Every path created so far (explicit or implied parent directories).
    kinds: HashMap<String, Kind>,
    /// Paths named by an entry.
    explicit: HashSet<String>,
    /// Where each implied directory's entry sits in `index`, so a later
    /// entry naming it sets its mode without a scan.
    implied_at: HashMap<String, usize>,
    out: Extracted,
    entries: u64,
    /// The index entries so far, in tar order.
    index: Vec<IndexEntry>,
    /// Where new directories come from.
    pool: DirPool,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        self.count()?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = quote(&raw_path);
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            // Global PAX defaults; tar-rs does not apply them and neither do we.
            return Ok(());
        }
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| UpdaterError::BadUpload(format!("{shown:?}: bad PAX header: {e}")))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| {
                    UpdaterError::BadUpload(format!("{shown:?}: bad PAX header: {e}"))
                })?;
                if ext.key_bytes().starts_with(b"GNU.sparse") {
                    return Err(UpdaterError::unsafe_entry(shown, "GNU sparse file (PAX)"));
                }
            }
        }
        let comps = normalize(&raw_path, self.caps)
            .map_err(|why| UpdaterError::unsafe_entry(&shown, why))?;
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Link,
            EntryType::Link => return Err(UpdaterError::unsafe_entry(shown, "hardlink")),
            EntryType::Char | EntryType::Block => {
                return Err(UpdaterError::unsafe_entry(shown, "device file"));
            }
            EntryType::Fifo => return Err(UpdaterError::unsafe_entry(shown, "FIFO")),
            EntryType::GNUSparse => {
                return Err(UpdaterError::unsafe_entry(shown, "GNU sparse file"));
            }
            other => {
                return Err(UpdaterError::unsafe_entry(
                    shown,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ));
            }
        };
        if comps.is_empty() {
            // The root itself (`./`): nothing to create.
            return match kind {
                Kind::Dir => Ok(()),
                _ => Err(UpdaterError::unsafe_entry(
                    shown,
                    "a non-directory at the release root",
                )),
            };
        }
        let key = comps.join("/");
        if key == MANIFEST_FILE || key == INDEX_FILE {
            return Err(UpdaterError::unsafe_entry(
                shown,
                "reserved name: the updater writes the release manifest and index itself",
            ));
        }
        if !self.explicit.insert(key.clone()) {
            return Err(UpdaterError::unsafe_entry(shown, "duplicate path"));
        }
        self.parents(&comps, &shown)?;
        let path = self.dest.join(&key);
        let mode = entry
            .header()
            .mode()
            .map_err(|e| UpdaterError::BadUpload(format!("{shown:?}: bad mode: {e}")))?;
        match kind {
            Kind::Dir => {
                let implied = match self.kinds.get(&key) {
                    Some(Kind::Dir) => true,
                    Some(_) => return Err(UpdaterError::unsafe_entry(shown, "duplicate path")),
                    None => {
                        self.mkdir(&path)?;
                        false
                    }
                };
                let mode = pki::index::dir_mode(mode);
                set_mode(&path, mode)?;
                let at = implied.then(|| self.implied_at.remove(&key)).flatten();
                match at.and_then(|i| self.index.get_mut(i)) {
                    // An implied directory named by its own entry later.
                    Some(e) => e.mode = mode,
                    None => self.index.push(IndexEntry::dir(key.clone(), mode)),
                }
                self.kinds.insert(key, Kind::Dir);
            }
            Kind::File => {
                if self.kinds.contains_key(&key) {
                    return Err(UpdaterError::unsafe_entry(shown, "duplicate path"));
                }
                let size = entry.size();
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| UpdaterError::io(&path, e))?;
                let mut limited = (&mut entry).take(size);
                let mut writer = HashingWriter {
                    inner: io::BufWriter::with_capacity(256 * 1024, &file),
                    hasher: Sha256::new(),
                };
                let copied =
                    io::copy(&mut limited, &mut writer).map_err(|e| UpdaterError::io(&path, e))?;
                io::Write::flush(&mut writer).map_err(|e| UpdaterError::io(&path, e))?;
                let sha256 = hex::encode(writer.hasher.finalize());
                if copied != size {
                    return Err(UpdaterError::BadUpload(format!(
                        "{shown:?}: the tarball ends inside this file"
                    )));
                }
                let mode = pki::index::file_mode(mode);
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| UpdaterError::io(&path, e))?;
                self.index
                    .push(IndexEntry::file(key.clone(), mode, size, sha256));
                self.out.files += 1;
                self.out.file_bytes += size;
                self.kinds.insert(key, Kind::File);
            }
            Kind::Link => {
                if self.kinds.contains_key(&key) {
                    return Err(UpdaterError::unsafe_entry(shown, "duplicate path"));
                }
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        UpdaterError::unsafe_entry(&shown, "symbolic link without a target")
                    })?
                    .into_owned();
                let target = check_link_target(&comps, &target, self.caps)
                    .map_err(|why| UpdaterError::unsafe_entry(&shown, why))?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(|e| UpdaterError::io(&path, e))?;
                // Checked UTF-8 by check_link_target.
                self.index
                    .push(IndexEntry::link(key.clone(), &target.to_string_lossy()));
                self.kinds.insert(key, Kind::Link);
            }
        }
        Ok(())
    }

    /// A new directory at `path` (from the pool when it has one).
    fn mkdir(&mut self, path: &Path) -> Result<()> {
        self.pool.make(path).map_err(|e| UpdaterError::io(path, e))
    }

    /// Count one more entry (a tar entry, or a parent directory created
    /// for one) against `max_entries`.
    fn count(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.caps.max_entries {
            return Err(UpdaterError::Cap(format!(
                "the tarball has more than {} entries, implied parent directories included (--max-entries)",
                self.caps.max_entries
            )));
        }
        Ok(())
    }

    /// Create missing parent directories of `comps`, refusing to go below a
    /// link or a file.
    fn parents(&mut self, comps: &[String], shown: &str) -> Result<()> {
        for i in 1..comps.len() {
            let prefix = comps[..i].join("/");
            match self.kinds.get(&prefix) {
                Some(Kind::Dir) => {}
                Some(Kind::Link) => {
                    return Err(UpdaterError::unsafe_entry(
                        shown,
                        format!(
                            "inside {:?}, which is a symbolic link",
                            quote(prefix.as_bytes())
                        ),
                    ));
                }
                Some(Kind::File) => {
                    return Err(UpdaterError::unsafe_entry(
                        shown,
                        format!(
                            "inside {:?}, which is a regular file",
                            quote(prefix.as_bytes())
                        ),
                    ));
                }
                None => {
                    // An implied directory is an entry too: a few KB of
                    // deep paths must not create a directory per component.
                    self.count()?;
                    let dir = self.dest.join(&prefix);
                    self.mkdir(&dir)?;
                    set_mode(&dir, 0o755)?;
                    self.implied_at.insert(prefix.clone(), self.index.len());
                    self.index.push(IndexEntry::dir(prefix.clone(), 0o755));
                    self.kinds.insert(prefix, Kind::Dir);
                }
            }
        }
        Ok(())
    }
}

/// A writer that hashes what it writes (a file's content, as received).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| UpdaterError::io(path, e))
}

/// Check an entry path and split it into its components (`.` and empty ones
/// dropped). An empty result is the release root.
pub(super) fn normalize(raw: &[u8], caps: &Caps) -> Result<Vec<String>, String> {
    if raw.len() > caps.max_path_bytes {
        return Err(format!(
            "path longer than {} bytes (--max-path-bytes)",
            caps.max_path_bytes
        ));
    }
    if raw.contains(&0) {
        return Err("NUL byte in path".into());
    }
    let text = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8".to_owned())?;
    if text.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut comps = Vec::new();
    for c in text.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("parent-directory component `..`".into()),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(format!(
                    "path component longer than {MAX_COMPONENT_BYTES} bytes"
                ));
            }
            c => comps.push(c.to_owned()),
        }
    }
    if comps.len() > caps.max_path_depth {
        return Err(format!(
            "path deeper than {} components (--max-path-depth)",
            caps.max_path_depth
        ));
    }
    Ok(comps)
}

/// Check a symbolic link target for a link at `link` (its components):
/// our caps and encoding here, then the symlink rule the master applies
/// too ([`pki::release::check_link_target`]). Returns the target to
/// create, normalized.
fn check_link_target(link: &[String], raw: &[u8], caps: &Caps) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("symbolic link with an empty target".into());
    }
    if raw.len() > caps.max_path_bytes {
        return Err(format!(
            "link target longer than {} bytes (--max-path-bytes)",
            caps.max_path_bytes
        ));
    }
    if raw.contains(&0) {
        return Err("NUL byte in link target".into());
    }
    let text = std::str::from_utf8(raw).map_err(|_| "link target is not UTF-8".to_owned())?;
    // The link's directory is `link.len() - 1` levels below the root. The
    // shared rule quotes the target whole: quote it our way instead.
    pki::release::check_link_target(link.len().saturating_sub(1), text)
        .map_err(|why| why.replace(&format!("{text:?}"), &format!("{:?}", quote(raw))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(name: &[u8], typeflag: u8, size: u64, mode: u32, link: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h.to_vec()
    }

    fn entry(name: &[u8], typeflag: u8, data: &[u8], mode: u32, link: &[u8]) -> Vec<u8> {
        let mut out = header(name, typeflag, data.len() as u64, mode, link);
        out.extend_from_slice(data);
        out.resize(out.len() + (512 - data.len() % 512) % 512, 0);
        out
    }

    fn tgz(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut tar = entries.concat();
        tar.resize(tar.len() + 1024, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn run(entries: &[Vec<u8>]) -> (tempfile::TempDir, Result<Extracted>) {
        run_caps(entries, &Caps::default())
    }

    fn run_caps(entries: &[Vec<u8>], caps: &Caps) -> (tempfile::TempDir, Result<Extracted>) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("stage");
        fs::create_dir(&dest).unwrap();
        let bytes = tgz(entries);
        let r = extract(bytes.as_slice(), &dest, caps);
        (tmp, r)
    }

    fn rejected(entries: &[Vec<u8>], path: &str) {
        let (tmp, r) = run(entries);
        match r {
            Err(UpdaterError::Unsafe { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected Unsafe for {path}, got {other:?}"),
        }
        // Nothing but the staging dir in the temp dir.
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("stage")]);
    }

    #[test]
    fn good_tree() {
        let (tmp, r) = run(&[
            entry(b"./", b'5', b"", 0o755, b""),
            entry(b"bin/", b'5', b"", 0o777, b""),
            entry(b"bin/run", b'0', b"#!/bin/sh\n", 0o4777, b""),
            entry(b"./a/b/c.txt", b'0', b"hello", 0o600, b""),
            entry(b"a/link", b'2', b"", 0o777, b"../bin/run"),
            entry(b"a/self", b'2', b"", 0o777, b"."),
        ]);
        let out = r.unwrap();
        assert_eq!((out.files, out.file_bytes), (2, 15));
        // The index, built as it extracted: implied `a` and `a/b` included.
        let paths: Vec<_> = out
            .index
            .entries()
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "a",
                "a/b",
                "a/b/c.txt",
                "a/link",
                "a/self",
                "bin",
                "bin/run"
            ]
        );
        let c = out.index.get("a/b/c.txt").unwrap();
        assert_eq!((c.mode, c.size), (0o600, 5));
        assert_eq!(
            c.sha256.as_deref(),
            Some(pki::index::sha256_hex(b"hello").as_str())
        );
        assert_eq!(out.index.get("bin").unwrap().mode, 0o755);
        assert_eq!(out.index.get("bin/run").unwrap().mode, 0o755);
        assert_eq!(
            out.index.get("a/link").unwrap().sha256.as_deref(),
            Some(pki::index::sha256_hex(b"../bin/run").as_str())
        );
        let d = tmp.path().join("stage");
        let mode = |p: &str| {
            fs::symlink_metadata(d.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin/run"), 0o755);
        assert_eq!(mode("a/b/c.txt"), 0o600);
        assert_eq!(mode("bin"), 0o755);
        assert_eq!(fs::read_to_string(d.join("a/b/c.txt")).unwrap(), "hello");
        assert_eq!(
            fs::read_link(d.join("a/link")).unwrap(),
            PathBuf::from("../bin/run")
        );
        assert_eq!(fs::read_to_string(d.join("a/link")).unwrap(), "#!/bin/sh\n");
    }

    #[test]
    fn unsafe_entries() {
        rejected(&[entry(b"../evil", b'0', b"x", 0o644, b"")], "../evil");
        rejected(
            &[entry(b"a/../../evil", b'0', b"x", 0o644, b"")],
            "a/../../evil",
        );
        rejected(&[entry(b"/etc/evil", b'0', b"x", 0o644, b"")], "/etc/evil");
        rejected(&[entry(b"l", b'2', b"", 0o777, b"/etc")], "l");
        rejected(&[entry(b"l", b'2', b"", 0o777, b"..")], "l");
        rejected(&[entry(b"a/l", b'2', b"", 0o777, b"../..")], "a/l");
        rejected(&[entry(b"a/l", b'2', b"", 0o777, b"b/../..")], "a/l");
        rejected(&[entry(b"h", b'1', b"", 0o644, b"etc/passwd")], "h");
        rejected(&[entry(b"dev", b'3', b"", 0o644, b"")], "dev");
        rejected(&[entry(b"blk", b'4', b"", 0o644, b"")], "blk");
        rejected(&[entry(b"fifo", b'6', b"", 0o644, b"")], "fifo");
        let mut sparse = entry(b"sparse", b'S', b"", 0o644, b"");
        // GNU magic, so tar-rs parses it as the GNU sparse entry it is.
        sparse[257..265].copy_from_slice(b"ustar  \0");
        sparse[483..495].copy_from_slice(b"00000000000\0");
        sparse[148..156].copy_from_slice(b"        ");
        let sum: u32 = sparse[..512].iter().map(|b| u32::from(*b)).sum();
        sparse[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        rejected(&[sparse], "sparse");
        rejected(
            &[
                entry(b"a", b'0', b"1", 0o644, b""),
                entry(b"a", b'0', b"2", 0o644, b""),
            ],
            "a",
        );
        rejected(
            &[
                entry(b"d/", b'5', b"", 0o755, b""),
                entry(b"./d", b'5', b"", 0o755, b""),
            ],
            "./d",
        );
        // Writing through a link, even one that stays inside.
        rejected(
            &[
                entry(b"d/", b'5', b"", 0o755, b""),
                entry(b"l", b'2', b"", 0o777, b"d"),
                entry(b"l/x", b'0', b"x", 0o644, b""),
            ],
            "l/x",
        );
        rejected(
            &[entry(MANIFEST_FILE.as_bytes(), b'0', b"{}", 0o644, b"")],
            MANIFEST_FILE,
        );
        rejected(
            &[entry(INDEX_FILE.as_bytes(), b'0', b"x", 0o644, b"")],
            INDEX_FILE,
        );
    }

    #[test]
    fn caps() {
        let caps = Caps {
            max_entries: 2,
            ..Caps::default()
        };
        let three: Vec<_> = (0..3)
            .map(|i| entry(format!("f{i}").as_bytes(), b'0', b"x", 0o644, b""))
            .collect();
        assert!(matches!(
            run_caps(&three, &caps).1,
            Err(UpdaterError::Cap(_))
        ));
        let caps = Caps {
            max_unpacked: 4096,
            ..Caps::default()
        };
        let big = entry(b"big", b'0', &vec![7u8; 10_000], 0o644, b"");
        assert!(matches!(
            run_caps(&[big], &caps).1,
            Err(UpdaterError::Cap(_))
        ));
        let caps = Caps {
            max_path_depth: 3,
            ..Caps::default()
        };
        let (_t, r) = run_caps(&[entry(b"a/b/c/d", b'0', b"", 0o644, b"")], &caps);
        assert!(matches!(r, Err(UpdaterError::Unsafe { .. })), "{r:?}");
    }

    fn cap_message(r: Result<Extracted>) -> String {
        match r {
            Err(UpdaterError::Cap(why)) => why,
            other => panic!("expected a cap error, got {other:?}"),
        }
    }

    #[test]
    fn oversized_extension_headers_are_refused_before_tar_rs_buffers_them() {
        let long = vec![b'a'; 10 << 20];
        let (_t, r) = run(&[
            entry(b"././@LongLink", b'L', &long, 0o644, b""),
            entry(b"f", b'0', b"x", 0o644, b""),
        ]);
        let why = cap_message(r);
        assert!(why.contains("GNU long name of 10485760 bytes"), "{why}");
        let (_t, r) = run(&[
            entry(b"././@LongLink", b'K', &long, 0o644, b""),
            entry(b"l", b'2', b"", 0o777, b"x"),
        ]);
        assert!(cap_message(r).contains("GNU long link name"));
        let big_pax = format!("{} comment={}\n", 100_016, "c".repeat(100_000));
        let (_t, r) = run(&[
            entry(b"pax", b'x', big_pax.as_bytes(), 0o644, b""),
            entry(b"f", b'0', b"x", 0o644, b""),
        ]);
        assert!(cap_message(r).contains("PAX extended header"));
    }

    #[test]
    fn the_header_guard_follows_pax_sizes_and_allows_normal_extensions() {
        // A PAX size that overrides the header's (0): the guard must skip
        // the 5 data bytes to find the next header, an oversized long name.
        let mut a = header(b"a", b'0', 0, 0o644, b"");
        a.extend_from_slice(b"hello");
        a.resize(1024, 0);
        let (_t, r) = run(&[
            entry(b"pax", b'x', b"10 size=5\n", 0o644, b""),
            a.clone(),
            entry(b"././@LongLink", b'L', &vec![b'b'; 100_000], 0o644, b""),
            entry(b"f", b'0', b"x", 0o644, b""),
        ]);
        assert!(cap_message(r).contains("GNU long name of 100000"));
        // Modest extensions pass, and the tree is what they describe.
        let name = format!("{}/file", "d".repeat(150));
        let mut ln = name.clone().into_bytes();
        ln.push(0);
        let (tmp, r) = run(&[
            entry(b"pax", b'x', b"10 size=5\n", 0o644, b""),
            a,
            entry(b"././@LongLink", b'L', &ln, 0o644, b""),
            entry(b"ignored", b'0', b"long", 0o644, b""),
        ]);
        assert_eq!(r.unwrap().files, 2);
        let d = tmp.path().join("stage");
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "hello");
        assert_eq!(fs::read_to_string(d.join(&name)).unwrap(), "long");
        // (The size-field asserts moved to the guard's tests.)
    }

    #[test]
    fn not_gzip_or_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let r = extract(&b"this is not gzip"[..], tmp.path(), &Caps::default());
        assert!(matches!(r, Err(UpdaterError::BadUpload(_))), "{r:?}");
        let mut bytes = tgz(&[entry(b"f", b'0', &vec![1u8; 5000], 0o644, b"")]);
        bytes.truncate(bytes.len() / 2);
        let tmp = tempfile::tempdir().unwrap();
        let r = extract(bytes.as_slice(), tmp.path(), &Caps::default());
        assert!(matches!(r, Err(UpdaterError::BadUpload(_))), "{r:?}");
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn extract_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Extracted>) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("stage");
        fs::create_dir(&dest).unwrap();
        let r = extract(bytes, &dest, &Caps::default());
        (tmp, r)
    }

    #[test]
    fn a_directory_named_after_its_contents_keeps_one_entry_with_its_own_mode() {
        let (tmp, r) = run(&[
            entry(b"d/e/f.txt", b'0', b"x", 0o644, b""),
            entry(b"d/e/", b'5', b"", 0o700, b""),
            entry(b"d/", b'5', b"", 0o750, b""),
        ]);
        let out = r.unwrap();
        let paths: Vec<_> = out
            .index
            .entries()
            .iter()
            .map(|e| (e.path.as_str(), e.mode))
            .collect();
        assert_eq!(paths, [("d", 0o750), ("d/e", 0o700), ("d/e/f.txt", 0o644)]);
        let meta = std::fs::metadata(tmp.path().join("stage/d/e")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
    }

    #[test]
    fn implied_parent_directories_count_as_entries() {
        let caps = Caps {
            max_entries: 10,
            ..Caps::default()
        };
        let deep: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
        let path = format!("{}/f", deep.join("/"));
        let (tmp, r) = run_caps(&[entry(path.as_bytes(), b'0', b"x", 0o644, b"")], &caps);
        let why = cap_message(r);
        assert!(why.contains("implied parent directories included"), "{why}");
        // Stopped at the cap: at most 10 entries were created.
        let mut made = 0;
        let mut dir = tmp.path().join("stage");
        while let Some(next) = fs::read_dir(&dir).unwrap().next() {
            made += 1;
            dir = next.unwrap().path();
        }
        assert!(made < 10, "{made} directories created");
        // A tree within the cap, its directories counted, still passes.
        let (_t, r) = run_caps(&[entry(b"a/b/c/f", b'0', b"x", 0o644, b"")], &caps);
        assert_eq!(r.unwrap().files, 1);
    }

    #[test]
    fn every_gzip_member_is_read() {
        // One tar stream split across two gzip members (as parallel or
        // streaming compressors write them): the second member's files
        // are installed, as `tar xzf` installs them.
        let first = [entry(b"one", b'0', b"1", 0o644, b"")].concat();
        let mut second = [entry(b"dir/two", b'0', b"22", 0o644, b"")].concat();
        second.resize(second.len() + 1024, 0);
        let mut bytes = gz(&first);
        bytes.extend(gz(&second));
        let (tmp, r) = extract_bytes(&bytes);
        assert_eq!(r.unwrap().files, 2);
        let d = tmp.path().join("stage");
        assert_eq!(fs::read_to_string(d.join("one")).unwrap(), "1");
        assert_eq!(fs::read_to_string(d.join("dir/two")).unwrap(), "22");
        // Zero padding after the last member is still ignored.
        let mut padded = tgz(&[entry(b"f", b'0', b"x", 0o644, b"")]);
        padded.resize(padded.len() + 4096, 0);
        assert_eq!(extract_bytes(&padded).1.unwrap().files, 1);
    }

    #[test]
    fn a_second_archive_after_the_first_is_refused_not_dropped() {
        // `cat a.tgz b.tgz`: two whole archives. Installing only the
        // first would drop b's files silently.
        let mut bytes = tgz(&[entry(b"a", b'0', b"a", 0o644, b"")]);
        bytes.extend(tgz(&[entry(b"b", b'0', b"b", 0o644, b"")]));
        match extract_bytes(&bytes).1 {
            Err(UpdaterError::BadUpload(why)) => {
                assert!(
                    why.contains("data after the end of its tar archive"),
                    "{why}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn zstd_of(entries: &[Vec<u8>], window_log: Option<u32>) -> Vec<u8> {
        let mut tar = entries.concat();
        tar.resize(tar.len() + 1024, 0);
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        if let Some(log) = window_log {
            z.window_log(log).unwrap();
        }
        z.write_all(&tar).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn zstd_is_told_from_gzip_by_its_magic() {
        let entries = [
            entry(b"a/b.txt", b'0', b"hello", 0o644, b""),
            entry(b"c", b'0', &vec![9u8; 100_000], 0o755, b""),
        ];
        let (tmp, r) = extract_bytes(&zstd_of(&entries, None));
        let out = r.unwrap();
        assert_eq!((out.files, out.file_bytes), (2, 100_005));
        let d = tmp.path().join("stage");
        assert_eq!(fs::read_to_string(d.join("a/b.txt")).unwrap(), "hello");
        // The same tree by gzip: the same index, so the same release_id.
        let (_t, g) = extract_bytes(&tgz(&entries));
        assert_eq!(g.unwrap().index.release_id(), out.index.release_id());
        // Two frames, one after the other, are one stream.
        let first = {
            let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            z.write_all(&entry(b"one", b'0', b"1", 0o644, b"")).unwrap();
            z.finish().unwrap()
        };
        let second = zstd_of(&[entry(b"two", b'0', b"2", 0o644, b"")], None);
        let joined = [first, second].concat();
        assert_eq!(extract_bytes(&joined).1.unwrap().files, 2);
    }

    #[test]
    fn truncated_or_greedy_zstd_is_refused() {
        let entries = [entry(b"f", b'0', &vec![1u8; 50_000], 0o644, b"")];
        let mut cut = zstd_of(&entries, None);
        cut.truncate(cut.len() / 2);
        let (_t, r) = extract_bytes(&cut);
        assert!(matches!(r, Err(UpdaterError::BadUpload(_))), "{r:?}");
        // A frame that asks for a 128 MiB window: refused, not allocated.
        let greedy = zstd_of(&entries, Some(27));
        let (_t, r) = extract_bytes(&greedy);
        match r {
            Err(UpdaterError::BadUpload(why)) => {
                assert!(why.contains("too much memory"), "{why}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn link_targets() {
        let caps = Caps::default();
        let l = |p: &str| p.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert!(check_link_target(&l("a/b/l"), b"../../x", &caps).is_ok());
        assert!(check_link_target(&l("a/b/l"), b"../../../x", &caps).is_err());
        assert!(check_link_target(&l("l"), b"x/y", &caps).is_ok());
        assert!(check_link_target(&l("l"), b"x/../y", &caps).is_err());
        assert!(check_link_target(&l("l"), b"/x", &caps).is_err());
        assert!(check_link_target(&l("l"), b"", &caps).is_err());
    }
}
