//! `swarm history --host H --worker`: the host's own journal, as its
//! updater keeps it (`GET /history`): every operation it ran, whoever
//! asked (a curl push, an automatic revert, a crash loop), with the
//! caller's certificate CN.

use pki::HostName;
use pki::wire::{JournalEntry, WorkerHistory};
use serde::Serialize;

use super::client::{Master, STATUS_TIMEOUT, get_json};
use super::said::HISTORY_CAP;
use super::{resolve_host, runtime, short};
use crate::clock;
use crate::error::{EXIT_FAILED, Error, Result};
use crate::home::Home;
use crate::output::{self, Cell, Color, Table, outln};

/// The most entries an updater answers at once.
const MAX_LIMIT: usize = 1000;

#[derive(Serialize)]
struct JournalDoc<'a> {
    host: &'a str,
    entries: &'a [JournalEntry],
}

/// Print `host`'s journal, at most the last `limit` entries.
pub(super) fn worker_history(home: &Home, host: &str, limit: usize, json: bool) -> Result<u8> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::usage(format!(
            "--limit {limit}: with --worker, say 1 to {MAX_LIMIT}"
        )));
    }
    let inv = home.inventory()?;
    let host = HostName::new(host.trim())?;
    let rec = resolve_host(&inv, &host)?;
    drop(inv);
    let master = Master::for_home(home)?;
    let asked = runtime()?.block_on(async {
        let client = master.ready_client(&rec, STATUS_TIMEOUT).await?;
        let url = rec.updater_url(&format!("/history?limit={limit}"));
        get_json::<WorkerHistory>(&master, &client, url, HISTORY_CAP).await
    });
    let entries = match asked {
        Ok(h) => h.entries,
        Err(why) => {
            eprintln!("error: {host}: {why}");
            return Ok(EXIT_FAILED);
        }
    };
    if json {
        output::json(&JournalDoc {
            host: host.as_str(),
            entries: &entries,
        })?;
        return Ok(0);
    }
    if entries.is_empty() {
        outln!("{host}: its updater has journaled no operation yet")?;
        return Ok(0);
    }
    let mut t = Table::new(vec!["TIME", "OP", "BY", "RELEASE", "OUTCOME", "DETAIL"]);
    for e in &entries {
        let color = match e.outcome.as_str() {
            "updated" | "unchanged" | "healthy" | "ok" => Color::Green,
            "rolled-back" => Color::Yellow,
            _ => Color::Red,
        };
        t.row(vec![
            clock::to_seconds(&e.time).into(),
            e.op.clone().into(),
            e.by.clone().into(),
            e.release.as_deref().map(short).unwrap_or("-").into(),
            Cell::colored(e.outcome.clone(), color),
            e.detail.clone().into(),
        ]);
    }
    output::table(&t)?;
    Ok(0)
}
