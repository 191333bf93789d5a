//! Decompressing an upload: gzip or zstd, told apart by the first four
//! bytes (`28 b5 2f fd` is zstd; anything else is read as gzip and refused
//! as such). Every gzip member is read ([`Members`]), as `tar xzf` does,
//! and every zstd frame, as `zstd -d` does.

use std::io::{self, Read};

use crate::error::{Result, UpdaterError};

/// The largest zstd window accepted, as a power of two: 8 MiB (`zstd -19`
/// uses that; `--long` and `--ultra` frames that need more are refused, so
/// a hostile frame cannot make the decoder allocate up to 2 GiB).
pub(crate) const ZSTD_WINDOW_LOG_MAX: u32 = pki::store::ZSTD_WINDOW_LOG_MAX;

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What [`open`] decompresses: the sniffed head, then the rest, buffered.
pub(super) type Sniffed<R> = io::BufReader<io::Chain<io::Cursor<Vec<u8>>, R>>;

/// The decompressed stream of `reader`, by its magic number.
pub(super) fn open<R: Read>(mut reader: R) -> Result<Decoder<Sniffed<R>>> {
    // Up to 4 bytes, however the upload was chunked, to tell the format.
    let mut head = Vec::with_capacity(4);
    (&mut reader)
        .take(4)
        .read_to_end(&mut head)
        .map_err(|e| UpdaterError::BadUpload(format!("reading the upload: {e}")))?;
    let zstd = head == ZSTD_MAGIC;
    let buffered = io::BufReader::with_capacity(64 * 1024, io::Cursor::new(head).chain(reader));
    if zstd {
        Decoder::zstd(buffered)
    } else {
        Ok(Decoder::Gzip(Members::new(buffered)))
    }
}

/// The decompressor, by the upload's magic number.
pub(super) enum Decoder<R: io::BufRead> {
    Gzip(Members<R>),
    /// Reads every frame to the end of the stream.
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: io::BufRead> Decoder<R> {
    fn zstd(inner: R) -> Result<Self> {
        let mut d = zstd::stream::read::Decoder::with_buffer(inner)
            .map_err(|e| UpdaterError::Internal(format!("zstd decoder: {e}")))?;
        d.window_log_max(ZSTD_WINDOW_LOG_MAX)
            .map_err(|e| UpdaterError::Internal(format!("zstd decoder: {e}")))?;
        Ok(Decoder::Zstd(d))
    }

    /// The reader past the compressed stream (gzip: its trailing bytes
    /// unread; zstd reads to the end itself).
    pub(super) fn into_inner(self) -> Option<R> {
        match self {
            Decoder::Gzip(m) => m.into_inner(),
            Decoder::Zstd(d) => Some(d.finish()),
        }
    }
}

impl<R: io::BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(m) => m.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

/// The gzip members of a stream, one after the other, as `gzip -d` and
/// `tar xzf` read them: a member that follows another (its magic
/// `1f 8b` next) is decoded too; anything else after a member is trailing
/// padding, left in the inner reader (see [`Members::into_inner`]).
pub(super) struct Members<R: io::BufRead> {
    /// `None` only if reading what follows a member failed.
    stage: Option<Stage<R>>,
}

enum Stage<R: io::BufRead> {
    /// Decoding a member.
    Member(flate2::bufread::GzDecoder<R>),
    /// Past the last member.
    After(R),
}

impl<R: io::BufRead> Members<R> {
    fn new(inner: R) -> Self {
        Members {
            stage: Some(Stage::Member(flate2::bufread::GzDecoder::new(inner))),
        }
    }

    /// The reader past the last member (its trailing bytes unread).
    fn into_inner(self) -> Option<R> {
        match self.stage? {
            Stage::Member(d) => Some(d.into_inner()),
            Stage::After(r) => Some(r),
        }
    }
}

impl<R: io::BufRead> Read for Members<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.stage {
                Some(Stage::Member(d)) => {
                    let n = d.read(buf)?;
                    if n > 0 || buf.is_empty() {
                        return Ok(n);
                    }
                }
                _ => return Ok(0),
            }
            // The member ended: another one follows, or padding, or nothing.
            let Some(Stage::Member(d)) = self.stage.take() else {
                return Ok(0);
            };
            let mut inner = d.into_inner();
            let next = inner.fill_buf().map(|b| b.first() == Some(&0x1f));
            self.stage = Some(match next {
                Ok(true) => Stage::Member(flate2::bufread::GzDecoder::new(inner)),
                _ => Stage::After(inner),
            });
            next?;
        }
    }
}
