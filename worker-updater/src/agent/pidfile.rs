//! `agent.pid`: the agent the updater spawned, as JSON `{"pid",
//! "start_time", "argv", "release_dir", "sha256", "started_at"}`, written
//! atomically. `start_time` is field 22 of `/proc/<pid>/stat`, so a
//! recycled pid never matches. A bare number (written by hand) still reads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::slots::fsx::write_json_durable;

/// `agent.pid`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PidFile {
    pub pid: i32,
    #[serde(default)]
    pub start_time: Option<u64>,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub release_dir: Option<PathBuf>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
}

impl PidFile {
    /// Read `path`: our JSON, or a bare pid.
    pub fn read(path: &Path) -> Option<PidFile> {
        let text = std::fs::read_to_string(path).ok()?;
        if let Ok(pf) = serde_json::from_str::<PidFile>(&text) {
            return Some(pf);
        }
        text.trim().parse().ok().map(|pid| PidFile {
            pid,
            ..PidFile::default()
        })
    }

    /// Write atomically (temp sibling, fsync, rename, fsync of the dir).
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        write_json_durable(path, self)
    }
}
