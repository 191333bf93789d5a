//! `swarm rollback`: ask each target's updater to swap back to its
//! previous release.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::Master;
use super::history::Recorder;
use super::report::{FleetReport, HostResult, interpret};
use super::said::{self, ANSWER_CAP};
use super::{fan_out, resolve_required, runtime};
use crate::cli::RollbackArgs;
use crate::error::Result;
use crate::home::Home;
use crate::inventory::{HostRecord, Inventory, Op};

/// Whole-request limit for `/rollback` (restart plus probes).
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(180);

/// `swarm rollback`.
pub(crate) fn rollback(home: &Home, args: &RollbackArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let hosts = resolve_required(&inv, &args.targets)?;
    let master = Arc::new(Master::for_home(home)?);
    let report = rollback_hosts(
        inv,
        master,
        hosts,
        usize::from(args.parallel),
        args.to.clone(),
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
    to: Option<String>,
) -> Result<FleetReport> {
    let recorder = Recorder::new(inv, Op::Rollback, None);
    let started = Instant::now();
    let results = runtime()?.block_on(fan_out(
        hosts,
        parallel,
        |rec| rollback_one(master.clone(), rec, to.clone()),
        |rec, why| HostResult::error(rec, why, started),
        |r| recorder.record(r),
    ));
    recorder.finish();
    Ok(FleetReport::new(Op::Rollback, None, results))
}

/// Ask one host's updater to roll back.
async fn rollback_one(master: Arc<Master>, rec: HostRecord, to: Option<String>) -> HostResult {
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
        Ok((status, body)) => interpret(Op::Rollback, &rec, status, &body, None, started),
        Err(e) => HostResult::error(&rec, e, started),
    }
}
