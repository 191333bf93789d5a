//! `swarm renew` (issue 15): new agent and updater certificates (new keys,
//! same names and SANs) delivered over the pinned mTLS channel
//! (`POST /renew`), without SSH, with the home's `release.pub` (issue 15:
//! from then on that updater takes only signed releases).
//!
//! Invariant: the inventory pins the new fingerprints only after the
//! updater presented the new certificate to a client that accepts nothing
//! else (`GET /health`); until then the master accepts the old or the
//! pending one ([`pki::ServerExpectation::also`]), so a renewal cut short at
//! any instant (the updater killed, the network gone) never locks the
//! master out, and running `swarm renew` again finishes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pki::renew::{RenewAnswer, RenewBody};
use pki::{Ca, Fingerprint, LeafSpec};
use serde::Serialize;

use super::client::{Master, STATUS_TIMEOUT};
use super::said::{self, ANSWER_CAP};
use super::{fan_out, resolve_required, runtime};
use crate::cli::RenewArgs;
use crate::clock::{self, whole_seconds};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::{HostRecord, Inventory};
use crate::output::{self, Cell, Color, Table};

/// Whole-request limit for `/renew` (the agent's restart and probes).
const RENEW_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the updater has to present its new certificate.
const CONFIRM_WITHIN: Duration = Duration::from_secs(15);

/// One host's renewal.
#[derive(Debug, Serialize)]
struct RenewRow {
    host: String,
    renewed: bool,
    agent_fingerprint: Option<String>,
    updater_fingerprint: Option<String>,
    expires_in_days: Option<i64>,
    agent_healthy: Option<bool>,
    error: Option<String>,
}

impl RenewRow {
    fn error(rec: &HostRecord, e: impl Into<String>) -> RenewRow {
        RenewRow {
            host: rec.host.to_string(),
            renewed: false,
            agent_fingerprint: None,
            updater_fingerprint: None,
            expires_in_days: None,
            agent_healthy: None,
            error: Some(e.into()),
        }
    }
}

#[derive(Serialize)]
struct RenewDoc<'a> {
    hosts: &'a [RenewRow],
}

/// `swarm renew (--host H…|--all|--tag T) [--days N]`.
pub(crate) fn renew(home: &Home, args: &RenewArgs) -> Result<u8> {
    let hosts = resolve_required(&home.inventory()?, &args.targets)?;
    let ca = Arc::new(home.ca()?);
    let master = Arc::new(Master::for_home(home)?);
    let db = home.db_path();
    let days = i64::from(args.days);
    // The home's release key goes with every renewal (issue 15).
    let release_pub = Arc::new(crate::signing::for_renew(home)?);
    let rows =
        runtime()?.block_on(fan_out(
            hosts,
            8,
            |rec| {
                let (master, ca, db) = (master.clone(), ca.clone(), db.clone());
                let release_pub = release_pub.clone();
                async move {
                    renew_one(&master, &ca, rec, days, &db, release_pub.as_ref().as_ref()).await
                }
            },
            RenewRow::error,
            |_| {},
        ));
    print(&rows, args.json)?;
    Ok(if rows.iter().all(|r| r.renewed) {
        0
    } else {
        crate::EXIT_FAILED
    })
}

/// Run `f` on the inventory at `db` off the async threads.
async fn with_inventory<T: Send + 'static>(
    db: &std::path::Path,
    f: impl FnOnce(&Inventory) -> Result<T> + Send + 'static,
) -> std::result::Result<T, String> {
    let db = db.to_owned();
    tokio::task::spawn_blocking(move || f(&Inventory::open(&db)?))
        .await
        .map_err(|e| format!("inventory task: {e}"))?
        .map_err(|e| e.to_string())
}

/// Settle a renewal left pending by an earlier run: if the updater presents
/// the pending certificate, pin it; if it presents the pinned one, the
/// pending one may be replaced; if it cannot be reached, keep both (a new
/// pending certificate would leave the master accepting neither of two
/// certificates the updater might present).
async fn settle(
    master: &Master,
    rec: HostRecord,
    db: &std::path::Path,
) -> std::result::Result<HostRecord, String> {
    let (Some(pending), Some(pinned)) = (rec.pending_updater_fingerprint, rec.updater_fingerprint)
    else {
        return Ok(rec);
    };
    if confirm(master, &rec, pending, Duration::ZERO).await.is_ok() {
        let host = rec.host.clone();
        let retired = replaced(&rec);
        with_inventory(db, move |inv| {
            pin_and_deny(inv, &host, pending, &retired)?;
            inv.find(&host)?
                .ok_or_else(|| Error::State(format!("host {host} vanished from the inventory")))
        })
        .await
    } else if confirm(master, &rec, pinned, Duration::ZERO).await.is_ok() {
        Ok(rec)
    } else {
        Err("unreachable with an earlier renewal in flight: both certificates stay accepted; run swarm renew again once it answers".into())
    }
}

/// The certificate pair a renewal of `rec` replaces (its pinned one).
fn replaced(rec: &HostRecord) -> Vec<(Fingerprint, String)> {
    let mut retired = vec![(rec.agent_fingerprint, format!("{} (renewed)", rec.host))];
    if let Some(old) = rec.updater_fingerprint {
        retired.push((old, format!("{} (renewed)", rec.host.updater_cn())));
    }
    retired
}

/// Pin the pending pair of `host` (if its updater certificate is `fp`) and
/// deny the pair it replaces, `retired`: a renewal is also the rotation of
/// a key that may have leaked (every host gets the list on its next
/// contact). Whether it was pinned.
fn pin_and_deny(
    inv: &Inventory,
    host: &pki::HostName,
    fp: Fingerprint,
    retired: &[(Fingerprint, String)],
) -> Result<bool> {
    let pinned = inv.confirm_renewal(host, fp)?;
    if pinned {
        inv.deny(retired)?;
    }
    Ok(pinned)
}

/// New agent and updater leaves for `rec`: same names and SANs, `days` long.
fn issue(ca: &Ca, rec: &HostRecord, days: i64) -> Result<(pki::IssuedLeaf, pki::IssuedLeaf)> {
    let not_after = clock::now() + time::Duration::days(days);
    let mut agent = LeafSpec::agent(&rec.host, &rec.address, &rec.sans)?;
    let mut updater = LeafSpec::updater(&rec.host, &rec.address, &rec.sans)?;
    agent.not_after = not_after;
    updater.not_after = not_after;
    Ok((ca.issue(&agent)?, ca.issue(&updater)?))
}

async fn renew_one(
    master: &Master,
    ca: &Ca,
    rec: HostRecord,
    days: i64,
    db: &std::path::Path,
    release_pub: Option<&(pki::sign::ReleasePub, Option<String>)>,
) -> RenewRow {
    if rec.updater_fingerprint.is_none() {
        return RenewRow::error(
            &rec,
            "no updater certificate enrolled: nothing to renew through",
        );
    }
    let rec = match settle(master, rec.clone(), db).await {
        Ok(r) => r,
        Err(e) => return RenewRow::error(&rec, e),
    };
    let (agent, updater) = match issue(ca, &rec, days) {
        Ok(p) => p,
        Err(e) => return RenewRow::error(&rec, e.to_string()),
    };
    let host = rec.host.clone();
    let pending = (
        (agent.fingerprint, whole_seconds(agent.not_after)),
        (updater.fingerprint, whole_seconds(updater.not_after)),
    );
    let rec = match with_inventory(db, move |inv| {
        inv.set_pending(&host, pending.0, pending.1)?;
        inv.find(&host)?
            .ok_or_else(|| Error::State(format!("host {host} vanished from the inventory")))
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return RenewRow::error(&rec, e),
    };
    let rec = &rec;
    let client = match master.ready_client(rec, RENEW_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => return RenewRow::error(rec, e),
    };
    let body = match release_pub {
        Some((key, endorsement)) => {
            RenewBody::new(&agent, &updater).with_release_pub(key, endorsement.clone())
        }
        None => Ok(RenewBody::new(&agent, &updater)),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return RenewRow::error(rec, e.to_string()),
    };
    let resp = match client
        .post(rec.updater_url("/renew"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return RenewRow::error(rec, master.describe(&e, RENEW_TIMEOUT)),
    };
    let answer: RenewAnswer = match said::read_json(resp, ANSWER_CAP).await {
        Ok(a) => a,
        Err(e) => return RenewRow::error(rec, e),
    };
    if let Err(e) = confirm(master, rec, updater.fingerprint, CONFIRM_WITHIN).await {
        return RenewRow::error(
            rec,
            format!("renewed, but not confirmed yet ({e}): run swarm renew again"),
        );
    }
    let (host, fp, retired) = (rec.host.clone(), updater.fingerprint, replaced(rec));
    let pinned = with_inventory(db, move |inv| pin_and_deny(inv, &host, fp, &retired)).await;
    match pinned {
        Ok(true) => {}
        Ok(false) => return RenewRow::error(rec, "a later renewal replaced this one"),
        Err(e) => return RenewRow::error(rec, e),
    }
    RenewRow {
        host: rec.host.to_string(),
        renewed: true,
        agent_fingerprint: Some(agent.fingerprint.to_string()),
        updater_fingerprint: Some(updater.fingerprint.to_string()),
        expires_in_days: Some(clock::days_left(updater.not_after.min(agent.not_after))),
        agent_healthy: Some(answer.agent_healthy),
        error: (!answer.agent_healthy).then(|| said::line(&answer.detail, 200)),
    }
}

/// `GET /health` from a client that accepts only `fingerprint`, until it
/// answers or `within` passes (one try for zero).
async fn confirm(
    master: &Master,
    rec: &HostRecord,
    fingerprint: Fingerprint,
    within: Duration,
) -> std::result::Result<(), String> {
    let client = master.updater_client_pinned(rec, fingerprint, STATUS_TIMEOUT)?;
    let deadline = Instant::now() + within;
    loop {
        let err = match client.get(rec.updater_url("/health")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => master.describe(&e, STATUS_TIMEOUT),
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print(rows: &[RenewRow], json: bool) -> Result<()> {
    if json {
        return output::json(&RenewDoc { hosts: rows });
    }
    let mut t = Table::new(vec!["HOST", "RENEWED", "UPDATER", "CERT DAYS", "DETAIL"]);
    for r in rows {
        t.row(vec![
            r.host.clone().into(),
            if r.renewed {
                Cell::colored("renewed", Color::Green)
            } else {
                Cell::colored("error", Color::Red)
            },
            r.updater_fingerprint
                .as_deref()
                .map(super::short)
                .unwrap_or("-")
                .to_owned()
                .into(),
            r.expires_in_days
                .map_or_else(|| "-".into(), output::expiry_cell),
            r.error.clone().unwrap_or_default().into(),
        ]);
    }
    output::table(&t)
}
