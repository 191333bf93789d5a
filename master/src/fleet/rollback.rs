//! `swarm rollback`: ask each target's updater to swap back to its
//! previous release (or, `--to`, a kept one; with a store set, a host that
//! no longer keeps it fetches it from the store, issue 16).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::Master;
use super::history::Recorder;
use super::report::{FleetReport, HostResult, interpret};
use super::said::{self, ANSWER_CAP};
use super::via_store::{Fetched, ViaStore};
use super::{fan_out, resolve_required, runtime};
use crate::cli::RollbackArgs;
use crate::error::Result;
use crate::home::Home;
use crate::inventory::{HostRecord, Inventory, Op, Outcome};

/// Whole-request limit for `/rollback` (restart plus probes).
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(180);

/// `swarm rollback`.
pub(crate) fn rollback(home: &Home, args: &RollbackArgs) -> Result<u8> {
    let mut inv = home.inventory()?;
    let hosts = resolve_required(&inv, &args.targets)?;
    // `--to` a release some host may no longer keep: the store can still
    // have it (issue 16). A host that fetches it installs it as a push, so
    // it is signed as a push is (a fresh seq: the operator asked for it).
    let via_store = match &args.to {
        Some(prefix) => super::via_store::for_rollback(home, prefix)?.map(Arc::new),
        None => None,
    };
    let signature = match &via_store {
        Some(vs) => crate::signing::sign_release(
            home,
            &mut inv,
            vs.release_id(),
            &crate::cli::SigningArgs {
                key_file: None,
                allow_downgrade: false,
            },
        )?,
        None => None,
    };
    let master = Arc::new(Master::for_home(home)?.with_signature(signature));
    let indexes = home.root().join("indexes");
    let report = rollback_hosts(
        inv,
        master,
        hosts,
        usize::from(args.parallel),
        (args.to.clone(), via_store, indexes),
    )?;
    report.print(args.json)?;
    Ok(report.exit_code())
}

/// Roll `hosts` back, recording each outcome as it arrives.
fn rollback_hosts(
    inv: Inventory,
    master: Arc<Master>,
    hosts: Vec<HostRecord>,
    parallel: usize,
    (to, via_store, indexes): (Option<String>, Option<Arc<ViaStore>>, PathBuf),
) -> Result<FleetReport> {
    let recorder = Recorder::new(inv, Op::Rollback, None);
    let started = Instant::now();
    let results = runtime()?.block_on(fan_out(
        hosts,
        parallel,
        |rec| {
            rollback_one(
                master.clone(),
                rec,
                to.clone(),
                (via_store.clone(), indexes.clone()),
            )
        },
        |rec, why| HostResult::error(rec, why, started),
        |r| recorder.record(r),
    ));
    recorder.finish();
    Ok(FleetReport::new(Op::Rollback, None, results))
}

/// Ask one host's updater to roll back.
async fn rollback_one(
    master: Arc<Master>,
    rec: HostRecord,
    to: Option<String>,
    (via_store, indexes): (Option<Arc<ViaStore>>, PathBuf),
) -> HostResult {
    let started = Instant::now();
    let client = match master.ready_client(&rec, ROLLBACK_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => return HostResult::error(&rec, e, started),
    };
    let mut req = client.post(rec.updater_url("/rollback"));
    if let Some(id) = to {
        req = req.json(&serde_json::json!({ "release_id": id }));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return HostResult::error(&rec, master.describe(&e, ROLLBACK_TIMEOUT), started),
    };
    match said::read_answer(resp, ANSWER_CAP).await {
        Ok((status, _)) if status.as_u16() == 404 && via_store.is_some() => {
            // It no longer keeps that release: fetch it from the store.
            let Some(vs) = via_store else {
                return HostResult::error(&rec, "no store", started);
            };
            let base = live_base(&client, &rec, &indexes).await;
            match vs
                .push(&master, &client, &rec, base, ROLLBACK_TIMEOUT, started)
                .await
            {
                Fetched::Done(r) => {
                    let mut r = *r;
                    if r.agent == Outcome::Updated {
                        r.agent = Outcome::RolledBack;
                        r.detail = format!(
                            "{} (the host no longer kept it: fetched from the store)",
                            r.detail
                        );
                    }
                    r
                }
                Fetched::Direct(why) => HostResult::error(&rec, why, started),
            }
        }
        Ok((status, body)) => interpret(Op::Rollback, &rec, status, &body, None, started),
        Err(e) => HostResult::error(&rec, e, started),
    }
}

/// The host's live release and the index the master kept of it.
async fn live_base(
    client: &reqwest::Client,
    rec: &HostRecord,
    indexes: &std::path::Path,
) -> Option<(String, pki::index::TreeIndex)> {
    let resp = client
        .get(rec.updater_url("/releases"))
        .timeout(super::client::STATUS_TIMEOUT)
        .send()
        .await
        .ok()?;
    let releases: pki::wire::Releases = said::read_json(resp, said::RELEASES_CAP).await.ok()?;
    let id = releases.active?.release_id?;
    let index = super::delta::kept_index_in(indexes, &id)?;
    Some((id, index))
}
