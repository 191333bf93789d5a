//! `POST /update-from-store` (issue 16): the master sends the index, the
//! link targets and presigned GET URLs for the contents this worker lacks;
//! the updater downloads them itself (`download`: bounded parallelism,
//! deadlines, retries with backoff, resume by `Range`, every byte capped),
//! checks each against the index (`unpack`), writes the tree into staging
//! through the one extractor (`assemble`), and hands staging and the
//! index to the same completion, hook, flip, restart, probe and revert path
//! as `/update` (`ops::stage`). Nothing here holds a credential: a URL
//! names one object and expires.
//!
//! Downloads live in `<install>/.fetch/` until staging has them; a crash
//! mid-download leaves `.part` files the next push resumes (or, when they
//! are not part of it, removes).

mod assemble;
mod download;
mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use pki::index::EntryKind;
use pki::store::{StoreUpdate, max_stored};

use crate::error::{Result, UpdaterError};
use crate::receive::{Caps, DeltaFields, IndexSent, Received};
use crate::state::blocking;

/// Objects downloaded at once: a release is mostly small objects, each a
/// round trip to the store (4 at once left a 1,000-object release waiting
/// on latency, not bandwidth, in the fan-out bench).
const PARALLEL: usize = 16;

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

/// Fetch `req` into `staging` (empty); `live` is the live release,
/// `install` the install dir. The result goes through the same completion
/// as a delta push.
pub async fn receive(
    req: StoreUpdate,
    staging: &Path,
    live: &Path,
    install: &Path,
    caps: &Caps,
) -> Result<Received> {
    if !hex64(&req.release_sha256) || !hex64(&req.release_id) {
        return Err(UpdaterError::BadUpload(
            "release_sha256 and release_id must be hex SHA-256s".into(),
        ));
    }
    let release_sha256 = req.release_sha256.to_ascii_lowercase();
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
    let index = match (req.index, req.index_patch) {
        (Some(i), None) => IndexSent::Whole(i),
        (None, Some(patch)) => IndexSent::Patch {
            patch,
            release_id: req.release_id.to_ascii_lowercase(),
        },
        _ => {
            return Err(UpdaterError::BadUpload(
                "send `index`, or `index_patch` with `base`".into(),
            ));
        }
    };
    let base = req.base.map(|b| b.to_ascii_lowercase());
    let (l, c, b, i) = (live.to_owned(), caps.clone(), base.clone(), index.clone());
    let (want, base_index) =
        blocking(move || crate::receive::want::resolve(b.as_deref(), &i, &l, &c)).await?;
    if want.entries().len() as u64 > caps.max_entries
        || req.objects.len() as u64 > caps.max_entries
        || req.links.len() as u64 > caps.max_entries
    {
        return Err(UpdaterError::Cap(format!(
            "the request names more than {} entries (--max-entries)",
            caps.max_entries
        )));
    }
    let have: HashSet<(&str, u64)> = base_index
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| Some((e.sha256.as_deref()?, e.size)))
        .collect();
    let sizes: HashMap<&str, u64> = want
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| Some((e.sha256.as_deref()?, e.size)))
        .collect();
    let total: u64 = sizes.values().sum();
    if total > caps.max_unpacked {
        return Err(UpdaterError::Cap(format!(
            "the release holds more than {} bytes (--max-unpacked-bytes)",
            caps.max_unpacked
        )));
    }
    let mut jobs = Vec::new();
    let mut named = HashSet::new();
    for obj in &req.objects {
        if !hex64(&obj.sha256) || !named.insert(obj.sha256.as_str()) {
            return Err(UpdaterError::BadUpload(format!(
                "object {:?}: not a hex SHA-256, or named twice",
                pki::text::sanitize(&obj.sha256, 80)
            )));
        }
        let Some(size) = sizes.get(obj.sha256.as_str()).copied() else {
            return Err(UpdaterError::BadUpload(format!(
                "object {} is not content of the release's index",
                pki::text::sanitize(&obj.sha256, 80)
            )));
        };
        if obj.stored_size > max_stored(size) {
            return Err(UpdaterError::BadUpload(format!(
                "object {} is said to take {} bytes, more than {size} content bytes can",
                obj.sha256, obj.stored_size
            )));
        }
        jobs.push((obj.clone(), size));
    }
    let listed: HashSet<&str> = req.objects.iter().map(|o| o.sha256.as_str()).collect();
    for (sha, size) in &sizes {
        if !listed.contains(sha) && !have.contains(&(*sha, *size)) {
            // The master thought the live release had it: 412, and it
            // asks again with every object.
            return Err(UpdaterError::NoBase(format!(
                "content {sha} is neither in the request nor in the live release"
            )));
        }
    }
    let dir = fetch_dir(install);
    let keep: HashSet<String> = jobs.iter().map(|(o, _)| o.sha256.clone()).collect();
    let d = dir.clone();
    blocking(move || prepare_dir(&d, &keep)).await?;
    let client = download::client()?;
    let fetched: Vec<(String, PathBuf, u64)> = futures_util::stream::iter(jobs)
        .map(|(obj, size)| {
            let (client, dir) = (&client, dir.clone());
            async move {
                let part = download::download(client, &obj, max_stored(size), &dir).await?;
                let sha = obj.sha256.clone();
                let plain = blocking(move || unpack::unpack(&part, &sha, size, &dir)).await?;
                Ok::<_, UpdaterError>((obj.sha256, plain, obj.stored_size))
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    crate::crashpoint::at("fetch-downloaded");
    let downloaded: u64 = fetched.iter().map(|(_, _, n)| n).sum();
    let fetched: HashMap<String, PathBuf> = fetched.into_iter().map(|(s, p, _)| (s, p)).collect();
    let links: HashMap<String, String> = req.links.into_iter().collect();
    let (staging_dir, caps2) = (staging.to_owned(), caps.clone());
    let want2 = want.clone();
    let extracted = blocking(move || {
        let x = assemble::assemble(&want2, &links, &fetched, &staging_dir, &caps2);
        // In staging now (or refused): the downloads are done with.
        let _ = prepare_dir(&dir, &HashSet::new());
        x
    })
    .await?;
    tracing::info!(
        objects = req.objects.len(),
        downloaded_bytes = downloaded,
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
            base,
            index,
            release_sha256: Some(release_sha256),
        }),
    })
}

/// Create `dir` and remove from it everything that is not a download of
/// `keep` (a partial one is resumed).
fn prepare_dir(dir: &Path, keep: &HashSet<String>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| UpdaterError::io(dir, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| UpdaterError::io(dir, e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let sha = name.strip_suffix(".part").unwrap_or(&name);
        if !keep.contains(sha) || !name.ends_with(".part") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}
