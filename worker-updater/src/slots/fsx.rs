//! The filesystem primitives every slot change is built from, each in one
//! place: the atomic JSON write (temp sibling, fsync, rename, fsync of the
//! directory), `renameat2(RENAME_EXCHANGE)` and the start-up check that the
//! filesystem has it, `syncfs`, directory fsync, and tree removal.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use serde::Serialize;

use crate::error::{Result, UpdaterError};

/// The files written through a temp sibling ([`temp_sibling`]); a crash can
/// leave `.<name>.tmp-<pid>` of any of them behind, which the start-up
/// repair removes ([`is_leftover`]).
const TEMP_OWNERS: &[&str] = &[
    "current",
    "incoming.json",
    "rollback.json",
    "hook.json",
    "trial.json",
    "agent.pid",
];

/// The temp sibling `path` is written through: `.<name>.tmp-<pid>` (one
/// leading dot, whether `name` has one or not).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.trim_start_matches('.');
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Whether `name` (an entry of a slot root or `releases/`) is garbage a
/// crash can leave: a temp sibling of ours, an exchange-check dir, a trash dir.
pub fn is_leftover(name: &str) -> bool {
    name.starts_with(".trash-")
        || name.starts_with(".exchange-check-")
        || TEMP_OWNERS
            .iter()
            .any(|owner| name.starts_with(&format!(".{owner}.tmp")))
}

/// Write `value` as JSON to `path` atomically and durably: a temp sibling
/// written and fsynced, renamed over `path`, the directory fsynced. A
/// reader sees the old file or the new one, never a part, even after a crash.
pub fn write_json_durable(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = write_temp(path, value)?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| UpdaterError::io(&tmp, e))?;
    rename(&tmp, path)?;
    fsync_dir(parent(path))
}

/// [`write_json_durable`] without the syncs, for a caller that syncs the
/// whole filesystem right after (the flip's one `syncfs`).
pub fn write_json_unsynced(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = write_temp(path, value)?;
    rename(&tmp, path)
}

/// Serialize straight into the temp sibling (a large ledger is never
/// held twice); a failure removes it.
fn write_temp(path: &Path, value: &impl Serialize) -> Result<PathBuf> {
    let tmp = temp_sibling(path);
    let written = fs::File::create(&tmp)
        .map_err(|e| UpdaterError::io(&tmp, e))
        .and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            serde_json::to_writer_pretty(&mut out, value).map_err(|e| {
                if e.is_io() {
                    UpdaterError::io(&tmp, e.into())
                } else {
                    UpdaterError::Internal(format!("serializing {}: {e}", path.display()))
                }
            })?;
            out.flush().map_err(|e| UpdaterError::io(&tmp, e))
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// One sync of the filesystem holding `dir`.
pub fn sync_fs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| UpdaterError::io(dir, e))?;
    nix::unistd::syncfs(&f).map_err(|e| UpdaterError::io(dir, e.into()))
}

/// Swap two directory entries atomically with `renameat2(RENAME_EXCHANGE)`.
/// There is deliberately no fallback: three renames leave moments with no
/// `active` at all. [`check_exchange`] refuses filesystems without it at
/// start-up.
pub fn exchange(a: &Path, b: &Path) -> Result<()> {
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(|e| {
        UpdaterError::io(
            a,
            io::Error::other(format!(
                "renameat2(RENAME_EXCHANGE) with {}: {e}{}",
                b.display(),
                if exchange_unsupported(e) {
                    " (this filesystem does not support RENAME_EXCHANGE, which swarm requires)"
                } else {
                    ""
                }
            )),
        )
    })
}

/// The errors `renameat2` gives when the filesystem (or kernel) cannot
/// exchange.
fn exchange_unsupported(e: nix::errno::Errno) -> bool {
    matches!(
        e,
        nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS | nix::errno::Errno::EOPNOTSUPP
    )
}

/// Check that `dir`'s filesystem can swap two directories with
/// `renameat2(RENAME_EXCHANGE)`, by doing it on two temporary directories
/// (removed again). The `Err` says what is missing, for the operator. On a
/// full filesystem (no room for the two directories) the answer is
/// "unknown" and the check passes with a warning: an updater that refuses
/// to start would leave the worker with no agent at all.
pub fn check_exchange(dir: &Path) -> std::result::Result<(), String> {
    match exchange_works(dir) {
        Err(Probe::NoRoom(e)) => {
            tracing::warn!(
                "cannot check RENAME_EXCHANGE in {} ({e}): the filesystem is full; proceeding",
                dir.display()
            );
            Ok(())
        }
        Err(Probe::Failed(e)) => Err(e),
        Ok(()) => Ok(()),
    }
}

/// How [`exchange_works`] failed.
enum Probe {
    /// ENOSPC/EDQUOT creating the probe directories.
    NoRoom(io::Error),
    Failed(String),
}

fn exchange_works(dir: &Path) -> std::result::Result<(), Probe> {
    let pid = std::process::id();
    let a = dir.join(format!(".exchange-check-{pid}-a"));
    let b = dir.join(format!(".exchange-check-{pid}-b"));
    let cleanup = || {
        let _ = fs::remove_dir_all(&a);
        let _ = fs::remove_dir_all(&b);
    };
    cleanup();
    let no_room = |e: io::Error, what: &Path| {
        if matches!(
            e.raw_os_error(),
            Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
        ) {
            Probe::NoRoom(e)
        } else {
            Probe::Failed(format!("creating {}: {e}", what.display()))
        }
    };
    let result = (|| {
        fs::create_dir(&a).map_err(|e| no_room(e, &a))?;
        fs::create_dir(&b).map_err(|e| no_room(e, &b))?;
        fs::create_dir(a.join("a")).map_err(|e| no_room(e, &a))?;
        let swapped = match renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) if b.join("a").is_dir() && !a.join("a").exists() => Ok(()),
            Ok(()) => Err(format!(
                "renameat2(RENAME_EXCHANGE) in {} reported success but did not swap",
                dir.display()
            )),
            Err(e) if exchange_unsupported(e) => Err(format!(
                "the filesystem of {} does not support renameat2(RENAME_EXCHANGE) ({e}); swarm swaps release slots with it so that `current` is a whole release at every instant. Put the install dir on a local filesystem that has it (ext4, xfs, btrfs, tmpfs; not NFS or FAT)",
                dir.display()
            )),
            Err(e) => Err(format!(
                "renameat2(RENAME_EXCHANGE) in {}: {e}",
                dir.display()
            )),
        };
        swapped.map_err(Probe::Failed)
    })();
    cleanup();
    result
}

pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| {
        UpdaterError::io(
            from,
            io::Error::new(e.kind(), format!("rename to {}: {e}", to.display())),
        )
    })
}

pub fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UpdaterError::io(path, e)),
    }
}

/// Remove a directory tree (or file, or link) if it exists.
pub fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(UpdaterError::io(path, e)),
    };
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(|e| UpdaterError::io(path, e))
}

/// Delete a trash dir; failures are logged, never fatal (it is garbage,
/// and the next start-up repair tries again). A concurrent delete of the
/// same tree is not a failure.
pub fn delete_trash(path: &Path) {
    if let Err(e) = remove_tree(path)
        && fs::symlink_metadata(path).is_ok()
    {
        tracing::warn!("deleting {}: {e}", path.display());
    }
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| UpdaterError::io(dir, e))
}
