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
    /// The release's `release_id` (issue 12; `None` on rows from before).
    pub(crate) release_id: Option<String>,
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
                "INSERT INTO pushes (at, operation, host, release_sha256, release_id, git_commit,
                                     git_dirty, outcome, detail, rollout, wave)
                 VALUES (:at, :operation, :host, :release_sha256, :release_id, :git_commit,
                         :git_dirty, :outcome, :detail, :rollout, :wave)",
                rusqlite::named_params! {
                    ":at": rfc3339(rec.at),
                    ":operation": rec.operation,
                    ":host": rec.host,
                    ":release_sha256": rec.release_sha256,
                    ":release_id": rec.release_id,
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

    /// The release `host` should run (issue 11, "desired state"): the
    /// release of the last `update` or `rollback` that targeted it since it
    /// was enrolled, where the operator's intent stands — an update that
    /// updated, found it unchanged, or could not reach the host (it should
    /// still get it: that is drift), or a rollback that rolled back (to the
    /// release it answered with), or a halted rollout's revert (issue 13:
    /// back to the release the host ran before). An update the host itself
    /// rolled back (its probe failed there), or a host a halted rollout
    /// skipped, leaves the intent where it was. The release is named by
    /// its `release_id` (by its upload digest on rows from before issue
    /// 12, as [`pki::wire::Manifest::id`] names an old release). `None`:
    /// nothing was ever pushed to this enrollment.
    pub(crate) fn desired_release(
        &self,
        host: &HostName,
        since: OffsetDateTime,
    ) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT COALESCE(release_id, release_sha256) FROM pushes
                 WHERE host = ?1 AND at >= ?2
                   AND COALESCE(release_id, release_sha256) IS NOT NULL
                   AND ((operation = 'update' AND outcome IN ('updated', 'unchanged', 'error'))
                        OR (operation = 'rollback' AND outcome IN ('rolled-back', 'reverted')))
                 ORDER BY id DESC LIMIT 1",
                rusqlite::params![host.as_str(), rfc3339(since)],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// The audit trail, newest last, optionally for one host, at most `limit` lines.
    pub(crate) fn history(&self, host: Option<&HostName>, limit: usize) -> Result<Vec<PushRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at, operation, host, release_sha256, release_id, git_commit, git_dirty,
                        outcome, detail, rollout, wave
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
                    release_id: row.get("release_id")?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        op: Op,
        host: &str,
        sha: Option<&str>,
        outcome: Outcome,
        at: OffsetDateTime,
    ) -> PushRecord {
        PushRecord {
            at,
            operation: op,
            host: host.to_owned(),
            release_sha256: sha.map(str::to_owned),
            release_id: None,
            git_commit: None,
            git_dirty: None,
            outcome,
            detail: String::new(),
            rollout: None,
            wave: None,
        }
    }

    #[test]
    fn the_desired_release_follows_the_operators_intent() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::open(&dir.path().join("inv.db")).unwrap();
        let w1 = HostName::new("w1").unwrap();
        let t0 = clock::now();
        let desired = |since| inv.desired_release(&w1, since).unwrap();
        assert_eq!(desired(t0), None);
        let push = |op, sha, outcome| inv.record_push(&line(op, "w1", sha, outcome, t0)).unwrap();
        push(Op::Update, Some("a"), Outcome::Updated);
        assert_eq!(desired(t0).as_deref(), Some("a"));
        // Another host's pushes are not ours.
        inv.record_push(&line(Op::Update, "w2", Some("z"), Outcome::Updated, t0))
            .unwrap();
        assert_eq!(desired(t0).as_deref(), Some("a"));
        // Rolled back by the host's own probe: the intent stays on "a".
        push(Op::Update, Some("b"), Outcome::RolledBack);
        assert_eq!(desired(t0).as_deref(), Some("a"));
        // The host was down: it should still get "c".
        push(Op::Update, Some("c"), Outcome::Error);
        assert_eq!(desired(t0).as_deref(), Some("c"));
        push(Op::Update, Some("c"), Outcome::Unchanged);
        assert_eq!(desired(t0).as_deref(), Some("c"));
        // A rollback that failed changes nothing; one that worked moves it.
        push(Op::Rollback, None, Outcome::Error);
        assert_eq!(desired(t0).as_deref(), Some("c"));
        push(Op::Rollback, Some("a"), Outcome::RolledBack);
        assert_eq!(desired(t0).as_deref(), Some("a"));
        // Issue 13: a host a halted rollout skipped keeps its intent; one
        // it reverted is meant to run the release it went back to.
        push(Op::Update, Some("d"), Outcome::Skipped);
        assert_eq!(desired(t0).as_deref(), Some("a"));
        push(Op::Update, Some("e"), Outcome::Updated);
        push(Op::Rollback, Some("a"), Outcome::Reverted);
        assert_eq!(desired(t0).as_deref(), Some("a"));
        // A later enrollment of the same name starts with no intent.
        let later = t0 + time::Duration::seconds(5);
        assert_eq!(desired(later), None);
    }

    #[test]
    fn a_release_is_desired_by_its_release_id_whatever_its_upload_digest() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::open(&dir.path().join("inv.db")).unwrap();
        let w1 = HostName::new("w1").unwrap();
        let t0 = clock::now();
        let mut delta = line(Op::Update, "w1", Some("delta-digest"), Outcome::Updated, t0);
        delta.release_id = Some("rid".to_owned());
        inv.record_push(&delta).unwrap();
        assert_eq!(
            inv.desired_release(&w1, t0).unwrap().as_deref(),
            Some("rid")
        );
        let back = inv.history(Some(&w1), 10).unwrap();
        assert_eq!(back[0].release_id.as_deref(), Some("rid"));
        assert_eq!(back[0].release_sha256.as_deref(), Some("delta-digest"));
    }
}
