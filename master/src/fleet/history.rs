//! The audit trail from the fleet's side: [`Recorder`] writes each host's
//! outcome as it arrives, and `swarm history` shows it.

use std::sync::Mutex;

use pki::HostName;
use serde::Serialize;

use super::report::HostResult;
use super::said;
use super::short;
use crate::cli::HistoryArgs;
use crate::clock;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::{Inventory, Op, Outcome, PushRecord, Tag};
use crate::output::{self, Cell, Color, Table, outln};
use crate::pack::ReleaseInfo;

/// Writes the audit trail of one `update` or `rollback` while it runs:
/// a host's line is written the moment its outcome is known (for a push
/// with `--include-self`, when its agent's answer arrives, and amended with
/// the updater's outcome later), so Ctrl-C loses only what was still in
/// flight.
pub(super) struct Recorder {
    inv: Mutex<Inventory>,
    op: Op,
    release: Option<ReleaseInfo>,
    /// The staged rollout the lines belong to (issue 13).
    rollout: Option<String>,
    /// The first failure to write; reported once at the end.
    failed: Mutex<Option<Error>>,
}

impl Recorder {
    pub(super) fn new(inv: Inventory, op: Op, release: Option<ReleaseInfo>) -> Recorder {
        Recorder {
            inv: Mutex::new(inv),
            op,
            release,
            rollout: None,
            failed: Mutex::new(None),
        }
    }

    /// Tag every line with the rollout `id` (and each host's wave).
    pub(super) fn with_rollout(mut self, id: &str) -> Recorder {
        self.rollout = Some(id.to_owned());
        self
    }

    /// Write a line of its own for a revert of `r`'s host back to `release`
    /// (a halted rollout's `--revert-on-halt`).
    pub(super) fn record_revert(&self, r: &HostResult, release: Option<&str>, outcome: Outcome) {
        let line = PushRecord {
            at: clock::now(),
            operation: Op::Rollback,
            host: r.host.clone(),
            release_sha256: None,
            release_id: release.map(str::to_owned),
            git_commit: None,
            git_dirty: None,
            outcome,
            detail: r.detail.clone(),
            rollout: self.rollout.clone(),
            wave: r.wave,
        };
        let written = self.inv.lock().map(|inv| inv.record_push(&line));
        if let Ok(Err(e)) = written
            && let Ok(mut f) = self.failed.lock()
        {
            f.get_or_insert(e);
        }
    }

    /// Write `r` (or, if it was written already, bring its detail up to date).
    pub(super) fn record(&self, r: &mut HostResult) {
        let detail = match &r.self_detail {
            // The updater's own outcome rides along in the detail.
            Some(d) => format!("{}; self: {} ({d})", r.detail, r.self_update.as_str()),
            None => r.detail.clone(),
        };
        let Ok(inv) = self.inv.lock() else {
            return;
        };
        let written = match r.recorded {
            Some(id) => inv.amend_outcome(id, r.agent, &detail),
            None => {
                let release = self.release.as_ref();
                let line = PushRecord {
                    at: clock::now(),
                    operation: self.op,
                    host: r.host.clone(),
                    // What this host was sent, as its updater names it
                    // (a delta's digest is its own); else the whole pack's.
                    release_sha256: match (self.op, &r.release) {
                        (_, Some(m)) => Some(m.sha256.clone()),
                        (Op::Update, None) => release.and_then(|i| i.sha256.clone()),
                        (Op::Rollback, None) => None,
                    },
                    release_id: match self.op {
                        Op::Update => release.map(|i| i.release_id.clone()),
                        Op::Rollback => r.release.as_ref().and_then(|m| m.release_id.clone()),
                    },
                    git_commit: match self.op {
                        Op::Update => release.and_then(|i| i.git_commit.clone()),
                        Op::Rollback => r.release.as_ref().and_then(|m| m.git_commit.clone()),
                    },
                    git_dirty: match self.op {
                        Op::Update => release.and_then(|i| i.git_dirty),
                        Op::Rollback => None,
                    },
                    outcome: r.agent,
                    detail,
                    rollout: self.rollout.clone(),
                    wave: r.wave,
                };
                inv.record_push(&line).map(|id| r.recorded = Some(id))
            }
        };
        if let Err(e) = written
            && let Ok(mut f) = self.failed.lock()
        {
            f.get_or_insert(e);
        }
    }

    /// Say (on stderr) if any line could not be written.
    pub(super) fn finish(&self) {
        if let Ok(mut f) = self.failed.lock()
            && let Some(e) = f.take()
        {
            eprintln!("warning: could not record the audit trail: {e:#}");
        }
    }
}

#[derive(Serialize)]
struct HistoryDoc<'a> {
    history: &'a [PushRecord],
}

/// `swarm history`.
pub(crate) fn history(home: &Home, args: &HistoryArgs) -> Result<u8> {
    if args.worker {
        let Some(host) = &args.host else {
            return Err(Error::usage(
                "--worker asks one host's updater: say --host HOST",
            ));
        };
        return super::journal::worker_history(home, host, args.limit, args.json);
    }
    let inv = home.inventory()?;
    let host = args.host.as_deref().map(HostName::new).transpose()?;
    let records = if args.tags.is_empty() {
        inv.history(host.as_ref(), args.limit)?
    } else {
        // The hosts that carry the tags now; their whole trail, then the
        // last `limit` lines of it.
        let hosts = super::tagged(&inv, &Tag::parse_all(&args.tags)?)?;
        let mut lines: Vec<PushRecord> = inv
            .history(None, usize::MAX)?
            .into_iter()
            .filter(|l| hosts.iter().any(|h| h.host.as_str() == l.host))
            .collect();
        lines.drain(..lines.len().saturating_sub(args.limit));
        lines
    };
    // Lines are cleaned before they are stored; a trail written by an older
    // master may not have been, so what is shown is cleaned again.
    let records: Vec<PushRecord> = records
        .into_iter()
        .map(|r| PushRecord {
            release_sha256: r.release_sha256.map(|s| said::line(&s, 200)),
            release_id: r.release_id.map(|s| said::line(&s, 200)),
            git_commit: r.git_commit.map(|s| said::line(&s, 200)),
            detail: said::line(&r.detail, 4 * said::DETAIL_CHARS),
            rollout: r.rollout.map(|s| said::line(&s, 200)),
            ..r
        })
        .collect();
    if args.json {
        output::json(&HistoryDoc { history: &records })?;
        return Ok(0);
    }
    if records.is_empty() {
        outln!("no pushes recorded yet")?;
        return Ok(0);
    }
    let mut t = Table::new(vec![
        "AT", "HOST", "OP", "ROLLOUT", "RELEASE", "OUTCOME", "DETAIL",
    ]);
    for r in &records {
        let color = match (r.outcome, r.operation) {
            (Outcome::Updated | Outcome::Unchanged, _) | (Outcome::RolledBack, Op::Rollback) => {
                Color::Green
            }
            (Outcome::RolledBack, Op::Update) => Color::Yellow,
            (Outcome::Error, _) => Color::Red,
            (Outcome::Skipped, _) => Color::Dim,
            (Outcome::Reverted, _) => Color::Yellow,
        };
        let rollout = match (&r.rollout, r.wave) {
            (Some(id), Some(w)) => format!("{id}/w{w}"),
            (Some(id), None) => id.clone(),
            (None, _) => "-".to_owned(),
        };
        // A tree pushed with uncommitted changes says so next to its sha.
        let id = r.release_id.as_deref().or(r.release_sha256.as_deref());
        let release = match (id, r.git_dirty) {
            (Some(sha), Some(true)) => format!("{}+dirty", short(sha)),
            (Some(sha), _) => short(sha).to_owned(),
            (None, _) => "-".to_owned(),
        };
        t.row(vec![
            clock::rfc3339(r.at).into(),
            r.host.clone().into(),
            r.operation.as_str().into(),
            rollout.into(),
            release.into(),
            Cell::colored(r.outcome.as_str(), color),
            r.detail.clone().into(),
        ]);
    }
    output::table(&t)?;
    Ok(0)
}
