//! `swarm restart`: ask each target's updater to restart its agent on the
//! active release (`POST /agent/restart`), probed; it also ends a crash
//! loop. The updater journals it with our CN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pki::wire::{OpResponse, OpStatus};
use serde::Serialize;

use super::client::Master;
use super::said::{self, ANSWER_CAP, Clean};
use super::{elapsed_ms, fan_out, resolve_required, runtime};
use crate::cli::RestartArgs;
use crate::error::{EXIT_FAILED, Result};
use crate::home::Home;
use crate::inventory::HostRecord;
use crate::output::{self, Cell, Color, Table, outln};

/// Whole-request limit for `/agent/restart` (stop, start and probe).
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);

/// What a restart did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum RestartOutcome {
    /// Restarted, and the release's health probe passed.
    Restarted,
    /// Restarted, but the probe failed (the supervisor keeps trying).
    Unhealthy,
    /// Not restarted: unreachable, busy, no release, or a refusal.
    Error,
}

impl RestartOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RestartOutcome::Restarted => "restarted",
            RestartOutcome::Unhealthy => "unhealthy",
            RestartOutcome::Error => "error",
        }
    }
}

/// One host's row.
#[derive(Debug, Serialize)]
struct RestartRow {
    host: String,
    address: String,
    outcome: RestartOutcome,
    detail: String,
    http_status: Option<u16>,
    /// The restarted agent's last output, when it came up unhealthy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    log_tail: Vec<String>,
    elapsed_ms: u64,
}

impl RestartRow {
    fn error(rec: &HostRecord, detail: impl Into<String>, started: Instant) -> RestartRow {
        RestartRow {
            host: rec.host.to_string(),
            address: rec.updater_addr(),
            outcome: RestartOutcome::Error,
            detail: detail.into(),
            http_status: None,
            log_tail: Vec::new(),
            elapsed_ms: elapsed_ms(started),
        }
    }
}

#[derive(Serialize)]
struct RestartDoc<'a> {
    operation: &'static str,
    ok: bool,
    hosts: &'a [RestartRow],
}

/// `swarm restart`.
pub(crate) fn restart(home: &Home, args: &RestartArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let hosts = resolve_required(&inv, &args.targets)?;
    drop(inv);
    let master = Arc::new(Master::for_home(home)?);
    let started = Instant::now();
    let rows = runtime()?.block_on(fan_out(
        hosts,
        usize::from(args.parallel),
        |rec| restart_one(master.clone(), rec),
        |rec, why| RestartRow::error(rec, why, started),
        |_| {},
    ));
    let ok = rows.iter().all(|r| r.outcome == RestartOutcome::Restarted);
    if args.json {
        output::json(&RestartDoc {
            operation: "restart",
            ok,
            hosts: &rows,
        })?;
    } else {
        let mut t = Table::new(vec!["HOST", "ADDRESS", "AGENT", "DETAIL"]);
        for r in &rows {
            let color = match r.outcome {
                RestartOutcome::Restarted => Color::Green,
                RestartOutcome::Unhealthy | RestartOutcome::Error => Color::Red,
            };
            t.row(vec![
                r.host.clone().into(),
                r.address.clone().into(),
                Cell::colored(r.outcome.as_str(), color),
                r.detail.clone().into(),
            ]);
        }
        output::table(&t)?;
        for r in rows.iter().filter(|r| !r.log_tail.is_empty()) {
            outln!()?;
            outln!("{}: the restarted agent's last output:", r.host)?;
            for line in &r.log_tail {
                outln!("  | {line}")?;
            }
        }
    }
    Ok(if ok { 0 } else { EXIT_FAILED })
}

/// Ask one host's updater to restart its agent.
async fn restart_one(master: Arc<Master>, rec: HostRecord) -> RestartRow {
    let started = Instant::now();
    let client = match master.ready_client(&rec, RESTART_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => return RestartRow::error(&rec, e, started),
    };
    let resp = match client.post(rec.updater_url("/agent/restart")).send().await {
        Ok(r) => r,
        Err(e) => return RestartRow::error(&rec, master.describe(&e, RESTART_TIMEOUT), started),
    };
    let (status, body) = match said::read_answer(resp, ANSWER_CAP).await {
        Ok(a) => a,
        Err(e) => return RestartRow::error(&rec, e, started),
    };
    row_of(&rec, status, &body, started)
}

/// Turn the updater's answer into a row.
fn row_of(
    rec: &HostRecord,
    status: reqwest::StatusCode,
    body: &[u8],
    started: Instant,
) -> RestartRow {
    let mut row = RestartRow::error(rec, String::new(), started);
    row.http_status = Some(status.as_u16());
    let Some(resp) = serde_json::from_slice::<OpResponse>(body)
        .ok()
        .map(Clean::clean)
    else {
        let text = said::line(String::from_utf8_lossy(body).trim(), 200);
        row.detail = format!("HTTP {status}: {text}");
        return row;
    };
    (row.outcome, row.detail) = match (status.is_success(), resp.status) {
        (true, _) => (
            RestartOutcome::Restarted,
            "restarted; its health probe passed".to_owned(),
        ),
        (false, OpStatus::Busy) => (
            RestartOutcome::Error,
            resp.error
                .unwrap_or_else(|| "busy: another operation is running".into()),
        ),
        (false, _) if status == reqwest::StatusCode::CONFLICT => (
            RestartOutcome::Unhealthy,
            resp.error
                .unwrap_or_else(|| "the restarted agent is unhealthy".into()),
        ),
        (false, _) => (
            RestartOutcome::Error,
            resp.error.unwrap_or_else(|| format!("HTTP {status}")),
        ),
    };
    row.log_tail = resp.log_tail;
    row
}
