//! `swarm store gc --keep N`: delete the release documents of the store
//! but those of the newest N releases the master pushed, and the packs no
//! kept document names (a pack goes only once nothing in it is needed). The
//! master keeps the index of every release it pushed (`$SWARM_HOME/indexes`,
//! touched on each push, so the newest are the releases hosts run now or
//! ran last). Never during an update: `swarm update` holds
//! `$SWARM_HOME/store.lock` shared while it uses the store, gc takes it
//! exclusively or refuses.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use pki::index::TreeIndex;
use serde::Serialize;

use crate::cli::StoreGcArgs;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::output::{self, outln};

/// Largest kept index read.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// The store lock: shared by updates, exclusive for gc.
pub(crate) struct StoreLock {
    _lock: Flock<fs::File>,
}

/// Hold the store lock shared (an update); waits for a running gc.
pub(crate) fn lock_shared(home: &Home) -> Result<StoreLock> {
    lock(home, FlockArg::LockShared)
}

fn lock(home: &Home, how: FlockArg) -> Result<StoreLock> {
    let path = home.root().join("store.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    Flock::lock(file, how)
        .map(|l| StoreLock { _lock: l })
        .map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                Error::State(
                    "an update is using the store right now (store.lock is held): run `swarm store gc` when it is done".into(),
                )
            } else {
                Error::io(&path, std::io::Error::from(errno))
            }
        })
}

#[derive(Serialize)]
struct GcDoc {
    kept_releases: usize,
    deleted_releases: u64,
    kept_packs: u64,
    deleted_packs: u64,
    /// Keys of the layout before packs (`objects/`, `indexes/`).
    deleted_legacy: u64,
}

/// `swarm store gc`.
pub(crate) fn gc(home: &Home, args: &StoreGcArgs) -> Result<u8> {
    let store = super::open(home)?.ok_or_else(|| {
        Error::State("no store is set (swarm store set s3://BUCKET/PREFIX --endpoint URL)".into())
    })?;
    let _lock = lock(home, FlockArg::LockExclusiveNonblock)?;
    let kept = newest_indexes(&home.root().join("indexes"), usize::from(args.keep))?;
    let keep_ids: HashSet<String> = kept.into_iter().map(|(id, _)| id).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("runtime: {e}")))?;
    let prefix = store.prefix();
    let doc = rt.block_on(async {
        let releases = store.list(&format!("{prefix}releases/")).await?;
        let kept_there: HashMap<String, u64> = releases
            .iter()
            .filter_map(|(k, n)| Some((k.rsplit('/').next()?.to_owned(), *n)))
            .filter(|(id, _)| keep_ids.contains(id))
            .collect();
        let docs = super::publish::read_docs(&store, home, &kept_there).await?;
        if let Some(id) = kept_there.keys().find(|id| !docs.contains_key(*id)) {
            return Err(Error::State(format!(
                "the store's document of kept release {id} does not read: gc stopped, nothing deleted (push that release again to rewrite it)"
            )));
        }
        let keep_packs: HashSet<&str> = docs
            .values()
            .flat_map(|d| d.packs.iter().map(|p| p.sha256.as_str()))
            .collect();
        let mut doc = GcDoc {
            kept_releases: docs.len(),
            deleted_releases: 0,
            kept_packs: 0,
            deleted_packs: 0,
            deleted_legacy: 0,
        };
        // Documents first: a pack is deleted only once no document left
        // names it, whatever point a crash stops this at.
        for (key, _) in &releases {
            let id = key.rsplit('/').next().unwrap_or_default();
            if !keep_ids.contains(id) {
                store.delete(key).await?;
                doc.deleted_releases += 1;
            }
        }
        for (key, _) in store.list(&format!("{prefix}packs/")).await? {
            let sha = key.rsplit('/').next().unwrap_or_default();
            if keep_packs.contains(sha) {
                doc.kept_packs += 1;
            } else {
                store.delete(&key).await?;
                doc.deleted_packs += 1;
            }
        }
        for legacy in ["objects/", "indexes/"] {
            for (key, _) in store.list(&format!("{prefix}{legacy}")).await? {
                store.delete(&key).await?;
                doc.deleted_legacy += 1;
            }
        }
        Ok::<_, Error>(doc)
    })?;
    if args.json {
        output::json(&doc)?;
    } else {
        outln!(
            "store gc: kept {} release(s) and {} pack(s); deleted {} release(s) and {} pack(s)",
            doc.kept_releases,
            doc.kept_packs,
            doc.deleted_releases,
            doc.deleted_packs
        )?;
    }
    Ok(0)
}

/// The newest `n` indexes kept in `dir` (by the time each was last pushed).
fn newest_indexes(dir: &Path, n: usize) -> Result<Vec<(String, TreeIndex)>> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(dir, e)),
    };
    found.sort_by_key(|b| std::cmp::Reverse(b.0));
    let mut out = Vec::new();
    for (_, path) in found.into_iter().take(n) {
        let len = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        if len > MAX_INDEX_BYTES {
            return Err(Error::State(format!(
                "{}: too large for an index",
                path.display()
            )));
        }
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        // A kept index that does not parse would make gc delete what it
        // references: stop instead.
        let index = TreeIndex::parse(&bytes, usize::MAX)
            .map_err(|why| Error::State(format!("{}: {why}; gc stopped", path.display())))?;
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((id, index));
    }
    Ok(out)
}
