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

    /// Whether a CA is there; an error when the home cannot be read (a
    /// mode that shuts us out, a file where a directory should be), which
    /// is not the same as "no CA yet".
    pub(crate) fn has_ca(&self) -> Result<bool> {
        let mut found = false;
        for f in ["ca.crt", "ca.key"] {
            let path = self.ca_dir().join(f);
            match path.try_exists() {
                Ok(there) => found |= there,
                Err(e) => return Err(self.unreadable(&path, e)),
            }
        }
        Ok(found)
    }

    fn unreadable(&self, path: &Path, e: std::io::Error) -> Error {
        Error::State(format!(
            "cannot read the swarm home {}: {} ({e}); check its owner and mode, or point --home/SWARM_HOME at the right directory",
            self.root.display(),
            path.display()
        ))
    }

    /// No CA: an error saying what to run.
    fn require_ca(&self) -> Result<()> {
        if self.has_ca()? {
            Ok(())
        } else {
            Err(self.not_initialized())
        }
    }

    fn not_initialized(&self) -> Error {
        Error::State(format!(
            "no CA in {}: run `swarm ca init` first (or point --home/SWARM_HOME at an initialized home)",
            self.root.display()
        ))
    }

    /// The CA, for issuing certificates.
    pub(crate) fn ca(&self) -> Result<Ca> {
        self.require_ca()?;
        Ok(Ca::load(&self.ca_dir())?)
    }

    /// The master's client identity, for talking to updaters.
    pub(crate) fn master_bundle(&self) -> Result<Bundle> {
        self.require_ca()?;
        Ok(Bundle::load_kind(&self.master_dir(), BundleKind::Master)?)
    }

    /// The inventory; it needs an initialized home.
    pub(crate) fn inventory(&self) -> Result<Inventory> {
        self.require_ca()?;
        Inventory::open(&self.db_path())
    }
}
