//! The symlink rule as the master applies it before packing: a thin call to
//! [`pki::release::check_link_target`], the one rule every updater applies
//! on extraction, so a tree that packs is a tree that lands.

use std::path::{Path, PathBuf};

use super::pack_err;
use crate::error::Result;

/// Check the symlink at `rel` (relative to `root`) pointing at `target`;
/// the target as the updater creates it (normalized), for the index.
pub(super) fn check_link(root: &Path, rel: &Path, target: &Path) -> Result<PathBuf> {
    let refuse = |why: &str| {
        pack_err(
            root,
            format!(
                "symlink {} -> {}: {why}; updaters accept only relative links like ../../dir/file \
                 that stay inside the tree (rewrite it, replace it with a copy, or exclude it)",
                rel.display(),
                target.display()
            ),
        )
    };
    let Some(text) = target.to_str() else {
        return Err(refuse("the target is not UTF-8"));
    };
    let depth = rel.components().count().saturating_sub(1);
    pki::release::check_link_target(depth, text).map_err(|why| refuse(&why))
}
