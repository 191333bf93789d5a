//! The soak: after a wave's pushes return, watch each host it updated
//! through its updater's `/health` (issue 11's `agent` object) until the
//! soak ends: the agent must stay healthy, its `restarts` must not grow and
//! the pushed release must still be the active one at the end.
//!
//! Invariants: every poll has a timeout and the whole watch a deadline
//! (the soak, plus a bounded grace for a first health verdict); an updater
//! that stops answering fails the host after a few polls, it never holds
//! the wave longer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pki::wire::{AgentState, Releases, UpdaterHealth};

use super::super::client::{Master, get_json};
use super::super::said::{HEALTH_CAP, RELEASES_CAP};
use super::super::short;
use crate::inventory::HostRecord;

/// Time between two looks at a host.
const POLL: Duration = Duration::from_millis(250);
/// One look's limit.
const POLL_TIMEOUT: Duration = Duration::from_secs(3);
/// Failed looks in a row that fail the host.
const SILENT_POLLS: u32 = 4;
/// How long past the soak to wait for the updater's first health verdict
/// on the new agent (it probes every few seconds).
const VERDICT_GRACE: Duration = Duration::from_secs(10);

/// How a host's soak ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Soaked {
    Healthy,
    Failed(String),
    /// Ctrl-C: the watch stopped early.
    Interrupted,
}

/// Watch `rec` for `soak`; `sha` is the release pushed to it.
pub(super) async fn soak(
    master: &Master,
    rec: &HostRecord,
    sha: &str,
    soak: Duration,
    stop: &AtomicBool,
) -> Soaked {
    let client = match master.updater_client(rec, POLL_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return Soaked::Failed(e),
    };
    let started = Instant::now();
    let end = started + soak;
    let mut silent = 0u32;
    let mut seen_healthy = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Soaked::Interrupted;
        }
        let now = Instant::now();
        if now >= end && seen_healthy {
            break;
        }
        if now >= end + VERDICT_GRACE {
            return Soaked::Failed(format!(
                "its updater never reported the agent healthy within {}s",
                (soak + VERDICT_GRACE).as_secs()
            ));
        }
        match get_json::<UpdaterHealth>(master, &client, rec.updater_url("/health"), HEALTH_CAP)
            .await
        {
            Ok(h) => {
                silent = 0;
                let Some(agent) = h.agent else {
                    return Soaked::Failed(
                        "its updater does not report its agent (an updater from before supervision): update it with --include-self, or drop --soak".to_owned(),
                    );
                };
                let at = secs(started.elapsed());
                // Restarts count from the moment the release went live.
                if agent.restarts > 0 {
                    // Already clean: `said` cleans the `agent` object.
                    let how = agent.last_exit.as_deref().unwrap_or("exited");
                    return Soaked::Failed(format!(
                        "the agent restarted {} time(s) within {at} of the soak (last: {how})",
                        agent.restarts
                    ));
                }
                match agent.state {
                    AgentState::CrashLoop | AgentState::Stopped | AgentState::Backoff => {
                        return Soaked::Failed(format!(
                            "the agent is {} after {at} of the soak",
                            state_name(agent.state)
                        ));
                    }
                    AgentState::Starting | AgentState::Running => {}
                }
                match agent.healthy {
                    Some(false) => {
                        return Soaked::Failed(format!(
                            "the agent turned unhealthy after {at} of the soak"
                        ));
                    }
                    Some(true) => seen_healthy = true,
                    None => {}
                }
            }
            Err(e) => {
                silent += 1;
                if silent >= SILENT_POLLS {
                    return Soaked::Failed(format!(
                        "its updater stopped answering during the soak: {e}"
                    ));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    // An updater that reverted by itself (a crash loop) runs another release.
    match get_json::<Releases>(master, &client, rec.updater_url("/releases"), RELEASES_CAP).await {
        Ok(r) => match r.active.map(|m| m.id().to_owned()) {
            Some(active) if active == sha => Soaked::Healthy,
            Some(active) => Soaked::Failed(format!(
                "it runs release {} now, not the pushed {} (its updater reverted it)",
                short(&active),
                short(sha)
            )),
            None => Soaked::Failed("it reports no active release after the soak".to_owned()),
        },
        Err(e) => Soaked::Failed(format!("cannot read its releases after the soak: {e}")),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn state_name(s: AgentState) -> &'static str {
    match s {
        AgentState::Starting => "starting",
        AgentState::Running => "running",
        AgentState::Backoff => "restarting (backoff)",
        AgentState::CrashLoop => "in a crash loop",
        AgentState::Stopped => "stopped",
    }
}
