//! `swarm store gc --keep N`: delete the objects (and indexes) of the store
//! that no release among the newest N the master pushed references. The
//! master keeps the index of every release it pushed (`$SWARM_HOME/indexes`,
//! touched on each push, so the newest are the releases hosts run now or
//! ran last). Never during an update: `swarm update` holds
//! `$SWARM_HOME/store.lock` shared while it uses the store, gc takes it
//! exclusively or refuses.

use std::collections::HashSet;
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
    deleted_objects: u64,
    deleted_indexes: u64,
    kept_objects: u64,
}

/// `swarm store gc`.
pub(crate) fn gc(home: &Home, args: &StoreGcArgs) -> Result<u8> {
    let store = super::open(home)?.ok_or_else(|| {
        Error::State("no store is set (swarm store set s3://BUCKET/PREFIX --endpoint URL)".into())
    })?;
    let _lock = lock(home, FlockArg::LockExclusiveNonblock)?;
    let kept = newest_indexes(&home.root().join("indexes"), usize::from(args.keep))?;
    let mut keep_objects: HashSet<String> = HashSet::new();
    let mut keep_ids: HashSet<String> = HashSet::new();
    for (id, index) in &kept {
        keep_ids.insert(id.clone());
        keep_objects.extend(index.entries().iter().filter_map(|e| e.sha256.clone()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("runtime: {e}")))?;
    let prefix = store.prefix();
    let doc = rt.block_on(async {
        let mut doc = GcDoc {
            kept_releases: kept.len(),
            deleted_objects: 0,
            deleted_indexes: 0,
            kept_objects: 0,
        };
        for (key, _) in store.list(&format!("{prefix}objects/")).await? {
            let sha = key.rsplit('/').next().unwrap_or_default();
            if keep_objects.contains(sha) {
                doc.kept_objects += 1;
            } else {
                store.delete(&key).await?;
                doc.deleted_objects += 1;
            }
        }
        for (key, _) in store.list(&format!("{prefix}indexes/")).await? {
            let id = key.rsplit('/').next().unwrap_or_default();
            if !keep_ids.contains(id) {
                store.delete(&key).await?;
                doc.deleted_indexes += 1;
            }
        }
        Ok::<_, Error>(doc)
    })?;
    if args.json {
        output::json(&doc)?;
    } else {
        outln!(
            "store gc: kept {} object(s) of the newest {} release(s); deleted {} object(s) and {} index(es)",
            doc.kept_objects,
            doc.kept_releases,
            doc.deleted_objects,
            doc.deleted_indexes
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
