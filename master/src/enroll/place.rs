//! Putting new directories in place all-or-nothing: hidden temp siblings,
//! `rename(2)` that never replaces, and a cleanup that removes only what
//! swarm itself created.
//!
//! Invariant: a path is registered for cleanup only once swarm has created
//! it (a temp sibling it wrote, a parent it made, a destination its rename
//! filled): when a rename fails because something else appeared at the
//! destination, that something survives untouched.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Paths removed on drop unless [`Cleanup::disarm`] is called.
#[derive(Debug, Default)]
pub(super) struct Cleanup {
    paths: RefCell<Vec<PathBuf>>,
    armed: bool,
}

impl Cleanup {
    pub(super) fn new() -> Cleanup {
        Cleanup {
            paths: RefCell::new(Vec::new()),
            armed: true,
        }
    }

    /// Remove `path` on failure: only for a path swarm just created.
    pub(super) fn add(&self, path: &Path) {
        self.paths.borrow_mut().push(path.to_owned());
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            for p in self.paths.borrow().iter().rev() {
                let _ = if p.is_dir() {
                    fs::remove_dir_all(p)
                } else {
                    fs::remove_file(p)
                };
            }
        }
    }
}

/// A name no one else will pick for a hidden temp sibling of `path`.
pub(super) fn temp_sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::usage(format!("{} has no final component", path.display())))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Ok(path.with_file_name(format!(
        ".{}.{tag}-{}-{nanos:08x}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// `rename(2)` that fails instead of replacing an existing `to`.
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| Error::io(to, std::io::Error::from(e)))
}

/// Move the staged `from` to `to`, never over an existing path; `to` is
/// registered with `cleanup` only once the rename put it there.
pub(super) fn place(from: &Path, to: &Path, cleanup: &Cleanup) -> Result<()> {
    rename_noreplace(from, to)?;
    cleanup.add(to);
    Ok(())
}

/// Best effort: make the renames in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9 #1: the destination used to be registered for cleanup
    /// before the rename, so losing a race to another process removed
    /// that process's directory.
    #[test]
    fn a_directory_that_appeared_at_the_destination_survives() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join(".bundle.enroll-1");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("worker.crt"), "ours").unwrap();
        let dest = dir.path().join("bundle");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("theirs.txt"), "theirs").unwrap();
        {
            let cleanup = Cleanup::new();
            cleanup.add(&staged);
            let err = place(&staged, &dest, &cleanup).unwrap_err().to_string();
            assert!(err.contains("exists"), "{err}");
        } // cleanup runs here, armed
        assert_eq!(
            fs::read_to_string(dest.join("theirs.txt")).unwrap(),
            "theirs"
        );
        assert!(!dest.join("worker.crt").exists());
        assert!(!staged.exists(), "our own staging dir is cleaned up");
    }

    #[test]
    fn a_placed_directory_is_removed_when_a_later_step_fails() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join(".a.new");
        fs::create_dir(&staged).unwrap();
        let dest = dir.path().join("a");
        {
            let cleanup = Cleanup::new();
            place(&staged, &dest, &cleanup).unwrap();
            assert!(dest.is_dir());
        }
        assert!(!dest.exists());
    }
}
