//! The symlink rule, the master's copy: the one place the master decides
//! whether a link in a tree may ship. It must match what every updater
//! applies on extraction (`worker-updater` extract); when `pki` owns the
//! rule, this file becomes a call to it.

use std::path::{Component, Path};

use super::pack_err;
use crate::error::Result;

/// A symlink target, checked by the rule every updater applies on
/// extraction (so a tree that packs is a tree that lands): relative, every
/// `..` before any name, and never above the release root from where the
/// link sits.
pub(super) fn check_link(root: &Path, rel: &Path, target: &Path) -> Result<()> {
    let refuse = |why: &str| {
        pack_err(
            root,
            format!(
                "symlink {} -> {} {why}; updaters accept only relative links like ../../dir/file \
                 that stay inside the tree (rewrite it, replace it with a copy, or exclude it)",
                rel.display(),
                target.display()
            ),
        )
    };
    if target.as_os_str().is_empty() {
        return Err(refuse("has an empty target"));
    }
    let mut ups: usize = 0;
    let mut named = false;
    for c in target.components() {
        match c {
            Component::ParentDir if named => return Err(refuse("has `..` after a name")),
            Component::ParentDir => ups += 1,
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse("points to an absolute path"));
            }
        }
    }
    let depth = rel.components().count().saturating_sub(1);
    if ups > depth {
        return Err(refuse("points outside the tree"));
    }
    Ok(())
}
