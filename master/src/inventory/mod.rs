//! The inventory: an embedded SQLite database of enrolled hosts (addresses,
//! ports, pinned certificate fingerprints, expiry, status, tags) and the
//! audit trail of every push and rollback (with its rollout and wave),
//! named operators, the certificate deny list and renewals in flight.
//!
//! Invariants: at most one *active* row per host name (a partial unique
//! index); decommissioned rows are kept for the record, so a name can be
//! enrolled again later; timestamps are RFC 3339 UTC text; rows are read by
//! column name, never by position; the schema only moves forward through
//! [`MIGRATIONS`] (`rusqlite_migration`, keyed on `user_version`), and a
//! database newer than this binary is refused, not touched.

mod history;
mod hosts;
mod signing;
mod tags;
mod trust;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

use crate::error::{Error, Result};

pub(crate) use history::{Op, Outcome, PushRecord};
pub(crate) use hosts::{HostRecord, HostStatus, NewHost};
pub(crate) use tags::Tag;
pub(crate) use trust::{Denied, OperatorRecord};

/// Every schema the inventory has had, oldest first. Version 1 is the
/// schema swarm shipped before migrations were declared here, so existing
/// databases (`user_version` 1) carry on from it. Never edit an entry:
/// append one.
static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE hosts (
                id                  INTEGER PRIMARY KEY,
                name                TEXT    NOT NULL,
                address             TEXT    NOT NULL,
                sans                TEXT    NOT NULL DEFAULT '[]',   -- JSON array of extra SANs
                agent_port          INTEGER NOT NULL CHECK (agent_port BETWEEN 1 AND 65535),
                updater_port        INTEGER NOT NULL CHECK (updater_port BETWEEN 1 AND 65535),
                agent_fingerprint   TEXT    NOT NULL,                -- SHA-256 of the agent cert (hex)
                agent_not_after     TEXT    NOT NULL,
                updater_fingerprint TEXT,                            -- NULL until an updater bundle is issued
                updater_not_after   TEXT,
                enrolled_at         TEXT    NOT NULL,
                status              TEXT    NOT NULL DEFAULT 'active'
                                            CHECK (status IN ('active', 'decommissioned')),
                decommissioned_at   TEXT
            );
            CREATE UNIQUE INDEX hosts_one_active_name ON hosts (name) WHERE status = 'active';
            CREATE TABLE pushes (
                id             INTEGER PRIMARY KEY,
                at             TEXT NOT NULL,
                operation      TEXT NOT NULL CHECK (operation IN ('update', 'rollback')),
                host           TEXT NOT NULL,
                release_sha256 TEXT,
                git_commit     TEXT,
                outcome        TEXT NOT NULL,                        -- updated | rolled-back | error
                detail         TEXT NOT NULL
            );
            CREATE INDEX pushes_by_host ON pushes (host, id);",
        ),
        // Issue 9: whether the pushed tree had uncommitted changes
        // (NULL: unknown, e.g. no git, or a row from before).
        M::up("ALTER TABLE pushes ADD COLUMN git_dirty INTEGER CHECK (git_dirty IN (0, 1));"),
        // Issue 13: host tags (per enrolled row, so a re-enrolled name
        // starts untagged), and which rollout and wave a push belonged to
        // (NULL: a row from before, or a rollback by hand).
        M::up(
            "CREATE TABLE host_tags (
                host_id INTEGER NOT NULL REFERENCES hosts (id),
                tag     TEXT    NOT NULL,
                PRIMARY KEY (host_id, tag)
            );
            CREATE INDEX host_tags_by_tag ON host_tags (tag);
            ALTER TABLE pushes ADD COLUMN rollout TEXT;
            ALTER TABLE pushes ADD COLUMN wave INTEGER CHECK (wave >= 1);",
        ),
        // Issue 15: named operators (master-role bundles), the deny list
        // every updater gets (its version is the highest `denied.id`), and
        // which version of it each host has been given.
        M::up(
            "CREATE TABLE operators (
                id          INTEGER PRIMARY KEY,
                name        TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                issued_at   TEXT NOT NULL,
                not_after   TEXT NOT NULL,
                status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'removed')),
                removed_at  TEXT
            );
            CREATE UNIQUE INDEX operators_one_active_name ON operators (name) WHERE status = 'active';
            CREATE TABLE denied (
                id          INTEGER PRIMARY KEY,
                fingerprint TEXT NOT NULL UNIQUE,
                subject     TEXT NOT NULL,                       -- e.g. updater@w1, operator:alice
                denied_at   TEXT NOT NULL
            );
            ALTER TABLE hosts ADD COLUMN deny_version INTEGER NOT NULL DEFAULT 0;
            -- A renewal in flight: the certificates issued, not yet seen.
            ALTER TABLE hosts ADD COLUMN pending_agent_fingerprint TEXT;
            ALTER TABLE hosts ADD COLUMN pending_agent_not_after TEXT;
            ALTER TABLE hosts ADD COLUMN pending_updater_fingerprint TEXT;
            ALTER TABLE hosts ADD COLUMN pending_updater_not_after TEXT;",
        ),
        // Issue 12: a release is named by its `release_id` (the hash of
        // its tree's index), whatever its upload's digest was (NULL: a row
        // from before, named by `release_sha256` alone).
        M::up("ALTER TABLE pushes ADD COLUMN release_id TEXT;"),
        // Issue 15: release signing: the home's monotonic signature `seq`
        // (one row), and where the private key lives when `--key-file`
        // put it outside the home (NULL: `ca/release.key`).
        M::up(
            "CREATE TABLE release_signing (
                id       INTEGER PRIMARY KEY CHECK (id = 1),
                seq      INTEGER NOT NULL DEFAULT 0 CHECK (seq >= 0),
                key_file TEXT
            );
            INSERT INTO release_signing (id, seq) VALUES (1, 0);",
        ),
    ])
});

/// An open inventory database.
#[derive(Debug)]
pub(crate) struct Inventory {
    path: PathBuf,
    conn: Connection,
}

impl Inventory {
    /// Open (creating and migrating if needed) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Inventory> {
        let conn = Connection::open(path).map_err(|source| Error::Db {
            path: path.to_owned(),
            source,
        })?;
        let mut inv = Inventory {
            path: path.to_owned(),
            conn,
        };
        inv.migrate()?;
        Ok(inv)
    }

    fn db(&self, source: rusqlite::Error) -> Error {
        Error::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, message: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Run `write` in a transaction, then `finish` (e.g. move bundles into
    /// place): the transaction commits only if both succeed, and `finish`
    /// never runs when `write` failed. `write` gets the transaction and
    /// this database's error mapper.
    fn write_then(
        &mut self,
        write: impl FnOnce(&rusqlite::Transaction<'_>, &dyn Fn(rusqlite::Error) -> Error) -> Result<()>,
        finish: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let path = self.path.clone();
        let db = move |source| Error::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&db)?;
        write(&tx, &db)?;
        finish()?;
        tx.commit().map_err(&db)
    }

    fn migrate(&mut self) -> Result<()> {
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| self.db(e))?;
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| self.db(e))?;
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.db(e))?;
        let known = i64::try_from(MIGRATIONS_LEN).unwrap_or(i64::MAX);
        if version > known {
            return Err(self.corrupt(format!(
                "schema version {version} is newer than this swarm understands ({known}); upgrade swarm"
            )));
        }
        MIGRATIONS
            .to_latest(&mut self.conn)
            .map_err(|e| self.corrupt(format!("cannot migrate the schema: {e}")))
    }
}

/// How many migrations [`MIGRATIONS`] holds (the latest `user_version`).
const MIGRATIONS_LEN: usize = 6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_counted() {
        assert!(MIGRATIONS.validate().is_ok());
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::open(&dir.path().join("inv.db")).unwrap();
        let v: i64 = inv
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, i64::try_from(MIGRATIONS_LEN).unwrap());
    }

    #[test]
    fn a_version_1_database_is_carried_forward() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            MIGRATIONS.to_version(&mut conn, 1).unwrap();
            conn.execute(
                "INSERT INTO pushes (at, operation, host, outcome, detail)
                 VALUES ('2026-01-01T00:00:00Z', 'update', 'w1', 'updated', 'abc')",
                [],
            )
            .unwrap();
        }
        let inv = Inventory::open(&path).unwrap();
        let h = inv.history(None, 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].git_dirty, None);
        assert_eq!(h[0].outcome, Outcome::Updated);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Inventory::open(&path).unwrap_err().to_string();
        assert!(err.contains("newer than this swarm"), "{err}");
    }
}
