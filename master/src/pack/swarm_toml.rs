//! `swarm.toml`, the master's copy of the schema: the one place the master
//! reads a tree's `swarm.toml` (the parts it needs; the rest is the
//! updater's). When `pki` owns the schema, this file becomes a call to it.

use std::fs;
use std::io;
use std::path::Path;

use serde::Deserialize;

use super::pack_err;
use crate::error::{Error, Result};

/// The parts of `swarm.toml` the master reads; the rest is the updater's.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SwarmToml {
    #[serde(default)]
    pub(super) release: ReleaseSection,
    #[serde(default)]
    pub(super) install: InstallSection,
    #[serde(default)]
    pub(super) updater: UpdaterSection,
    #[serde(default)]
    pub(super) agent: AgentSection,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AgentSection {
    /// How long the updater may probe this release's agent.
    pub(super) probe_deadline_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct UpdaterSection {
    /// What `/update-self` runs, relative to the release root.
    pub(super) binary: Option<String>,
}

/// `[updater] binary` when `swarm.toml` gives none.
pub(crate) const DEFAULT_UPDATER_BINARY: &str = "bin/worker-updater";

#[derive(Debug, Default, Deserialize)]
pub(super) struct ReleaseSection {
    /// Gitignore-style globs of secrets to ship anyway.
    #[serde(default)]
    pub(super) include: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct InstallSection {
    pub(super) timeout_secs: Option<u64>,
}

/// Read `root/swarm.toml`; a tree without one gets the defaults.
pub(super) fn read(root: &Path) -> Result<SwarmToml> {
    let path = root.join("swarm.toml");
    match fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| pack_err(root, format!("swarm.toml: {}", e.message()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SwarmToml::default()),
        Err(e) => Err(Error::io(&path, e)),
    }
}
