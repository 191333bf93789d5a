//! The inventory: an embedded SQLite database of enrolled hosts (addresses,
//! ports, pinned certificate fingerprints, expiry, status) and the audit
//! trail of every push and rollback.
//!
//! Invariants: at most one *active* row per host name (a partial unique
//! index); decommissioned rows are kept for the record, so a name can be
//! enrolled again later; timestamps are RFC 3339 UTC text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pki::{Fingerprint, HostName};
use rusqlite::{Connection, Row, params};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE hosts (
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
CREATE INDEX pushes_by_host ON pushes (host, id);
";

/// Whether a host may still be targeted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HostStatus {
    Active,
    Decommissioned,
}

/// One enrolled host, as recorded.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HostRecord {
    pub(crate) host: HostName,
    pub(crate) address: String,
    pub(crate) sans: Vec<String>,
    pub(crate) agent_port: u16,
    pub(crate) updater_port: u16,
    #[serde(serialize_with = "ser_fp")]
    pub(crate) agent_fingerprint: Fingerprint,
    #[serde(serialize_with = "ser_time")]
    pub(crate) agent_not_after: OffsetDateTime,
    #[serde(serialize_with = "ser_opt_fp")]
    pub(crate) updater_fingerprint: Option<Fingerprint>,
    #[serde(serialize_with = "ser_opt_time")]
    pub(crate) updater_not_after: Option<OffsetDateTime>,
    #[serde(serialize_with = "ser_time")]
    pub(crate) enrolled_at: OffsetDateTime,
    pub(crate) status: HostStatus,
    #[serde(serialize_with = "ser_opt_time")]
    pub(crate) decommissioned_at: Option<OffsetDateTime>,
}

fn ser_fp<S: serde::Serializer>(fp: &Fingerprint, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(fp)
}

fn ser_time<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

fn ser_opt_fp<S: serde::Serializer>(fp: &Option<Fingerprint>, s: S) -> Result<S::Ok, S::Error> {
    match fp {
        Some(fp) => s.collect_str(fp),
        None => s.serialize_none(),
    }
}

impl HostRecord {
    /// The earliest expiry among the host's certificates.
    pub(crate) fn cert_not_after(&self) -> OffsetDateTime {
        match self.updater_not_after {
            Some(u) if u < self.agent_not_after => u,
            _ => self.agent_not_after,
        }
    }

    /// `host:port` for URLs, bracketing IPv6 literals.
    fn authority(&self, port: u16) -> String {
        if self.address.contains(':') {
            format!("[{}]:{port}", self.address)
        } else {
            format!("{}:{port}", self.address)
        }
    }

    pub(crate) fn updater_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.authority(self.updater_port))
    }

    pub(crate) fn agent_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.authority(self.agent_port))
    }
}

/// What `swarm enroll` records for a new host.
#[derive(Clone, Debug)]
pub(crate) struct NewHost {
    pub(crate) host: HostName,
    pub(crate) address: String,
    pub(crate) sans: Vec<String>,
    pub(crate) agent_port: u16,
    pub(crate) updater_port: u16,
    pub(crate) agent_fingerprint: Fingerprint,
    pub(crate) agent_not_after: OffsetDateTime,
    pub(crate) updater: Option<(Fingerprint, OffsetDateTime)>,
}

/// One line of the audit trail.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PushRecord {
    #[serde(serialize_with = "ser_time")]
    pub(crate) at: OffsetDateTime,
    pub(crate) operation: String,
    pub(crate) host: String,
    pub(crate) release_sha256: Option<String>,
    pub(crate) git_commit: Option<String>,
    pub(crate) outcome: String,
    pub(crate) detail: String,
}

/// An open inventory database.
#[derive(Debug)]
pub(crate) struct Inventory {
    path: PathBuf,
    conn: Connection,
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    // RFC 3339 formatting of a UTC time cannot fail for years 0..=9999.
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

pub(crate) fn now() -> OffsetDateTime {
    // Whole seconds: the inventory and the tables show no sub-second noise.
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
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
        match version {
            0 => {
                let tx = self.conn.transaction().map_err(|e| Error::Db {
                    path: self.path.clone(),
                    source: e,
                })?;
                tx.execute_batch(SCHEMA)
                    .and_then(|()| tx.pragma_update(None, "user_version", SCHEMA_VERSION))
                    .and_then(|()| tx.commit())
                    .map_err(|e| Error::Db {
                        path: self.path.clone(),
                        source: e,
                    })
            }
            SCHEMA_VERSION => Ok(()),
            v => Err(self.corrupt(format!(
                "schema version {v} is newer than this swarm understands ({SCHEMA_VERSION}); upgrade swarm"
            ))),
        }
    }

    fn host_from_row(&self, row: &Row<'_>) -> Result<HostRecord> {
        let get = |i: usize| -> Result<String> { row.get::<_, String>(i).map_err(|e| self.db(e)) };
        let get_opt = |i: usize| -> Result<Option<String>> {
            row.get::<_, Option<String>>(i).map_err(|e| self.db(e))
        };
        let time = |s: String| -> Result<OffsetDateTime> {
            OffsetDateTime::parse(&s, &Rfc3339)
                .map_err(|e| self.corrupt(format!("bad time {s:?}: {e}")))
        };
        let fp = |s: String| -> Result<Fingerprint> {
            s.parse()
                .map_err(|e: pki::PkiError| self.corrupt(e.to_string()))
        };
        let port = |i: usize| -> Result<u16> {
            let p: i64 = row.get(i).map_err(|e| self.db(e))?;
            u16::try_from(p).map_err(|_| self.corrupt(format!("bad port {p}")))
        };
        let name = get(0)?;
        let host = HostName::new(&name).map_err(|e| self.corrupt(e.to_string()))?;
        let sans: Vec<String> = serde_json::from_str(&get(2)?)
            .map_err(|e| self.corrupt(format!("bad sans for {name}: {e}")))?;
        let status = match get(10)?.as_str() {
            "active" => HostStatus::Active,
            "decommissioned" => HostStatus::Decommissioned,
            other => return Err(self.corrupt(format!("bad status {other:?} for {name}"))),
        };
        Ok(HostRecord {
            host,
            address: get(1)?,
            sans,
            agent_port: port(3)?,
            updater_port: port(4)?,
            agent_fingerprint: fp(get(5)?)?,
            agent_not_after: time(get(6)?)?,
            updater_fingerprint: get_opt(7)?.map(fp).transpose()?,
            updater_not_after: get_opt(8)?.map(time).transpose()?,
            enrolled_at: time(get(9)?)?,
            status,
            decommissioned_at: get_opt(11)?.map(time).transpose()?,
        })
    }

    fn query_hosts(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<HostRecord>> {
        let sql = format!(
            "SELECT name, address, sans, agent_port, updater_port, agent_fingerprint,
                    agent_not_after, updater_fingerprint, updater_not_after, enrolled_at,
                    status, decommissioned_at
             FROM hosts {filter}"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.db(e))?;
        let mut rows = stmt.query(args).map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.db(e))? {
            out.push(self.host_from_row(row)?);
        }
        Ok(out)
    }

    /// Every host ever enrolled, active ones first, by name.
    pub(crate) fn hosts(&self) -> Result<Vec<HostRecord>> {
        self.query_hosts("ORDER BY status = 'decommissioned', name, id", [])
    }

    /// Hosts that may be targeted, by name.
    pub(crate) fn active_hosts(&self) -> Result<Vec<HostRecord>> {
        self.query_hosts("WHERE status = 'active' ORDER BY name", [])
    }

    /// The most recent row for `host`: the active one if any, else the
    /// latest decommissioned one.
    pub(crate) fn find(&self, host: &HostName) -> Result<Option<HostRecord>> {
        Ok(self
            .query_hosts(
                "WHERE name = ?1 ORDER BY status = 'active' DESC, id DESC LIMIT 1",
                [host.as_str()],
            )?
            .pop())
    }

    /// Insert `new` and run `finish` (e.g. move the bundles into place)
    /// inside the same transaction: the row is committed only if `finish`
    /// succeeds, and `finish` never runs if the insert fails.
    pub(crate) fn insert_host_with(
        &mut self,
        new: &NewHost,
        finish: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let path = self.path.clone();
        let db = |source| Error::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(db)?;
        let inserted = tx.execute(
            "INSERT INTO hosts (name, address, sans, agent_port, updater_port,
                                agent_fingerprint, agent_not_after,
                                updater_fingerprint, updater_not_after, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                new.host.as_str(),
                new.address,
                serde_json::to_string(&new.sans).unwrap_or_else(|_| "[]".into()),
                new.agent_port,
                new.updater_port,
                new.agent_fingerprint.to_string(),
                rfc3339(new.agent_not_after),
                new.updater.map(|(fp, _)| fp.to_string()),
                new.updater.map(|(_, t)| rfc3339(t)),
                rfc3339(now()),
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(Error::usage(format!(
                    "host {} is already enrolled: pick another name, or `swarm decommission --host {}` first",
                    new.host, new.host
                )));
            }
            Err(e) => return Err(db(e)),
        }
        finish()?;
        tx.commit().map_err(db)
    }

    /// Record an updater certificate for an active host that had none, in a
    /// transaction that commits only if `finish` succeeds.
    pub(crate) fn set_updater_with(
        &mut self,
        host: &HostName,
        fingerprint: Fingerprint,
        not_after: OffsetDateTime,
        finish: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let path = self.path.clone();
        let db = |source| Error::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(db)?;
        let n = tx
            .execute(
                "UPDATE hosts SET updater_fingerprint = ?2, updater_not_after = ?3
                 WHERE name = ?1 AND status = 'active' AND updater_fingerprint IS NULL",
                params![host.as_str(), fingerprint.to_string(), rfc3339(not_after)],
            )
            .map_err(db)?;
        if n != 1 {
            return Err(Error::usage(format!(
                "host {host} is not an active host without an updater certificate"
            )));
        }
        finish()?;
        tx.commit().map_err(db)
    }

    /// Mark the active row of `host` decommissioned. Returns false if there
    /// was no active row.
    pub(crate) fn decommission(&mut self, host: &HostName) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE hosts SET status = 'decommissioned', decommissioned_at = ?2
                 WHERE name = ?1 AND status = 'active'",
                params![host.as_str(), rfc3339(now())],
            )
            .map_err(|e| self.db(e))?;
        Ok(n > 0)
    }

    /// Append one line to the audit trail.
    pub(crate) fn record_push(&self, rec: &PushRecord) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO pushes (at, operation, host, release_sha256, git_commit, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    rfc3339(rec.at),
                    rec.operation,
                    rec.host,
                    rec.release_sha256,
                    rec.git_commit,
                    rec.outcome,
                    rec.detail
                ],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The audit trail, newest last, optionally for one host, at most `limit` lines.
    pub(crate) fn history(&self, host: Option<&HostName>, limit: usize) -> Result<Vec<PushRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at, operation, host, release_sha256, git_commit, outcome, detail
                 FROM (SELECT * FROM pushes WHERE ?1 IS NULL OR host = ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id",
            )
            .map_err(|e| self.db(e))?;
        let mut rows = stmt
            .query(params![host.map(HostName::as_str), limit])
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.db(e))? {
            let at: String = row.get(0).map_err(|e| self.db(e))?;
            let at = OffsetDateTime::parse(&at, &Rfc3339)
                .map_err(|e| self.corrupt(format!("bad time {at:?}: {e}")))?;
            let rec = (|| {
                Ok::<_, rusqlite::Error>(PushRecord {
                    at,
                    operation: row.get(1)?,
                    host: row.get(2)?,
                    release_sha256: row.get(3)?,
                    git_commit: row.get(4)?,
                    outcome: row.get(5)?,
                    detail: row.get(6)?,
                })
            })()
            .map_err(|e| self.db(e))?;
            out.push(rec);
        }
        Ok(out)
    }
}

/// Whether the active row exists (used before writing anything).
pub(crate) fn ensure_absent(inv: &Inventory, host: &HostName) -> Result<()> {
    if matches!(inv.find(host)?, Some(rec) if rec.status == HostStatus::Active) {
        return Err(Error::usage(format!(
            "host {host} is already enrolled: pick another name, or `swarm decommission --host {host}` first"
        )));
    }
    Ok(())
}
