//! `POST /update-from-store` (issue 16): the master sends presigned GET
//! URLs for the release's document and for the packs holding what this
//! worker may lack; the updater downloads the document (`download`), checks
//! its index against the `release_id` the master sent, works out which
//! contents its own content store lacks, downloads just the chunks holding
//! them (`plan`: ranges of packs, bounded parallelism, deadlines, retries
//! with backoff, resume by `Range`, every byte capped), checks every
//! content against its hash as it decompresses it (`unpack`), writes the
//! fetched files into staging through the one extractor (`assemble`), and
//! hands staging and the index to the same completion, hook, flip,
//! restart, probe and revert path as a delta push (`ops::stage`), which
//! links the rest from the content store. Nothing here holds a credential:
//! a URL names one object and expires.
//!
//! Downloads live in `<install>/.fetch/` until staging has them; a crash
//! mid-download leaves `.part` files the next push resumes (or, when they
//! are not part of it, removes).

mod assemble;
mod download;
mod plan;
mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use pki::index::{EntryKind, TreeIndex};
use pki::store::{DOC_BYTES_PER_ENTRY, DOC_SLACK, MAX_RELEASE_DOC, StoreUpdate};

use crate::error::{Result, UpdaterError};
use crate::receive::{Caps, DeltaFields, IndexSent, Received};
use crate::state::blocking;

/// Ranges downloaded at once.
const PARALLEL: usize = 8;

/// The directory downloads are kept in, under the install dir.
pub fn fetch_dir(install: &Path) -> PathBuf {
    install.join(".fetch")
}

/// Debug builds only: `SWARM_UPDATER_FETCH_DELAY_MS` holds every download
/// back that long (the tests' slow link, for an expiring URL).
pub(crate) async fn slow_down() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("SWARM_UPDATER_FETCH_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

fn hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetch `req` into `staging` (empty); `store_dir` is the content store,
/// `install` the install dir. The result goes through the same completion
/// as a delta push.
pub async fn receive(
    req: StoreUpdate,
    staging: &Path,
    store_dir: &Path,
    install: &Path,
    caps: &Caps,
) -> Result<Received> {
    if !hex64(&req.release_sha256) || !hex64(&req.release_id) {
        return Err(UpdaterError::BadUpload(
            "release_sha256 and release_id must be hex SHA-256s".into(),
        ));
    }
    let release_sha256 = req.release_sha256.to_ascii_lowercase();
    let release_id = req.release_id.to_ascii_lowercase();
    if req
        .signature
        .as_ref()
        .is_some_and(|s| s.len() > pki::sign::MAX_SIGNATURE_FIELD)
    {
        return Err(UpdaterError::BadUpload(format!(
            "`signature` is longer than {} bytes",
            pki::sign::MAX_SIGNATURE_FIELD
        )));
    }
    if req.packs.len() as u64 > caps.max_entries {
        return Err(UpdaterError::Cap(format!(
            "the request names more than {} packs (--max-entries)",
            caps.max_entries
        )));
    }
    let mut named = HashSet::new();
    for p in &req.packs {
        if !hex64(&p.sha256) || !named.insert(p.sha256.as_str()) {
            return Err(UpdaterError::BadUpload(format!(
                "pack {:?}: not a hex SHA-256, or named twice",
                pki::text::sanitize(&p.sha256, 80)
            )));
        }
    }
    let client = download::client()?;
    let t0 = std::time::Instant::now();
    let body = download::small(
        &client,
        &req.release_url,
        "the release document",
        MAX_RELEASE_DOC,
    )
    .await?;
    let doc_bytes = body.len() as u64;
    let (c, want_id) = (caps.clone(), release_id.clone());
    let (doc, want) = blocking(move || read_doc(&body, &want_id, &c)).await?;

    let (sd, w) = (store_dir.to_owned(), want.clone());
    let doc_ms = crate::ms(t0);
    let t1 = std::time::Instant::now();
    let lacking = blocking(move || lacks(&sd, &w)).await?;
    let lacks_ms = crate::ms(t1);
    let t2 = std::time::Instant::now();
    let ranges = plan::plan(&doc, &lacking, &req.packs, caps)?;
    let dir = fetch_dir(install);
    let keep: HashSet<String> = ranges.iter().map(plan::Range::part_name).collect();
    let d = dir.clone();
    blocking(move || prepare_dir(&d, &keep)).await?;
    let needed = std::sync::Arc::new(lacking);
    let fetched: Vec<Vec<(String, PathBuf)>> = futures_util::stream::iter(ranges)
        .map(|r| {
            let (client, dir, needed) = (&client, dir.clone(), needed.clone());
            async move {
                let part = dir.join(r.part_name());
                let what = format!("pack {} bytes {}-{}", r.pack, r.start, r.end);
                download::range(client, &r.url, &what, (r.start, r.end), &part).await?;
                blocking(move || unpack::unpack(&part, r.start, &r.chunks, &needed, &dir)).await
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    crate::crashpoint::at("fetch-downloaded");
    let download_ms = crate::ms(t2);
    let t3 = std::time::Instant::now();
    let fetched: HashMap<String, PathBuf> = fetched.into_iter().flatten().collect();
    // Each content with the first entry that has it (another mode is
    // copied from it when staging is completed).
    let mut entries = Vec::with_capacity(fetched.len());
    let mut paired = HashSet::new();
    for e in want.entries() {
        if let Some((sha, path)) = e
            .sha256
            .as_ref()
            .filter(|_| e.kind == EntryKind::File)
            .and_then(|s| fetched.get_key_value(s))
            && paired.insert(sha.as_str())
        {
            entries.push((path.clone(), e.clone()));
        }
    }
    let downloaded: u64 = entries.iter().map(|(_, e)| e.size).sum();
    let objects = entries.len();
    let links: HashMap<String, String> = doc.links.into_iter().collect();
    let (staging_dir, caps2) = (staging.to_owned(), caps.clone());
    let want2 = want.clone();
    let extracted = blocking(move || {
        let x = assemble::assemble(&want2, &links, &staging_dir, &caps2);
        // The ranges are done with; the contents wait for the store.
        remove_parts(&dir);
        x
    })
    .await?;
    tracing::info!(
        doc_ms,
        lacks_ms,
        download_ms,
        assemble_ms = crate::ms(t3),
        contents = objects,
        content_bytes = downloaded,
        document_bytes = doc_bytes,
        "release fetched from the store"
    );
    Ok(Received {
        sha256: release_sha256.clone(),
        size_bytes: req.size_bytes,
        extracted,
        git_commit: req
            .git_commit
            .map(|c| pki::text::sanitize(&c, 128))
            .filter(|c| !c.is_empty()),
        confirm_self: None,
        // Checked by the same `signing::check` as an upload's (ops::stage).
        signature: req.signature,
        delta: Some(DeltaFields {
            base: None,
            fetched: entries,
            index: IndexSent::Whole(doc.index),
            release_sha256: Some(release_sha256),
        }),
    })
}

/// The release document in `body`, and its index, which must be release
/// `release_id` and within the caps.
fn read_doc(
    body: &[u8],
    release_id: &str,
    caps: &Caps,
) -> Result<(pki::store::ReleaseDoc, TreeIndex)> {
    let max_json = caps
        .max_entries
        .saturating_mul(DOC_BYTES_PER_ENTRY)
        .saturating_add(DOC_SLACK);
    let doc = pki::store::decode_doc(body, max_json).map_err(|why| {
        UpdaterError::BadUpload(format!(
            "the store's release document: {}: refused (altered in the store?)",
            pki::text::sanitize(&why, 200)
        ))
    })?;
    let max = usize::try_from(caps.max_entries).unwrap_or(usize::MAX);
    let want = TreeIndex::parse(doc.index.as_bytes(), max).map_err(|why| {
        UpdaterError::BadUpload(format!("the store's release document: its index: {why}"))
    })?;
    if want.release_id() != release_id {
        return Err(UpdaterError::BadUpload(format!(
            "the store's document of release {release_id} holds the index of release {}: refused (altered in the store?); nothing was installed",
            want.release_id()
        )));
    }
    let too_many = [doc.links.len(), doc.chunks.len(), doc.packs.len()]
        .iter()
        .any(|n| *n as u64 > caps.max_entries);
    if too_many {
        return Err(UpdaterError::Cap(format!(
            "the release document names more than {} entries (--max-entries)",
            caps.max_entries
        )));
    }
    let total = want
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .fold(0u64, |n, e| n.saturating_add(e.size));
    if total > caps.max_unpacked {
        return Err(UpdaterError::Cap(format!(
            "the release holds more than {} bytes (--max-unpacked-bytes)",
            caps.max_unpacked
        )));
    }
    Ok((doc, want))
}

/// The contents (`sha256`, size) of `want` the content store at
/// `store_dir` holds no trustworthy copy of.
fn lacks(store_dir: &Path, want: &TreeIndex) -> Result<HashSet<(String, u64)>> {
    let mut session = crate::store::Store::new(store_dir.to_owned()).begin()?;
    let mut lacking = HashSet::new();
    let mut seen = HashSet::new();
    for e in want.entries() {
        let Some(sha) = e.sha256.as_ref().filter(|_| e.kind == EntryKind::File) else {
            continue;
        };
        if !seen.insert((sha.as_str(), e.size, e.mode)) {
            continue;
        }
        if !session.holds(e)? {
            lacking.insert((sha.clone(), e.size));
        }
    }
    // What the checks re-hashed or dropped is kept in the ledger.
    session.commit()?;
    Ok(lacking)
}

/// Remove the contents a fetch left in `install`'s fetch dir (a refused
/// push); the partial range downloads stay, for the next push to resume.
pub fn drop_contents(install: &Path) {
    if let Ok(rd) = std::fs::read_dir(fetch_dir(install)) {
        for e in rd.flatten() {
            if !e.file_name().to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Remove the range downloads from `dir`.
fn remove_parts(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Create `dir` and remove from it everything but the downloads named
/// `keep` (`<pack>-<start>-<end>.part`: a partial one is resumed).
fn prepare_dir(dir: &Path, keep: &HashSet<String>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| UpdaterError::io(dir, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| UpdaterError::io(dir, e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}
