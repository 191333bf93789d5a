//! `swarm releases --host H`: the releases a host keeps, newest first
//! (`GET /releases`'s `kept`, issue 12), for `swarm rollback --to ID`.

use pki::HostName;
use pki::wire::Releases;

use super::client::{Master, STATUS_TIMEOUT, get_json};
use super::said::RELEASES_CAP;
use super::{resolve_host, runtime, short};
use crate::cli::ReleasesArgs;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::output::{self, Table};

/// `swarm releases`.
pub(crate) fn releases(home: &Home, args: &ReleasesArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let rec = resolve_host(&inv, &HostName::new(args.host.trim())?)?;
    let master = Master::for_home(home)?;
    let got: std::result::Result<Releases, String> = runtime()?.block_on(async {
        let client = master.ready_client(&rec, STATUS_TIMEOUT).await?;
        get_json(&master, &client, rec.updater_url("/releases"), RELEASES_CAP).await
    });
    let r = got.map_err(|e| Error::Other(format!("{}: {e}", rec.host)))?;
    if args.json {
        output::json(&r)?;
        return Ok(0);
    }
    let active = r.active.as_ref().map(|m| m.id().to_owned());
    let prev = r.prev.as_ref().map(|m| m.id().to_owned());
    let mut t = Table::new(vec!["RELEASE", "SLOT", "PUSHED", "BY", "GIT", "FILES"]);
    for m in &r.kept {
        let slot = if Some(m.id()) == active.as_deref() {
            "active"
        } else if Some(m.id()) == prev.as_deref() {
            "prev"
        } else {
            "kept"
        };
        t.row(vec![
            short(m.id()).to_owned().into(),
            slot.into(),
            m.pushed_at.clone().into(),
            m.pushed_by.clone().into(),
            m.git_commit.as_deref().map_or("-", short).to_owned().into(),
            m.files.to_string().into(),
        ]);
    }
    output::table(&t)?;
    Ok(0)
}
