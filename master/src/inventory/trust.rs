//! Trust records (issue 15): named operators (master-role certificates that
//! carry their name) and the deny list of certificate fingerprints every
//! updater is given, with the version of it each host has.
//!
//! Invariant: rows of `denied` are never deleted, so the list's version
//! (its highest id) only grows and a host whose `deny_version` is lower
//! has not been given every entry yet.

use pki::{Fingerprint, HostName, OperatorName};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;
use time::OffsetDateTime;

use super::Inventory;
use super::hosts::ser_time;
use crate::clock::{self, rfc3339};
use crate::error::{Error, Result};

/// One named operator, as recorded.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OperatorRecord {
    pub(crate) name: OperatorName,
    pub(crate) fingerprint: String,
    #[serde(serialize_with = "ser_time")]
    pub(crate) issued_at: OffsetDateTime,
    #[serde(serialize_with = "ser_time")]
    pub(crate) not_after: OffsetDateTime,
    /// `active` or `removed`.
    pub(crate) status: String,
    pub(crate) removed_at: Option<String>,
}

/// One denied certificate.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Denied {
    pub(crate) fingerprint: String,
    /// Whose certificate it was (`updater@w1`, `w1`, `operator:alice`).
    pub(crate) subject: String,
    pub(crate) denied_at: String,
}

impl Inventory {
    fn time_col(&self, row: &Row<'_>, col: &str) -> Result<OffsetDateTime> {
        let s: String = row.get(col).map_err(|e| self.db(e))?;
        clock::parse_rfc3339(&s).ok_or_else(|| self.corrupt(format!("bad time {s:?} in {col}")))
    }

    fn operator_row(&self, row: &Row<'_>) -> Result<OperatorRecord> {
        let name: String = row.get("name").map_err(|e| self.db(e))?;
        Ok(OperatorRecord {
            name: OperatorName::new(&name)
                .map_err(|_| self.corrupt(format!("bad operator name {name:?}")))?,
            fingerprint: row.get("fingerprint").map_err(|e| self.db(e))?,
            issued_at: self.time_col(row, "issued_at")?,
            not_after: self.time_col(row, "not_after")?,
            status: row.get("status").map_err(|e| self.db(e))?,
            removed_at: row.get("removed_at").map_err(|e| self.db(e))?,
        })
    }

    /// Every operator, active first, by name.
    pub(crate) fn operators(&self) -> Result<Vec<OperatorRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, fingerprint, issued_at, not_after, status, removed_at
                 FROM operators ORDER BY status = 'removed', name, id",
            )
            .map_err(|e| self.db(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.db(e))? {
            out.push(self.operator_row(row)?);
        }
        Ok(out)
    }

    /// The active operator called `name`, if any.
    pub(crate) fn active_operator(&self, name: &OperatorName) -> Result<Option<OperatorRecord>> {
        Ok(self
            .operators()?
            .into_iter()
            .find(|o| o.name == *name && o.status == "active"))
    }

    /// Record a new operator and run `finish` (move its bundle into place)
    /// in the same transaction: the row is committed only if `finish` works.
    pub(crate) fn insert_operator_with(
        &mut self,
        name: &OperatorName,
        fingerprint: Fingerprint,
        not_after: OffsetDateTime,
        finish: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        self.write_then(
            |tx, db| {
            tx.execute(
                "INSERT INTO operators (name, fingerprint, issued_at, not_after) VALUES (?1, ?2, ?3, ?4)",
                params![
                    name.as_str(),
                    fingerprint.to_string(),
                    rfc3339(clock::now()),
                    rfc3339(not_after)
                ],
            )
            .map_err(db)?;
                Ok(())
            },
            finish,
        )
    }

    /// Mark the active operator `name` removed and deny its certificate,
    /// in one transaction. Returns its record, or `None` if there was none.
    pub(crate) fn remove_operator(
        &mut self,
        name: &OperatorName,
    ) -> Result<Option<OperatorRecord>> {
        let Some(rec) = self.active_operator(name)? else {
            return Ok(None);
        };
        let path = self.path.clone();
        let db = |source| Error::Db {
            path: path.clone(),
            source,
        };
        let now = rfc3339(clock::now());
        let tx = self.conn.transaction().map_err(db)?;
        tx.execute(
            "UPDATE operators SET status = 'removed', removed_at = ?2
             WHERE name = ?1 AND status = 'active'",
            params![name.as_str(), now],
        )
        .map_err(db)?;
        tx.execute(
            "INSERT OR IGNORE INTO denied (fingerprint, subject, denied_at) VALUES (?1, ?2, ?3)",
            params![rec.fingerprint, name.by(), now],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Some(rec))
    }

    /// Add certificates to the deny list (already denied ones are kept as
    /// they were).
    pub(crate) fn deny(&self, certs: &[(Fingerprint, String)]) -> Result<()> {
        let now = rfc3339(clock::now());
        for (fp, subject) in certs {
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO denied (fingerprint, subject, denied_at) VALUES (?1, ?2, ?3)",
                    params![fp.to_string(), subject, now],
                )
                .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    /// The whole deny list, oldest first, and its version.
    pub(crate) fn denied(&self) -> Result<(i64, Vec<Denied>)> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, fingerprint, subject, denied_at FROM denied ORDER BY id")
            .map_err(|e| self.db(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        let mut version = 0;
        while let Some(row) = rows.next().map_err(|e| self.db(e))? {
            version = row.get("id").map_err(|e| self.db(e))?;
            out.push(Denied {
                fingerprint: row.get("fingerprint").map_err(|e| self.db(e))?,
                subject: row.get("subject").map_err(|e| self.db(e))?,
                denied_at: row.get("denied_at").map_err(|e| self.db(e))?,
            });
        }
        Ok((version, out))
    }

    /// Which version of the deny list the active `host` has been given.
    pub(crate) fn deny_version(&self, host: &HostName) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT deny_version FROM hosts WHERE name = ?1 AND status = 'active'",
                [host.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| self.db(e))
    }

    /// Record that the active `host` holds version `version` of the list.
    pub(crate) fn set_deny_version(&self, host: &HostName, version: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE hosts SET deny_version = ?2 WHERE name = ?1 AND status = 'active'",
                params![host.as_str(), version],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }
}
