//! A received push made whole in staging through the content store
//! (issue 12): a whole push's files become stored objects (or links to
//! the objects that already hold their content); a delta is completed
//! against the kept release it names as its base. Both run only once the
//! release is accepted (its signature checked): a refused push stores
//! nothing. After a healthy push, [`after_push`] readies the next one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pki::index::{EntryKind, TreeIndex};
use pki::wire::Manifest;

use crate::error::{Result, UpdaterError};
use crate::receive::{self, Caps, IndexSent};
use crate::release::read_index;
use crate::slots::Layout;
use crate::store::Store;

/// Every release `layout` keeps: `active`, `prev`, then `kept/` newest
/// first.
pub fn kept_dirs(layout: &Layout) -> Vec<PathBuf> {
    [layout.active(), layout.prev()]
        .into_iter()
        .filter(|d| d.is_dir())
        .chain(layout.kept_releases().into_iter().map(|(d, _)| d))
        .collect()
}

/// A whole push extracted into `staging`: store its files. Skipped for
/// the release that is already active (its staging is discarded as
/// unchanged: linking it would only churn the store).
pub fn whole(staging: &Path, index: &TreeIndex, layout: &Layout) -> Result<()> {
    let active = Manifest::read(&layout.active()).and_then(|m| m.release_id);
    if active.is_some_and(|id| id == index.release_id()) {
        return Ok(());
    }
    let mut store = Store::new(layout.store()).begin()?;
    for e in index.entries() {
        if e.kind == EntryKind::File {
            store.adopt(&staging.join(&e.path), e)?;
        }
    }
    store.commit()
}

/// The new release's index of a delta push (`index`, as sent: whole, or
/// a patch of the kept release `base`'s index). Nothing is written.
pub fn delta_index(
    base: &str,
    index: &IndexSent,
    layout: &Layout,
    caps: &Caps,
) -> Result<TreeIndex> {
    let max = usize::try_from(caps.max_entries).unwrap_or(usize::MAX);
    let Some(base_dir) = kept_dirs(layout)
        .into_iter()
        .find(|d| Manifest::read(d).and_then(|m| m.release_id).as_deref() == Some(base))
    else {
        return Err(UpdaterError::NoBase(format!(
            "this delta is against release {base}, which this worker does not keep: push the whole release"
        )));
    };
    let Some(base_index) = read_index(&base_dir, max)? else {
        return Err(UpdaterError::NoBase(format!(
            "the kept release {base} has no kept index: push the whole release"
        )));
    };
    match index {
        IndexSent::Whole(text) => TreeIndex::parse(text.as_bytes(), max)
            .map_err(|why| UpdaterError::BadUpload(format!("field `index`: {why}"))),
        IndexSent::Patch { patch, release_id } => {
            let want = base_index
                .apply_patch(patch, max)
                .map_err(|why| UpdaterError::BadUpload(format!("field `index_patch`: {why}")))?;
            if want.release_id() != *release_id {
                return Err(UpdaterError::BadUpload(format!(
                    "field `index_patch` applied to release {base} gives release {}, not {release_id}",
                    want.release_id()
                )));
            }
            Ok(want)
        }
    }
}

/// Complete a delta push in `staging` (which holds `got`) into the release
/// `want` ([`delta_index`]) through the content store, into which the
/// contents `fetched` from an object store (each checked against the
/// entry it is paired with) go first.
pub fn delta(
    staging: &Path,
    got: &TreeIndex,
    want: &TreeIndex,
    fetched: &[(std::path::PathBuf, pki::index::IndexEntry)],
    layout: &Layout,
    caps: &Caps,
) -> Result<()> {
    let max = usize::try_from(caps.max_entries).unwrap_or(usize::MAX);
    let kept = kept_dirs(layout);
    // Read only when the store lacks some content: what every kept
    // release lists, to tell content lost on the worker (412) from
    // content the master should have sent (400).
    let mut listed: Option<HashSet<(String, u64)>> = None;
    let mut kept_lists = |sha: &str, size: u64| {
        let all = listed.get_or_insert_with(|| {
            kept.iter()
                .filter_map(|d| read_index(d, max).ok().flatten())
                .flat_map(|i| i.entries().to_vec())
                .filter(|e| e.kind == EntryKind::File)
                .filter_map(|e| Some((e.sha256?, e.size)))
                .collect()
        });
        all.contains(&(sha.to_owned(), size))
    };
    let mut store = Store::new(layout.store()).begin()?;
    for (path, e) in fetched {
        store.adopt(path, e)?;
        // The object is linked now; the download's own name goes.
        let _ = std::fs::remove_file(path);
    }
    let reused =
        receive::delta::materialize(staging, got, want, &mut store, &mut kept_lists, caps)?;
    store.commit()?;
    crate::crashpoint::at("delta-materialized");
    tracing::info!(
        reused_bytes = reused,
        "delta completed from the content store"
    );
    Ok(())
}

/// After a healthy push, off the request path: the directory pool
/// ([`crate::slots::dirs`]) topped up to the live release's directory
/// count, first (the next push waits on it, nothing waits on the trash),
/// then `trash` deleted and the content store collected.
pub fn after_push(layout: Layout, trash: Vec<PathBuf>) {
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let dirs = read_index(&layout.active(), usize::MAX)
            .ok()
            .flatten()
            .map_or(0, |i| {
                i.entries()
                    .iter()
                    .filter(|e| e.kind == EntryKind::Dir)
                    .count()
            });
        let made = crate::slots::dirs::fill(layout.releases_dir(), dirs);
        tracing::debug!(
            "directory pool: {made} made in {} ms",
            t.elapsed().as_millis()
        );
        let store = Store::new(layout.store());
        if let Err(e) = crate::store::gc::sweep(&store, &trash) {
            tracing::warn!("content store {}: {e}", store.dir().display());
        }
    });
}
