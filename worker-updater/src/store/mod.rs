//! The content store (issue 12): `releases/store/` holds every regular file
//! of every release once, by content, and each release's file is a
//! hardlink to its object, so content a release shares with another is
//! never written to disk again (a delta links it, a whole push drops the
//! copy it just received for the object it already has).
//!
//! ```text
//! releases/store/<sha256>-<mode>   one object: the content whose SHA-256 it
//!                                  names, installed with `mode` less its
//!                                  write bits (see [`installed_mode`])
//! releases/store/.ledger.json      the seal recorded for each object
//! ```
//!
//! Objects are read-only (no write bit: the inode is shared by every
//! release holding the file). An object is trusted without a re-hash only
//! while its [`Seal`] — inode, size, mtime and ctime — is the one recorded
//! when it was stored or last checked: a write through any of its links, a
//! `touch -d` putting the mtime back, a `chmod`, all change the ctime,
//! which no user call can set. Our own `link`/`unlink` change it too, so
//! the seal is taken again after each link; what deleting a release does
//! to it is [`gc`]'s to settle. A seal that does not match means a
//! re-hash, and an object whose content no longer hashes to its name is
//! dropped, never reused.
//!
//! One [`Session`] at a time (a process-wide lock): a push's staging
//! and the garbage collection never run at once.

pub mod gc;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use pki::index::{CopyError, EntryKind, IndexEntry, copy_hashing};
use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdaterError};
use crate::slots::fsx;

/// The ledger's file name in the store.
pub const LEDGER: &str = ".ledger.json";
/// The largest ledger read (about 150 bytes an object).
const MAX_LEDGER_BYTES: u64 = 256 << 20;

/// One session at a time, in this process (there is one updater per
/// install dir).
static LOCK: Mutex<()> = Mutex::new(());

/// The mode a stored file has on disk: the index's canonical mode
/// ([`pki::index::file_mode`], always owner-writable) without its write
/// bits. The index, and so the `release_id`, keeps the canonical mode.
pub fn installed_mode(canonical: u32) -> u32 {
    canonical & !0o222
}

/// The canonical mode an index would give a file found with `on_disk`: a
/// read-only file is what [`installed_mode`] made of `on_disk | 0o200`; a
/// writable one gets the setuid bit, which no canonical mode has, so
/// `verify` reports a stored file made writable as modified.
pub fn canonical_mode(on_disk: u32) -> u32 {
    if on_disk & 0o222 == 0 {
        on_disk | 0o200
    } else {
        on_disk | 0o4000
    }
}

/// What a stored object's inode looked like when it was last trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl Seal {
    pub fn of(meta: &fs::Metadata) -> Seal {
        Seal {
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// What one thread of [`Session::link_sealed`] did: the seals of the
/// objects it linked, and the entries it left.
type Linked = (Vec<(String, Seal)>, Vec<usize>);

/// The store of one set of slots (`<releases>/store`).
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// The store, locked, with its ledger loaded: what a push's staging and
/// the garbage collection work through.
pub struct Session {
    dir: PathBuf,
    ledger: BTreeMap<String, Seal>,
    /// Seals taken in this session, for the first crash point.
    linked: u64,
    _lock: MutexGuard<'static, ()>,
}

/// The object name of a file entry: `<sha256>-<canonical mode, octal>`.
pub fn object_name(e: &IndexEntry) -> Option<String> {
    let sha = e.sha256.as_deref()?;
    (e.kind == EntryKind::File).then(|| format!("{sha}-{:o}", e.mode))
}

/// The SHA-256 and canonical mode an object's name says, if it is one.
pub fn parse_name(name: &str) -> Option<(&str, u32)> {
    let (sha, mode) = name.split_once('-')?;
    let mode = u32::from_str_radix(mode, 8).ok()?;
    let ok = sha.len() == 64
        && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && mode == pki::index::file_mode(mode);
    ok.then_some((sha, mode))
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Lock the store and read its ledger (an unreadable ledger is an
    /// empty one: every object is re-hashed before it is reused).
    pub fn begin(&self) -> Result<Session> {
        let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        fs::create_dir_all(&self.dir).map_err(|e| UpdaterError::io(&self.dir, e))?;
        let path = self.dir.join(LEDGER);
        let ledger = match fs::File::open(&path) {
            Ok(f) => {
                let mut bytes = Vec::new();
                f.take(MAX_LEDGER_BYTES)
                    .read_to_end(&mut bytes)
                    .map_err(|e| UpdaterError::io(&path, e))?;
                serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::warn!("{}: {e}; every object is re-hashed", path.display());
                    BTreeMap::new()
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(UpdaterError::io(&path, e)),
        };
        Ok(Session {
            dir: self.dir.clone(),
            ledger,
            linked: 0,
            _lock: lock,
        })
    }
}

impl Session {
    fn object(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Record the object's seal as it is now.
    fn reseal(&mut self, name: &str) -> Result<()> {
        let path = self.object(name);
        let meta = fs::symlink_metadata(&path).map_err(|e| UpdaterError::io(&path, e))?;
        self.ledger.insert(name.to_owned(), Seal::of(&meta));
        Ok(())
    }

    /// Remove an object that is not what its name says (and its seal).
    fn drop_object(&mut self, name: &str, why: &str) {
        tracing::warn!("content store: dropping {name}: {why}; it is not reused");
        self.ledger.remove(name);
        let _ = fsx::remove_file(&self.object(name));
    }

    /// Whether the object `name` exists and holds its content: by its
    /// seal, else by a re-hash (a mismatch drops it).
    fn trusted(&mut self, name: &str) -> Result<bool> {
        let Some((sha, mode)) = parse_name(name) else {
            return Ok(false);
        };
        let path = self.object(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ledger.remove(name);
                return Ok(false);
            }
            Err(e) => return Err(UpdaterError::io(&path, e)),
        };
        if !meta.file_type().is_file() {
            self.drop_object(name, "not a regular file");
            return Ok(false);
        }
        let want_mode = installed_mode(mode);
        if self.ledger.get(name) == Some(&Seal::of(&meta))
            && meta.permissions().mode() & 0o7777 == want_mode
        {
            return Ok(true);
        }
        // Changed since it was sealed, or never sealed: re-hash.
        if hash_file(&path)? != sha {
            self.drop_object(name, "its content no longer hashes to its name");
            return Ok(false);
        }
        if meta.permissions().mode() & 0o7777 != want_mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(want_mode))
                .map_err(|e| UpdaterError::io(&path, e))?;
        }
        self.reseal(name)?;
        Ok(true)
    }

    /// Whether the store holds a trustworthy copy of `e`'s content in its
    /// mode (by the object's seal, else a re-hash).
    pub fn holds(&mut self, e: &IndexEntry) -> Result<bool> {
        match object_name(e) {
            Some(name) => self.trusted(&name),
            None => Ok(false),
        }
    }

    /// `staged` was just written and hashed as `e` says: make it the
    /// stored object (read-only), or, when the store already holds that
    /// content, replace it by a link to the object.
    pub fn adopt(&mut self, staged: &Path, e: &IndexEntry) -> Result<()> {
        let Some(name) = object_name(e) else {
            return Ok(());
        };
        let object = self.object(&name);
        if self.trusted(&name)? {
            fsx::remove_file(staged)?;
            fs::hard_link(&object, staged).map_err(|err| UpdaterError::io(staged, err))?;
        } else {
            fs::set_permissions(staged, fs::Permissions::from_mode(installed_mode(e.mode)))
                .map_err(|err| UpdaterError::io(staged, err))?;
            fs::hard_link(staged, &object).map_err(|err| UpdaterError::io(&object, err))?;
        }
        self.sealed_one(&name)
    }

    /// Link the stored content of `e` at the new path `to`: the object of
    /// that content and mode, else a copy of the same content stored with
    /// another mode (hashed as it is copied, then stored). `false` when
    /// the store has no trustworthy copy.
    pub fn link_to(&mut self, to: &Path, e: &IndexEntry) -> Result<bool> {
        let Some(name) = object_name(e) else {
            return Ok(false);
        };
        if self.trusted(&name)? {
            let object = self.object(&name);
            fs::hard_link(&object, to).map_err(|err| UpdaterError::io(to, err))?;
            self.sealed_one(&name)?;
            return Ok(true);
        }
        let sha = e.sha256.as_deref().unwrap_or_default();
        let others: Vec<String> = self
            .ledger
            .range(format!("{sha}-")..)
            .take_while(|(k, _)| k.starts_with(sha))
            .map(|(k, _)| k.clone())
            .filter(|k| *k != name)
            .collect();
        for other in others {
            if self.trusted(&other)? && copy_checked(&self.object(&other), to, e)? {
                self.adopt(to, e)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Link each of `todo` (entries of files, at their paths below
    /// `staging`) from its object when the store holds it trusted by its
    /// seal, on two threads (objects split between them, so one object's
    /// links and seals stay in order); the indexes of `todo` not linked,
    /// for [`Session::link_to`] to settle one by one (a re-hash, another
    /// mode's copy, or none).
    pub fn link_sealed(&mut self, staging: &Path, todo: &[&IndexEntry]) -> Result<Vec<usize>> {
        let ledger = &self.ledger;
        let dir = &self.dir;
        let work = |half: u8| -> Result<Linked> {
            // The seals this thread took (an object linked twice is
            // checked against the seal of its first link).
            let mut sealed: HashMap<String, Seal> = HashMap::new();
            let mut left = Vec::new();
            for (i, e) in todo.iter().enumerate() {
                let Some(name) = object_name(e) else {
                    if half == 0 {
                        left.push(i);
                    }
                    continue;
                };
                if name.as_bytes()[0] % 2 != half {
                    continue;
                }
                let object = dir.join(&name);
                let want = sealed.get(&name).or_else(|| ledger.get(&name));
                let ok = fs::symlink_metadata(&object).is_ok_and(|m| {
                    m.file_type().is_file()
                        && want == Some(&Seal::of(&m))
                        && parse_name(&name).is_some_and(|(_, mode)| {
                            m.permissions().mode() & 0o7777 == installed_mode(mode)
                        })
                });
                if !ok {
                    left.push(i);
                    continue;
                }
                let to = staging.join(&e.path);
                fs::hard_link(&object, &to).map_err(|err| UpdaterError::io(&to, err))?;
                let meta =
                    fs::symlink_metadata(&object).map_err(|err| UpdaterError::io(&object, err))?;
                sealed.insert(name, Seal::of(&meta));
            }
            Ok((sealed.into_iter().collect(), left))
        };
        let (a, b) = std::thread::scope(|s| {
            let other = s.spawn(|| work(1));
            let mine = work(0);
            (mine, other.join())
        });
        let b = b.map_err(|_| UpdaterError::Internal("a store link thread panicked".into()))?;
        let mut left = Vec::new();
        for part in [a, b] {
            let (sealed, l) = part?;
            if !sealed.is_empty() && self.linked == 0 {
                self.linked += 1;
                crate::crashpoint::at("store-linking");
            }
            self.linked += sealed.len() as u64;
            for (name, seal) in sealed {
                self.ledger.insert(name, seal);
            }
            left.extend(l);
        }
        left.sort_unstable();
        Ok(left)
    }

    /// After a link: the seal again (the link changed the ctime), and the
    /// `store-linking` crash point at the first.
    fn sealed_one(&mut self, name: &str) -> Result<()> {
        self.reseal(name)?;
        self.linked += 1;
        if self.linked == 1 {
            crate::crashpoint::at("store-linking");
        }
        Ok(())
    }

    /// Write the ledger for a caller that syncs the filesystem next (the
    /// flip's `syncfs`); a crash before that only costs re-hashes.
    pub fn commit(self) -> Result<()> {
        fsx::write_json_unsynced(&self.dir.join(LEDGER), &self.ledger)
    }

    /// [`Session::commit`], durably (the garbage collection).
    pub fn commit_durable(self) -> Result<()> {
        fsx::write_json_durable(&self.dir.join(LEDGER), &self.ledger)
    }
}

/// Copy `from` to the new file `to`, hashing what is read; `true` when it
/// is `want`'s content (else `to` is removed).
fn copy_checked(from: &Path, to: &Path, want: &IndexEntry) -> Result<bool> {
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(from)
        .map_err(|e| UpdaterError::io(from, e))?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| UpdaterError::io(to, e))?;
    let mut out = io::BufWriter::with_capacity(256 * 1024, &dst);
    let (sha, size) = copy_hashing(&mut src, &mut out).map_err(|e| match e {
        CopyError::Read(e) => UpdaterError::io(from, e),
        CopyError::Write(e) => UpdaterError::io(to, e),
    })?;
    out.flush().map_err(|e| UpdaterError::io(to, e))?;
    drop(out);
    if size != want.size || Some(sha.as_str()) != want.sha256.as_deref() {
        fsx::remove_file(to)?;
        return Ok(false);
    }
    Ok(true)
}

/// SHA-256 (hex) of the file at `path`, read in 256 KiB pieces.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(|e| UpdaterError::io(path, e))?;
    let (sha, _) = copy_hashing(&mut f, &mut io::sink()).map_err(|e| match e {
        CopyError::Read(e) | CopyError::Write(e) => UpdaterError::io(path, e),
    })?;
    Ok(sha)
}

#[cfg(test)]
mod tests;
