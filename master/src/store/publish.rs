//! Publishing a release to the store before any worker is touched: every
//! content object the store lacks (read from the tree, checked against the
//! index, compressed as one zstd frame, `objects/<sha256>`), then the index
//! (`indexes/<release_id>`). What is there already (one listing of the
//! prefix) is never uploaded again, so reruns and concurrent masters upload
//! each object once; a key is a content address, so two masters racing on
//! one write the same bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use pki::index::{EntryKind, TreeIndex};
use pki::store::{index_key, object_key};
use serde::Serialize;

use super::Store;
use crate::error::{Error, Result};

/// Uploads at once: each small object is a round trip (and a write the
/// store makes durable), so latency, not bandwidth, bounds 4 at once.
const PARALLEL: usize = 16;
/// The zstd level of stored objects (fast, and most of the gain).
const LEVEL: i32 = 3;

/// What [`publish`] did, and what a push needs of it.
#[derive(Debug, Serialize)]
pub(crate) struct Published {
    /// Objects uploaded now, and their stored bytes.
    pub(crate) uploaded: u64,
    pub(crate) uploaded_bytes: u64,
    /// Objects the release needs that were there already.
    pub(crate) present: u64,
    /// Whether the index was uploaded now.
    pub(crate) index_uploaded: bool,
    /// Stored size of every object of the release, by content SHA-256.
    #[serde(skip)]
    pub(crate) stored: HashMap<String, u64>,
    /// `[path, target]` of every link of the release.
    #[serde(skip)]
    pub(crate) links: Vec<(String, String)>,
}

/// Upload what the store lacks of the release `index` packed from `root`.
pub(crate) async fn publish(store: &Store, root: &Path, index: &TreeIndex) -> Result<Published> {
    let prefix = store.prefix();
    let listed: HashMap<String, u64> = store
        .list(&format!("{prefix}objects/"))
        .await?
        .into_iter()
        .filter_map(|(k, size)| Some((k.rsplit('/').next()?.to_owned(), size)))
        .collect();
    let mut first: HashMap<String, PathBuf> = HashMap::new();
    let mut links = Vec::new();
    for e in index.entries() {
        match (e.kind, &e.sha256) {
            (EntryKind::File, Some(sha)) => {
                first
                    .entry(sha.clone())
                    .or_insert_with(|| root.join(&e.path));
            }
            (EntryKind::Link, Some(sha)) => {
                let path = root.join(&e.path);
                let target = std::fs::read_link(&path).map_err(|e| Error::io(&path, e))?;
                let target = target.to_string_lossy().into_owned();
                if pki::index::sha256_hex(target.as_bytes()) != *sha {
                    return Err(changed(&path));
                }
                links.push((e.path.clone(), target));
            }
            _ => {}
        }
    }
    let mut stored = HashMap::new();
    let mut missing = Vec::new();
    for (sha, path) in first {
        match listed.get(&sha) {
            Some(size) => {
                stored.insert(sha, *size);
            }
            None => missing.push((sha, path)),
        }
    }
    let present = stored.len() as u64;
    let store_ref = store;
    let prefix_ref = &prefix;
    let sizes: HashMap<String, u64> = index
        .entries()
        .iter()
        .filter_map(|e| Some((e.sha256.clone()?, e.size)))
        .collect();
    let sizes = Arc::new(sizes);
    let uploads: Vec<(String, u64)> = futures_util::stream::iter(missing)
        .map(|(sha, path)| {
            let sizes = sizes.clone();
            async move {
                let want = sizes.get(&sha).copied().unwrap_or_default();
                let (sha2, p) = (sha.clone(), path.clone());
                let body = tokio::task::spawn_blocking(move || compress(&p, &sha2, want))
                    .await
                    .map_err(|e| Error::Other(format!("compressing {}: {e}", path.display())))??;
                let len = body
                    .as_file()
                    .metadata()
                    .map_err(|e| Error::io(body.path(), e))?
                    .len();
                store_ref
                    .put_file(&object_key(prefix_ref, &sha), body.path(), len)
                    .await?;
                Ok::<_, Error>((sha, len))
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    let uploaded = uploads.len() as u64;
    let uploaded_bytes = uploads.iter().map(|(_, n)| n).sum();
    stored.extend(uploads);
    let id = index.release_id();
    let key = index_key(&prefix, &id);
    let index_uploaded = store.list(&key).await?.iter().all(|(k, _)| *k != key);
    if index_uploaded {
        store.put(&key, index.to_bytes()).await?;
    }
    Ok(Published {
        uploaded,
        uploaded_bytes,
        present,
        index_uploaded,
        stored,
        links,
    })
}

fn changed(path: &Path) -> Error {
    Error::Other(format!(
        "{} changed since the release was packed: push again",
        path.display()
    ))
}

/// The zstd frame of `path`, written to a temporary file (streamed: no
/// file is ever held in memory), which must hash to `sha` and be `size`
/// bytes.
fn compress(path: &Path, sha: &str, size: u64) -> Result<tempfile::NamedTempFile> {
    use std::io::Read;
    let mut src = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let out = tempfile::NamedTempFile::new().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut enc = zstd::stream::write::Encoder::new(out, LEVEL).map_err(|e| Error::io(path, e))?;
    enc.include_contentsize(true)
        .map_err(|e| Error::io(path, e))?;
    enc.set_pledged_src_size(Some(size))
        .map_err(|e| Error::io(path, e))?;
    // One byte past `size` is enough to tell the file grew.
    let mut limited = (&mut src).take(size.saturating_add(1));
    let (got, n_total) = pki::index::copy_hashing(&mut limited, &mut enc).map_err(|e| match e {
        pki::index::CopyError::Read(e) | pki::index::CopyError::Write(e) => Error::io(path, e),
    })?;
    if n_total != size || got != sha {
        return Err(changed(path));
    }
    enc.finish().map_err(|e| Error::io(path, e))
}
