//! Staged rollouts (issue 13): the plan's waves pushed one after the other
//! ([`plan`]), each wave soaked ([`soak`]), a failure budget that halts the
//! rollout, `--revert-on-halt` ([`revert`]), `--pause-after-canary`, and
//! Ctrl-C.
//!
//! Invariants: a wave starts only when the one before it was pushed, soaked
//! and within budget; once the rollout halts, no further host is touched
//! (each gets a `skipped` row saying why); a revert goes through the
//! updater's probed `/rollback` and counts only when the host then runs the
//! very release it ran before the rollout; Ctrl-C lets the pushes in flight
//! finish (a second one quits at once), records everything and exits 130;
//! every target gets exactly one row, in wave order.

mod plan;
mod revert;
mod soak;

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use pki::wire::Releases;

use super::client::get_json;
use super::push::Pusher;
use super::report::{HostResult, RolloutDoc, SelfOutcome};
use super::said::RELEASES_CAP;
use super::short;
use crate::inventory::{HostRecord, Outcome};

pub(crate) use plan::{CanaryFrom, Interaction, Plan, PlanDoc, plan};

/// Exit code of a rollout stopped by Ctrl-C (the shell's 128 + SIGINT).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;
/// How long `--pause-after-canary` waits for an answer (then: no).
const PAUSE_LIMIT: Duration = Duration::from_secs(3600);
/// Limit of the `/releases` look before a push (`--revert-on-halt`).
const LOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the operator's terminal can be asked.
pub(crate) fn interaction() -> Interaction {
    Interaction {
        terminal: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
    }
}

/// A new rollout id: UTC time and our pid, e.g. `r20261201T233000Z-4242`.
pub(crate) fn new_id() -> String {
    let t = crate::clock::now();
    format!(
        "r{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        std::process::id()
    )
}

/// A host the rollout updated, and the release it ran before.
struct Touched {
    row: usize,
    rec: HostRecord,
    before: Option<String>,
}

/// Say `msg` on stderr unless the output is one JSON document.
fn say(json: bool, msg: &str) {
    if !json {
        eprintln!("{msg}");
    }
}

/// Run the staged rollout of `plan` with `pusher`: every target's row, in
/// wave order, and what the rollout did.
pub(crate) async fn run(pusher: &Pusher, plan: &Plan, id: &str) -> (Vec<HostResult>, RolloutDoc) {
    let stop = pusher.stop.clone();
    // Registered before the first push, so no Ctrl-C is missed.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        Ok(sigint) => {
            tokio::spawn(watch_ctrl_c(sigint, stop.clone(), pusher.json));
        }
        Err(e) => say(
            pusher.json,
            &format!("warning: cannot catch Ctrl-C ({e}); it will end swarm at once"),
        ),
    }
    let sha = pusher.release.info.release_id.clone();
    let n = plan.waves.len();
    let mut rows: Vec<HostResult> = Vec::new();
    let mut touched: Vec<Touched> = Vec::new();
    let mut halt: Option<String> = None;
    for (i, wave) in plan.waves.iter().enumerate() {
        let w = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if stop.load(Ordering::SeqCst) && halt.is_none() {
            halt = Some("interrupted (Ctrl-C)".to_owned());
        }
        if let Some(why) = &halt {
            for rec in wave {
                let mut r = HostResult::skipped(rec, format!("not pushed: {why}"));
                r.wave = Some(w);
                pusher.recorder.record(&mut r);
                rows.push(r);
            }
            continue;
        }
        let canary = if i == 0 && plan.canary.is_some() {
            " (canary)"
        } else {
            ""
        };
        let names: Vec<&str> = wave.iter().map(|h| h.host.as_str()).collect();
        say(
            pusher.json,
            &format!("wave {w}/{n}{canary}: {}", names.join(", ")),
        );
        let before = if plan.revert_on_halt {
            releases_before(pusher, wave).await
        } else {
            vec![None; wave.len()]
        };
        let mut results = pusher.wave(wave.clone(), Some(w)).await;
        let updated: Vec<usize> = (0..results.len())
            .filter(|&k| results[k].agent == Outcome::Updated)
            .collect();
        if !plan.soak.is_zero() && !updated.is_empty() && !stop.load(Ordering::SeqCst) {
            say(
                pusher.json,
                &format!(
                    "soaking wave {w} for {}s: {} host(s)",
                    plan.soak.as_secs(),
                    updated.len()
                ),
            );
            soak_wave(pusher, plan.soak, wave, &mut results, &updated).await;
        }
        for (k, rec) in updated.iter().map(|&k| (k, &wave[k])) {
            touched.push(Touched {
                row: rows.len() + k,
                rec: rec.clone(),
                before: before[k].clone(),
            });
        }
        rows.extend(results);
        if stop.load(Ordering::SeqCst) {
            halt = Some("interrupted (Ctrl-C)".to_owned());
            continue;
        }
        let failed: Vec<&HostResult> = rows.iter().filter(|r| failed(r)).collect();
        if failed.len() > plan.max_fail {
            let first = failed
                .first()
                .map(|r| format!("; first: {}: {}", r.host, r.detail))
                .unwrap_or_default();
            halt = Some(format!(
                "{} host(s) failed, more than --max-fail {}{first}",
                failed.len(),
                plan.max_fail
            ));
        } else if i == 0 && plan.canary.is_some() && plan.pause_after_canary && n > 1 {
            let rest: usize = plan.waves[1..].iter().map(Vec::len).sum();
            if !confirm(&rows, rest, n - 1, &stop).await {
                halt = Some(if stop.load(Ordering::SeqCst) {
                    "interrupted (Ctrl-C)".to_owned()
                } else {
                    "the operator stopped it after the canary wave".to_owned()
                });
            }
        }
    }
    let interrupted = stop.load(Ordering::SeqCst);
    if halt.is_some() && !interrupted && plan.revert_on_halt && !touched.is_empty() {
        say(
            pusher.json,
            &format!(
                "rollout halted: reverting {} host(s) to the release each ran before",
                touched.len()
            ),
        );
        let reverts = touched.iter().map(|t| {
            let r = rows[t.row].clone();
            revert::revert(pusher, &t.rec, t.before.as_deref(), r, &sha)
        });
        // At most --parallel at once, like the pushes; in order.
        let done: Vec<HostResult> = futures_util::stream::iter(reverts)
            .buffered(pusher.parallel.max(1))
            .collect()
            .await;
        for (t, r) in touched.iter().zip(done) {
            rows[t.row] = r;
        }
    }
    let count = |o: &[Outcome]| rows.iter().filter(|r| o.contains(&r.agent)).count();
    let doc = RolloutDoc {
        id: Some(id.to_owned()),
        waves: plan.wave_names(),
        canary: plan.canary,
        soak_secs: plan.soak.as_secs_f64(),
        max_fail: plan.max_fail,
        revert_on_halt: plan.revert_on_halt,
        halted: halt.is_some(),
        reason: halt,
        interrupted,
        updated: rows
            .iter()
            .filter(|r| !failed(r) && matches!(r.agent, Outcome::Updated | Outcome::Unchanged))
            .count(),
        failed: rows.iter().filter(|r| failed(r)).count(),
        skipped: count(&[Outcome::Skipped]),
        reverted: count(&[Outcome::Reverted]),
        staged: true,
    };
    (rows, doc)
}

/// Whether a row counts against the failure budget.
fn failed(r: &HostResult) -> bool {
    matches!(r.agent, Outcome::Error | Outcome::RolledBack) || r.self_update == SelfOutcome::Failed
}

/// The release each host of `wave` runs now (before its push), by sha256;
/// `None` where it runs none or cannot say.
async fn releases_before(pusher: &Pusher, wave: &[HostRecord]) -> Vec<Option<String>> {
    let looks = wave.iter().map(|rec| async move {
        let client = pusher.master.updater_client(rec, LOOK_TIMEOUT).ok()?;
        let r: Releases = get_json(
            &pusher.master,
            &client,
            rec.updater_url("/releases"),
            RELEASES_CAP,
        )
        .await
        .ok()?;
        r.active.map(|m| m.id().to_owned())
    });
    futures_util::stream::iter(looks)
        .buffered(pusher.parallel.max(1))
        .collect()
        .await
}

/// Soak the hosts `updated` of `wave` at once; a host that fails its soak
/// becomes an error row (recorded at once).
async fn soak_wave(
    pusher: &Pusher,
    soak_for: Duration,
    wave: &[HostRecord],
    results: &mut [HostResult],
    updated: &[usize],
) {
    let sha = &pusher.release.info.release_id;
    let stop = &pusher.stop;
    let watches = updated
        .iter()
        .map(|&k| soak::soak(&pusher.master, &wave[k], sha, soak_for, stop));
    let verdicts = join_all(watches).await;
    for (&k, verdict) in updated.iter().zip(verdicts) {
        let r = &mut results[k];
        match verdict {
            soak::Soaked::Healthy => {
                r.detail = format!("{}; soaked {}s", r.detail, soak_for.as_secs());
            }
            soak::Soaked::Interrupted => {
                r.detail = format!("{}; soak interrupted (Ctrl-C)", r.detail);
            }
            soak::Soaked::Failed(why) => {
                r.agent = Outcome::Error;
                r.detail = format!("updated to {}, then failed its soak: {why}", short(sha));
            }
        }
        pusher.recorder.record(r);
    }
}

/// `--pause-after-canary`: show the canary wave's outcome and ask on the
/// terminal whether to go on. No answer within [`PAUSE_LIMIT`], or Ctrl-C,
/// is a no.
async fn confirm(rows: &[HostResult], hosts: usize, waves: usize, stop: &AtomicBool) -> bool {
    eprintln!("canary wave done:");
    for r in rows {
        eprintln!("  {}  {}  {}", r.host, r.agent.as_str(), r.detail);
    }
    eprint!("go on with the {hosts} remaining host(s) in {waves} wave(s)? [y/N] ");
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: a read of stdin cannot be cancelled, and must not
    // hold the runtime's shutdown.
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line);
        let _ = tx.send(read.map(|_| line));
    });
    let interrupted = async {
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        answer = tokio::time::timeout(PAUSE_LIMIT, rx) => match answer {
            Ok(Ok(Ok(line))) => matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"),
            Ok(_) => false,
            Err(_) => {
                eprintln!("no answer within {}s: stopping", PAUSE_LIMIT.as_secs());
                false
            }
        },
        () = interrupted => false,
    }
}

/// Ctrl-C during a rollout: the first sets `stop` (the pushes in flight
/// finish, no new one starts), a second quits at once.
async fn watch_ctrl_c(mut sigint: tokio::signal::unix::Signal, stop: Arc<AtomicBool>, json: bool) {
    if sigint.recv().await.is_none() {
        return;
    }
    stop.store(true, Ordering::SeqCst);
    say(
        json,
        "interrupted: letting the pushes in flight finish, then stopping (Ctrl-C again quits at once)",
    );
    if sigint.recv().await.is_some() {
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    }
}
