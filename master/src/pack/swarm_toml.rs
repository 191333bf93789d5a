//! `swarm.toml` as the master reads it before packing: the schema, its size
//! cap and its checks are [`pki::swarm_toml`], shared with every updater, so
//! a tree the master accepts is a tree the updaters accept.

use std::path::Path;

pub(super) use pki::swarm_toml::SwarmToml;

use super::pack_err;
use crate::error::Result;

/// Read `root/swarm.toml`; a tree without one gets the defaults.
pub(super) fn read(root: &Path) -> Result<SwarmToml> {
    SwarmToml::read(root).map_err(|e| pack_err(root, e.to_string()))
}
