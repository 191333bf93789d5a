//! Delivering the certificate deny list (issue 15): before any other
//! request of a command that contacts an updater (update, rollback,
//! status, restart, renew, verify, releases, logs, history --worker, all
//! through `Master::ready_client`), a host that holds an older
//! version of the list than the inventory gets the whole list
//! (`POST /deny`, [`deliver`]); `swarm decommission` and `swarm operator
//! remove` push it to every active host at once ([`deliver_all`]), and a
//! host that was unreachable then gets it on its next contact.
//!
//! Invariant: a host's `deny_version` is raised only after its updater
//! answered 200 to that very list.

use std::path::PathBuf;
use std::sync::Arc;

use pki::DenyBody;

use super::client::{Master, STATUS_TIMEOUT};
use super::said;
use crate::enroll::{DenyDelivery, DenyPending};
use crate::error::Result;
use crate::home::Home;
use crate::inventory::{HostRecord, Inventory};

/// The most a `/deny` answer may be.
const ANSWER_CAP: usize = 64 * 1024;

/// The inventory's deny list, read once per command.
#[derive(Debug)]
pub(crate) struct DenySync {
    db: PathBuf,
    body: DenyBody,
}

impl DenySync {
    pub(crate) fn load(home: &Home) -> Result<DenySync> {
        let (version, denied) = home.inventory()?.denied()?;
        Ok(DenySync {
            db: home.db_path(),
            body: DenyBody {
                version,
                fingerprints: denied.into_iter().map(|d| d.fingerprint).collect(),
            },
        })
    }
}

/// Give `rec`'s updater the deny list if it may not hold this version yet.
/// An updater that has no `/deny` (older than issue 15) is left as it is
/// and asked again next time; any other failure is the host's error.
pub(super) async fn deliver(
    master: &Master,
    client: &reqwest::Client,
    rec: &HostRecord,
) -> std::result::Result<(), String> {
    let Some(sync) = master.deny() else {
        return Ok(());
    };
    if sync.body.version == 0 {
        return Ok(());
    }
    let db = sync.db.clone();
    let host = rec.host.clone();
    let held = tokio::task::spawn_blocking(move || Inventory::open(&db)?.deny_version(&host))
        .await
        .map_err(|e| format!("reading the inventory: {e}"))?
        .map_err(|e| e.to_string())?;
    if held >= sync.body.version {
        return Ok(());
    }
    let resp = client
        .post(rec.updater_url("/deny"))
        .json(&sync.body)
        .send()
        .await
        .map_err(|e| {
            format!(
                "deny list not delivered: {}",
                master.describe(&e, STATUS_TIMEOUT)
            )
        })?;
    let (status, body) = said::read_answer(resp, ANSWER_CAP).await?;
    if status == reqwest::StatusCode::NOT_FOUND {
        // Left pending: `swarm list --denied` and the host's deny_version say so.
        return Ok(());
    }
    if !status.is_success() {
        let msg = String::from_utf8_lossy(&body);
        return Err(format!(
            "deny list not delivered: HTTP {status}: {}",
            said::line(msg.trim(), 200)
        ));
    }
    let db = sync.db.clone();
    let host = rec.host.clone();
    let version = sync.body.version;
    tokio::task::spawn_blocking(move || Inventory::open(&db)?.set_deny_version(&host, version))
        .await
        .map_err(|e| format!("recording the delivery: {e}"))?
        .map_err(|e| e.to_string())
}

/// Push the deny list to every active host now (at most `parallel` at once).
pub(crate) fn deliver_all(home: &Home) -> Result<DenyDelivery> {
    let master = Arc::new(Master::for_home(home)?);
    let hosts = home.inventory()?.active_hosts()?;
    let rt = super::runtime()?;
    let results = rt.block_on(super::fan_out(
        hosts,
        16,
        |rec| {
            let master = master.clone();
            async move {
                let r = match master.updater_client(&rec, STATUS_TIMEOUT) {
                    Ok(client) => deliver(&master, &client, &rec).await,
                    Err(e) => Err(e),
                };
                (rec.host.to_string(), r)
            }
        },
        |rec, why| (rec.host.to_string(), Err(why)),
        |_| {},
    ));
    let mut out = DenyDelivery::default();
    for (host, r) in results {
        match r {
            Ok(()) => out.delivered.push(host),
            Err(error) => out.pending.push(DenyPending { host, error }),
        }
    }
    Ok(out)
}
