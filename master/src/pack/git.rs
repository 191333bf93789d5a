//! What git knows about the packed tree: the commit checked out (read from
//! `.git` directly, git need not be installed) and whether the tree has
//! uncommitted changes (asked of `git status`, when git is installed).

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The commit checked out at `root`, read from `.git` directly (git need
/// not be installed); `None` when `root` is not inside a checkout.
pub(crate) fn git_commit(root: &Path) -> Option<String> {
    let mut dir = Some(root);
    while let Some(d) = dir {
        let dot_git = d.join(".git");
        if dot_git.is_dir() {
            return head_commit(&dot_git);
        }
        if dot_git.is_file() {
            // A worktree or submodule: `gitdir: <path>`.
            let text = fs::read_to_string(&dot_git).ok()?;
            let gitdir = text.trim().strip_prefix("gitdir:")?.trim();
            return head_commit(&d.join(gitdir));
        }
        dir = d.parent();
    }
    None
}

fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn head_commit(gitdir: &Path) -> Option<String> {
    let head = fs::read_to_string(gitdir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:") else {
        return is_object_id(head).then(|| head.to_ascii_lowercase());
    };
    let reference = reference.trim();
    // Worktrees keep shared refs in the common dir.
    let common = fs::read_to_string(gitdir.join("commondir"))
        .ok()
        .map(|c| gitdir.join(c.trim()))
        .unwrap_or_else(|| gitdir.to_owned());
    for dir in [gitdir, common.as_path()] {
        if let Ok(id) = fs::read_to_string(dir.join(reference)) {
            let id = id.trim();
            if is_object_id(id) {
                return Some(id.to_ascii_lowercase());
            }
        }
    }
    let packed = fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (id, name) = line.split_once(' ')?;
        (name.trim() == reference && is_object_id(id)).then(|| id.to_ascii_lowercase())
    })
}

/// How long `git status` may take before the answer is "unknown".
const STATUS_DEADLINE: Duration = Duration::from_secs(10);

/// Whether the tree at `root` differs from its checkout's commit: staged,
/// unstaged or untracked (not ignored) changes under `root`, as `git status
/// --porcelain -- .` lists them. `None` (unknown) when git is not installed,
/// `root` is not in a checkout, or git fails or takes longer than
/// [`STATUS_DEADLINE`]. Only the first byte of git's answer is read: any
/// line at all means dirty.
pub(crate) fn git_dirty(root: &Path) -> Option<bool> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "status",
            "--porcelain",
            "--untracked-files=normal",
            "--",
            ".",
        ])
        // A status must not take the index lock a concurrent git needs.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    // Reading ends at git's first byte or at its exit (EOF), whichever
    // comes first; dropping the pipe then stops a chatty git by SIGPIPE.
    let reader = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        stdout.read(&mut byte).map(|n| n > 0).unwrap_or(false)
    });
    let deadline = Instant::now() + STATUS_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let said_something = reader.join().unwrap_or(false);
    match status {
        None => None,
        Some(_) if said_something => Some(true),
        Some(s) if s.success() => Some(false),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn no_checkout_no_commit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(git_commit(dir.path()), None);
        assert_eq!(git_dirty(dir.path()), None);
    }

    #[test]
    fn uncommitted_changes_make_the_tree_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        git(root, &["init", "-q"]);
        fs::write(root.join(".gitignore"), "*.log\n").unwrap();
        fs::write(root.join("a.txt"), "one").unwrap();
        git(root, &["add", "."]);
        git(root, &["commit", "-q", "-m", "one"]);
        assert!(git_commit(root).is_some());
        assert_eq!(git_dirty(root), Some(false));
        // Ignored files do not count (they do not ship either).
        fs::write(root.join("x.log"), "noise").unwrap();
        assert_eq!(git_dirty(root), Some(false));
        // Unstaged, staged and untracked changes all do.
        fs::write(root.join("a.txt"), "two").unwrap();
        assert_eq!(git_dirty(root), Some(true));
        git(root, &["add", "a.txt"]);
        assert_eq!(git_dirty(root), Some(true));
        git(root, &["commit", "-q", "-m", "two"]);
        assert_eq!(git_dirty(root), Some(false));
        fs::write(root.join("new.txt"), "untracked").unwrap();
        assert_eq!(git_dirty(root), Some(true));
    }
}
