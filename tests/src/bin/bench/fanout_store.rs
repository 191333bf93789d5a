//! The `fanout-store` section (issue 16): for each fleet size N, the same
//! whole new release pushed `--direct` (over mTLS, N uploads from the
//! master) and through a real Garage (one upload, N workers fetching with
//! presigned URLs), with `swarm` behind one shaped uplink ([`Uplink`]):
//! wall time until every host serves it, and the bytes the master sent.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use tests::Bins;
use tests::garage::{Garage, REGION};

use crate::fleet::{self, Fleet};
use crate::report::{Report, Target, Unit};
use crate::tree::Tree;
use crate::uplink::Uplink;
use crate::{Plan, SETTLE_TIMEOUT, settle};

/// The bucket the bench's Garage holds.
const BUCKET: &str = "swarm-bench";
/// The store fan-out's bytes target: at most this many releases.
const BYTES_TARGET: f64 = 1.1;

/// How a measured push reaches the workers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Store,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Store => "store",
        }
    }
}

/// Generates a whole new fan-out tree (`dir` under the trees, `seed`): no
/// content any earlier push had, so every push sends the whole release.
pub(crate) type FreshTree<'a> = &'a dyn Fn(&str, u64) -> anyhow::Result<Tree>;

pub(crate) async fn fanout_store_section(
    plan: &Plan,
    root: &Path,
    bins: &Bins,
    updater_args: &[String],
    fresh: FreshTree<'_>,
    uplink_mbit: u32,
    report: &mut Report,
) -> anyhow::Result<()> {
    let uplink = Uplink::create(uplink_mbit).await?;
    match &uplink.shaped {
        Ok(mbit) => step!(
            "master in namespace {} behind a {mbit} Mbit/s tbf uplink",
            uplink.ns
        ),
        Err(why) => step!(
            "master in namespace {}, uplink NOT shaped: {why}",
            uplink.ns
        ),
    }
    report.notes.push(match &uplink.shaped {
        Ok(mbit) => format!(
            "fanout-store: swarm in its own netns, one veth to the workers and Garage, master egress tbf {mbit} Mbit/s; bytes = the veth's tx_bytes (headers included)"
        ),
        Err(why) => format!(
            "fanout-store: uplink NOT shaped ({why}); bytes = the veth's tx_bytes (headers included)"
        ),
    });
    let ip = uplink.root_ip;
    let garage = tokio::task::spawn_blocking(move || Garage::try_start_at(BUCKET, ip))
        .await
        .context("starting Garage")??;
    step!("Garage on {}", garage.endpoint());

    let first = plan.fanout.first().copied().unwrap_or(1);
    let mut seed = 1_000u64;
    for &n in &plan.fanout {
        step!("fanout-store: starting {n} worker(s) at {ip}");
        let dir = root.join(format!("fanout-store-{n}"));
        let fleet = Fleet::start_at(
            &dir,
            bins,
            updater_args,
            "fs",
            n,
            Some((ip, uplink.ns.as_str())),
        )
        .await?;
        set_store(&fleet, &garage).await?;
        // First install everywhere (through the store), not measured.
        seed += 1;
        push_all(
            &fleet,
            &uplink,
            fresh,
            &format!("fs{n}-warm"),
            seed,
            &[],
            plan,
        )
        .await?;
        for via in [Via::Direct, Via::Store] {
            let key = format!("fanout-{}-{n}", via.name());
            let extra: &[&str] = match via {
                Via::Direct => &["--direct"],
                Via::Store => &[],
            };
            for rep in 0..plan.reps {
                step!("{key}: rep {}/{}", rep + 1, plan.reps);
                seed += 1;
                let name = format!("fs{n}-{}-{rep}", via.name());
                let p = push_all(&fleet, &uplink, fresh, &name, seed, extra, plan).await?;
                let how = match via {
                    Via::Direct => "swarm update --direct",
                    Via::Store => "swarm update through Garage",
                };
                let row = report.row(
                    &key,
                    &format!("{how} to {n} worker(s), shaped uplink, until all serve"),
                    Unit::Seconds,
                );
                row.samples.push(p.wall);
                row.baselines = match via {
                    Via::Direct if n != first => vec![format!("fanout-direct-{first}")],
                    Via::Direct => Vec::new(),
                    Via::Store if n != first => {
                        vec![
                            format!("fanout-store-{first}"),
                            format!("fanout-direct-{n}"),
                        ]
                    }
                    Via::Store => vec![format!("fanout-direct-{n}")],
                };
                let row = report.row(
                    &format!("{key}-bytes"),
                    &format!("  bytes the master sent ({how}, {n} worker(s))"),
                    Unit::Bytes,
                );
                row.samples.push(p.sent as f64);
                row.baselines = vec!["fanout-release".into()];
                if let (Via::Direct, Some(size)) = (via, p.release_bytes) {
                    report
                        .row(
                            "fanout-release",
                            "one packed release of the fan-out tree (--direct's size_bytes)",
                            Unit::Bytes,
                        )
                        .samples
                        .push(size as f64);
                }
            }
        }
        drop(fleet);
        if !plan.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    drop(garage);
    drop(uplink);
    Ok(())
}

/// What one measured fan-out push gave.
struct Push {
    /// Seconds from the command's start until the last host served it.
    wall: f64,
    /// Bytes out of the master's side of the uplink.
    sent: u64,
    /// The packed release's size, as the CLI said.
    release_bytes: Option<u64>,
}

/// Generate a new tree and push it to every host of `fleet`.
async fn push_all(
    fleet: &Fleet,
    uplink: &Uplink,
    fresh: FreshTree<'_>,
    name: &str,
    seed: u64,
    extra: &[&str],
    plan: &Plan,
) -> anyhow::Result<Push> {
    let tree = fresh(name, seed)?;
    settle::settle().await;
    let before = uplink.tx_bytes().await?;
    let start = Instant::now();
    let out = fleet
        .update_with(None, &tree.root, plan.fanout_parallel, extra)
        .await?;
    let what = format!("fan-out push {name}");
    let last = fleet::all_serve(fleet, &out, &what, SETTLE_TIMEOUT).await?;
    let sent = uplink.tx_bytes().await?.saturating_sub(before);
    if plan.keep {
        // Every host's phases, for a look afterwards.
        let _ = std::fs::write(
            fleet.scratch().join(format!("{name}-{seed}.json")),
            out.raw.to_string(),
        );
    }
    let _ = std::fs::remove_dir_all(&tree.root);
    Ok(Push {
        wall: (last - start).as_secs_f64(),
        sent,
        release_bytes: out.size_bytes,
    })
}

/// `swarm store set` to `garage`, its key in a credentials file.
async fn set_store(fleet: &Fleet, garage: &Garage) -> anyhow::Result<()> {
    let creds = fleet.scratch().join("aws-credentials");
    garage
        .write_credentials(&creds)
        .with_context(|| format!("writing {}", creds.display()))?;
    let creds = creds.display().to_string();
    fleet
        .swarm_ok(&[
            "store",
            "set",
            &format!("s3://{BUCKET}/fleet"),
            "--endpoint",
            &garage.endpoint(),
            "--region",
            REGION,
            "--path-style",
            "--credentials-file",
            &creds,
        ])
        .await
}

/// The targets of the store fan-out: its bytes at most 1.1 releases, and
/// for more than one worker, faster than the direct push.
pub(crate) fn store_targets(report: &Report, targets: &mut Vec<(String, Target)>) {
    let release = report.median("fanout-release");
    for r in &report.rows {
        let Some(rest) = r.key.strip_prefix("fanout-store-") else {
            continue;
        };
        let target = if rest.ends_with("-bytes") {
            release.map(|one| Target {
                text: format!(
                    "≤ {BYTES_TARGET}× one release = {:.1} MiB",
                    BYTES_TARGET * one / (1024.0 * 1024.0)
                ),
                limit: BYTES_TARGET * one,
            })
        } else if rest == "1" {
            None
        } else {
            report
                .median(&format!("fanout-direct-{rest}"))
                .map(|direct| Target {
                    text: format!("< fanout-direct-{rest} = {direct:.2} s"),
                    limit: direct,
                })
        };
        if let Some(t) = target {
            targets.push((r.key.clone(), t));
        }
    }
}
