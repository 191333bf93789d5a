//! Rules about a release tree that the master (before it packs) and the
//! updater (when it extracts and runs) must agree on: the symlink rule, the
//! updater binary's default path and shape. The manifest file's name and
//! reader are [`crate::wire::MANIFEST_FILE`] and [`crate::wire::Manifest::read`].

use std::path::PathBuf;

/// `[updater] binary` when `swarm.toml` gives none.
pub const DEFAULT_UPDATER_BINARY: &str = "bin/worker-updater";

/// The one rule for a path of the tree that `swarm.toml` names: plain names
/// joined by `/` — no `..`, no `.`, no empty part, not absolute.
pub fn is_tree_path(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn tree_path_error(what: &str, path: &str, why: &str) -> String {
    format!(
        "{what} {path:?} {why}; a path in the tree is plain names joined by / \
         (like {DEFAULT_UPDATER_BINARY}), never with `..`, `.` or an empty part"
    )
}

/// Check an `[updater] binary` path: always a file of the tree (self-update
/// ships it), by [`is_tree_path`].
pub fn check_updater_binary(rel: &str) -> Result<(), String> {
    if is_tree_path(rel) {
        return Ok(());
    }
    let why = if rel.starts_with('/') {
        "is absolute (the updater binary must ship in the tree)"
    } else {
        "is not a plain path inside the tree"
    };
    Err(tree_path_error("[updater] binary", rel, why))
}

/// Check the program of an `[agent]` or `[install]` command (`what` names
/// which): a host program, absolute (`/usr/bin/python3`) or a bare name
/// looked up on `PATH` (`sh`), or a file of the tree given as a relative
/// path with a `/`, which must obey [`is_tree_path`]. Applied to the
/// program as written by the master before packing and, after `${VAR}`
/// expansion, by the updater before it runs anything.
pub fn check_program(what: &str, program: &str) -> Result<(), String> {
    let relative = program.contains('/') && !program.starts_with('/');
    if relative && !is_tree_path(program) {
        return Err(tree_path_error(
            what,
            program,
            "leaves the tree or is not a plain path",
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
    use std::path::Path;

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
        for bad in ["", "/bin/sh", "../x", "bin/../x", "./x", "bin//x", "bin/"] {
            assert!(check_updater_binary(bad).is_err(), "{bad}");
        }
        for ok in ["sh", "/usr/bin/env", "bin/run", "a/b/c"] {
            assert!(check_program("[agent] command", ok).is_ok(), "{ok}");
        }
        for bad in ["../run", "./run.sh", "bin/../../x", "bin//x"] {
            let e = check_program("[agent] command", bad).unwrap_err();
            assert!(e.contains("plain names joined by /"), "{e}");
        }
    }
}
