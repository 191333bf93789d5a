//! `swarm operator add|list|remove` and `swarm list --denied` (issue 15):
//! named operators hold the master's role (CN `master`) and carry their
//! name in a `swarm:operator:NAME` URI SAN, so the updaters' journals and
//! manifests say who acted; removing one denies its certificate fleet-wide.

use std::path::Path;

use pki::{BundleKind, LeafSpec, OperatorName};
use serde::Serialize;

use super::place::{Cleanup, place, sync_dir};
use super::{create_parents, ensure_new, stage_bundle};
use crate::clock::{self, whole_seconds};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::{Denied, OperatorRecord};
use crate::output::{self, Cell, Color, Table, outln};

fn operator_name(name: &str) -> Result<OperatorName> {
    OperatorName::new(name.trim()).map_err(|e| Error::usage(e.to_string()))
}

#[derive(Serialize)]
struct AddDoc {
    operator: String,
    dir: std::path::PathBuf,
    cn: &'static str,
    uri: String,
    fingerprint: String,
    not_after: String,
}

/// `swarm operator add NAME --out-dir DIR`.
pub(crate) fn operator_add(home: &Home, name: &str, out_dir: &Path, json: bool) -> Result<()> {
    let name = operator_name(name)?;
    let out_dir = std::path::absolute(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let ca = home.ca()?;
    let mut inv = home.inventory()?;
    if inv.active_operator(&name)?.is_some() {
        return Err(Error::usage(format!(
            "operator {name} already exists: pick another name, or `swarm operator remove {name}` first"
        )));
    }
    ensure_new(&out_dir)?;
    let leaf = ca.issue(&LeafSpec::operator(&name))?;
    let cleanup = Cleanup::new();
    create_parents(&out_dir, &cleanup)?;
    let tmp = stage_bundle(&out_dir, BundleKind::Master, &ca, &leaf, &cleanup, None)?;
    let not_after = whole_seconds(leaf.not_after);
    inv.insert_operator_with(&name, leaf.fingerprint, not_after, || {
        place(&tmp, &out_dir, &cleanup)?;
        if let Some(parent) = out_dir.parent() {
            sync_dir(parent);
        }
        Ok(())
    })?;
    cleanup.disarm();
    let doc = AddDoc {
        operator: name.to_string(),
        dir: out_dir,
        cn: pki::identity::MASTER_CN,
        uri: name.uri(),
        fingerprint: leaf.fingerprint.to_string(),
        not_after: clock::rfc3339(not_after),
    };
    if json {
        return output::json(&doc);
    }
    outln!(
        "operator {}: bundle in {} (CN master, {}), sha256 {}, valid until {}",
        doc.operator,
        doc.dir.display(),
        doc.uri,
        doc.fingerprint,
        doc.not_after
    )?;
    outln!(
        "hand it over: swarm --home H with this bundle as H/master acts as operator:{}",
        doc.operator
    )
}

#[derive(Serialize)]
struct ListDoc<'a> {
    operators: &'a [OperatorRecord],
}

/// `swarm operator list`.
pub(crate) fn operator_list(home: &Home, json: bool) -> Result<()> {
    let ops = home.inventory()?.operators()?;
    if json {
        return output::json(&ListDoc { operators: &ops });
    }
    if ops.is_empty() {
        return outln!("no operators yet: swarm operator add NAME --out-dir DIR");
    }
    let mut t = Table::new(vec![
        "OPERATOR",
        "FINGERPRINT",
        "STATUS",
        "ISSUED",
        "CERT DAYS",
    ]);
    for o in &ops {
        let status = if o.status == "active" {
            Cell::colored("active", Color::Green)
        } else {
            Cell::colored("removed", Color::Dim)
        };
        t.row(vec![
            o.name.to_string().into(),
            o.fingerprint
                .get(..12)
                .unwrap_or_default()
                .to_owned()
                .into(),
            status,
            clock::rfc3339(o.issued_at).into(),
            output::expiry_cell(clock::days_left(o.not_after)),
        ]);
    }
    output::table(&t)
}

#[derive(Serialize)]
struct RemoveDoc {
    operator: String,
    removed: bool,
    denied: String,
    #[serde(flatten)]
    delivery: DenyDelivery,
}

/// Where a deny list went: the hosts that hold it now, and those that get
/// it on their next contact (update, rollback, status, restart).
#[derive(Debug, Default, Serialize)]
pub(crate) struct DenyDelivery {
    pub(crate) delivered: Vec<String>,
    pub(crate) pending: Vec<DenyPending>,
}

#[derive(Debug, Serialize)]
pub(crate) struct DenyPending {
    pub(crate) host: String,
    pub(crate) error: String,
}

impl DenyDelivery {
    pub(super) fn print_lines(&self) -> Result<()> {
        outln!(
            "deny list delivered to {} host(s){}",
            self.delivered.len(),
            if self.delivered.is_empty() {
                String::new()
            } else {
                format!(": {}", self.delivered.join(", "))
            }
        )?;
        for p in &self.pending {
            outln!(
                "  {}: not delivered yet ({}); it gets the list on its next contact",
                p.host,
                p.error
            )?;
        }
        Ok(())
    }
}

/// `swarm operator remove NAME`: mark it removed, deny its certificate and
/// push the deny list (`deliver`) to every active host.
pub(crate) fn operator_remove(
    home: &Home,
    name: &str,
    json: bool,
    deliver: impl FnOnce(&Home) -> Result<DenyDelivery>,
) -> Result<u8> {
    let name = operator_name(name)?;
    let mut inv = home.inventory()?;
    let Some(rec) = inv.remove_operator(&name)? else {
        return Err(Error::usage(format!(
            "operator {name} is not active (see `swarm operator list`)"
        )));
    };
    drop(inv);
    let doc = RemoveDoc {
        operator: name.to_string(),
        removed: true,
        denied: rec.fingerprint,
        delivery: deliver(home)?,
    };
    if json {
        output::json(&doc)?;
    } else {
        outln!(
            "operator {}: removed, certificate {} denied",
            doc.operator,
            doc.denied
        )?;
        doc.delivery.print_lines()?;
    }
    Ok(0)
}

#[derive(Serialize)]
struct DeniedDoc<'a> {
    version: i64,
    denied: &'a [Denied],
}

/// `swarm list --denied`.
pub(crate) fn list_denied(home: &Home, json: bool) -> Result<()> {
    let (version, denied) = home.inventory()?.denied()?;
    if json {
        return output::json(&DeniedDoc {
            version,
            denied: &denied,
        });
    }
    if denied.is_empty() {
        return outln!("no certificates denied");
    }
    let mut t = Table::new(vec!["FINGERPRINT", "SUBJECT", "DENIED"]);
    for d in &denied {
        t.row(vec![
            d.fingerprint.clone().into(),
            d.subject.clone().into(),
            d.denied_at.clone().into(),
        ]);
    }
    output::table(&t)
}
