//! `swarm update` through the store (issue 16): the release is published
//! first ([`crate::store::publish`]: the packs of every content the store
//! lacks, then the release's document), before any worker is contacted;
//! each updater then gets a small `POST /update-from-store` — a presigned
//! GET URL, valid for minutes, for the release's document, and one for each
//! pack holding content its live release lacks (every pack of the release
//! when the master has no index of that one). An expired URL (410) is
//! answered once with fresh URLs; a host that needs a pack it was not sent
//! (412) gets every pack; a host that cannot reach the store (502) fails,
//! or with `--fallback-direct` gets the direct push.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pki::index::{EntryKind, TreeIndex};
use pki::store::{StorePack, StoreUpdate};

use super::client::Master;
use super::report::{HostResult, interpret};
use super::said::{self, ANSWER_CAP};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::{HostRecord, Op};
use crate::pack::Tree;
use crate::store::gc::StoreLock;
use crate::store::publish::{Published, publish, read_docs, usable};
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
        .block_on(publish(&store, home, &release.info.root, &release.index))
        .map_err(|e| {
            Error::Other(format!(
                "publishing the release to the store {url} failed, so no worker was contacted: {e} (swarm update --direct pushes over mTLS instead)"
            ))
        })?;
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

/// A release the master pushed through the store before, to send a host
/// that no longer keeps it (`rollback --to PREFIX`): `Ok(None)` without a
/// store, or when the master has no single kept index starting with
/// `prefix`, or the store lacks its document or one of its packs (the
/// host's 404 stands).
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
    let lock = store::gc::lock_shared(home)?;
    let store = Store::new(config)?;
    let rt = super::runtime()?;
    let key = pki::store::release_key(&store.prefix(), id);
    let found = rt.block_on(async {
        let listed = store.list(&key).await?;
        let there: std::collections::HashMap<String, u64> = listed
            .into_iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, n)| (id.clone(), n))
            .collect();
        let mut docs = read_docs(&store, home, &there).await?;
        let Some(doc) = docs.remove(id.as_str()) else {
            return Ok::<_, Error>(None);
        };
        let packs: std::collections::HashMap<String, u64> = store
            .list(&format!("{}packs/", store.prefix()))
            .await?
            .into_iter()
            .filter_map(|(k, n)| Some((k.rsplit('/').next()?.to_owned(), n)))
            .collect();
        Ok(usable(&doc, &packs).then_some(doc))
    })?;
    let Some(doc) = found else {
        return Ok(None);
    };
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
            packs_uploaded: 0,
            present: index.files(),
            release_uploaded: false,
            doc,
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
    /// the master kept of it): URLs for the release's document and for the
    /// packs holding what `base` lacks (every pack without a base).
    fn request(&self, base: Option<(&str, &TreeIndex)>, signature: Option<&str>) -> StoreUpdate {
        let doc = &self.published.doc;
        let needed: Option<HashSet<usize>> = base.map(|(_, idx)| {
            let have: HashSet<(&str, u64)> = idx
                .entries()
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .filter_map(|e| Some((e.sha256.as_deref()?, e.size)))
                .collect();
            let lacks: HashSet<(&str, u64)> = self
                .want
                .entries()
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .filter_map(|e| Some((e.sha256.as_deref()?, e.size)))
                .filter(|c| !have.contains(c))
                .collect();
            doc.chunks
                .iter()
                .filter(|c| {
                    c.contents
                        .iter()
                        .any(|(s, n)| lacks.contains(&(s.as_str(), *n)))
                })
                .map(|c| c.pack as usize)
                .collect()
        });
        let prefix = self.store.prefix();
        let packs = doc
            .packs
            .iter()
            .enumerate()
            .filter(|(i, _)| needed.as_ref().is_none_or(|n| n.contains(i)))
            .map(|(_, p)| StorePack {
                sha256: p.sha256.clone(),
                url: self
                    .store
                    .presign_get(&pki::store::pack_key(&prefix, &p.sha256), self.ttl),
            })
            .collect();
        StoreUpdate {
            release_sha256: self.release_sha256.clone(),
            size_bytes: self.size_bytes,
            release_id: self.want_id.clone(),
            git_commit: self.git_commit.clone(),
            release_url: self
                .store
                .presign_get(&pki::store::release_key(&prefix, &self.want_id), self.ttl),
            packs,
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
    use pki::store::{Chunk, PackRef, ReleaseDoc};

    /// What a worker is sent: URLs for the release's document and the
    /// packs holding what its base lacks, each naming one object and
    /// expiring, and no credential anywhere.
    #[test]
    fn a_request_names_only_the_packs_a_host_needs_and_carries_no_credential() {
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
        let (pa, pb) = ("aa".repeat(32), "bb".repeat(32));
        let doc = ReleaseDoc {
            index: String::from_utf8(want.to_bytes()).unwrap(),
            links: Vec::new(),
            packs: vec![
                PackRef {
                    sha256: pa.clone(),
                    size: 10,
                },
                PackRef {
                    sha256: pb.clone(),
                    size: 10,
                },
            ],
            chunks: vec![
                Chunk {
                    pack: 0,
                    offset: 0,
                    len: 10,
                    contents: vec![(a.clone(), 1)],
                },
                Chunk {
                    pack: 1,
                    offset: 0,
                    len: 10,
                    contents: vec![(b.clone(), 1)],
                },
            ],
        };
        let vs = ViaStore {
            store,
            published: Published {
                uploaded: 0,
                uploaded_bytes: 0,
                packs_uploaded: 0,
                present: 2,
                release_uploaded: false,
                doc,
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
        assert_eq!(req.packs.len(), 1, "only b's pack: {req:?}");
        let url = &req.packs[0].url;
        assert!(
            url.starts_with(&format!("http://10.1.2.3:3900/rel/p/packs/{pb}?")),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=60"), "{url}");
        assert!(
            req.release_url.starts_with(&format!(
                "http://10.1.2.3:3900/rel/p/releases/{}?",
                want.release_id()
            )),
            "{}",
            req.release_url
        );
        let body = serde_json::to_string(&req).unwrap();
        assert!(!body.contains("s3cretv4lue"), "{body}");
        assert!(body.len() < 2048, "a small request: {} bytes", body.len());
        assert_eq!(req.signature.as_deref(), Some("{\"sig\":1}"));
        // Without a base: every pack.
        assert_eq!(vs.request(None, None).packs.len(), 2);
    }
}
