//! Writing a worker package: a gzip tar under one top directory, created
//! 0600 in a temp file beside its destination and linked into place only
//! when complete (never over an existing file), because it holds private
//! keys.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::error::{Error, Result};

/// What goes into the archive, in order.
#[derive(Debug)]
pub(super) enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    Bytes {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    /// A file copied from disk (a binary: streamed, never held in memory).
    File {
        path: String,
        mode: u32,
        src: PathBuf,
    },
}

/// Refuse an existing destination before any work is done.
pub(super) fn ensure_new(out: &Path) -> Result<()> {
    if fs::symlink_metadata(out).is_ok() {
        return Err(Error::usage(format!(
            "{} already exists: remove it or choose another --package/--out",
            out.display()
        )));
    }
    let parent = parent_of(out);
    if !parent.is_dir() {
        return Err(Error::usage(format!(
            "{} is not a directory: the package's directory must exist",
            parent.display()
        )));
    }
    Ok(())
}

fn parent_of(out: &Path) -> &Path {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `entries` as a gzip tar to `out` (mode 0600, must not exist).
/// Returns the archive's size in bytes.
pub(super) fn write(out: &Path, entries: &[Entry]) -> Result<u64> {
    let parent = parent_of(out);
    // tempfile creates the file 0600 and removes it if we fail half-way.
    let tmp = tempfile::Builder::new()
        .prefix(".swarm-package.")
        .tempfile_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let file = tmp.as_file().try_clone().map_err(|e| Error::io(out, e))?;
    let gz = GzEncoder::new(BufWriter::new(file), Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for entry in entries {
        append(&mut tar, entry, mtime).map_err(|e| Error::io(out, e))?;
    }
    let gz = tar.into_inner().map_err(|e| Error::io(out, e))?;
    let mut buf = gz.finish().map_err(|e| Error::io(out, e))?;
    buf.flush().map_err(|e| Error::io(out, e))?;
    let file = buf
        .into_inner()
        .map_err(|e| Error::io(out, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(out, e))?;
    let size = file.metadata().map_err(|e| Error::io(out, e))?.len();
    tmp.persist_noclobber(out).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::usage(format!(
                "{} already exists: remove it or choose another --package/--out",
                out.display()
            ))
        } else {
            Error::io(out, e.error)
        }
    })?;
    crate::enroll::sync_dir(parent);
    Ok(size)
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append<W: Write>(tar: &mut tar::Builder<W>, entry: &Entry, mtime: u64) -> std::io::Result<()> {
    match entry {
        Entry::Dir { path, mode } => {
            let mut h = header(tar::EntryType::Directory, *mode, 0, mtime);
            tar.append_data(&mut h, path, std::io::empty())
        }
        Entry::Bytes { path, mode, data } => {
            let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64, mtime);
            tar.append_data(&mut h, path, data.as_slice())
        }
        Entry::File { path, mode, src } => {
            let f = fs::File::open(src)?;
            let len = f.metadata()?.len();
            let mut h = header(tar::EntryType::Regular, *mode, len, mtime);
            // Exactly `len` bytes: a file growing under us cannot overrun
            // the header.
            tar.append_data(&mut h, path, f.take(len))
        }
    }
}
