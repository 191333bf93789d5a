//! Rules about a release tree that the master (before it packs) and the
//! updater (when it extracts and runs) must agree on: the symlink rule, the
//! updater binary's default path and shape. The manifest file's name and
//! reader are [`crate::wire::MANIFEST_FILE`] and [`crate::wire::Manifest::read`].

use std::path::{Component, Path, PathBuf};

/// `[updater] binary` when `swarm.toml` gives none.
pub const DEFAULT_UPDATER_BINARY: &str = "bin/worker-updater";

/// Check an `[updater] binary` path: relative, inside the tree, only names.
pub fn check_updater_binary(rel: &str) -> Result<(), String> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "[updater] binary {rel:?} must be a relative path inside the tree, like {DEFAULT_UPDATER_BINARY}"
        ));
    }
    Ok(())
}

/// The symlink rule: a link at `link_depth` directories below the release
/// root (0 for a link at the root) may point at `target` only when it is
/// relative, every `..` comes before any name, and it never climbs above
/// the root. Returns the target normalized (`.` and empty components
/// dropped), or why it is refused.
pub fn check_link_target(link_depth: usize, target: &str) -> Result<PathBuf, String> {
    if target.is_empty() {
        return Err("symbolic link with an empty target".into());
    }
    if target.contains('\0') {
        return Err("NUL byte in link target".into());
    }
    if target.starts_with('/') {
        return Err(format!("symbolic link to the absolute path {target:?}"));
    }
    let mut ups = 0usize;
    let mut names = Vec::new();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if names.is_empty() => ups += 1,
            ".." => {
                return Err(format!(
                    "symbolic link target {target:?} has `..` after a name (it could leave the tree through another link)"
                ));
            }
            c => names.push(c),
        }
    }
    if ups > link_depth {
        return Err(format!(
            "symbolic link target {target:?} leaves the release"
        ));
    }
    let mut out = PathBuf::new();
    for _ in 0..ups {
        out.push("..");
    }
    for n in names {
        out.push(n);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_rule() {
        assert_eq!(check_link_target(0, "a/./b").unwrap(), Path::new("a/b"));
        assert_eq!(
            check_link_target(2, "../../x").unwrap(),
            Path::new("../../x")
        );
        assert!(check_link_target(1, "../../x").is_err());
        assert!(check_link_target(3, "a/../b").is_err());
        assert!(check_link_target(0, "/etc").is_err());
        assert!(check_link_target(0, "").is_err());
        assert!(check_updater_binary("bin/worker-updater").is_ok());
        for bad in ["", "/bin/sh", "../x", "bin/../x", "./x"] {
            assert!(check_updater_binary(bad).is_err(), "{bad}");
        }
    }
}
