//! Receiving `POST /update`: the multipart body ([`Form`]) is read field by
//! field, at most [`MAX_FIELDS`] of them, text fields capped by name; the
//! `tarball` field's chunks are hashed (SHA-256) and counted on the async
//! side and handed through a bounded channel to a blocking task that
//! decompresses and extracts them. The upload is never held whole in memory
//! nor written as a temporary tarball. The digest is checked at the end,
//! whichever order the fields came in.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use multer::Field;
use pki::wire::Manifest;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::extract::{Caps, Extracted, extract};
use super::form::{Form, multer_cause};
use super::guard::quote;
use crate::error::{Result, UpdaterError};

/// Chunks in flight between the network and the extractor.
const CHANNEL_DEPTH: usize = 16;
/// Most parts in one form (we read 4; newer masters may add a few).
pub const MAX_FIELDS: usize = 16;
/// Largest `sha256` field (64 hex digits, and room for whitespace).
const MAX_SHA256_FIELD: usize = 128;
/// Largest `git_commit` field (a SHA-256 object name is 64 hex digits).
const MAX_COMMIT_FIELD: usize = 128;
/// Largest other text field.
const MAX_TEXT_FIELD: usize = 4096;
/// Largest `index` field of a delta push (about 200 bytes an entry).
const MAX_INDEX_FIELD: usize = 32 << 20;
/// Longest field name.
const MAX_FIELD_NAME: usize = 64;

/// A received, verified upload (the tree is in staging).
#[derive(Debug)]
pub struct Received {
    pub sha256: String,
    pub size_bytes: u64,
    pub extracted: Extracted,
    pub git_commit: Option<String>,
    /// The `confirm_self` field, as sent (`/update-self` requires `true`).
    pub confirm_self: Option<String>,
    /// A delta push (issue 12).
    pub delta: Option<DeltaFields>,
    /// The `signature` field, as sent (issue 15; checked by `signing`).
    pub signature: Option<String>,
}

/// How a delta push sent the new index.
#[derive(Clone, Debug)]
pub enum IndexSent {
    Whole(String),
    Patch { patch: String, release_id: String },
}

impl IndexSent {
    /// Bytes it took on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            IndexSent::Whole(s) => s.len(),
            IndexSent::Patch { patch, release_id } => patch.len() + release_id.len(),
        }
    }
}

/// The fields of a delta push.
#[derive(Debug)]
pub struct DeltaFields {
    /// The `release_id` the tarball is a delta against (the live one);
    /// `None` for a store push with nothing to reuse (issue 16).
    pub base: Option<String>,
    /// Contents fetched from the store (issue 16), each checked against its
    /// SHA-256, outside staging: into the content store with the entry
    /// they were fetched for, before staging is completed from it.
    pub fetched: Vec<(std::path::PathBuf, pki::index::IndexEntry)>,
    /// The whole new release's index (`index`, canonical bytes), or what
    /// turns the base's index into it (`index_patch`) and the `release_id`
    /// that must come out.
    pub index: IndexSent,
    /// The digest of the whole release as the master packed it for hosts
    /// that get it whole: the manifest's `sha256`, so one release has one
    /// sha256 on every host (the delta's own digest is checked on receipt).
    pub release_sha256: Option<String>,
}

impl Received {
    /// The manifest for this release.
    pub fn manifest(&self, pushed_by: String) -> Manifest {
        Manifest {
            sha256: self.sha256.clone(),
            size_bytes: self.size_bytes,
            files: self.extracted.files,
            git_commit: self.git_commit.clone(),
            pushed_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            pushed_by,
            release_id: Some(self.extracted.index.release_id()),
        }
    }
}

/// Read the whole form, extracting the tarball into `staging`.
pub async fn receive(mut form: Form, staging: &Path, caps: &Caps) -> Result<Received> {
    let mut claimed: Option<String> = None;
    let mut git_commit: Option<String> = None;
    let mut confirm_self: Option<String> = None;
    let mut base: Option<String> = None;
    let mut index: Option<String> = None;
    let mut release_sha256: Option<String> = None;
    let mut index_patch: Option<String> = None;
    let mut release_id: Option<String> = None;
    let mut tarball: Option<(String, u64, Extracted)> = None;
    let mut signature: Option<String> = None;
    let mut fields = 0;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(UpdaterError::BadUpload(format!(
                "the form has more than {MAX_FIELDS} fields; send sha256, tarball and git_commit"
            )));
        }
        let raw = field.name().unwrap_or_default();
        if raw.len() > MAX_FIELD_NAME {
            return Err(UpdaterError::BadUpload(format!(
                "a field name is longer than {MAX_FIELD_NAME} bytes: {:?}",
                quote(raw.as_bytes())
            )));
        }
        let name = quote(raw.as_bytes());
        match name.as_str() {
            "sha256" => {
                claimed = Some(
                    text(field, &name, MAX_SHA256_FIELD)
                        .await?
                        .to_ascii_lowercase(),
                );
            }
            "git_commit" => {
                git_commit =
                    Some(text(field, &name, MAX_COMMIT_FIELD).await?).filter(|s| !s.is_empty());
            }
            "tarball" => {
                if tarball.is_some() {
                    return Err(UpdaterError::BadUpload(
                        "two `tarball` fields; send one".into(),
                    ));
                }
                tarball = Some(stream_tarball(field, staging.to_owned(), caps.clone()).await?);
            }
            "confirm_self" => confirm_self = Some(text(field, &name, MAX_TEXT_FIELD).await?),
            "base" => {
                base = Some(
                    text(field, &name, MAX_SHA256_FIELD)
                        .await?
                        .to_ascii_lowercase(),
                )
            }
            "index" => index = Some(text_raw(field, &name, MAX_INDEX_FIELD).await?),
            "index_patch" => index_patch = Some(text_raw(field, &name, MAX_INDEX_FIELD).await?),
            "release_id" => {
                release_id = Some(
                    text(field, &name, MAX_SHA256_FIELD)
                        .await?
                        .to_ascii_lowercase(),
                )
            }
            "release_sha256" => {
                let v = text(field, &name, MAX_SHA256_FIELD)
                    .await?
                    .to_ascii_lowercase();
                if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(UpdaterError::BadUpload(
                        "field `release_sha256` is not a hex SHA-256".into(),
                    ));
                }
                release_sha256 = Some(v);
            }
            "signature" => {
                signature = Some(text(field, &name, pki::sign::MAX_SIGNATURE_FIELD).await?)
            }
            // Fields of newer masters: read and ignored.
            _ => {
                text(field, &name, MAX_TEXT_FIELD).await?;
            }
        }
    }
    let (actual, size_bytes, extracted) = tarball.ok_or_else(|| {
        UpdaterError::BadUpload("missing field `tarball` (curl -F tarball=@tree.tgz)".into())
    })?;
    let claimed = claimed.ok_or_else(|| {
        UpdaterError::BadUpload("missing field `sha256` (the hex SHA-256 of the tarball)".into())
    })?;
    if claimed != actual {
        return Err(UpdaterError::DigestMismatch { claimed, actual });
    }
    let sent = match (index, index_patch, release_id) {
        (Some(i), None, None) => Some(IndexSent::Whole(i)),
        (None, Some(patch), Some(release_id)) => Some(IndexSent::Patch { patch, release_id }),
        (None, None, None) => None,
        _ => {
            return Err(UpdaterError::BadUpload(
                "a delta push sends `index`, or `index_patch` with `release_id`".into(),
            ));
        }
    };
    let delta = match (base, sent) {
        (Some(base), Some(index)) => Some(DeltaFields {
            base: Some(base),
            fetched: Vec::new(),
            index,
            release_sha256,
        }),
        (None, None) => None,
        _ => {
            return Err(UpdaterError::BadUpload(
                "a delta push sends `base` and its index (`index`, or `index_patch` and `release_id`), or neither"
                    .into(),
            ));
        }
    };
    Ok(Received {
        sha256: actual,
        size_bytes,
        extracted,
        git_commit,
        confirm_self,
        delta,
        signature,
    })
}

/// A multipart error, its cause said (multer's own, or the body's).
fn multipart_error(cause: String) -> UpdaterError {
    UpdaterError::BadUpload(format!(
        "bad multipart/form-data body: {cause} (send -F sha256=… -F tarball=@tree.tgz)"
    ))
}

/// [`text`], trimmed.
async fn text(field: Field<'_>, name: &str, max: usize) -> Result<String> {
    text_raw(field, name, max)
        .await
        .map(|s| s.trim().to_owned())
}

/// A text field of at most `max` bytes, as sent.
async fn text_raw(mut field: Field<'_>, name: &str, max: usize) -> Result<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multipart_error(multer_cause(&e)))?
    {
        if buf.len() + chunk.len() > max {
            return Err(UpdaterError::BadUpload(format!(
                "field `{name}` is longer than {max} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .map_err(|_| UpdaterError::BadUpload(format!("field `{name}` is not UTF-8")))
}

/// Hash and count the field on this side; extract on a blocking thread.
async fn stream_tarball(
    field: Field<'_>,
    staging: PathBuf,
    caps: Caps,
) -> Result<(String, u64, Extracted)> {
    pump(
        field.map_err(|e| multipart_error(multer_cause(&e))),
        staging,
        caps,
    )
    .await
}

/// [`stream_tarball`] over any stream of chunks.
async fn pump(
    chunks: impl Stream<Item = Result<Bytes>>,
    staging: PathBuf,
    caps: Caps,
) -> Result<(String, u64, Extracted)> {
    let mut chunks = std::pin::pin!(chunks);
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let task_caps = caps.clone();
    let mut task =
        tokio::task::spawn_blocking(move || extract(ChannelReader::new(rx), &staging, &task_caps));
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut tx = Some(tx);
    let mut early: Option<UpdaterError> = None;
    let mut done: Option<Extracted> = None;
    loop {
        let chunk = match chunks.next().await {
            Some(Ok(c)) => c,
            None => break,
            Some(Err(e)) => {
                early = Some(e);
                break;
            }
        };
        size += chunk.len() as u64;
        if size > caps.max_compressed {
            early = Some(UpdaterError::Cap(format!(
                "the upload is larger than {} bytes (--max-upload-bytes)",
                caps.max_compressed
            )));
            break;
        }
        hasher.update(&chunk);
        if let Some(sender) = &tx
            && sender.send(chunk).await.is_err()
        {
            // The extractor stopped reading before the end of the upload
            // (it reads to EOF when it succeeds): it failed. Wait for its
            // error (it is returning) and answer now, without reading or
            // hashing the rest of the body.
            tx = None;
            let extracted = (&mut task)
                .await
                .map_err(|e| UpdaterError::Internal(format!("extraction task: {e}")))??;
            done = Some(extracted);
        }
    }
    drop(tx);
    let result = match done {
        Some(r) => Ok(Ok(r)),
        None => task
            .await
            .map_err(|e| UpdaterError::Internal(format!("extraction task: {e}"))),
    };
    if let Some(e) = early {
        return Err(e);
    }
    let extracted = result??;
    Ok((hex::encode(hasher.finalize()), size, extracted))
}

/// A blocking `Read` over the chunks the async side sends; EOF when the
/// sender is dropped.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    buf: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            buf: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.buf = b,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_extraction_stops_reading_the_upload() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("stage");
        std::fs::create_dir(&staging).unwrap();
        // Not gzip, then an endless body: only stopping at the extractor's
        // error ends this.
        let body = futures_util::stream::once(async { Ok(Bytes::from_static(b"not gzip at all")) })
            .chain(futures_util::stream::repeat_with(|| {
                Ok(Bytes::from(vec![0u8; 64 * 1024]))
            }));
        let caps = Caps {
            max_compressed: u64::MAX,
            ..Caps::default()
        };
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            pump(body, staging, caps),
        )
        .await
        .expect("the upload was read on after the extractor failed");
        assert!(matches!(r, Err(UpdaterError::BadUpload(_))), "{r:?}");
    }
}
