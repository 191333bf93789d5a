//! Publishing a release to the store before any worker is touched: the
//! contents the store lacks, packed ([`pack`]) into as few `packs/<sha256>`
//! as the release's size allows, then its document (`releases/<id>`: the
//! index, the link targets, where each content is). Contents an earlier
//! release brought are found through the documents already in the store
//! (each read once and kept in `$SWARM_HOME/store-docs/`) and named, not
//! uploaded again; a rerun finds the release's own document and uploads
//! nothing; a pack is named by its bytes' hash and packing is
//! deterministic, so two masters publishing the same release write the
//! same keys with the same bytes.

mod pack;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use futures_util::{StreamExt, TryStreamExt};
use pki::index::{EntryKind, TreeIndex};
use pki::store::{Chunk, MAX_RELEASE_DOC, PackRef, ReleaseDoc, pack_key, release_key};
use serde::Serialize;

use super::Store;
use crate::error::{Error, Result};
use crate::home::Home;

/// Packs uploaded at once.
const PARALLEL: usize = 4;
/// Release documents read from the store at once.
const READ_PARALLEL: usize = 8;
/// The most JSON a release document read back may hold.
const MAX_DOC_JSON: u64 = 1 << 30;

/// What [`publish`] did, and what a push needs of it.
#[derive(Debug, Serialize)]
pub(crate) struct Published {
    /// Contents uploaded now (in new packs).
    pub(crate) uploaded: u64,
    /// Bytes uploaded now: the new packs and the release document.
    pub(crate) uploaded_bytes: u64,
    /// Packs uploaded now.
    pub(crate) packs_uploaded: u64,
    /// Contents of the release the store held already.
    pub(crate) present: u64,
    /// Whether the release document was uploaded now.
    pub(crate) release_uploaded: bool,
    /// The release's document, as the store holds it.
    #[serde(skip)]
    pub(crate) doc: ReleaseDoc,
}

/// Upload what the store lacks of the release `index` packed from `root`.
pub(crate) async fn publish(
    store: &Store,
    home: &Home,
    root: &Path,
    index: &TreeIndex,
) -> Result<Published> {
    let prefix = store.prefix();
    let id = index.release_id();
    let packs_there = listed(store, &format!("{prefix}packs/")).await?;
    let docs_there = listed(store, &format!("{prefix}releases/")).await?;
    let docs = read_docs(store, home, &docs_there).await?;

    let contents = distinct_contents(index);
    // A rerun: the release's own document, with every pack it names.
    if let Some(doc) = docs.get(&id).filter(|d| usable(d, &packs_there)) {
        return Ok(Published {
            uploaded: 0,
            uploaded_bytes: 0,
            packs_uploaded: 0,
            present: contents.len() as u64,
            release_uploaded: false,
            doc: doc.clone(),
        });
    }
    let located = locations(&docs, &packs_there);
    let mut doc = ReleaseDoc {
        index: String::from_utf8_lossy(&index.to_bytes()).into_owned(),
        links: links(root, index)?,
        ..ReleaseDoc::default()
    };
    let mut pack_no: HashMap<String, u32> = HashMap::new();
    let mut reused: HashSet<(String, u64)> = HashSet::new();
    let mut missing = Vec::new();
    let mut present = 0u64;
    for (sha, size, path) in contents {
        match located.get(&(sha.as_str(), size)) {
            Some((pack, chunk)) => {
                present += 1;
                if reused.insert((pack.sha256.clone(), chunk.offset)) {
                    let n = number(&mut doc.packs, &mut pack_no, pack);
                    doc.chunks.push(Chunk {
                        pack: n,
                        ..(*chunk).clone()
                    });
                }
            }
            None => missing.push((sha, size, root.join(path))),
        }
    }
    let uploaded = missing.len() as u64;
    let built = tokio::task::spawn_blocking(move || pack::build(missing))
        .await
        .map_err(|e| Error::Other(format!("packing the release for the store: {e}")))??;
    let mut to_upload = Vec::new();
    for p in built {
        let n = number(&mut doc.packs, &mut pack_no, &p.pack);
        doc.chunks.extend(p.chunks.iter().map(|c| Chunk {
            pack: n,
            ..c.clone()
        }));
        if packs_there.get(&p.pack.sha256) != Some(&p.pack.size) {
            to_upload.push(p);
        }
    }
    let packs_uploaded = to_upload.len() as u64;
    let mut uploaded_bytes: u64 = to_upload.iter().map(|p| p.pack.size).sum();
    futures_util::stream::iter(to_upload)
        .map(|p| {
            let key = pack_key(&prefix, &p.pack.sha256);
            async move { store.put_file(&key, p.file.path(), p.pack.size).await }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let body = pki::store::encode_doc(&doc)
        .map_err(|e| Error::Other(format!("encoding the release document: {e}")))?;
    uploaded_bytes += body.len() as u64;
    store.put(&release_key(&prefix, &id), body.clone()).await?;
    cache_doc(home, &id, &body);
    Ok(Published {
        uploaded,
        uploaded_bytes,
        packs_uploaded,
        present,
        release_uploaded: true,
        doc,
    })
}

/// The keys under `prefix`, by their last component, with their sizes.
async fn listed(store: &Store, prefix: &str) -> Result<HashMap<String, u64>> {
    Ok(store
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|(k, size)| Some((k.rsplit('/').next()?.to_owned(), size)))
        .collect())
}

/// Whether every pack `doc` names is in the store, at its size.
pub(crate) fn usable(doc: &ReleaseDoc, packs_there: &HashMap<String, u64>) -> bool {
    doc.packs
        .iter()
        .all(|p| packs_there.get(&p.sha256) == Some(&p.size))
}

/// The number of `pack` in `packs`, added when new.
fn number(packs: &mut Vec<PackRef>, numbers: &mut HashMap<String, u32>, pack: &PackRef) -> u32 {
    *numbers.entry(pack.sha256.clone()).or_insert_with(|| {
        packs.push(pack.clone());
        u32::try_from(packs.len() - 1).unwrap_or(u32::MAX)
    })
}

/// Every distinct `(sha256, size)` of a file of `index`, with the first
/// path that has it, in index order (which keeps like files together in a
/// pack).
fn distinct_contents(index: &TreeIndex) -> Vec<(String, u64, String)> {
    let mut seen = HashSet::new();
    index
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| {
            let sha = e.sha256.clone()?;
            seen.insert((sha.clone(), e.size))
                .then(|| (sha, e.size, e.path.clone()))
        })
        .collect()
}

/// Where each content is in the store: the first chunk of a usable
/// document (all its packs there) that holds it.
fn locations<'a>(
    docs: &'a HashMap<String, ReleaseDoc>,
    packs_there: &HashMap<String, u64>,
) -> HashMap<(&'a str, u64), (&'a PackRef, &'a Chunk)> {
    let mut at = HashMap::new();
    for doc in docs.values() {
        for chunk in &doc.chunks {
            let Some(pack) = doc.packs.get(chunk.pack as usize) else {
                continue;
            };
            if packs_there.get(&pack.sha256) != Some(&pack.size) {
                continue;
            }
            for (sha, size) in &chunk.contents {
                at.entry((sha.as_str(), *size)).or_insert((pack, chunk));
            }
        }
    }
    at
}

/// `[path, target]` of every link of `index`, read from `root` and checked
/// against the index.
fn links(root: &Path, index: &TreeIndex) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in index.entries() {
        if let (EntryKind::Link, Some(sha)) = (e.kind, &e.sha256) {
            let path = root.join(&e.path);
            let target = std::fs::read_link(&path).map_err(|e| Error::io(&path, e))?;
            let target = target.to_string_lossy().into_owned();
            if pki::index::sha256_hex(target.as_bytes()) != *sha {
                return Err(pack::changed(&path));
            }
            out.push((e.path.clone(), target));
        }
    }
    Ok(out)
}

/// Where release documents read from the store are kept.
fn docs_dir(home: &Home) -> std::path::PathBuf {
    home.root().join("store-docs")
}

/// Keep a release document the store holds (best effort: it is only a
/// cache of the store).
fn cache_doc(home: &Home, id: &str, body: &[u8]) {
    let dir = docs_dir(home);
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = dir.join(format!(".{id}.tmp"));
        if std::fs::write(&tmp, body).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(id));
        }
    }
}

/// The documents of the releases `there` (id → stored size): from the
/// cache when it holds that id at that size, else read from the store
/// (and cached). A document that does not decode, or holds another
/// release's index, is left out (it is the store's, and untrusted: the
/// release it names gets a new one). The
/// cache loses the ids the store no longer has.
pub(crate) async fn read_docs(
    store: &Store,
    home: &Home,
    there: &HashMap<String, u64>,
) -> Result<HashMap<String, ReleaseDoc>> {
    let dir = docs_dir(home);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !there.contains_key(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let prefix = store.prefix();
    let wanted: Vec<(String, u64)> = there
        .iter()
        .filter(|(id, _)| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(id, size)| (id.clone(), *size))
        .collect();
    let read: Vec<Option<(String, ReleaseDoc)>> = futures_util::stream::iter(wanted)
        .map(|(id, size)| {
            let (dir, prefix) = (&dir, &prefix);
            async move {
                let cached = std::fs::read(dir.join(&id))
                    .ok()
                    .filter(|b| b.len() as u64 == size);
                let body = match cached {
                    Some(b) => b,
                    None => {
                        if size > MAX_RELEASE_DOC as u64 {
                            return Ok(None);
                        }
                        let b = store
                            .get(&release_key(prefix, &id), MAX_RELEASE_DOC)
                            .await?;
                        cache_doc(home, &id, &b);
                        b
                    }
                };
                let decoded = pki::store::decode_doc(&body, MAX_DOC_JSON).and_then(|doc| {
                    // A document must hold its own release's index.
                    let got = pki::index::sha256_hex(doc.index.as_bytes());
                    if got == id {
                        Ok(doc)
                    } else {
                        Err(format!("it holds the index of release {got}"))
                    }
                });
                match decoded {
                    Ok(doc) => Ok::<_, Error>(Some((id, doc))),
                    Err(why) => {
                        eprintln!(
                            "warning: the store's document of release {id}: {}; ignored",
                            pki::text::sanitize(&why, 200)
                        );
                        Ok(None)
                    }
                }
            }
        })
        .buffer_unordered(READ_PARALLEL)
        .try_collect()
        .await?;
    Ok(read.into_iter().flatten().collect())
}
