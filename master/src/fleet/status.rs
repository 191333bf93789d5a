//! `swarm status`: each target as its updater sees it (the supervised
//! agent's state, health and restarts, the releases) against the release
//! the inventory says it should run (drift), and certificate expiry; every
//! host asked concurrently, one connection each.

use std::collections::HashMap;
use std::sync::Arc;

use pki::wire::{AgentState, Manifest, Releases, SupervisedAgent, UpdaterHealth};
use serde::Serialize;

use super::client::{Master, STATUS_TIMEOUT, get_json};
use super::said::{HEALTH_CAP, RELEASES_CAP};
use super::{fan_out, resolve, runtime, short};
use crate::cli::StatusArgs;
use crate::clock;
use crate::error::{EXIT_FAILED, Result};
use crate::home::Home;
use crate::inventory::HostRecord;
use crate::output::{self, Cell, Color, Table, outln};

/// A release as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ReleaseBrief {
    sha256: String,
    pushed_at: String,
    git_commit: Option<String>,
}

impl From<&Manifest> for ReleaseBrief {
    fn from(m: &Manifest) -> Self {
        ReleaseBrief {
            sha256: m.sha256.clone(),
            pushed_at: clock::to_seconds(&m.pushed_at),
            git_commit: m.git_commit.clone(),
        }
    }
}

/// Whether the host's updater answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum UpdaterVerdict {
    Ok,
    Unreachable,
}

/// The agent as its updater sees it, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum AgentVerdict {
    /// Running, and the updater's own probe of its `health_url` passes.
    Healthy,
    /// Running (or being restarted) and failing its probe.
    Unhealthy,
    /// Exited too often: the updater stopped restarting it.
    CrashLoop,
    /// Not running and not to be restarted (no release yet, or stopped).
    Stopped,
    /// The updater could not be asked, predates supervision, or has not
    /// probed the agent yet.
    Unknown,
}

impl AgentVerdict {
    fn of(agent: &SupervisedAgent) -> AgentVerdict {
        match (agent.state, agent.healthy) {
            (AgentState::CrashLoop, _) => AgentVerdict::CrashLoop,
            (AgentState::Stopped, _) => AgentVerdict::Stopped,
            (AgentState::Backoff, _) | (_, Some(false)) => AgentVerdict::Unhealthy,
            (_, Some(true)) => AgentVerdict::Healthy,
            (_, None) => AgentVerdict::Unknown,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            AgentVerdict::Healthy => "healthy",
            AgentVerdict::Unhealthy => "unhealthy",
            AgentVerdict::CrashLoop => "crash-loop",
            AgentVerdict::Stopped => "stopped",
            AgentVerdict::Unknown => "unknown",
        }
    }

    fn color(self) -> Color {
        match self {
            AgentVerdict::Healthy => Color::Green,
            AgentVerdict::Unknown | AgentVerdict::Stopped => Color::Yellow,
            AgentVerdict::Unhealthy | AgentVerdict::CrashLoop => Color::Red,
        }
    }
}

/// One host's row of `swarm status`: everything comes from its updater
/// (the master never probes an agent itself: the release's own
/// `health_url` may be loopback-only or plain HTTP) and the inventory
/// (the desired release).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HostStatusRow {
    host: String,
    address: String,
    updater: UpdaterVerdict,
    agent: AgentVerdict,
    /// The supervisor's own state (`running`, `backoff`, …), when known.
    agent_state: Option<AgentState>,
    /// The agent's pid, when running.
    pid: Option<u32>,
    /// Unexpected exits the updater restarted since the release went live.
    restarts: Option<u32>,
    /// How the last unexpected exit ended.
    last_exit: Option<String>,
    /// The active release's sha256.
    release: Option<String>,
    /// The release the inventory says this host should run.
    desired: Option<String>,
    /// The active release differs from the desired one.
    drift: bool,
    /// The operation the updater is running now, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    busy: Option<String>,
    updater_reachable: bool,
    updater_version: Option<String>,
    updater_error: Option<String>,
    agent_healthy: bool,
    active: Option<ReleaseBrief>,
    prev: Option<ReleaseBrief>,
    failed: usize,
    cert_days_left: i64,
    /// The same, under the name `swarm list --json` uses (issue 15).
    expires_in_days: i64,
    /// Why this host could not be asked at all (its task died).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl HostStatusRow {
    fn new(rec: &HostRecord, desired: Option<String>) -> HostStatusRow {
        HostStatusRow {
            host: rec.host.to_string(),
            address: rec.updater_addr(),
            updater: UpdaterVerdict::Unreachable,
            agent: AgentVerdict::Unknown,
            agent_state: None,
            pid: None,
            restarts: None,
            last_exit: None,
            release: None,
            desired,
            drift: false,
            busy: None,
            updater_reachable: false,
            updater_version: None,
            updater_error: None,
            agent_healthy: false,
            active: None,
            prev: None,
            failed: 0,
            cert_days_left: clock::days_left(rec.cert_not_after()),
            expires_in_days: clock::days_left(rec.cert_not_after()),
            error: None,
        }
    }

    /// The row of a host whose query never finished.
    fn lost(rec: &HostRecord, why: String) -> HostStatusRow {
        HostStatusRow {
            error: Some(why),
            ..HostStatusRow::new(rec, None)
        }
    }

    fn ok(&self) -> bool {
        self.updater == UpdaterVerdict::Ok
            && self.agent == AgentVerdict::Healthy
            && !self.drift
            && self.error.is_none()
    }

    /// Fill in what the updater said about itself and its agent.
    fn health(&mut self, health: UpdaterHealth) {
        self.updater = UpdaterVerdict::Ok;
        self.updater_reachable = true;
        self.updater_version = Some(health.version);
        self.busy = health.busy;
        if let Some(a) = health.agent {
            self.agent = AgentVerdict::of(&a);
            self.agent_healthy = self.agent == AgentVerdict::Healthy;
            self.agent_state = Some(a.state);
            self.pid = a.pid;
            self.restarts = Some(a.restarts);
            self.last_exit = a.last_exit;
        }
    }

    /// Fill in the releases, and whether the active one is the desired one.
    fn releases(&mut self, r: Releases) {
        self.active = r.active.as_ref().map(ReleaseBrief::from);
        self.prev = r.prev.as_ref().map(ReleaseBrief::from);
        self.failed = r.failed.len();
        self.release = r.active.map(|m| m.id().to_owned());
        self.drift = self
            .desired
            .as_ref()
            .is_some_and(|want| self.release.as_ref() != Some(want));
    }

    /// What the DETAIL column says.
    fn detail(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.error.clone());
        parts.extend(self.updater_error.clone());
        if let Some(b) = &self.busy {
            parts.push(format!("{b} in progress"));
        }
        match self.agent {
            AgentVerdict::CrashLoop => parts.push(
                "restarting stopped: `swarm restart`, an update or a rollback starts it again"
                    .to_owned(),
            ),
            AgentVerdict::Unknown if self.updater == UpdaterVerdict::Ok => {
                parts.push(match self.agent_state {
                    None => "the updater does not report its agent (an older updater)".to_owned(),
                    Some(_) => "not probed yet".to_owned(),
                })
            }
            _ => {}
        }
        if let Some(e) = &self.last_exit
            && self.agent != AgentVerdict::Healthy
        {
            parts.push(format!("last exit: {e}"));
        }
        if self.expires_in_days < 30 {
            parts.push(if self.expires_in_days < 0 {
                "certificates expired: `swarm renew --host H` cannot reach it; re-enroll".to_owned()
            } else {
                format!(
                    "certificates expire in {} days: `swarm renew --host H`",
                    self.expires_in_days
                )
            });
        }
        if self.drift {
            parts.push(match &self.desired {
                Some(d) => format!(
                    "drift: should run {} (`swarm update` of that tree converges it)",
                    short(d)
                ),
                None => "drift".to_owned(),
            });
        }
        parts.join("; ")
    }
}

/// Ask one host's updater (one connection: `/health`, then `/releases`).
async fn status_one(
    master: Arc<Master>,
    rec: HostRecord,
    desired: Option<String>,
) -> HostStatusRow {
    let mut row = HostStatusRow::new(&rec, desired);
    let client = match master.ready_client(&rec, STATUS_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            row.updater_error = Some(e);
            return row;
        }
    };
    match get_json::<UpdaterHealth>(&master, &client, rec.updater_url("/health"), HEALTH_CAP).await
    {
        Ok(h) => row.health(h),
        Err(e) => {
            row.updater_error = Some(e);
            return row;
        }
    }
    match get_json::<Releases>(&master, &client, rec.updater_url("/releases"), RELEASES_CAP).await {
        Ok(r) => row.releases(r),
        Err(e) => row.updater_error = Some(format!("releases: {e}")),
    }
    row
}

fn brief(r: &Option<ReleaseBrief>) -> String {
    match r {
        Some(r) => format!("{} {}", short(&r.sha256), r.pushed_at),
        None => "-".to_owned(),
    }
}

/// `swarm status`.
pub(crate) fn status(home: &Home, args: &StatusArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let hosts = resolve(&inv, &args.targets)?;
    let mut desired = HashMap::new();
    for h in &hosts {
        desired.insert(h.host.clone(), inv.desired_release(&h.host, h.enrolled_at)?);
    }
    drop(inv);
    let master = Arc::new(Master::for_home(home)?);
    let rows = status_rows(hosts, usize::from(args.parallel), |rec| {
        let want = desired.get(&rec.host).cloned().flatten();
        status_one(master.clone(), rec, want)
    })?;
    print_status(&rows, args.json)?;
    Ok(if rows.iter().all(HostStatusRow::ok) {
        0
    } else {
        EXIT_FAILED
    })
}

/// Ask every host with `task`, at most `parallel` at once; every host
/// gets a row, an error row when its task died.
fn status_rows<F, Fut>(
    hosts: Vec<HostRecord>,
    parallel: usize,
    task: F,
) -> Result<Vec<HostStatusRow>>
where
    F: FnMut(HostRecord) -> Fut,
    Fut: std::future::Future<Output = HostStatusRow> + Send + 'static,
{
    Ok(runtime()?.block_on(fan_out(hosts, parallel, task, HostStatusRow::lost, |_| {})))
}

#[derive(Serialize)]
struct StatusDoc<'a> {
    ok: bool,
    hosts: &'a [HostStatusRow],
}

fn print_status(rows: &[HostStatusRow], json: bool) -> Result<()> {
    if json {
        return output::json(&StatusDoc {
            ok: rows.iter().all(HostStatusRow::ok),
            hosts: rows,
        });
    }
    if rows.is_empty() {
        return outln!("no active hosts: enroll one with `swarm enroll`");
    }
    let mut t = Table::new(vec![
        "HOST",
        "UPDATER",
        "AGENT",
        "RESTARTS",
        "RELEASE",
        "DESIRED",
        "DRIFT",
        "CERT DAYS",
        "DETAIL",
    ]);
    for r in rows {
        let updater = match (&r.error, r.updater) {
            (Some(_), _) => Cell::colored("error", Color::Red),
            (None, UpdaterVerdict::Ok) => Cell::colored(
                format!("ok {}", r.updater_version.as_deref().unwrap_or("")),
                Color::Green,
            ),
            (None, UpdaterVerdict::Unreachable) => Cell::colored("unreachable", Color::Red),
        };
        let restarts = match r.restarts {
            Some(0) => Cell::from("0"),
            Some(n) => Cell::colored(n.to_string(), Color::Yellow),
            None => Cell::from("-"),
        };
        let drift = match (r.drift, r.updater) {
            (true, _) => Cell::colored("yes", Color::Yellow),
            (false, UpdaterVerdict::Ok) => Cell::from("no"),
            (false, UpdaterVerdict::Unreachable) => Cell::from("-"),
        };
        t.row(vec![
            r.host.clone().into(),
            updater,
            Cell::colored(r.agent.as_str(), r.agent.color()),
            restarts,
            brief(&r.active).into(),
            r.desired.as_deref().map(short).unwrap_or("-").into(),
            drift,
            output::expiry_cell(r.cert_days_left),
            r.detail().into(),
        ]);
    }
    output::table(&t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tests::record;

    /// Issue 15: DETAIL warns under 30 days, says so once expired, and is
    /// silent for a fresh certificate; JSON carries `expires_in_days`.
    #[test]
    fn detail_warns_of_certificates_expiring_within_30_days() {
        let mut rec = record("w1");
        let now = crate::clock::now();
        for (days, warns) in [(400, None), (10, Some("expire in")), (-2, Some("expired"))] {
            rec.agent_not_after = now + time::Duration::days(days) + time::Duration::hours(1);
            rec.updater_not_after = Some(rec.agent_not_after);
            let row = HostStatusRow::new(&rec, None);
            let json = serde_json::to_value(&row).unwrap();
            assert_eq!(json["expires_in_days"], json["cert_days_left"]);
            let detail = row.detail();
            match warns {
                None => assert!(!detail.contains("expire"), "{days}: {detail}"),
                Some(w) => assert!(detail.contains(w), "{days}: {detail}"),
            }
        }
    }

    /// Issue 9 #4: a host whose task panicked used to vanish from the
    /// table, and `status` exited 0.
    #[test]
    fn a_host_whose_query_panics_gets_an_error_row_and_fails_the_run() {
        let hosts = vec![record("w1"), record("w2")];
        let rows = status_rows(hosts, 2, |rec| async move {
            if rec.host.as_str() == "w2" {
                panic!("w2 went wrong");
            }
            HostStatusRow {
                updater: UpdaterVerdict::Ok,
                agent: AgentVerdict::Healthy,
                ..HostStatusRow::new(&rec, None)
            }
        })
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].ok());
        assert_eq!(rows[1].host, "w2");
        assert!(!rows[1].ok());
        let why = rows[1].error.as_deref().unwrap();
        assert!(why.contains("panicked: w2 went wrong"), "{why}");
        assert!(!rows.iter().all(HostStatusRow::ok), "exit code must say 1");
    }
}
