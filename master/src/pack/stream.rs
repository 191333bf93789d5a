//! Packing a scanned [`Tree`]: a deterministic zstd tar, produced on a
//! blocking thread straight into one upload ([`Tree::stream`]: chunks
//! through a bounded channel, the digest at the end) or into a
//! [`Recording`] that several uploads replay ([`Tree::record`]: a small
//! release, or a delta several hosts share; the caller bounds its size).
//! A delta leaves out every file whose content the worker has ([`Have`]);
//! directories and links always go.
//!
//! Every file is read again and must still be what the scan indexed (its
//! size and SHA-256): a tree edited during a push fails the pack.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::{COMPRESSION_LEVEL, ItemKind, Tree};

/// Contents (SHA-256, size) a worker already has: left out of a delta.
pub(crate) type Have = HashSet<(String, u64)>;

/// A pack's digest and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Digest {
    pub(crate) sha256: String,
    pub(crate) size: u64,
}

/// Chunk size handed to an upload.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the packer and the upload.
const DEPTH: usize = 8;

/// A pack recorded in memory as it is produced, for every upload that
/// shares it (a small whole release, or a delta several hosts are on):
/// each reader replays it from the start, waiting for chunks not yet
/// packed, so the first upload streams while the pack is being made.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    state: Mutex<Recorded>,
    more: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Recorded {
    /// Each chunk, with the tree bytes read when it was packed.
    chunks: Vec<(Bytes, u64)>,
    /// Set once the pack ended: its digest, or why it failed.
    end: Option<std::result::Result<Digest, String>>,
}

/// What a reader of a [`Recording`] gets next.
pub(crate) enum Next {
    /// A chunk, and the tree bytes packed up to its end.
    Chunk(Bytes, u64),
    End(std::result::Result<Digest, String>),
}

impl Recording {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panic while holding it leaves whole chunks: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunk `i`, waiting until it is packed, or the end.
    pub(crate) async fn get(&self, i: usize) -> Next {
        loop {
            let more = self.more.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            {
                let state = self.lock();
                if let Some((c, read)) = state.chunks.get(i) {
                    return Next::Chunk(c.clone(), *read);
                }
                if let Some(end) = &state.end {
                    return Next::End(end.clone());
                }
            }
            more.await;
        }
    }
}

/// Chunks into a [`Recording`].
struct Recorder {
    to: Arc<Recording>,
    buf: BytesMut,
    read: Arc<std::sync::atomic::AtomicU64>,
}

impl Recorder {
    fn push(&mut self) {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            let read = self.read.load(std::sync::atomic::Ordering::Relaxed);
            self.to.lock().chunks.push((chunk, read));
            self.to.more.notify_waiters();
        }
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= CHUNK {
            self.push();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.push();
        Ok(())
    }
}

/// A pack being produced for one upload.
pub(crate) struct PackStream {
    /// The packed bytes, in order; an `Err` (the pack failed) ends it.
    pub(crate) chunks: mpsc::Receiver<io::Result<Bytes>>,
    /// The digest, once the last chunk was handed over (or why not).
    pub(crate) done: oneshot::Receiver<std::result::Result<Digest, String>>,
    /// Why the pack failed, readable once `chunks` ended.
    pub(crate) failure: Arc<Mutex<Option<String>>>,
}

/// Where packed bytes go, hashed and counted on the way.
struct Sink<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Chunks to a channel; a receiver that went away ends the pack.
struct Channel {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
}

impl Channel {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload ended"))
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads exactly the file the scan indexed: `remaining` bytes hashing to
/// `want`, or an error.
struct Checked<'a> {
    inner: File,
    remaining: u64,
    hasher: Sha256,
    want: &'a str,
    rel: &'a str,
    read: &'a dyn Fn(u64),
}

impl Read for Checked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being packed; push again", self.rel),
            ));
        }
        self.remaining -= n as u64;
        self.hasher.update(&buf[..n]);
        (self.read)(n as u64);
        if self.remaining == 0 && hex::encode(self.hasher.clone().finalize()) != self.want {
            return Err(io::Error::other(format!(
                "{} changed while it was being packed; push again",
                self.rel
            )));
        }
        Ok(n)
    }
}

fn header(kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

impl Tree {
    /// Pack into `out`: the whole tree, or without what `have` holds;
    /// `read` is told the tree bytes read as they are.
    fn pack_into<W: Write>(
        &self,
        out: W,
        have: Option<&Have>,
        read: &dyn Fn(u64),
    ) -> io::Result<(W, Digest)> {
        let sink = Sink {
            inner: out,
            hasher: Sha256::new(),
            written: 0,
        };
        let z = zstd::stream::write::Encoder::new(sink, COMPRESSION_LEVEL)?;
        let mut tar = tar::Builder::new(z);
        tar.mode(tar::HeaderMode::Deterministic);
        for item in &self.items {
            let rel = item.rel.as_str();
            match &item.kind {
                ItemKind::Dir => {
                    let mut h = header(tar::EntryType::Directory, 0o755, item.mtime, 0);
                    tar.append_data(&mut h, format!("{rel}/"), io::empty())?;
                }
                ItemKind::Link(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, item.mtime, 0);
                    tar.append_link(&mut h, rel, target)?;
                }
                ItemKind::File { mode, size, sha256 } => {
                    if have.is_some_and(|h| h.contains(&(sha256.clone(), *size))) {
                        continue;
                    }
                    let f = File::open(self.root.join(rel))
                        .map_err(|e| io::Error::new(e.kind(), format!("{rel}: {e}")))?;
                    let mut h = header(tar::EntryType::Regular, *mode, item.mtime, *size);
                    let mut reader = Checked {
                        inner: f,
                        remaining: *size,
                        hasher: Sha256::new(),
                        want: sha256,
                        rel,
                        read,
                    };
                    tar.append_data(&mut h, rel, &mut reader)?;
                }
            }
        }
        let z = tar.into_inner()?;
        let mut sink = z.finish()?;
        sink.flush()?;
        let digest = Digest {
            sha256: hex::encode(sink.hasher.finalize()),
            size: sink.written,
        };
        Ok((sink.inner, digest))
    }

    /// Pack on a blocking thread, straight into the returned stream: the
    /// whole tree (`have` = `None`; its digest is remembered, see
    /// [`Tree::whole`]) or a delta. `read` counts tree bytes read.
    pub(crate) fn stream(
        self: &Arc<Self>,
        have: Option<Arc<Have>>,
        read: impl Fn(u64) + Send + 'static,
    ) -> PackStream {
        let (tx, rx) = mpsc::channel(DEPTH);
        let (done_tx, done_rx) = oneshot::channel();
        let failure = Arc::new(Mutex::new(None));
        let (tree, failed) = (self.clone(), failure.clone());
        tokio::task::spawn_blocking(move || {
            let out = Channel {
                tx: tx.clone(),
                buf: BytesMut::with_capacity(CHUNK),
            };
            let packed = tree.pack_into(out, have.as_deref(), &read);
            let result = match packed {
                Ok((_, digest)) => {
                    if have.is_none() {
                        let _ = tree.whole.set(digest.clone());
                    }
                    Ok(digest)
                }
                Err(e) => {
                    let why = format!("packing {} failed: {e}", tree.root.display());
                    if let Ok(mut f) = failed.lock() {
                        *f = Some(why.clone());
                    }
                    let _ = tx.blocking_send(Err(io::Error::other(why.clone())));
                    Err(why)
                }
            };
            let _ = done_tx.send(result);
        });
        PackStream {
            chunks: rx,
            done: done_rx,
            failure,
        }
    }

    /// Start packing into a [`Recording`] that uploads share: the whole
    /// tree (`have` = `None`) or a delta.
    pub(crate) fn record(self: &Arc<Self>, have: Option<Arc<Have>>) -> Arc<Recording> {
        let to = Arc::new(Recording::default());
        let (tree, rec) = (self.clone(), to.clone());
        tokio::task::spawn_blocking(move || {
            let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let out = Recorder {
                to: rec.clone(),
                buf: BytesMut::with_capacity(CHUNK),
                read: read.clone(),
            };
            let count = |n| {
                read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            };
            let end = match tree.pack_into(out, have.as_deref(), &count) {
                Ok((_, digest)) => {
                    if have.is_none() {
                        let _ = tree.whole.set(digest.clone());
                    }
                    Ok(digest)
                }
                Err(e) => Err(format!("packing {} failed: {e}", tree.root.display())),
            };
            rec.lock().end = Some(end);
            rec.more.notify_waiters();
        });
        to
    }

    /// Bytes of the regular files a pack without `have` reads.
    pub(crate) fn bytes_without(&self, have: &Have) -> u64 {
        self.items
            .iter()
            .filter_map(|i| match &i.kind {
                ItemKind::File { size, sha256, .. } if !have.contains(&(sha256.clone(), *size)) => {
                    Some(*size)
                }
                _ => None,
            })
            .sum()
    }

    /// Pack the whole tree only to learn its digest and size (a dry run):
    /// nothing is kept.
    pub(crate) fn pack_counted(&self) -> io::Result<Digest> {
        let (_, digest) = self.pack_into(io::sink(), None, &|_| {})?;
        let _ = self.whole.set(digest.clone());
        Ok(digest)
    }

    /// Pack the whole tree into memory (tests).
    #[cfg(test)]
    pub(crate) fn pack_whole_in_memory(&self) -> io::Result<(Vec<u8>, Digest)> {
        let (bytes, digest) = self.pack_into(Vec::new(), None, &|_| {})?;
        let _ = self.whole.set(digest.clone());
        Ok((bytes, digest))
    }
}
