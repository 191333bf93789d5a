//! The canonical tree index of a release and its `release_id` (issue 12):
//! every entry of the tree, sorted by path, with its type, mode, size and
//! the SHA-256 of its content (a file) or of its target (a symbolic link).
//! The same tree always has the same index, however it was transported or
//! compressed; `release_id` is the SHA-256 of the index's canonical bytes.
//!
//! Canonical bytes: the line `swarm-index v1`, then one JSON object per
//! entry and line, `{"path":…,"type":…,"mode":…,"size":…,"sha256":…}`
//! (fields in that order, `sha256` absent for a directory), sorted by the
//! path's bytes. Modes are the ones the updater installs: files
//! `mode & 0o755 | 0o600`, directories `mode & 0o755 | 0o700`, links 0o777.
//! The release manifest and the index file itself are never entries.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The index file inside a release, beside the manifest. Reserved: never
/// shipped from the tree (the master refuses to pack it, the updater to
/// extract it), written by the updater.
pub const INDEX_FILE: &str = ".swarm-index";

/// The first line of the canonical bytes.
const HEADER: &str = "swarm-index v1";

/// The mode recorded for every symbolic link.
pub const LINK_MODE: u32 = 0o777;

/// The mode a file of a release gets from the mode it came with: no
/// group/other write, no setuid/setgid/sticky, always owner read-write
/// (what extraction sets, and what an index entry must say).
pub fn file_mode(mode: u32) -> u32 {
    mode & 0o755 | 0o600
}

/// [`file_mode`] for a directory: always owner read-write-search.
pub fn dir_mode(mode: u32) -> u32 {
    mode & 0o755 | 0o700
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Link,
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Relative, `/`-separated, normalized (no `.`, `..` or empty component).
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub mode: u32,
    /// Content bytes (a file), target bytes (a link), 0 (a directory).
    pub size: u64,
    /// SHA-256 (hex) of the content or link target; `None` for a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl IndexEntry {
    pub fn dir(path: impl Into<String>, mode: u32) -> IndexEntry {
        IndexEntry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode,
            size: 0,
            sha256: None,
        }
    }
    pub fn file(path: impl Into<String>, mode: u32, size: u64, sha256: String) -> IndexEntry {
        IndexEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            size,
            sha256: Some(sha256),
        }
    }
    /// A symbolic link to `target`.
    pub fn link(path: impl Into<String>, target: &str) -> IndexEntry {
        IndexEntry {
            path: path.into(),
            kind: EntryKind::Link,
            mode: LINK_MODE,
            size: target.len() as u64,
            sha256: Some(sha256_hex(target.as_bytes())),
        }
    }
}

/// A tree index: entries sorted by path, no path twice (private: checked
/// by [`TreeIndex::new`] and [`TreeIndex::parse`]).
#[derive(Clone, Debug, Default)]
pub struct TreeIndex {
    entries: Vec<IndexEntry>,
    /// [`TreeIndex::release_id`], once computed (the entries never change).
    id: std::sync::OnceLock<String>,
}

impl PartialEq for TreeIndex {
    fn eq(&self, other: &TreeIndex) -> bool {
        self.entries == other.entries
    }
}

impl Eq for TreeIndex {}

/// How two indexes of one tree differ (what [`TreeIndex::diff`] found).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDiff {
    /// In both, with another type, mode, size or content.
    pub modified: Vec<String>,
    /// Only in the actual tree.
    pub added: Vec<String>,
    /// Only in the expected index.
    pub missing: Vec<String>,
}

impl IndexDiff {
    pub fn is_empty(&self) -> bool {
        self.modified.is_empty() && self.added.is_empty() && self.missing.is_empty()
    }
}

/// A writer that only hashes.
struct HashingWriter(Sha256);

impl std::io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TreeIndex {
    /// The index of `entries` (any order); a path twice is refused.
    pub fn new(mut entries: Vec<IndexEntry>) -> Result<TreeIndex, String> {
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(format!("duplicate path {:?} in the index", w[0].path));
        }
        Ok(TreeIndex {
            entries,
            id: std::sync::OnceLock::new(),
        })
    }

    /// Sorted by path.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&IndexEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Regular files.
    pub fn files(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count() as u64
    }

    /// The canonical bytes (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 128);
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Write the canonical bytes to `out`, entry by entry (a large index
    /// is never held twice: what the updater writes to `.swarm-index` and
    /// what `release_id` hashes).
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(HEADER.as_bytes())?;
        out.write_all(b"\n")?;
        for e in &self.entries {
            // A struct of strings and integers always serializes.
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// SHA-256 (hex) of [`TreeIndex::to_bytes`] (computed once).
    pub fn release_id(&self) -> String {
        self.id
            .get_or_init(|| {
                let mut h = HashingWriter(Sha256::new());
                // Hashing cannot fail.
                let _ = self.write_to(&mut h);
                hex::encode(h.0.finalize())
            })
            .clone()
    }

    /// Parse canonical bytes (an `.swarm-index` file, or one sent by a
    /// peer): at most `max_entries` entries; they must be sorted and
    /// unique, so what parses re-serializes to the same bytes.
    pub fn parse(bytes: &[u8], max_entries: usize) -> Result<TreeIndex, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "the index is not UTF-8".to_owned())?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("the index does not start with {HEADER:?}"));
        }
        let mut entries: Vec<IndexEntry> = Vec::new();
        for (n, line) in lines.enumerate() {
            if entries.len() >= max_entries {
                return Err(format!("the index has more than {max_entries} entries"));
            }
            let e: IndexEntry =
                serde_json::from_str(line).map_err(|err| format!("index line {}: {err}", n + 2))?;
            if let Some(last) = entries.last()
                && last.path.as_bytes() >= e.path.as_bytes()
            {
                return Err(format!(
                    "index line {}: {:?} is out of order or a duplicate",
                    n + 2,
                    e.path
                ));
            }
            entries.push(e);
        }
        Ok(TreeIndex {
            entries,
            id: std::sync::OnceLock::new(),
        })
    }

    /// How `actual` differs from this (expected) index.
    pub fn diff(&self, actual: &TreeIndex) -> IndexDiff {
        let mut d = IndexDiff::default();
        let (mut a, mut b) = (
            self.entries.iter().peekable(),
            actual.entries.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(x), None) => {
                    d.missing.push(x.path.clone());
                    a.next();
                }
                (None, Some(y)) => {
                    d.added.push(y.path.clone());
                    b.next();
                }
                (Some(x), Some(y)) => match x.path.as_bytes().cmp(y.path.as_bytes()) {
                    std::cmp::Ordering::Less => {
                        d.missing.push(x.path.clone());
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        d.added.push(y.path.clone());
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if x != y {
                            d.modified.push(x.path.clone());
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        d
    }
}

/// The first line of an index patch.
const PATCH_HEADER: &str = "swarm-index-patch v1";

/// One line of an index patch: a path removed (entries added or changed
/// are whole [`IndexEntry`] lines).
#[derive(Serialize, Deserialize)]
struct Removed {
    removed: String,
}

impl TreeIndex {
    /// What turns this (base) index into `want`: the line
    /// `swarm-index-patch v1`, then every entry of `want` that is new or
    /// differs, and `{"removed":PATH}` for every path `want` lacks. A delta
    /// push sends this instead of the whole index, so a one-file change
    /// costs one line, not one line per file.
    pub fn patch_to(&self, want: &TreeIndex) -> String {
        let mut out = String::from(PATCH_HEADER);
        out.push('\n');
        for e in want.entries() {
            if self.get(&e.path) != Some(e)
                && let Ok(line) = serde_json::to_string(e)
            {
                out.push_str(&line);
                out.push('\n');
            }
        }
        for e in self.entries() {
            if want.get(&e.path).is_none()
                && let Ok(line) = serde_json::to_string(&Removed {
                    removed: e.path.clone(),
                })
            {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// This index with `patch` ([`TreeIndex::patch_to`]) applied, at most
    /// `max_entries` entries; a path set or removed twice is refused.
    pub fn apply_patch(&self, patch: &str, max_entries: usize) -> Result<TreeIndex, String> {
        let mut lines = patch.lines();
        if lines.next() != Some(PATCH_HEADER) {
            return Err(format!(
                "the index patch does not start with {PATCH_HEADER:?}"
            ));
        }
        let mut map: std::collections::BTreeMap<String, IndexEntry> = self
            .entries
            .iter()
            .map(|e| (e.path.clone(), e.clone()))
            .collect();
        let mut touched = std::collections::HashSet::new();
        for (n, line) in lines.enumerate() {
            let path = if let Ok(r) = serde_json::from_str::<Removed>(line) {
                map.remove(&r.removed);
                r.removed
            } else {
                let e: IndexEntry = serde_json::from_str(line)
                    .map_err(|err| format!("index patch line {}: {err}", n + 2))?;
                let path = e.path.clone();
                map.insert(path.clone(), e);
                path
            };
            if !touched.insert(path.clone()) {
                return Err(format!("index patch line {}: {path:?} twice", n + 2));
            }
            if map.len() > max_entries {
                return Err(format!("the index has more than {max_entries} entries"));
            }
        }
        TreeIndex::new(map.into_values().collect())
    }
}

/// SHA-256 (hex) of `bytes`.
/// Which side of a [`copy_hashing`] failed.
#[derive(Debug)]
pub enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copy `from` into `to` in 256 KiB pieces, hashing what passes: the
/// SHA-256 (hex) and the byte count. The one loop every side uses to read
/// content it must check (the master's scan and store upload, the
/// updater's store and fetch); `std::io::sink()` hashes only.
pub fn copy_hashing(
    from: &mut impl std::io::Read,
    to: &mut impl std::io::Write,
) -> Result<(String, u64), CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_hashing_copies_counts_and_hashes() {
        let data = vec![7u8; 600_000];
        let mut out = Vec::new();
        let (sha, n) = copy_hashing(&mut &data[..], &mut out).unwrap();
        assert_eq!((sha, n), (sha256_hex(&data), 600_000));
        assert_eq!(out, data);
        struct Full;
        impl std::io::Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(
            copy_hashing(&mut &data[..], &mut Full),
            Err(CopyError::Write(_))
        ));
    }

    fn sample() -> Vec<IndexEntry> {
        vec![
            IndexEntry::file("a/b", 0o644, 5, sha256_hex(b"hello")),
            IndexEntry::dir("a", 0o755),
            IndexEntry::link("l", "a/b"),
            IndexEntry::file("a-c", 0o755, 0, sha256_hex(b"")),
        ]
    }

    #[test]
    fn order_of_entries_does_not_change_the_id() {
        let one = TreeIndex::new(sample()).unwrap();
        let mut rev = sample();
        rev.reverse();
        let two = TreeIndex::new(rev).unwrap();
        assert_eq!(one.release_id(), two.release_id());
        // Sorted by bytes: "a" < "a-c" < "a/b" < "l".
        let paths: Vec<_> = one.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a-c", "a/b", "l"]);
        assert_eq!(one.files(), 2);
        assert_eq!(one.get("a/b").map(|e| e.size), Some(5));
        assert!(one.get("zz").is_none());
    }

    #[test]
    fn any_change_changes_the_id() {
        let base = TreeIndex::new(sample()).unwrap().release_id();
        let mut m = sample();
        m[0].mode = 0o755;
        assert_ne!(TreeIndex::new(m).unwrap().release_id(), base);
        let mut c = sample();
        c[0].sha256 = Some(sha256_hex(b"hellO"));
        assert_ne!(TreeIndex::new(c).unwrap().release_id(), base);
        let mut p = sample();
        p[2].path = "m".into();
        assert_ne!(TreeIndex::new(p).unwrap().release_id(), base);
    }

    #[test]
    fn duplicates_are_refused() {
        let mut d = sample();
        d.push(IndexEntry::dir("a", 0o755));
        assert!(TreeIndex::new(d).unwrap_err().contains("duplicate"));
    }

    #[test]
    fn parse_round_trips_and_refuses_disorder() {
        let idx = TreeIndex::new(sample()).unwrap();
        let bytes = idx.to_bytes();
        assert_eq!(TreeIndex::parse(&bytes, 100).unwrap(), idx);
        assert!(TreeIndex::parse(&bytes, 2).is_err(), "cap");
        assert!(TreeIndex::parse(b"nope\n", 100).is_err());
        let text = String::from_utf8(bytes).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(1, 2);
        assert!(TreeIndex::parse(lines.join("\n").as_bytes(), 100).is_err());
    }

    #[test]
    fn a_patch_carries_only_what_changed_and_rebuilds_the_index() {
        let base = TreeIndex::new(sample()).unwrap();
        let mut w = sample();
        w[0].sha256 = Some(sha256_hex(b"changed"));
        w.retain(|e| e.path != "l");
        w.push(IndexEntry::file("new", 0o644, 1, sha256_hex(b"x")));
        let want = TreeIndex::new(w).unwrap();
        let patch = base.patch_to(&want);
        assert_eq!(
            patch.lines().count(),
            4,
            "header, a/b, new, removed l: {patch}"
        );
        let got = base.apply_patch(&patch, 100).unwrap();
        assert_eq!(got.release_id(), want.release_id());
        assert_eq!(base.apply_patch(&base.patch_to(&base), 100).unwrap(), base);
        assert!(base.apply_patch("nope\n", 100).is_err());
        assert!(base.apply_patch(&patch, 3).is_err(), "cap");
        let twice = format!("{patch}{}\n", patch.lines().nth(1).unwrap());
        assert!(base.apply_patch(&twice, 100).unwrap_err().contains("twice"));
    }

    #[test]
    fn diff_names_each_kind_of_change() {
        let want = TreeIndex::new(sample()).unwrap();
        let mut got = sample();
        got[0].sha256 = Some(sha256_hex(b"other"));
        got.retain(|e| e.path != "l");
        got.push(IndexEntry::file("new", 0o644, 1, sha256_hex(b"x")));
        let d = want.diff(&TreeIndex::new(got).unwrap());
        assert_eq!(d.modified, ["a/b"]);
        assert_eq!(d.added, ["new"]);
        assert_eq!(d.missing, ["l"]);
        assert!(want.diff(&want).is_empty());
    }
}
