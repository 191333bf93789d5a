//! The master's state directory (`--home`, `$SWARM_HOME`, `~/.swarm`): the
//! CA, the master's client identity and the inventory database.

use std::path::{Path, PathBuf};

use pki::{Bundle, BundleKind, Ca};

use crate::error::{Error, Result};
use crate::inventory::Inventory;

/// Where the master keeps its state.
#[derive(Clone, Debug)]
pub(crate) struct Home {
    root: PathBuf,
}

impl Home {
    /// `--home`/`$SWARM_HOME` if given (clap merges the two), else `~/.swarm`.
    /// The path is made absolute so messages and child processes agree on it.
    pub(crate) fn resolve(flag: Option<&Path>) -> Result<Home> {
        let root = match flag {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => match std::env::var_os("HOME") {
                Some(h) if !h.is_empty() => PathBuf::from(h).join(".swarm"),
                _ => {
                    return Err(Error::usage(
                        "no home directory: pass --home DIR or set SWARM_HOME",
                    ));
                }
            },
        };
        let root = std::path::absolute(&root).map_err(|e| Error::io(&root, e))?;
        Ok(Home { root })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    pub(crate) fn master_dir(&self) -> PathBuf {
        self.root.join("master")
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.root.join("inventory.db")
    }

    pub(crate) fn has_ca(&self) -> bool {
        self.ca_dir().join("ca.crt").exists() || self.ca_dir().join("ca.key").exists()
    }

    fn not_initialized(&self) -> Error {
        Error::State(format!(
            "no CA in {}: run `swarm ca init` first (or point --home/SWARM_HOME at an initialized home)",
            self.root.display()
        ))
    }

    /// The CA, for issuing certificates.
    pub(crate) fn ca(&self) -> Result<Ca> {
        if !self.has_ca() {
            return Err(self.not_initialized());
        }
        Ok(Ca::load(&self.ca_dir())?)
    }

    /// The master's client identity, for talking to updaters.
    pub(crate) fn master_bundle(&self) -> Result<Bundle> {
        if !self.has_ca() {
            return Err(self.not_initialized());
        }
        Ok(Bundle::load_kind(&self.master_dir(), BundleKind::Master)?)
    }

    /// The inventory; it needs an initialized home.
    pub(crate) fn inventory(&self) -> Result<Inventory> {
        if !self.has_ca() {
            return Err(self.not_initialized());
        }
        Inventory::open(&self.db_path())
    }
}
