//! `swarm status`: each target's updater, agent, releases and certificate
//! expiry, asked concurrently.

use std::sync::Arc;

use pki::wire::{AgentHealth, Manifest, Releases, UpdaterHealth};
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

/// One host's row of `swarm status`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HostStatusRow {
    host: String,
    address: String,
    updater_reachable: bool,
    updater_version: Option<String>,
    updater_error: Option<String>,
    agent_healthy: bool,
    agent_error: Option<String>,
    active: Option<ReleaseBrief>,
    prev: Option<ReleaseBrief>,
    failed: usize,
    cert_days_left: i64,
    /// Why this host could not be asked at all (its task died).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl HostStatusRow {
    fn new(rec: &HostRecord) -> HostStatusRow {
        HostStatusRow {
            host: rec.host.to_string(),
            address: rec.updater_addr(),
            updater_reachable: false,
            updater_version: None,
            updater_error: None,
            agent_healthy: false,
            agent_error: None,
            active: None,
            prev: None,
            failed: 0,
            cert_days_left: clock::days_left(rec.cert_not_after()),
            error: None,
        }
    }

    /// The row of a host whose query never finished.
    fn lost(rec: &HostRecord, why: String) -> HostStatusRow {
        HostStatusRow {
            error: Some(why),
            ..HostStatusRow::new(rec)
        }
    }

    fn ok(&self) -> bool {
        self.updater_reachable && self.agent_healthy && self.error.is_none()
    }
}

async fn status_one(master: Arc<Master>, rec: HostRecord) -> HostStatusRow {
    let mut row = HostStatusRow::new(&rec);
    let agent = async {
        let client = master.agent_client(&rec)?;
        let health: AgentHealth =
            get_json(&master, &client, rec.agent_url("/health"), HEALTH_CAP).await?;
        if health.status == "ok" {
            Ok(())
        } else {
            Err(format!("agent reports {}", health.status))
        }
    };
    let updater = async {
        let client = master.updater_client(&rec, STATUS_TIMEOUT)?;
        let health: UpdaterHealth =
            get_json(&master, &client, rec.updater_url("/health"), HEALTH_CAP).await?;
        let releases: std::result::Result<Releases, String> =
            get_json(&master, &client, rec.updater_url("/releases"), RELEASES_CAP).await;
        Ok::<_, String>((health, releases))
    };
    let (agent, updater) = tokio::join!(agent, updater);
    match agent {
        Ok(()) => row.agent_healthy = true,
        Err(e) => row.agent_error = Some(e),
    }
    match updater {
        Ok((health, releases)) => {
            row.updater_reachable = true;
            row.updater_version = Some(health.version);
            match releases {
                Ok(r) => {
                    row.active = r.active.as_ref().map(ReleaseBrief::from);
                    row.prev = r.prev.as_ref().map(ReleaseBrief::from);
                    row.failed = r.failed.len();
                }
                Err(e) => row.updater_error = Some(format!("releases: {e}")),
            }
        }
        Err(e) => row.updater_error = Some(e),
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
    let master = Arc::new(Master::new(home.master_bundle()?)?);
    let rows = status_rows(hosts, |rec| status_one(master.clone(), rec))?;
    print_status(&rows, args.json)?;
    Ok(if rows.iter().all(HostStatusRow::ok) {
        0
    } else {
        EXIT_FAILED
    })
}

/// Ask every host at once with `task`; every host gets a row, an error
/// row when its task died.
fn status_rows<F, Fut>(hosts: Vec<HostRecord>, task: F) -> Result<Vec<HostStatusRow>>
where
    F: FnMut(HostRecord) -> Fut,
    Fut: std::future::Future<Output = HostStatusRow> + Send + 'static,
{
    let all = hosts.len();
    Ok(runtime()?.block_on(fan_out(hosts, all, task, HostStatusRow::lost, |_| {})))
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
        "ACTIVE",
        "PREV",
        "FAILED",
        "CERT DAYS",
        "DETAIL",
    ]);
    for r in rows {
        let updater = match (&r.error, r.updater_reachable) {
            (Some(_), _) => Cell::colored("error", Color::Red),
            (None, true) => Cell::colored(
                format!("ok {}", r.updater_version.as_deref().unwrap_or("")),
                Color::Green,
            ),
            (None, false) => Cell::colored("unreachable", Color::Red),
        };
        let agent = match (&r.error, r.agent_healthy) {
            (Some(_), _) => Cell::colored("error", Color::Red),
            (None, true) => Cell::colored("healthy", Color::Green),
            (None, false) => Cell::colored("unhealthy", Color::Red),
        };
        let detail = [
            r.error.as_deref(),
            r.updater_error.as_deref(),
            r.agent_error.as_deref(),
        ]
        .iter()
        .flatten()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ");
        t.row(vec![
            r.host.clone().into(),
            updater,
            agent,
            brief(&r.active).into(),
            brief(&r.prev).into(),
            r.failed.to_string().into(),
            r.cert_days_left.to_string().into(),
            detail.into(),
        ]);
    }
    output::table(&t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tests::record;

    /// Issue 9 #4: a host whose task panicked used to vanish from the
    /// table, and `status` exited 0.
    #[test]
    fn a_host_whose_query_panics_gets_an_error_row_and_fails_the_run() {
        let hosts = vec![record("w1"), record("w2")];
        let rows = status_rows(hosts, |rec| async move {
            if rec.host.as_str() == "w2" {
                panic!("w2 went wrong");
            }
            HostStatusRow {
                updater_reachable: true,
                agent_healthy: true,
                ..HostStatusRow::new(&rec)
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
