//! The install directory's own files, outside the slots: `agent.pid`,
//! `agent.spawn.log` and `.env.local` (per-host settings, never shipped,
//! never replaced). `current` and `releases/` belong to [`crate::slots`].

use std::path::{Path, PathBuf};

/// The install dir (`--install-dir`, absolute).
#[derive(Clone, Debug)]
pub struct Install {
    dir: PathBuf,
}

impl Install {
    pub fn new(dir: &Path) -> Install {
        Install {
            dir: dir.to_owned(),
        }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The agent the updater spawned (see [`crate::agent::pidfile`]).
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("agent.pid")
    }
    /// The spawned agents' stdout and stderr, appended.
    pub fn spawn_log(&self) -> PathBuf {
        self.dir.join("agent.spawn.log")
    }
    /// Per-host variables for the agent and the install hook.
    pub fn env_local(&self) -> PathBuf {
        self.dir.join(".env.local")
    }
}
