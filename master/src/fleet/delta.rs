//! Delta pushes (issue 12): the master keeps the index of every release it
//! pushed (`$SWARM_HOME/indexes/<release_id>`, the newest
//! [`KEEP_INDEXES`]); when a host's live release is one of them, it sends
//! that host only the files whose content the live release lacks, with
//! every directory and link, what turns the base's index into the new one
//! (`index_patch`, one line per changed path) with the `release_id` it must
//! give, and the base (`base`). Hosts on the same base share one packed
//! delta (held in memory up to [`SHARED_CAP`]; a larger one is packed by
//! each upload). A host that refuses the base (412: it no longer has it,
//! or a kept file changed) gets the whole release.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pki::index::{EntryKind, TreeIndex};
use tokio::sync::OnceCell;

use super::upload::Payload;
use crate::home::Home;
use crate::pack::{Have, Recording, Tree};

/// How many pushed releases' indexes the master keeps.
pub(super) const KEEP_INDEXES: usize = 64;

/// Largest index file read back (about 200 bytes an entry).
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Largest pack (by the tree bytes it reads) recorded in memory for the
/// uploads that share it; a larger one is packed by each upload.
const SHARED_CAP: u64 = 64 << 20;

/// A delta against one base.
#[derive(Debug)]
pub(super) struct Delta {
    pub(super) payload: Payload,
    /// What turns the base's index into the release's
    /// ([`TreeIndex::patch_to`]): one line per changed path.
    pub(super) index_patch: String,
    /// The tree bytes it packs (what a progress bar counts).
    pub(super) bytes: u64,
}

type Cell = Arc<OnceCell<Option<Arc<Delta>>>>;

/// The deltas of one `swarm update`, packed on demand, once per base.
#[derive(Debug)]
pub(super) struct Deltas {
    dir: PathBuf,
    tree: Arc<Tree>,
    /// `false` with `--full`: every host gets the whole release.
    enabled: bool,
    cells: Mutex<HashMap<String, Cell>>,
    /// The whole release, recorded once for every host that gets it.
    whole: std::sync::OnceLock<Arc<Recording>>,
}

impl Deltas {
    /// The deltas of `tree`; keeps its index for the pushes to come.
    pub(super) fn new(home: &Home, tree: Arc<Tree>, enabled: bool) -> Deltas {
        let dir = home.root().join("indexes");
        // Without the kept index the next push is a full one: not an error.
        let _ = store(&dir, &tree.info.release_id, &tree.index);
        Deltas {
            dir,
            tree,
            enabled,
            cells: Mutex::new(HashMap::new()),
            whole: std::sync::OnceLock::new(),
        }
    }

    /// What a host that gets the whole release is sent: one recorded pack
    /// for every such host when the tree is small, else a pack of its own
    /// (every whole pack of a tree is the same bytes).
    pub(super) fn whole(&self) -> Payload {
        if self.tree.info.tree_bytes > SHARED_CAP {
            return Payload::Whole;
        }
        Payload::Shared(self.whole.get_or_init(|| self.tree.record(None)).clone())
    }

    /// The delta for a host that keeps the releases `kept` (their
    /// `release_id`s, newest first: active, prev, then `kept/`): the
    /// contents none of them has, the index as a patch of the newest of
    /// them whose index the master kept (the base, returned with it).
    /// `None` when the master has the index of none of them, they share no
    /// content with the release, or packing is off (`--full`). Hosts that
    /// keep the same releases share one delta; a host that keeps the
    /// release itself (not active) gets a delta with no file content.
    pub(super) async fn for_host(&self, kept: &[String]) -> Option<(String, Arc<Delta>)> {
        if !self.enabled {
            return None;
        }
        let known: Vec<String> = kept
            .iter()
            .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .filter(|id| self.dir.join(id).is_file())
            .cloned()
            .collect();
        let base = known.first()?.clone();
        let mut key = known.clone();
        key[1..].sort();
        let cell = {
            let mut cells = self.cells.lock().ok()?;
            cells.entry(key.join(",")).or_default().clone()
        };
        let paths: Vec<PathBuf> = known.iter().map(|id| self.dir.join(id)).collect();
        let tree = self.tree.clone();
        let delta = cell
            .get_or_init(|| async move {
                let tree2 = tree.clone();
                let have = tokio::task::spawn_blocking(move || have_of(&paths, &tree2))
                    .await
                    .ok()
                    .flatten()?;
                let index_patch = have.1;
                let have = Arc::new(have.0);
                let bytes = tree.bytes_without(&have);
                let payload = if bytes > SHARED_CAP {
                    Payload::Without(have)
                } else {
                    Payload::Shared(tree.record(Some(have)))
                };
                Some(Arc::new(Delta {
                    payload,
                    index_patch,
                    bytes,
                }))
            })
            .await
            .clone()?;
        Some((base, delta))
    }
}

impl Deltas {
    /// The index the master kept of release `base`, if it has one (the
    /// store push asks for exactly what that release lacks, issue 16).
    pub(super) fn kept_index(&self, base: &str) -> Option<TreeIndex> {
        kept_index_in(&self.dir, base)
    }
}

/// The index kept as `dir/<id>`, if there is a readable one.
pub(super) fn kept_index_in(dir: &Path, id: &str) -> Option<TreeIndex> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let path = dir.join(id);
    if fs::metadata(&path).ok()?.len() > MAX_INDEX_BYTES {
        return None;
    }
    TreeIndex::parse(&fs::read(&path).ok()?, usize::MAX).ok()
}

/// What the releases whose indexes are at `indexes` hold between them,
/// and the patch from the first (the base) to `tree`; `None` when the
/// base's index is unreadable or they share no content with `tree`. An
/// unreadable other index only makes the delta larger.
fn have_of(indexes: &[PathBuf], tree: &Tree) -> Option<(Have, String)> {
    let raw = |p: &Path| {
        let len = fs::metadata(p).ok()?.len();
        if len > MAX_INDEX_BYTES {
            return None;
        }
        fs::read(p).ok()
    };
    let base = TreeIndex::parse(&raw(indexes.first()?)?, usize::MAX).ok()?;
    let mut have: Have = base
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| Some((e.sha256.clone()?, e.size)))
        .collect();
    // What the base lacks is usually a few files: the other kept releases
    // are searched for just those, in their canonical bytes, unparsed.
    let mut lacking: Vec<(String, u64)> = tree
        .index
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| Some((e.sha256.clone()?, e.size)))
        .filter(|c| !have.contains(c))
        .collect();
    for other in indexes[1..].iter().filter_map(|p| raw(p)) {
        if lacking.is_empty() {
            break;
        }
        lacking.retain(|(sha, size)| {
            let listed = lists_file(&other, sha, *size);
            if listed {
                have.insert((sha.clone(), *size));
            }
            !listed
        });
    }
    let want = &tree.index;
    let shared = want.entries().iter().any(|e| {
        e.kind == EntryKind::File
            && e.sha256
                .as_ref()
                .is_some_and(|s| have.contains(&(s.clone(), e.size)))
    });
    if !shared {
        return None;
    }
    let index_patch = base.patch_to(want);
    Some((have, index_patch))
}

/// Whether the canonical index bytes `raw` list a regular file with this
/// content (each entry is one line ending in `"size":N,"sha256":"H"}`; a
/// path cannot hold an unescaped `"`, so the line's `"type":"file"` is
/// the entry's own).
fn lists_file(raw: &[u8], sha: &str, size: u64) -> bool {
    let needle = format!(",\"size\":{size},\"sha256\":\"{sha}\"}}");
    memchr::memmem::find_iter(raw, needle.as_bytes()).any(|at| {
        let start = memchr::memrchr(b'\n', &raw[..at]).map_or(0, |i| i + 1);
        memchr::memmem::find(&raw[start..at], br#""type":"file""#).is_some()
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
        fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(std::time::SystemTime::now())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use pki::index::IndexEntry;

    #[test]
    fn a_kept_index_lists_a_file_by_its_content_not_a_link_with_that_hash() {
        let sha = "ab".repeat(32);
        let index = TreeIndex::new(vec![
            IndexEntry::file("a/x.txt", 0o644, 5, sha.clone()),
            IndexEntry {
                path: "l".into(),
                kind: EntryKind::Link,
                mode: pki::index::LINK_MODE,
                size: 7,
                sha256: Some("cd".repeat(32)),
            },
        ])
        .unwrap();
        let raw = index.to_bytes();
        assert!(lists_file(&raw, &sha, 5));
        assert!(!lists_file(&raw, &sha, 6), "another size");
        assert!(
            !lists_file(&raw, &"cd".repeat(32), 7),
            "a link is not a file"
        );
        assert!(!lists_file(&raw, &"ef".repeat(32), 5));
    }
}
