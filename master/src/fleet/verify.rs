//! `swarm verify`: ask each target's updater to re-hash its live release
//! and `prev` against the index kept with each (`POST /verify`, issue 12)
//! and show what was modified, added or removed on the worker. Exit 1 when
//! anything differs, a slot cannot be checked, or a host does not answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pki::wire::{SlotVerify, VerifyReport};
use serde::Serialize;

use super::client::Master;
use super::said;
use super::{fan_out, resolve_required, runtime, short};
use crate::cli::VerifyArgs;
use crate::error::Result;
use crate::home::Home;
use crate::inventory::HostRecord;
use crate::output::{self, Cell, Color, Table, outln};

/// Whole-request limit for `/verify`: re-hashing two big releases on a
/// slow disk.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(600);

/// Cap on a `/verify` answer: two slots with up to thousands of changed
/// paths each.
const VERIFY_CAP: usize = 16 << 20;

/// Paths listed per kind of change in the table (all of them in `--json`).
const SHOWN_PATHS: usize = 5;

/// One host's answer.
#[derive(Debug, Serialize)]
struct HostVerify {
    host: String,
    /// Every slot is clean (false when the host could not be asked).
    clean: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    slots: Vec<SlotVerify>,
    elapsed_ms: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    clean: bool,
    hosts: Vec<HostVerify>,
}

/// `swarm verify`.
pub(crate) fn verify(home: &Home, args: &VerifyArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let hosts = resolve_required(&inv, &args.targets)?;
    let master = Arc::new(Master::for_home(home)?);
    let results = runtime()?.block_on(fan_out(
        hosts,
        usize::from(args.parallel),
        |rec| verify_one(master.clone(), rec),
        |rec, why| HostVerify {
            host: rec.host.to_string(),
            clean: false,
            error: Some(why),
            slots: Vec::new(),
            elapsed_ms: 0,
        },
        |_| {},
    ));
    let report = Report {
        clean: results.iter().all(|h| h.clean),
        hosts: results,
    };
    if args.json {
        output::json(&report)?;
    } else {
        print(&report)?;
    }
    Ok(if report.clean { 0 } else { 1 })
}

async fn verify_one(master: Arc<Master>, rec: HostRecord) -> HostVerify {
    let started = Instant::now();
    let mut out = HostVerify {
        host: rec.host.to_string(),
        clean: false,
        error: None,
        slots: Vec::new(),
        elapsed_ms: 0,
    };
    let answer = match master.ready_client(&rec, VERIFY_TIMEOUT).await {
        Ok(client) => match client.post(rec.updater_url("/verify")).send().await {
            Ok(resp) => said::read_json::<VerifyReport>(resp, VERIFY_CAP).await,
            Err(e) => Err(master.describe(&e, VERIFY_TIMEOUT)),
        },
        Err(e) => Err(e),
    };
    match answer {
        Ok(r) => {
            // Recomputed here: a worker cannot call a slot clean that lists changes.
            out.clean = !r.slots.is_empty() && r.slots.iter().all(slot_clean);
            if r.slots.is_empty() {
                out.error = Some("no release installed: nothing to verify".into());
            }
            out.slots = r.slots;
        }
        Err(e) => out.error = Some(e),
    }
    out.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    out
}

fn slot_clean(s: &SlotVerify) -> bool {
    s.clean
        && s.error.is_none()
        && s.modified.is_empty()
        && s.added.is_empty()
        && s.missing.is_empty()
}

/// `a, b, c (+2 more)`.
fn paths(list: &[String]) -> String {
    let mut s = list
        .iter()
        .take(SHOWN_PATHS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SHOWN_PATHS {
        s.push_str(&format!(" (+{} more)", list.len() - SHOWN_PATHS));
    }
    s
}

fn print(report: &Report) -> Result<()> {
    let mut t = Table::new(vec!["HOST", "SLOT", "RELEASE", "RESULT", "DETAIL"]);
    for h in &report.hosts {
        if let Some(e) = &h.error {
            t.row(vec![
                h.host.clone().into(),
                "-".into(),
                "-".into(),
                Cell::colored("error", Color::Red),
                e.clone().into(),
            ]);
        }
        for s in &h.slots {
            let release = s.release.as_ref().map_or("-", |m| short(m.id())).to_owned();
            let (result, detail) = if let Some(e) = &s.error {
                (Cell::colored("error", Color::Red), e.clone())
            } else if slot_clean(s) {
                (Cell::colored("clean", Color::Green), String::new())
            } else {
                let mut parts = Vec::new();
                for (what, list) in [
                    ("modified", &s.modified),
                    ("added", &s.added),
                    ("missing", &s.missing),
                ] {
                    if !list.is_empty() {
                        parts.push(format!("{what}: {}", paths(list)));
                    }
                }
                (Cell::colored("differs", Color::Yellow), parts.join("; "))
            };
            t.row(vec![
                h.host.clone().into(),
                s.slot.clone().into(),
                release.into(),
                result,
                detail.into(),
            ]);
        }
    }
    output::table(&t)?;
    if !report.clean {
        outln!(
            "a release that differs from its index was changed on the worker after it was installed: push it again (or roll back) to restore it"
        )?;
    }
    Ok(())
}
