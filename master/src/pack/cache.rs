//! The master's per-file hash cache (issue 12): for each file of a tree it
//! packed, the file's size, mtime, ctime and inode when it was hashed, its
//! SHA-256, and whether it held a private key. Packing an unchanged tree
//! then costs a stat walk, not a re-read of every byte.
//!
//! One cache file per tree root, `$SWARM_HOME/cache/<hash of the root>.json`
//! (0600, written aside and renamed), holding exactly the files the last
//! scan of that root saw. A file is trusted from the cache only while all
//! four stat fields are those recorded; a file whose mtime or ctime was
//! within [`RACY`] of the scan that hashed it is not recorded at all, so a write
//! in the same clock tick as the hash can never be mistaken for unchanged
//! (git's "racy clean" rule). Whatever the cache says, every updater
//! checks every byte it receives against the index, so a wrong entry can
//! cost a refused push, never a wrong release.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How recent an mtime may be, at the scan that hashed the file, and still
/// be recorded.
const RACY: Duration = Duration::from_secs(2);

/// Largest cache file read (about 150 bytes an entry).
const MAX_CACHE_BYTES: u64 = 64 << 20;

/// What a file looked like when it was hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stamp {
    pub(super) fn of(meta: &Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// The time a scan starts at (tests move it on, so the files they just
/// wrote count as old).
fn now() -> SystemTime {
    let now = SystemTime::now();
    #[cfg(test)]
    let now = now + LATER.with(std::cell::Cell::get);
    now
}

#[cfg(test)]
thread_local! {
    /// How far this thread's scans believe they start in the future.
    pub(super) static LATER: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// One cached file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Hashed {
    stamp: Stamp,
    pub(super) sha256: String,
    /// Whether [`crate::keyscan`] found a private key in it.
    pub(super) holds_key: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: HashMap<String, Hashed>,
}

/// The cache of one root, as read at the start of a scan, and what the
/// scan saw (written back by [`HashCache::save`]).
#[derive(Debug)]
pub(super) struct HashCache {
    path: Option<PathBuf>,
    old: HashMap<String, Hashed>,
    new: HashMap<String, Hashed>,
    started: SystemTime,
}

impl HashCache {
    /// The cache of `root` in `dir` (`None`: no cache, everything hashed).
    /// An unreadable or corrupt cache is an empty one.
    pub(super) fn open(dir: Option<&Path>, root: &Path) -> HashCache {
        let path = dir.map(|d| {
            let key = hex::encode(Sha256::digest(root.as_os_str().as_encoded_bytes()));
            d.join(format!("{}.json", &key[..32]))
        });
        let old = path
            .as_deref()
            .and_then(|p| {
                let meta = fs::metadata(p).ok()?;
                (meta.len() <= MAX_CACHE_BYTES).then_some(())?;
                let disk: OnDisk = serde_json::from_slice(&fs::read(p).ok()?).ok()?;
                (disk.version == 1).then_some(disk.files)
            })
            .unwrap_or_default();
        HashCache {
            path,
            old,
            new: HashMap::new(),
            started: now(),
        }
    }

    /// The cached hash of `rel`, if its stat still is the recorded one.
    pub(super) fn get(&mut self, rel: &str, meta: &Metadata) -> Option<Hashed> {
        let hit = self
            .old
            .get(rel)
            .filter(|h| h.stamp == Stamp::of(meta))?
            .clone();
        self.new.insert(rel.to_owned(), hit.clone());
        Some(hit)
    }

    /// Record what hashing `rel` found (`meta`: its stat before it was read).
    pub(super) fn put(&mut self, rel: &str, meta: &Metadata, sha256: &str, holds_key: bool) {
        // The later of the mtime and the ctime: an mtime can be set back
        // (`touch -d`, a tar extraction keeping mtimes), the ctime cannot.
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i128::from(d.as_secs()));
        let changed = i128::from(meta.mtime()).max(i128::from(meta.ctime()));
        let racy = changed + i128::from(RACY.as_secs()) > started;
        if !racy {
            self.new.insert(
                rel.to_owned(),
                Hashed {
                    stamp: Stamp::of(meta),
                    sha256: sha256.to_owned(),
                    holds_key,
                },
            );
        }
    }

    /// Write what this scan saw, replacing the old cache (not when it saw
    /// exactly what the cache holds: the file stays as it is). A cache
    /// that cannot be written only costs the next scan its speed.
    pub(super) fn save(self) {
        let Some(path) = self.path else { return };
        if self.new == self.old {
            return;
        }
        let disk = OnDisk {
            version: 1,
            files: self.new,
        };
        let Ok(bytes) = serde_json::to_vec(&disk) else {
            return;
        };
        let Some(dir) = path.parent() else { return };
        if fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(".cache.{}.tmp", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes));
        if written.is_err() || fs::rename(&tmp, &path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_trusted_only_while_its_stat_is_unchanged() {
        LATER.with(|l| l.set(Duration::from_secs(60)));
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let root = dir.path().join("tree");
        fs::create_dir(&root).unwrap();
        let f = root.join("a");
        fs::write(&f, "one").unwrap();
        // Old enough not to be racy.
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let meta = fs::metadata(&f).unwrap();
        let mut c = HashCache::open(Some(&cache_dir), &root);
        assert!(c.get("a", &meta).is_none());
        c.put("a", &meta, "sha-one", false);
        c.save();
        let mut c = HashCache::open(Some(&cache_dir), &root);
        assert_eq!(c.get("a", &meta).unwrap().sha256, "sha-one");
        // Same size, mtime set back: the ctime moved, so it is hashed again.
        fs::write(&f, "two").unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut c = HashCache::open(Some(&cache_dir), &root);
        assert!(c.get("a", &fs::metadata(&f).unwrap()).is_none());
    }

    #[test]
    fn a_file_written_just_before_its_scan_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("a"), "fresh").unwrap();
        // Its mtime set back does not make it old: its ctime is now.
        fs::write(root.join("b"), "fresh").unwrap();
        fs::File::options()
            .write(true)
            .open(root.join("b"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let mut c = HashCache::open(Some(dir.path()), &root);
        for f in ["a", "b"] {
            c.put(f, &fs::metadata(root.join(f)).unwrap(), "sha", false);
        }
        c.save();
        let mut c = HashCache::open(Some(dir.path()), &root);
        for f in ["a", "b"] {
            assert!(
                c.get(f, &fs::metadata(root.join(f)).unwrap()).is_none(),
                "{f}"
            );
        }
    }
}
