//! One row per host: what an updater's answer means ([`interpret`]), and
//! the report `update`/`rollback` print as a table or as `--json`.

use std::time::Instant;

use pki::wire::{Manifest, OpResponse, OpStatus, Probe, Timings};
use serde::Serialize;

use super::said::{self, Clean};
use super::{elapsed_ms, short};
use crate::error::{EXIT_FAILED, Result};
use crate::inventory::{HostRecord, Op, Outcome};
use crate::output::{self, Cell, Color, Table, outln};
use crate::pack::ReleaseInfo;

/// What happened to the updater itself (`--include-self`): `ok` once its
/// `/health` reports the pushed release, `failed` when it refused or never
/// did, `skipped` without `--include-self` or when the agent did not update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SelfOutcome {
    Skipped,
    Ok,
    Failed,
}

impl SelfOutcome {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SelfOutcome::Skipped => "skipped",
            SelfOutcome::Ok => "ok",
            SelfOutcome::Failed => "failed",
        }
    }

    fn color(self) -> Color {
        match self {
            SelfOutcome::Skipped => Color::Dim,
            SelfOutcome::Ok => Color::Green,
            SelfOutcome::Failed => Color::Red,
        }
    }
}

/// One host's row of an update or rollback.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HostResult {
    pub(crate) host: String,
    /// `address:port` of the updater.
    pub(crate) address: String,
    pub(crate) agent: Outcome,
    #[serde(rename = "self")]
    pub(crate) self_update: SelfOutcome,
    pub(crate) detail: String,
    /// What happened to the updater, when it was updated or failed to be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) self_detail: Option<String>,
    pub(crate) http_status: Option<u16>,
    /// The release now active on the host, when the updater said.
    pub(crate) release: Option<Manifest>,
    pub(crate) probes: Vec<Probe>,
    pub(crate) elapsed_ms: u64,
    /// The updater's own per-phase timings, when it sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timings: Option<Timings>,
    /// The host's wave in the rollout (1-based; update only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wave: Option<u32>,
    /// The last lines the failed agent printed (a rolled-back update or a
    /// failed first install), cleaned.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) log_tail: Vec<String>,
    /// Bytes of the upload the updater received for this host (issue 12):
    /// a delta's, or the whole release's; 0 when nothing was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wire_bytes: Option<u64>,
    /// Whether the upload was a delta against the host's live release.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) delta: bool,
    /// The audit-trail row this result was written to, once it was.
    #[serde(skip)]
    pub(super) recorded: Option<i64>,
}

impl HostResult {
    pub(super) fn error(
        rec: &HostRecord,
        detail: impl Into<String>,
        started: Instant,
    ) -> HostResult {
        HostResult {
            host: rec.host.to_string(),
            address: rec.updater_addr(),
            agent: Outcome::Error,
            self_update: SelfOutcome::Skipped,
            detail: detail.into(),
            self_detail: None,
            http_status: None,
            release: None,
            probes: Vec::new(),
            elapsed_ms: elapsed_ms(started),
            timings: None,
            wave: None,
            log_tail: Vec::new(),
            wire_bytes: None,
            delta: false,
            recorded: None,
        }
    }

    /// A host a staged rollout never sent anything to, and why.
    pub(super) fn skipped(rec: &HostRecord, why: impl Into<String>) -> HostResult {
        HostResult {
            agent: Outcome::Skipped,
            ..HostResult::error(rec, why, Instant::now())
        }
    }

    /// The row of a host whose active release, `active`, already is the
    /// one being pushed: nothing was sent.
    pub(super) fn unchanged(rec: &HostRecord, active: Manifest, started: Instant) -> HostResult {
        HostResult {
            agent: Outcome::Unchanged,
            detail: format!("{} already active; nothing changed", short(active.id())),
            release: Some(active),
            wire_bytes: Some(0),
            ..HostResult::error(rec, String::new(), started)
        }
    }

    /// Whether this row counts as success for `op`.
    pub(crate) fn ok(&self, op: Op) -> bool {
        match op {
            Op::Update => {
                matches!(self.agent, Outcome::Updated | Outcome::Unchanged)
                    && self.self_update != SelfOutcome::Failed
            }
            Op::Rollback => matches!(self.agent, Outcome::RolledBack | Outcome::Unchanged),
        }
    }
}

/// The whole answer of `update`/`rollback`, as `--json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct FleetReport {
    pub(crate) operation: Op,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) release: Option<ReleaseInfo>,
    /// How long packing and compressing the release took (update only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pack_ms: Option<u64>,
    pub(crate) ok: bool,
    /// The rollout's waves and what became of it (update only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rollout: Option<RolloutDoc>,
    pub(crate) hosts: Vec<HostResult>,
}

/// `"rollout"` of `swarm update --json` (issue 13).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RolloutDoc {
    /// The id the audit trail files its lines under (staged rollouts only).
    pub(crate) id: Option<String>,
    /// The hosts of each wave, in order.
    pub(crate) waves: Vec<Vec<String>>,
    /// How the canary wave (the first) was chosen, when there is one.
    pub(crate) canary: Option<super::rollout::CanaryFrom>,
    pub(crate) soak_secs: f64,
    pub(crate) max_fail: usize,
    pub(crate) revert_on_halt: bool,
    pub(crate) halted: bool,
    pub(crate) reason: Option<String>,
    /// Stopped by Ctrl-C (exit 130).
    pub(crate) interrupted: bool,
    pub(crate) updated: usize,
    pub(crate) failed: usize,
    pub(crate) skipped: usize,
    pub(crate) reverted: usize,
    /// Whether a plan was given (the table then has a WAVE column).
    #[serde(skip)]
    pub(crate) staged: bool,
}

impl RolloutDoc {
    /// The record of a plain update: one wave of every target.
    pub(crate) fn single(waves: Vec<Vec<String>>, rows: &[HostResult]) -> RolloutDoc {
        let is = |o: Outcome| rows.iter().filter(|r| r.agent == o).count();
        let updated = rows.iter().filter(|r| r.ok(Op::Update)).count();
        RolloutDoc {
            id: None,
            waves,
            canary: None,
            soak_secs: 0.0,
            max_fail: 0,
            revert_on_halt: false,
            halted: false,
            reason: None,
            interrupted: false,
            updated,
            failed: rows.len() - updated - is(Outcome::Skipped) - is(Outcome::Reverted),
            skipped: is(Outcome::Skipped),
            reverted: is(Outcome::Reverted),
            staged: false,
        }
    }

    /// The summary line of a staged rollout.
    pub(crate) fn summary(&self) -> String {
        let mut s = format!(
            "rollout {}: {} updated, {} failed, {} skipped, {} reverted",
            self.id.as_deref().unwrap_or("-"),
            self.updated,
            self.failed,
            self.skipped,
            self.reverted
        );
        if let Some(why) = &self.reason {
            s.push_str(&format!("; halted: {why}"));
        }
        s
    }
}

impl FleetReport {
    pub(super) fn new(operation: Op, release: Option<ReleaseInfo>, hosts: Vec<HostResult>) -> Self {
        FleetReport {
            operation,
            release,
            pack_ms: None,
            ok: hosts.iter().all(|r| r.ok(operation)),
            rollout: None,
            hosts,
        }
    }

    pub(crate) fn exit_code(&self) -> u8 {
        if self.ok { 0 } else { EXIT_FAILED }
    }

    pub(crate) fn table(&self) -> Table {
        let staged = self.rollout.as_ref().is_some_and(|r| r.staged);
        let mut t = Table::new(if staged {
            vec!["HOST", "WAVE", "ADDRESS", "AGENT", "SELF", "DETAIL"]
        } else {
            vec!["HOST", "ADDRESS", "AGENT", "SELF", "DETAIL"]
        });
        for r in &self.hosts {
            let color = match (r.agent, self.operation) {
                (Outcome::Error, _) => Color::Red,
                (Outcome::RolledBack | Outcome::Reverted, Op::Update) => Color::Yellow,
                (Outcome::Skipped, _) => Color::Dim,
                _ => Color::Green,
            };
            let mut row: Vec<Cell> = vec![r.host.clone().into()];
            if staged {
                row.push(
                    r.wave
                        .map_or_else(|| "-".to_owned(), |w| w.to_string())
                        .into(),
                );
            }
            row.extend([
                r.address.clone().into(),
                Cell::colored(r.agent.as_str(), color),
                Cell::colored(r.self_update.as_str(), r.self_update.color()),
                match &r.self_detail {
                    Some(d) => format!("{}; self: {d}", r.detail).into(),
                    None => r.detail.clone().into(),
                },
            ]);
            t.row(row);
        }
        t
    }

    /// Print as a table (each failed agent's last output under it), or
    /// as one JSON document.
    pub(super) fn print(&self, json: bool) -> Result<()> {
        if json {
            return output::json(self);
        }
        output::table(&self.table())?;
        for r in self.hosts.iter().filter(|r| !r.log_tail.is_empty()) {
            outln!()?;
            outln!("{}: the failed agent's last output:", r.host)?;
            for line in &r.log_tail {
                outln!("  | {line}")?;
            }
        }
        match &self.rollout {
            Some(r) if r.staged => outln!("{}", r.summary()),
            _ => Ok(()),
        }
    }
}

/// `busy: <why>`, without doubling the prefix: the updater's own message
/// already starts with `busy:` (`busy: update in progress; …`).
fn busy_detail(message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        "busy: another operation is running".to_owned()
    } else if message.starts_with("busy") {
        message.to_owned()
    } else {
        format!("busy: {message}")
    }
}

/// Turn an updater's answer into a row.
pub(super) fn interpret(
    op: Op,
    rec: &HostRecord,
    status: reqwest::StatusCode,
    body: &[u8],
    expect_id: Option<&str>,
    started: Instant,
) -> HostResult {
    // Cleaned once, here: every string below is safe to print and store.
    let parsed: Option<OpResponse> = serde_json::from_slice(body).ok().map(Clean::clean);
    let Some(resp) = parsed else {
        let text = String::from_utf8_lossy(body);
        let text = said::line(text.trim(), 200);
        let mut r = HostResult::error(rec, format!("HTTP {status}: {text}"), started);
        r.http_status = Some(status.as_u16());
        return r;
    };
    let probe_error = resp
        .probes
        .iter()
        .find_map(|p| p.error.clone())
        .unwrap_or_default();
    let message = resp.error.clone().unwrap_or(probe_error);
    let (agent, detail) = match (op, resp.status, status.is_success()) {
        (Op::Update, OpStatus::Updated, true) => match (&resp.release, expect_id) {
            (Some(m), Some(want)) if m.id() != want => (
                Outcome::Error,
                format!(
                    "updater reports release {} but {} was pushed",
                    short(m.id()),
                    short(want)
                ),
            ),
            (Some(m), _) => (Outcome::Updated, short(m.id()).to_owned()),
            (None, _) => (
                Outcome::Updated,
                expect_id.map(short).unwrap_or("").to_owned(),
            ),
        },
        (Op::Update, OpStatus::Unchanged, true) => (
            Outcome::Unchanged,
            match &resp.release {
                Some(m) => format!("{} already active; nothing changed", short(m.id())),
                None => "already active; nothing changed".to_owned(),
            },
        ),
        (Op::Update, OpStatus::RolledBack, _) => (
            Outcome::RolledBack,
            if message.is_empty() {
                "new release failed its health probe; previous release restored".to_owned()
            } else {
                message
            },
        ),
        // `rollback --to` the release that already is active (issue 12).
        (Op::Rollback, OpStatus::Unchanged, true) => (
            Outcome::Unchanged,
            match &resp.release {
                Some(m) => format!("{} already active; nothing changed", short(m.id())),
                None => "already active; nothing changed".to_owned(),
            },
        ),
        (Op::Rollback, OpStatus::RolledBack, true) => (
            Outcome::RolledBack,
            match &resp.release {
                Some(m) => format!("now {}", short(m.id())),
                None => "rolled back".to_owned(),
            },
        ),
        (_, OpStatus::Busy, _) => (Outcome::Error, busy_detail(&message)),
        (_, _, _) => {
            let mut m = if message.is_empty() {
                format!("HTTP {status}")
            } else {
                message
            };
            if let Some(stderr) = resp
                .stderr
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let tail: String = stderr
                    .lines()
                    .last()
                    .unwrap_or(stderr)
                    .chars()
                    .take(200)
                    .collect();
                m = format!("{m} (stderr: {tail})");
            }
            (Outcome::Error, m)
        }
    };
    HostResult {
        host: rec.host.to_string(),
        address: rec.updater_addr(),
        agent,
        self_update: SelfOutcome::Skipped,
        detail,
        self_detail: None,
        http_status: Some(status.as_u16()),
        release: resp.release,
        probes: resp.probes,
        elapsed_ms: elapsed_ms(started),
        wire_bytes: resp
            .timings
            .as_ref()
            .map(|t| t.received_bytes)
            .filter(|b| *b > 0),
        timings: resp.timings,
        wave: None,
        log_tail: resp.log_tail,
        delta: false,
        recorded: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tests::record;

    #[test]
    fn busy_is_said_once() {
        let rec = record("w1");
        let body =
            br#"{"status":"busy","error":"busy: update in progress; retry when it is done"}"#;
        let r = interpret(
            Op::Update,
            &rec,
            reqwest::StatusCode::CONFLICT,
            body,
            None,
            Instant::now(),
        );
        assert_eq!(r.agent, Outcome::Error);
        assert_eq!(r.detail, "busy: update in progress; retry when it is done");
        let body = br#"{"status":"busy","error":"rollback in progress"}"#;
        let r = interpret(
            Op::Rollback,
            &rec,
            reqwest::StatusCode::CONFLICT,
            body,
            None,
            Instant::now(),
        );
        assert_eq!(r.detail, "busy: rollback in progress");
    }
}
