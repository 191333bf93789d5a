//! Releases through an S3-compatible store (issue 16): how the store is laid
//! out, and the body of the updater's `POST /update-from-store`.
//!
//! Layout under the configured prefix:
//! - `packs/<sha256>`: a pack, named by the SHA-256 of its bytes: zstd
//!   frames back to back, each frame (a [`Chunk`]) the contents of some
//!   files one after the other. A release's new contents go into as few
//!   packs as its size allows, so publishing is a handful of uploads and
//!   each worker a handful of presigned URLs and `Range` downloads, not one
//!   of each per file.
//! - `releases/<release_id>`: a [`ReleaseDoc`] as one zstd frame of JSON:
//!   the release's canonical index (which hashes to the `release_id`), its
//!   link targets, the packs it uses and where in them each content is. A
//!   release whose contents are partly in earlier packs names those chunks:
//!   a content is uploaded once, whichever release brought it.
//!
//! Keys are content addresses: a pack or a release document, once there,
//! never needs writing again. The store is untrusted: a worker checks the
//! index against the `release_id` the master sent over mTLS (and its
//! signature), and every content against the index, before it uses any.

use serde::{Deserialize, Serialize};

/// The key of the pack whose bytes hash to `sha256`, under `prefix`.
pub fn pack_key(prefix: &str, sha256: &str) -> String {
    format!("{}packs/{sha256}", dir(prefix))
}

/// The key of the document of `release_id`, under `prefix`.
pub fn release_key(prefix: &str, release_id: &str) -> String {
    format!("{}releases/{release_id}", dir(prefix))
}

/// `prefix` as a key prefix: empty, or ending in one `/`.
pub fn dir(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// The most bytes a zstd frame of `size` content bytes may take: zstd's
/// worst case (`ZSTD_compressBound`) with room for the frame header. A
/// worker reads no more than this of any chunk.
pub fn max_stored(size: u64) -> u64 {
    size.saturating_add(size / 128).saturating_add(4096)
}

/// The largest release document (compressed) a worker downloads.
pub const MAX_RELEASE_DOC: usize = 64 << 20;

/// A release document's JSON may take at most this many bytes per index
/// entry (plus [`DOC_SLACK`]): a worker decompresses no more.
pub const DOC_BYTES_PER_ENTRY: u64 = 1024;
/// See [`DOC_BYTES_PER_ENTRY`].
pub const DOC_SLACK: u64 = 1 << 20;

/// One pack a release uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// SHA-256 (hex) of the pack's bytes: its key.
    pub sha256: String,
    /// The pack's bytes.
    pub size: u64,
}

/// One zstd frame of a pack: the contents `contents` (`[sha256, size]`)
/// back to back, `len` bytes at `offset` of pack number `pack` (an index
/// into [`ReleaseDoc::packs`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub pack: u32,
    pub offset: u64,
    pub len: u64,
    pub contents: Vec<(String, u64)>,
}

impl Chunk {
    /// Content bytes the frame decompresses to.
    pub fn content_bytes(&self) -> u64 {
        self.contents
            .iter()
            .fold(0u64, |n, (_, s)| n.saturating_add(*s))
    }
}

/// `releases/<release_id>`: everything a worker needs to fetch a release
/// but the bytes of its contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDoc {
    /// The canonical index (`pki::index::TreeIndex::to_bytes`), as text.
    pub index: String,
    /// `[path, target]` of every symbolic link (the index has their hashes).
    pub links: Vec<(String, String)>,
    pub packs: Vec<PackRef>,
    /// Where every content of the release is (a chunk may also hold
    /// contents of other releases that shared its pack).
    pub chunks: Vec<Chunk>,
}

/// One pack the updater may download from: a presigned GET URL, valid for
/// minutes, for that one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePack {
    pub sha256: String,
    pub url: String,
}

/// `POST /update-from-store`: what the master sends instead of the release
/// itself — a presigned URL for the release's document and one for each
/// pack holding content this worker lacks. No credential is ever part of
/// it, and no URL names anything but those objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreUpdate {
    /// The manifest's `sha256` on the host: the whole pack's digest when
    /// the master packed one, else the `release_id` (nothing was uploaded).
    pub release_sha256: String,
    /// The packed release's size (the manifest's `size_bytes`).
    pub size_bytes: u64,
    pub release_id: String,
    #[serde(default)]
    pub git_commit: Option<String>,
    /// Presigned GET of `releases/<release_id>`.
    pub release_url: String,
    pub packs: Vec<StorePack>,
    /// The release signature (issue 15), the same one line of JSON as
    /// `/update`'s `signature` field, checked where `/update` checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The `error` of an updater's answer that could not reach the store
/// (502): the host failed, `--fallback-direct` pushes it directly.
pub const UNREACHABLE: &str = "store unreachable from worker";
/// The `error` of an updater's answer whose URL expired (410): the master
/// asks again once with fresh URLs.
pub const EXPIRED: &str = "presigned URL expired";

/// A release document as stored: one zstd frame of its JSON.
pub fn encode_doc(doc: &ReleaseDoc) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(doc).map_err(std::io::Error::other)?;
    zstd::bulk::compress(&json, 9)
}

/// A stored release document back, reading at most `max_json` bytes of JSON.
pub fn decode_doc(bytes: &[u8], max_json: u64) -> Result<ReleaseDoc, String> {
    use std::io::Read;
    let mut dec = zstd::stream::read::Decoder::new(bytes)
        .map_err(|e| format!("not a zstd frame: {e}"))?
        .single_frame();
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| format!("zstd: {e}"))?;
    let mut json = Vec::new();
    (&mut dec)
        .take(max_json.saturating_add(1))
        .read_to_end(&mut json)
        .map_err(|e| format!("not a zstd frame we accept: {e}"))?;
    if json.len() as u64 > max_json {
        return Err(format!("larger than {max_json} bytes of JSON"));
    }
    serde_json::from_slice(&json).map_err(|e| format!("not a release document: {e}"))
}

/// The largest zstd window (2^23 = 8 MiB) a frame from the network may ask
/// for: the decoder's memory is bounded by it. swarm's own frames (level 1
/// streams, level 3 chunks of at most a few MiB) stay under it.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_content_addresses_under_the_prefix() {
        assert_eq!(pack_key("", "ab"), "packs/ab");
        assert_eq!(pack_key("/rel/", "ab"), "rel/packs/ab");
        assert_eq!(release_key("a/b", "cd"), "a/b/releases/cd");
        assert!(max_stored(0) >= 4096 && max_stored(1 << 20) > 1 << 20);
    }

    #[test]
    fn a_document_round_trips_and_its_json_is_capped() {
        let doc = ReleaseDoc {
            index: "swarm-index 1\n".into(),
            links: vec![("a".into(), "b".into())],
            packs: vec![PackRef {
                sha256: "00".repeat(32),
                size: 10,
            }],
            chunks: vec![Chunk {
                pack: 0,
                offset: 0,
                len: 10,
                contents: vec![("11".repeat(32), 3)],
            }],
        };
        let bytes = encode_doc(&doc).unwrap();
        assert_eq!(decode_doc(&bytes, 1 << 20).unwrap(), doc);
        let e = decode_doc(&bytes, 20).unwrap_err();
        assert!(e.contains("larger than 20"), "{e}");
        assert!(decode_doc(b"not zstd", 1 << 20).is_err());
        let bomb = zstd::bulk::compress(&vec![b' '; 8 << 20], 3).unwrap();
        assert!(decode_doc(&bomb, 1 << 20).unwrap_err().contains("larger"));
    }
}
