//! Enrolled hosts: the row type, and enrolling, finding and
//! decommissioning them.

use pki::{Fingerprint, HostName};
use rusqlite::{Row, params};
use serde::Serialize;
use time::OffsetDateTime;

use super::Inventory;
use super::tags::{TAGS_COLUMN, Tag, insert_tags};
use crate::clock::{self, rfc3339};
use crate::error::{Error, Result};

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
    /// Its tags, sorted (issue 13).
    pub(crate) tags: Vec<Tag>,
    /// A renewal's new updater certificate, accepted beside the pinned one
    /// until the updater has presented it (issue 15).
    #[serde(serialize_with = "ser_opt_fp")]
    pub(crate) pending_updater_fingerprint: Option<Fingerprint>,
}

fn ser_fp<S: serde::Serializer>(fp: &Fingerprint, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(fp)
}

pub(super) fn ser_time<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
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

    /// `address:port` of the updater, as the tables show it.
    pub(crate) fn updater_addr(&self) -> String {
        self.authority(self.updater_port)
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
    pub(crate) tags: Vec<Tag>,
}

const HOST_COLUMNS: &str = "name, address, sans, agent_port, updater_port, agent_fingerprint,
    agent_not_after, updater_fingerprint, updater_not_after, enrolled_at, status,
    decommissioned_at, pending_updater_fingerprint";

impl Inventory {
    fn host_from_row(&self, row: &Row<'_>) -> Result<HostRecord> {
        let get = |c: &str| -> Result<String> { row.get::<_, String>(c).map_err(|e| self.db(e)) };
        let get_opt = |c: &str| -> Result<Option<String>> {
            row.get::<_, Option<String>>(c).map_err(|e| self.db(e))
        };
        let time = |s: String| -> Result<OffsetDateTime> {
            clock::parse_rfc3339(&s).ok_or_else(|| self.corrupt(format!("bad time {s:?}")))
        };
        let fp = |s: String| -> Result<Fingerprint> {
            s.parse()
                .map_err(|e: pki::PkiError| self.corrupt(e.to_string()))
        };
        let port = |c: &str| -> Result<u16> {
            let p: i64 = row.get(c).map_err(|e| self.db(e))?;
            u16::try_from(p).map_err(|_| self.corrupt(format!("bad {c} {p}")))
        };
        let name = get("name")?;
        let host = HostName::new(&name).map_err(|e| self.corrupt(e.to_string()))?;
        let sans: Vec<String> = serde_json::from_str(&get("sans")?)
            .map_err(|e| self.corrupt(format!("bad sans for {name}: {e}")))?;
        let status = match get("status")?.as_str() {
            "active" => HostStatus::Active,
            "decommissioned" => HostStatus::Decommissioned,
            other => return Err(self.corrupt(format!("bad status {other:?} for {name}"))),
        };
        Ok(HostRecord {
            host,
            address: get("address")?,
            sans,
            agent_port: port("agent_port")?,
            updater_port: port("updater_port")?,
            agent_fingerprint: fp(get("agent_fingerprint")?)?,
            agent_not_after: time(get("agent_not_after")?)?,
            updater_fingerprint: get_opt("updater_fingerprint")?.map(fp).transpose()?,
            updater_not_after: get_opt("updater_not_after")?.map(time).transpose()?,
            enrolled_at: time(get("enrolled_at")?)?,
            status,
            decommissioned_at: get_opt("decommissioned_at")?.map(time).transpose()?,
            tags: Tag::from_column(get_opt("tags")?),
            pending_updater_fingerprint: get_opt("pending_updater_fingerprint")?
                .map(fp)
                .transpose()?,
        })
    }

    fn query_hosts(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<HostRecord>> {
        let sql = format!("SELECT {HOST_COLUMNS}, {TAGS_COLUMN} FROM hosts {filter}");
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

    /// Fails with a usage error when `host` has an active row (checked
    /// before anything is written).
    pub(crate) fn ensure_absent(&self, host: &HostName) -> Result<()> {
        if matches!(self.find(host)?, Some(rec) if rec.status == HostStatus::Active) {
            return Err(already_enrolled(host));
        }
        Ok(())
    }

    /// Insert `new` and run `finish` (e.g. move the bundles into place)
    /// inside the same transaction: the row is committed only if `finish`
    /// succeeds, and `finish` never runs if the insert fails.
    pub(crate) fn insert_host_with(
        &mut self,
        new: &NewHost,
        finish: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        self.write_then(
            |tx, db| {
                let inserted = tx.execute(
                    "INSERT INTO hosts (name, address, sans, agent_port, updater_port,
                                    agent_fingerprint, agent_not_after,
                                    updater_fingerprint, updater_not_after, enrolled_at)
                 VALUES (:name, :address, :sans, :agent_port, :updater_port,
                         :agent_fingerprint, :agent_not_after,
                         :updater_fingerprint, :updater_not_after, :enrolled_at)",
                    rusqlite::named_params! {
                        ":name": new.host.as_str(),
                        ":address": new.address,
                        ":sans": serde_json::to_string(&new.sans).unwrap_or_else(|_| "[]".into()),
                        ":agent_port": new.agent_port,
                        ":updater_port": new.updater_port,
                        ":agent_fingerprint": new.agent_fingerprint.to_string(),
                        ":agent_not_after": rfc3339(new.agent_not_after),
                        ":updater_fingerprint": new.updater.map(|(fp, _)| fp.to_string()),
                        ":updater_not_after": new.updater.map(|(_, t)| rfc3339(t)),
                        ":enrolled_at": rfc3339(clock::now()),
                    },
                );
                match inserted {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        return Err(already_enrolled(&new.host));
                    }
                    Err(e) => return Err(db(e)),
                }
                insert_tags(tx, tx.last_insert_rowid(), &new.tags).map_err(db)?;
                Ok(())
            },
            finish,
        )
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
        self.write_then(
            |tx, db| {
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
                Ok(())
            },
            finish,
        )
    }

    /// Mark the active row of `host` decommissioned. Returns false if there
    /// was no active row.
    pub(crate) fn decommission(&mut self, host: &HostName) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE hosts SET status = 'decommissioned', decommissioned_at = ?2
                 WHERE name = ?1 AND status = 'active'",
                params![host.as_str(), rfc3339(clock::now())],
            )
            .map_err(|e| self.db(e))?;
        Ok(n > 0)
    }
}

impl Inventory {
    /// Record a renewal's new certificates for the active `host` (accepted
    /// beside the pinned ones until [`Inventory::confirm_renewal`]).
    pub(crate) fn set_pending(
        &self,
        host: &HostName,
        agent: (Fingerprint, OffsetDateTime),
        updater: (Fingerprint, OffsetDateTime),
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE hosts SET pending_agent_fingerprint = ?2, pending_agent_not_after = ?3,
                     pending_updater_fingerprint = ?4, pending_updater_not_after = ?5
                 WHERE name = ?1 AND status = 'active'",
                params![
                    host.as_str(),
                    agent.0.to_string(),
                    rfc3339(agent.1),
                    updater.0.to_string(),
                    rfc3339(updater.1)
                ],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The updater presented the pending certificate: pin the pending
    /// pair, if `updater` is still the pending one (a later renewal wins).
    pub(crate) fn confirm_renewal(&self, host: &HostName, updater: Fingerprint) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE hosts SET agent_fingerprint = pending_agent_fingerprint,
                     agent_not_after = pending_agent_not_after,
                     updater_fingerprint = pending_updater_fingerprint,
                     updater_not_after = pending_updater_not_after,
                     pending_agent_fingerprint = NULL, pending_agent_not_after = NULL,
                     pending_updater_fingerprint = NULL, pending_updater_not_after = NULL
                 WHERE name = ?1 AND status = 'active' AND pending_updater_fingerprint = ?2",
                params![host.as_str(), updater.to_string()],
            )
            .map_err(|e| self.db(e))?;
        Ok(n > 0)
    }
}

fn already_enrolled(host: &HostName) -> Error {
    Error::usage(format!(
        "host {host} is already enrolled: pick another name, or `swarm decommission --host {host}` first"
    ))
}
