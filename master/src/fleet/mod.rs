//! Fleet operations over pinned mTLS: `swarm update` ([`push`]; a staged
//! rollout in waves: [`rollout`]),
//! `rollback` ([`rollback`]), `status` ([`status`]), `history`
//! ([`history`]; `--worker`: [`journal`]), `restart` ([`restart`]) and
//! `logs` ([`logs`]), `verify` ([`verify`]) and `releases` ([`releases`]).
//! [`upload`] sends one release (whole or a delta) to one `/update`,
//! [`delta`] keeps pushed indexes and packs deltas per base (issue 12).
//! [`client`] builds the pinned clients and words their
//! failures, [`said`] reads and cleans what a worker answers, [`report`]
//! turns answers into rows, [`progress`] draws bars, [`deny`] hands hosts
//! the certificate deny list before anything else.
//!
//! Invariants: every connection presents the master identity, trusts only
//! our CA and pins the updater's CN (`updater@<host>`) and the fingerprint
//! recorded at enrollment; a release is packed once (and a delta once per
//! base) and streamed from its temp file to every host; one host's failure or silence never stalls the
//! others (connect timeout, bounded concurrency); every target gets exactly
//! one row, even when its task panics ([`fan_out`]); every push and
//! rollback lands in the inventory's audit trail as each host's outcome
//! arrives, so a run cut short by Ctrl-C keeps what it learnt; every body
//! a worker sends is read under a cap and every string in it sanitised
//! before it is printed or stored ([`said`]); targets are named hosts,
//! tagged hosts (every tag given) or all active ones ([`resolve`]).

mod client;
mod delta;
mod deny;
mod history;
mod journal;
mod logs;
mod progress;
mod push;
mod releases;
mod renew;
mod report;
mod restart;
mod rollback;
mod rollout;
mod said;
mod status;
mod upload;
mod verify;
mod via_store;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pki::HostName;
use tokio::sync::Semaphore;

use crate::cli::{OptionalTargets, Targets};
use crate::error::{Error, Result};
use crate::inventory::{HostRecord, HostStatus, Inventory, Tag};

pub(crate) use deny::deliver_all as deliver_deny_all;
pub(crate) use history::history;
pub(crate) use logs::logs;
pub(crate) use push::update;
pub(crate) use releases::releases;
pub(crate) use renew::renew;
pub(crate) use restart::restart;
pub(crate) use rollback::rollback;
pub(crate) use status::status;
pub(crate) use verify::verify;

/// How many hex digits of a sha256 tables show.
const SHORT: usize = 12;

fn short(sha: &str) -> &str {
    sha.get(..SHORT).unwrap_or(sha)
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The target flags of a command: [`Targets`] (one required) and
/// [`OptionalTargets`] (none means every active host).
pub(crate) trait TargetFlags {
    fn hosts(&self) -> &[String];
    fn tags(&self) -> &[String];
    fn all(&self) -> bool;
}

impl TargetFlags for Targets {
    fn hosts(&self) -> &[String] {
        &self.hosts
    }
    fn tags(&self) -> &[String] {
        &self.tags
    }
    fn all(&self) -> bool {
        self.all
    }
}

impl TargetFlags for OptionalTargets {
    fn hosts(&self) -> &[String] {
        &self.hosts
    }
    fn tags(&self) -> &[String] {
        &self.tags
    }
    fn all(&self) -> bool {
        self.all
    }
}

/// Resolve `--host …`/`--tag …`/`--all` to active inventory rows (usage
/// errors: 2).
fn resolve(inv: &Inventory, targets: &impl TargetFlags) -> Result<Vec<HostRecord>> {
    let (hosts, all) = (targets.hosts(), targets.all());
    if !targets.tags().is_empty() {
        return tagged(inv, &Tag::parse_all(targets.tags())?);
    }
    if all || hosts.is_empty() {
        return inv.active_hosts();
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for h in hosts {
        let host = HostName::new(h.trim())?;
        if !seen.insert(host.clone()) {
            continue;
        }
        match inv.find(&host)? {
            None => {
                return Err(Error::usage(format!(
                    "unknown host {host}: see `swarm list` for enrolled hosts"
                )));
            }
            Some(rec) if rec.status == HostStatus::Decommissioned => {
                return Err(Error::usage(format!(
                    "host {host} is decommissioned and is never targeted; enroll it again to use it"
                )));
            }
            Some(rec) => out.push(rec),
        }
    }
    Ok(out)
}

/// The active row of the one host `host` (usage errors: 2).
fn resolve_host(inv: &Inventory, host: &HostName) -> Result<HostRecord> {
    struct One(Vec<String>);
    impl TargetFlags for One {
        fn hosts(&self) -> &[String] {
            &self.0
        }
        fn tags(&self) -> &[String] {
            &[]
        }
        fn all(&self) -> bool {
            false
        }
    }
    resolve(inv, &One(vec![host.to_string()]))?
        .pop()
        .ok_or_else(|| Error::usage(format!("unknown host {host}")))
}

/// The active hosts that carry every one of `tags`; a tag no active host
/// carries is a usage error that lists the known ones.
pub(crate) fn tagged(inv: &Inventory, tags: &[Tag]) -> Result<Vec<HostRecord>> {
    let known = inv.known_tags()?;
    if let Some(unknown) = tags.iter().find(|t| !known.iter().any(|k| k == t.as_str())) {
        return Err(Error::usage(if known.is_empty() {
            format!(
                "unknown tag {unknown}: no host has a tag yet (add one with `swarm tag --host H --add {unknown}`)"
            )
        } else {
            format!("unknown tag {unknown}: known tags are {}", known.join(", "))
        }));
    }
    let hosts: Vec<HostRecord> = inv
        .active_hosts()?
        .into_iter()
        .filter(|h| tags.iter().all(|t| h.tags.contains(t)))
        .collect();
    if hosts.is_empty() {
        let list: Vec<&str> = tags.iter().map(Tag::as_str).collect();
        return Err(Error::usage(format!(
            "no active host carries every tag of --tag {} (see `swarm list`)",
            list.join(",")
        )));
    }
    Ok(hosts)
}

fn resolve_required(inv: &Inventory, targets: &Targets) -> Result<Vec<HostRecord>> {
    let hosts = resolve(inv, targets)?;
    if hosts.is_empty() {
        return Err(Error::usage(
            "no active hosts to target: enroll one with `swarm enroll` (see `swarm list`)",
        ));
    }
    Ok(hosts)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the async runtime: {e}")))
}

/// Run `task` for every host, at most `parallel` at once, handing each
/// result to `arrived` as it comes in. A task that panics (or is
/// cancelled) still yields a row: `lost(host, reason)`. Results come back
/// in target order, exactly one per target.
async fn fan_out<T, F, Fut>(
    hosts: Vec<HostRecord>,
    parallel: usize,
    mut task: F,
    lost: impl Fn(&HostRecord, String) -> T,
    mut arrived: impl FnMut(&mut T),
) -> Vec<T>
where
    T: Send + 'static,
    F: FnMut(HostRecord) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut running = FuturesUnordered::new();
    for (i, rec) in hosts.iter().enumerate() {
        let fut = task(rec.clone());
        let sem = sem.clone();
        let handle = tokio::spawn(async move {
            // The semaphore is never closed, so acquire only fails if it were.
            let _permit = sem.acquire_owned().await;
            fut.await
        });
        running.push(async move { (i, handle.await) });
    }
    let mut results: Vec<Option<T>> = std::iter::repeat_with(|| None).take(hosts.len()).collect();
    while let Some((i, joined)) = running.next().await {
        let mut r = match joined {
            Ok(r) => r,
            Err(e) => lost(&hosts[i], join_error(e)),
        };
        arrived(&mut r);
        results[i] = Some(r);
    }
    results.into_iter().flatten().collect()
}

/// Why a host's task ended without a result.
fn join_error(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return format!("internal error: the task for this host was cancelled ({e})");
    }
    let payload = e.into_panic();
    let why = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("internal error: the task for this host panicked: {why}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pki::Fingerprint;

    /// An inventory row for unit tests (nothing listens at its ports).
    pub(crate) fn record(host: &str) -> HostRecord {
        let fp: Fingerprint = "ab".repeat(32).parse().unwrap();
        let t = crate::clock::now();
        HostRecord {
            host: HostName::new(host).unwrap(),
            address: "127.0.0.1".into(),
            sans: vec![],
            agent_port: 1,
            updater_port: 1,
            agent_fingerprint: fp,
            agent_not_after: t,
            updater_fingerprint: Some(fp),
            updater_not_after: Some(t),
            enrolled_at: t,
            status: HostStatus::Active,
            decommissioned_at: None,
            tags: vec![],
            pending_updater_fingerprint: None,
        }
    }

    #[test]
    fn every_target_gets_a_row_even_when_its_task_panics() {
        let hosts = vec![record("a"), record("b"), record("c")];
        let mut seen = Vec::new();
        let rows = runtime().unwrap().block_on(fan_out(
            hosts,
            2,
            |rec| async move {
                if rec.host.as_str() == "b" {
                    panic!("boom on b");
                }
                Ok::<_, String>(rec.host.to_string())
            },
            |rec, why| Err(format!("{}: {why}", rec.host)),
            |r: &mut std::result::Result<String, String>| seen.push(r.clone()),
        ));
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0], Ok("a".to_owned()));
        let b = rows[1].clone().unwrap_err();
        assert!(b.starts_with("b: internal error"), "{b}");
        assert!(b.contains("boom on b"), "{b}");
        assert_eq!(rows[2], Ok("c".to_owned()));
        assert_eq!(seen.len(), 3);
    }
}
