//! Release signing records (issue 15): the home's signature counter, taken
//! once per signing run, and where the private release key lives.
//!
//! Invariant: `seq` only grows; each [`Inventory::next_release_seq`] hands
//! out a number no earlier call did.

use std::path::{Path, PathBuf};

use rusqlite::params;

use super::Inventory;
use crate::error::Result;

impl Inventory {
    /// The next signature `seq` (1, 2, …), taken now.
    pub(crate) fn next_release_seq(&mut self) -> Result<u64> {
        let seq: i64 = self
            .conn
            .query_row(
                "UPDATE release_signing SET seq = seq + 1 WHERE id = 1 RETURNING seq",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.db(e))?;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// Where `--key-file` put the release key (`None`: beside the CA).
    pub(crate) fn release_key_file(&self) -> Result<Option<PathBuf>> {
        let path: Option<String> = self
            .conn
            .query_row(
                "SELECT key_file FROM release_signing WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.db(e))?;
        Ok(path.map(PathBuf::from))
    }

    /// Record where the release key lives (`None`: beside the CA).
    pub(crate) fn set_release_key_file(&mut self, path: Option<&Path>) -> Result<()> {
        let text = path.map(|p| p.to_string_lossy().into_owned());
        self.conn
            .execute(
                "UPDATE release_signing SET key_file = ?1 WHERE id = 1",
                params![text],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_grows_by_one_per_call_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("inventory.db");
        let mut inv = Inventory::open(&db).unwrap();
        assert_eq!(inv.next_release_seq().unwrap(), 1);
        assert_eq!(inv.next_release_seq().unwrap(), 2);
        assert_eq!(inv.release_key_file().unwrap(), None);
        inv.set_release_key_file(Some(Path::new("/media/key/release.key")))
            .unwrap();
        drop(inv);
        let mut inv = Inventory::open(&db).unwrap();
        assert_eq!(inv.next_release_seq().unwrap(), 3);
        assert_eq!(
            inv.release_key_file().unwrap(),
            Some(PathBuf::from("/media/key/release.key"))
        );
    }
}
