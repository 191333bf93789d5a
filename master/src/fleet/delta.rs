//! Delta pushes (issue 12): the master keeps the index of every release it
//! pushed (`$SWARM_HOME/indexes/<release_id>`, the newest
//! [`KEEP_INDEXES`]); when a host's live release is one of them, it sends
//! that host only the files whose content the live release lacks, with
//! every directory and link, what turns the base's index into the new one
//! (`index_patch`, one line per changed path) with the `release_id` it must
//! give, the base (`base`) and the whole release's digest
//! (`release_sha256`). Hosts on the
//! same base share one packed delta. A host that refuses the base (412:
//! it no longer has it, or a kept file changed) gets the whole release.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pki::index::{EntryKind, TreeIndex};
use tokio::sync::OnceCell;

use crate::home::Home;
use crate::pack::{self, DeltaOf, PackOptions, Release, ReleaseInfo};

/// How many pushed releases' indexes the master keeps.
pub(super) const KEEP_INDEXES: usize = 64;

/// Largest index file read back (about 200 bytes an entry).
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// A packed delta against one base.
#[derive(Debug)]
pub(super) struct Packed {
    /// Keeps the packed file alive.
    _release: Release,
    pub(super) shared: (PathBuf, ReleaseInfo),
    /// What turns the base's index into the release's
    /// ([`TreeIndex::patch_to`]): one line per changed path.
    pub(super) index_patch: String,
}

type Cell = Arc<OnceCell<Option<Arc<Packed>>>>;

/// The deltas of one `swarm update`, packed on demand, once per base.
#[derive(Debug)]
pub(super) struct Deltas {
    dir: PathBuf,
    root: PathBuf,
    excludes: Vec<String>,
    want: Arc<TreeIndex>,
    want_id: String,
    /// `false` with `--full`: every host gets the whole release.
    enabled: bool,
    cells: Mutex<HashMap<String, Cell>>,
}

impl Deltas {
    /// The deltas of `release` (packed from `root` with `excludes`); keeps
    /// its index for the pushes to come.
    pub(super) fn new(
        home: &Home,
        root: &Path,
        excludes: &[String],
        release: &Release,
        enabled: bool,
    ) -> Deltas {
        let dir = home.root().join("indexes");
        // Without the kept index the next push is a full one: not an error.
        let _ = store(&dir, &release.info.release_id, &release.index);
        Deltas {
            dir,
            root: root.to_owned(),
            excludes: excludes.to_vec(),
            want: Arc::new(release.index.clone()),
            want_id: release.info.release_id.clone(),
            enabled,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// The delta against `base`, or `None` when the master has no index
    /// of it, the two share no content, or packing it failed.
    pub(super) async fn for_base(&self, base: &str) -> Option<Arc<Packed>> {
        if !self.enabled
            || base == self.want_id
            || base.len() != 64
            || !base.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let cell = {
            let mut cells = self.cells.lock().ok()?;
            cells.entry(base.to_owned()).or_default().clone()
        };
        let (path, root, excludes, want, want_id) = (
            self.dir.join(base),
            self.root.clone(),
            self.excludes.clone(),
            self.want.clone(),
            self.want_id.clone(),
        );
        cell.get_or_init(|| async move {
            tokio::task::spawn_blocking(move || pack_delta(&path, root, excludes, want, &want_id))
                .await
                .ok()
                .flatten()
                .map(Arc::new)
        })
        .await
        .clone()
    }
}

impl Deltas {
    /// The index the master kept of release `base`, if it has one (the
    /// store push asks for exactly what that release lacks, issue 16).
    pub(super) fn kept_index(&self, base: &str) -> Option<TreeIndex> {
        if base.len() != 64 || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.dir.join(base);
        if fs::metadata(&path).ok()?.len() > MAX_INDEX_BYTES {
            return None;
        }
        TreeIndex::parse(&fs::read(&path).ok()?, usize::MAX).ok()
    }
}

fn pack_delta(
    base_index: &Path,
    root: PathBuf,
    excludes: Vec<String>,
    want: Arc<TreeIndex>,
    want_id: &str,
) -> Option<Packed> {
    let len = fs::metadata(base_index).ok()?.len();
    if len > MAX_INDEX_BYTES {
        return None;
    }
    let base = TreeIndex::parse(&fs::read(base_index).ok()?, usize::MAX).ok()?;
    let have: HashSet<(String, u64)> = base
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| Some((e.sha256.clone()?, e.size)))
        .collect();
    let shared = want.entries().iter().any(|e| {
        e.kind == EntryKind::File
            && e.sha256
                .as_ref()
                .is_some_and(|s| have.contains(&(s.clone(), e.size)))
    });
    if !shared {
        return None;
    }
    let index_patch = base.patch_to(&want);
    let release = pack::pack_reporting(
        &PackOptions {
            root,
            excludes,
            delta: Some(DeltaOf {
                want,
                have: Arc::new(have),
            }),
        },
        &pack::PackProgress::new(&|_, _| {}),
    )
    .ok()?;
    // The tree changed since the full pack: send it whole.
    if release.info.release_id != want_id {
        return None;
    }
    Some(Packed {
        shared: (release.path(), release.info.clone()),
        index_patch,
        _release: release,
    })
}

/// Keep `index` as `dir/<id>` (written aside, then renamed), and only the
/// newest [`KEEP_INDEXES`].
fn store(dir: &Path, id: &str, index: &TreeIndex) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join(id);
    if !path.exists() {
        let tmp = dir.join(format!(".{id}.{}", std::process::id()));
        fs::write(&tmp, index.to_bytes())?;
        fs::rename(&tmp, &path)?;
    } else {
        // Touch it: it is the newest again.
        fs::write(&path, index.to_bytes())?;
    }
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if kept.len() > KEEP_INDEXES {
        kept.sort();
        for (_, p) in &kept[..kept.len() - KEEP_INDEXES] {
            let _ = fs::remove_file(p);
        }
    }
    Ok(())
}
