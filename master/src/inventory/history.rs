//! The audit trail: one row per host per push or rollback, written as each
//! host's outcome arrives, with the operation and outcome typed both in
//! Rust and in SQLite.

use pki::HostName;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;
use time::OffsetDateTime;

use super::Inventory;
use super::hosts::ser_time;
use crate::clock::{self, rfc3339};
use crate::error::Result;

/// Which operation a result belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Op {
    Update,
    Rollback,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Update => "update",
            Op::Rollback => "rollback",
        }
    }
}

/// What happened to a host's agent release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Outcome {
    Updated,
    /// The pushed release already was the active one: nothing changed.
    Unchanged,
    RolledBack,
    Error,
    /// A staged rollout halted (or was interrupted) before this host's
    /// wave: nothing was sent to it.
    Skipped,
    /// A halted rollout put the host back on the release it ran before.
    Reverted,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::RolledBack => "rolled-back",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
            Outcome::Reverted => "reverted",
        }
    }
}

/// One text column holding one of `variants`' names.
fn from_text<T: Copy>(value: ValueRef<'_>, variants: &[(T, &str)]) -> FromSqlResult<T> {
    let text = value.as_str()?;
    variants
        .iter()
        .find(|(_, name)| *name == text)
        .map(|(v, _)| *v)
        .ok_or_else(|| FromSqlError::Other(format!("unknown value {text:?}").into()))
}

impl ToSql for Op {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Op {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        from_text(value, &[Op::Update, Op::Rollback].map(|v| (v, v.as_str())))
    }
}

impl ToSql for Outcome {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Outcome {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let all = [
            Outcome::Updated,
            Outcome::Unchanged,
            Outcome::RolledBack,
            Outcome::Error,
            Outcome::Skipped,
            Outcome::Reverted,
        ];
        from_text(value, &all.map(|v| (v, v.as_str())))
    }
}

/// One line of the audit trail.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PushRecord {
    #[serde(serialize_with = "ser_time")]
    pub(crate) at: OffsetDateTime,
    pub(crate) operation: Op,
    pub(crate) host: String,
    pub(crate) release_sha256: Option<String>,
    pub(crate) git_commit: Option<String>,
    /// Whether the pushed tree had uncommitted changes (`None`: unknown).
    pub(crate) git_dirty: Option<bool>,
    pub(crate) outcome: Outcome,
    pub(crate) detail: String,
    /// The staged rollout this line belongs to (issue 13), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rollout: Option<String>,
    /// The host's wave in that rollout (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wave: Option<u32>,
}

impl Inventory {
    /// Append one line to the audit trail (committed at once: a push cut
    /// short keeps every line written so far); returns its row id.
    pub(crate) fn record_push(&self, rec: &PushRecord) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO pushes (at, operation, host, release_sha256, git_commit, git_dirty,
                                     outcome, detail, rollout, wave)
                 VALUES (:at, :operation, :host, :release_sha256, :git_commit, :git_dirty,
                         :outcome, :detail, :rollout, :wave)",
                rusqlite::named_params! {
                    ":at": rfc3339(rec.at),
                    ":operation": rec.operation,
                    ":host": rec.host,
                    ":release_sha256": rec.release_sha256,
                    ":git_commit": rec.git_commit,
                    ":git_dirty": rec.git_dirty,
                    ":outcome": rec.outcome,
                    ":detail": rec.detail,
                    ":rollout": rec.rollout,
                    ":wave": rec.wave,
                },
            )
            .map_err(|e| self.db(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Replace the outcome and detail of line `id` (a host that updated
    /// and then failed its soak).
    pub(crate) fn amend_outcome(&self, id: i64, outcome: Outcome, detail: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE pushes SET outcome = :outcome, detail = :detail WHERE id = :id",
                rusqlite::named_params! { ":id": id, ":outcome": outcome, ":detail": detail },
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
                "SELECT at, operation, host, release_sha256, git_commit, git_dirty, outcome, detail,
                        rollout, wave
                 FROM (SELECT * FROM pushes WHERE ?1 IS NULL OR host = ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id",
            )
            .map_err(|e| self.db(e))?;
        let mut rows = stmt
            .query(rusqlite::params![host.map(HostName::as_str), limit])
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.db(e))? {
            let at: String = row.get("at").map_err(|e| self.db(e))?;
            let at = clock::parse_rfc3339(&at)
                .ok_or_else(|| self.corrupt(format!("bad time {at:?}")))?;
            let rec = (|| {
                Ok::<_, rusqlite::Error>(PushRecord {
                    at,
                    operation: row.get("operation")?,
                    host: row.get("host")?,
                    release_sha256: row.get("release_sha256")?,
                    git_commit: row.get("git_commit")?,
                    git_dirty: row.get("git_dirty")?,
                    outcome: row.get("outcome")?,
                    detail: row.get("detail")?,
                    rollout: row.get("rollout")?,
                    wave: row.get("wave")?,
                })
            })()
            .map_err(|e| self.db(e))?;
            out.push(rec);
        }
        Ok(out)
    }
}
