//! `swarm update` through the store (issue 16): the release is published
//! first ([`crate::store::publish`]: every object the store lacks, then the
//! index), before any worker is contacted; each updater then gets a small
//! `POST /update-from-store` — the index (a patch of its live release's when
//! the master kept that one's index, as a delta push does), the commit, the
//! link targets, and presigned GET URLs, valid for minutes, for exactly the
//! contents its live release lacks. An expired URL (410) is answered once
//! with fresh URLs; a base the host refuses (412) with the whole index and
//! every object; a host that cannot reach the store (502) fails, or with
//! `--fallback-direct` gets the direct push.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pki::index::{EntryKind, TreeIndex};
use pki::store::{StoreObject, StoreUpdate};

use super::client::Master;
use super::report::{HostResult, interpret};
use super::said::{self, ANSWER_CAP};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::{HostRecord, Op};
use crate::pack::Tree;
use crate::store::gc::StoreLock;
use crate::store::publish::{Published, publish};
use crate::store::{self, Store};

/// How long a presigned URL stays valid by default.
const URL_TTL: Duration = Duration::from_secs(15 * 60);

/// A release published to the store, ready to be fetched by the hosts.
pub(super) struct ViaStore {
    store: Store,
    pub(super) published: Published,
    want: Arc<TreeIndex>,
    want_id: String,
    release_sha256: String,
    size_bytes: u64,
    git_commit: Option<String>,
    ttl: Duration,
    pub(super) fallback_direct: bool,
    _lock: StoreLock,
}

/// What became of a push through the store.
pub(super) enum Fetched {
    Done(Box<HostResult>),
    /// The host could not reach the store, and `--fallback-direct` says:
    /// push it directly (why it could not).
    Direct(String),
}

/// Publish `release` when a store is set and `--direct` is not given;
/// `Ok(None)` without a store. An unusable store stops the command before
/// any worker is contacted.
pub(super) fn prepare(
    home: &Home,
    release: &Tree,
    direct: bool,
    fallback_direct: bool,
) -> Result<Option<ViaStore>> {
    if direct {
        return Ok(None);
    }
    let Some(config) = store::configured(home)? else {
        return Ok(None);
    };
    let url = config.url();
    let lock = store::gc::lock_shared(home)?;
    let store = Store::new(config)?;
    let rt = super::runtime()?;
    let published = rt
        .block_on(publish(&store, &release.info.root, &release.index))
        .map_err(|e| {
            Error::Other(format!(
                "publishing the release to the store {url} failed, so no worker was contacted: {e} (swarm update --direct pushes over mTLS instead)"
            ))
        })?;
    // The link targets, for a later `rollback --to` through the store (the
    // index names links by hash only).
    let _ = keep_links(home, &release.info.release_id, &published.links);
    Ok(Some(ViaStore {
        store,
        published,
        want: Arc::new(release.index.clone()),
        want_id: release.info.release_id.clone(),
        // Nothing is uploaded to the host: its manifest's sha256 is the
        // whole pack's digest when one was packed, else the release_id.
        release_sha256: release
            .info
            .sha256
            .clone()
            .unwrap_or_else(|| release.info.release_id.clone()),
        size_bytes: release.info.size_bytes.unwrap_or(release.info.tree_bytes),
        git_commit: release.info.git_commit.clone(),
        ttl: url_ttl(),
        fallback_direct,
        _lock: lock,
    }))
}

/// Where the link targets of pushed releases are kept.
fn links_dir(home: &Home) -> std::path::PathBuf {
    home.root().join("store-links")
}

/// Keep `links` as `store-links/<id>`; drop the files of releases whose
/// index the master no longer keeps.
fn keep_links(home: &Home, id: &str, links: &[(String, String)]) -> std::io::Result<()> {
    let dir = links_dir(home);
    std::fs::create_dir_all(&dir)?;
    let body = serde_json::to_vec(links).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(id), body)?;
    let indexes = home.root().join("indexes");
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.file_name() != id && !indexes.join(e.file_name()).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// A release the master pushed through the store before, to send a host
/// that no longer keeps it (`rollback --to PREFIX`): `Ok(None)` without a
/// store, or when the master has no single kept index starting with
/// `prefix`, or the store lacks one of its objects (the host's 404 stands).
pub(super) fn for_rollback(home: &Home, prefix: &str) -> Result<Option<ViaStore>> {
    let Some(config) = store::configured(home)? else {
        return Ok(None);
    };
    let indexes = home.root().join("indexes");
    let ids: Vec<String> = std::fs::read_dir(&indexes)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix) && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    let [id] = ids.as_slice() else {
        return Ok(None);
    };
    let Some(index) = super::delta::kept_index_in(&indexes, id) else {
        return Ok(None);
    };
    let links: Vec<(String, String)> = match std::fs::read(links_dir(home).join(id)) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let has_links = index.entries().iter().any(|e| e.kind == EntryKind::Link);
    if has_links && links.is_empty() {
        return Ok(None);
    }
    let lock = store::gc::lock_shared(home)?;
    let store = Store::new(config)?;
    let prefix_key = format!("{}objects/", store.prefix());
    let listed = super::runtime()?.block_on(store.list(&prefix_key))?;
    let stored: std::collections::HashMap<String, u64> = listed
        .into_iter()
        .filter_map(|(k, n)| Some((k.rsplit('/').next()?.to_owned(), n)))
        .collect();
    let all_there = index
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .all(|e| e.sha256.as_ref().is_some_and(|s| stored.contains_key(s)));
    if !all_there {
        return Ok(None);
    }
    let size: u64 = index
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.size)
        .sum();
    Ok(Some(ViaStore {
        store,
        published: Published {
            uploaded: 0,
            uploaded_bytes: 0,
            present: stored.len() as u64,
            index_uploaded: false,
            stored,
            links,
        },
        want_id: id.clone(),
        release_sha256: id.clone(),
        want: Arc::new(index),
        size_bytes: size,
        git_commit: None,
        ttl: url_ttl(),
        fallback_direct: false,
        _lock: lock,
    }))
}

/// [`URL_TTL`]; debug builds (the tests) may shorten it with
/// `SWARM_STORE_URL_TTL_SECS`.
fn url_ttl() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(secs) = std::env::var("SWARM_STORE_URL_TTL_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_secs(secs);
    }
    URL_TTL
}

impl ViaStore {
    /// The release it sends.
    pub(super) fn release_id(&self) -> &str {
        &self.want_id
    }

    /// The request for a host on `base` (its live release and the index
    /// the master kept of it), or for one that gets everything.
    fn request(&self, base: Option<(&str, &TreeIndex)>, signature: Option<&str>) -> StoreUpdate {
        let have: HashSet<(&str, u64)> = base
            .map(|(_, idx)| {
                idx.entries()
                    .iter()
                    .filter(|e| e.kind == EntryKind::File)
                    .filter_map(|e| Some((e.sha256.as_deref()?, e.size)))
                    .collect()
            })
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let mut objects = Vec::new();
        for e in self.want.entries() {
            let Some(sha) = e.sha256.as_deref() else {
                continue;
            };
            if e.kind != EntryKind::File || have.contains(&(sha, e.size)) || !seen.insert(sha) {
                continue;
            }
            let key = pki::store::object_key(&self.store.prefix(), sha);
            objects.push(StoreObject {
                sha256: sha.to_owned(),
                stored_size: self.published.stored.get(sha).copied().unwrap_or_default(),
                url: self.store.presign_get(&key, self.ttl),
            });
        }
        let (base_id, index, index_patch) = match base {
            Some((id, idx)) => (Some(id.to_owned()), None, Some(idx.patch_to(&self.want))),
            None => (
                None,
                Some(String::from_utf8_lossy(&self.want.to_bytes()).into_owned()),
                None,
            ),
        };
        StoreUpdate {
            release_sha256: self.release_sha256.clone(),
            size_bytes: self.size_bytes,
            release_id: self.want.release_id(),
            git_commit: self.git_commit.clone(),
            base: base_id,
            index,
            index_patch,
            objects,
            links: self.published.links.clone(),
            signature: signature.map(str::to_owned),
        }
    }

    /// Push to one host through the store.
    pub(super) async fn push(
        &self,
        master: &Master,
        client: &reqwest::Client,
        rec: &HostRecord,
        base: Option<(String, TreeIndex)>,
        timeout: Duration,
        started: Instant,
    ) -> Fetched {
        let mut base = base;
        let mut retried_expired = false;
        loop {
            let req = self.request(
                base.as_ref().map(|(id, idx)| (id.as_str(), idx)),
                master.signature(),
            );
            let sent = client
                .post(rec.updater_url("/update-from-store"))
                .json(&req)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    return Fetched::Done(Box::new(HostResult::error(
                        rec,
                        master.describe(&e, timeout),
                        started,
                    )));
                }
            };
            let (status, body) = match said::read_answer(resp, ANSWER_CAP).await {
                Ok(a) => a,
                Err(why) => {
                    return Fetched::Done(Box::new(HostResult::error(
                        rec,
                        format!("answer unusable: {why}"),
                        started,
                    )));
                }
            };
            let mut r = interpret(Op::Update, rec, status, &body, Some(&self.want_id), started);
            match status.as_u16() {
                410 if !retried_expired => {
                    retried_expired = true;
                    continue;
                }
                412 if base.is_some() => {
                    base = None;
                    continue;
                }
                502 if self.fallback_direct => return Fetched::Direct(r.detail),
                _ => {}
            }
            r.store = true;
            return Fetched::Done(Box::new(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use pki::index::IndexEntry;

    /// What a worker is sent: URLs for exactly the contents its base lacks,
    /// each naming one object and expiring, and no credential anywhere.
    #[test]
    fn a_request_names_only_missing_objects_and_carries_no_credential() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(tmp.path())).unwrap();
        let creds = tmp.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = GKkeyid0123\naws_secret_access_key = s3cretv4lue\n",
        )
        .unwrap();
        let store = Store::new(StoreConfig {
            bucket: "rel".into(),
            prefix: "p".into(),
            endpoint: "http://127.0.0.1:9".into(),
            worker_endpoint: Some("http://10.1.2.3:3900".into()),
            region: "garage".into(),
            path_style: true,
            credentials_file: Some(creds),
        })
        .unwrap();
        let (a, b) = (pki::index::sha256_hex(b"a"), pki::index::sha256_hex(b"b"));
        let want = TreeIndex::new(vec![
            IndexEntry::file("x", 0o644, 1, a.clone()),
            IndexEntry::file("y", 0o644, 1, b.clone()),
            IndexEntry::file("z", 0o644, 1, b.clone()),
        ])
        .unwrap();
        let base = TreeIndex::new(vec![IndexEntry::file("old", 0o644, 1, a.clone())]).unwrap();
        let vs = ViaStore {
            store,
            published: Published {
                uploaded: 0,
                uploaded_bytes: 0,
                present: 2,
                index_uploaded: false,
                stored: [(a.clone(), 10), (b.clone(), 10)].into_iter().collect(),
                links: Vec::new(),
            },
            want: Arc::new(want.clone()),
            want_id: want.release_id(),
            release_sha256: want.release_id(),
            size_bytes: 2,
            git_commit: None,
            ttl: Duration::from_secs(60),
            fallback_direct: false,
            _lock: store::gc::lock_shared(&home).unwrap(),
        };
        let req = vs.request(Some(("base", &base)), Some("{\"sig\":1}"));
        assert_eq!(req.objects.len(), 1, "only b, once: {req:?}");
        let url = &req.objects[0].url;
        assert!(
            url.starts_with(&format!("http://10.1.2.3:3900/rel/p/objects/{b}?")),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=60"), "{url}");
        assert!(req.index.is_none() && req.index_patch.is_some());
        let body = serde_json::to_string(&req).unwrap();
        assert!(!body.contains("s3cretv4lue"), "{body}");
        // Without a base: every distinct content.
        assert_eq!(req.signature.as_deref(), Some("{\"sig\":1}"));
        assert_eq!(vs.request(None, None).objects.len(), 2);
    }
}
