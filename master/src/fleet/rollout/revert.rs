//! `--revert-on-halt`: put a host the halted rollout updated back on the
//! release it ran before, through the updater's probed `/rollback`, and
//! check that it then runs exactly that release.

use std::time::{Duration, Instant};

use pki::wire::{OpResponse, OpStatus, Releases};

use super::super::client::get_json;
use super::super::push::Pusher;
use super::super::report::{HostResult, interpret};
use super::super::said::{self, ANSWER_CAP, RELEASES_CAP};
use super::super::short;
use crate::inventory::{HostRecord, Op, Outcome};

/// Whole-request limit for the `/rollback` (restart plus probes).
const REVERT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a `busy` updater is asked again, and how often.
const BUSY_LIMIT: Duration = Duration::from_secs(60);
const BUSY_RETRY: Duration = Duration::from_millis(250);

/// Revert `rec` to `before` (its release before the rollout; `pushed` is
/// the rollout's); `r` is its row, returned amended and recorded.
pub(super) async fn revert(
    pusher: &Pusher,
    rec: &HostRecord,
    before: Option<&str>,
    mut r: HostResult,
    pushed: &str,
) -> HostResult {
    let (outcome, said) = attempt(pusher, rec, before, pushed).await;
    r.agent = outcome;
    r.detail = format!("{}; {said}", r.detail);
    pusher.recorder.record_revert(&r, before, outcome);
    r
}

async fn attempt(
    pusher: &Pusher,
    rec: &HostRecord,
    before: Option<&str>,
    pushed: &str,
) -> (Outcome, String) {
    let Some(before) = before else {
        return (
            Outcome::Error,
            "not reverted: it ran no release before the rollout (or did not say which)".to_owned(),
        );
    };
    let master = &pusher.master;
    let client = match master.updater_client(rec, REVERT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return (Outcome::Error, format!("not reverted: {e}")),
    };
    let releases: Releases =
        match get_json(master, &client, rec.updater_url("/releases"), RELEASES_CAP).await {
            Ok(r) => r,
            Err(e) => return (Outcome::Error, format!("not reverted: {e}")),
        };
    let active = releases.active.map(|m| m.id().to_owned());
    if active.as_deref() == Some(before) {
        // Its updater reverted by itself (a crash loop) already.
        return (
            Outcome::Reverted,
            format!("reverted: already back on {}", short(before)),
        );
    }
    if active.as_deref() != Some(pushed) || releases.prev.as_ref().map(|m| m.id()) != Some(before) {
        return (
            Outcome::Error,
            format!(
                "not reverted: it runs {} and its previous release is not {} any more",
                active.as_deref().map(short).unwrap_or("nothing"),
                short(before)
            ),
        );
    }
    let started = Instant::now();
    // The supervisor may be restarting the crashed agent right now: a
    // `busy` answer is retried until it is done, within a deadline.
    let deadline = started + BUSY_LIMIT;
    let row = loop {
        let resp = match client.post(rec.updater_url("/rollback")).send().await {
            Ok(r) => r,
            Err(e) => {
                return (
                    Outcome::Error,
                    format!("revert failed: {}", master.describe(&e, REVERT_TIMEOUT)),
                );
            }
        };
        let (status, body) = match said::read_answer(resp, ANSWER_CAP).await {
            Ok(answer) => answer,
            Err(e) => return (Outcome::Error, format!("revert failed: {e}")),
        };
        let busy =
            serde_json::from_slice::<OpResponse>(&body).is_ok_and(|r| r.status == OpStatus::Busy);
        if busy && Instant::now() < deadline {
            tokio::time::sleep(BUSY_RETRY).await;
            continue;
        }
        break interpret(Op::Rollback, rec, status, &body, None, started);
    };
    match (row.agent, row.release.as_ref().map(|m| m.id())) {
        (Outcome::RolledBack, Some(now)) if now == before => {
            (Outcome::Reverted, format!("reverted to {}", short(before)))
        }
        (Outcome::RolledBack, now) => (
            Outcome::Error,
            format!(
                "revert failed: it runs {} now, not {}",
                now.map(short).unwrap_or("nothing"),
                short(before)
            ),
        ),
        _ => (Outcome::Error, format!("revert failed: {}", row.detail)),
    }
}
