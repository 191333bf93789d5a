//! Releases through an S3-compatible store (issue 16): how the store is laid
//! out, and the body of the updater's `POST /update-from-store`.
//!
//! Layout under the configured prefix: `objects/<sha256>` holds the content
//! whose SHA-256 is `<sha256>` (an index entry's), compressed as one zstd
//! frame; `indexes/<release_id>` holds a release's canonical index. Keys
//! are content addresses: an object, once there, never needs writing again,
//! and an altered one is caught by its hash on the worker. The store is
//! untrusted: what a worker installs is checked against the index the
//! master sends over mTLS, never against anything the store says.

use serde::{Deserialize, Serialize};

/// The key of the object holding the content `sha256`, under `prefix`.
pub fn object_key(prefix: &str, sha256: &str) -> String {
    format!("{}objects/{sha256}", dir(prefix))
}

/// The key of the index of `release_id`, under `prefix`.
pub fn index_key(prefix: &str, release_id: &str) -> String {
    format!("{}indexes/{release_id}", dir(prefix))
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

/// The most bytes a stored (zstd) object of `size` content bytes may take:
/// zstd's worst case (`ZSTD_compressBound`) with room for the frame header.
/// A worker reads no more than this of any object.
pub fn max_stored(size: u64) -> u64 {
    size.saturating_add(size / 128).saturating_add(4096)
}

/// One object the updater is to download.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreObject {
    /// The content's SHA-256 (hex), as the index names it.
    pub sha256: String,
    /// Bytes of the stored (compressed) object.
    pub stored_size: u64,
    /// A presigned GET URL for this one object, valid for minutes.
    pub url: String,
}

/// `POST /update-from-store`: what the master sends instead of the release
/// itself. The new index comes whole (`index`) or as a patch of the live
/// release's (`base` and `index_patch`, which must give `release_id`), as a
/// delta push sends it; `objects` are the contents the worker lacks, each
/// with its own expiring URL; `links` the symbolic links' targets (the
/// index carries only their hashes). No credential is ever part of it.
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
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub index_patch: Option<String>,
    pub objects: Vec<StoreObject>,
    /// `[path, target]` of every symbolic link of the release.
    #[serde(default)]
    pub links: Vec<(String, String)>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_content_addresses_under_the_prefix() {
        assert_eq!(object_key("", "ab"), "objects/ab");
        assert_eq!(object_key("/rel/", "ab"), "rel/objects/ab");
        assert_eq!(index_key("a/b", "cd"), "a/b/indexes/cd");
        assert!(max_stored(0) >= 4096 && max_stored(1 << 20) > 1 << 20);
    }
}
