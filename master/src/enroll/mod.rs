//! Identity commands: `swarm ca init`, `swarm enroll`, `swarm list` and
//! `swarm decommission`.
//!
//! Invariant: an enrollment writes all of its bundles and its inventory row,
//! or none of them. Bundles are written to hidden siblings first, the row is
//! inserted in a transaction, the bundles are renamed into place (never over
//! an existing path, [`place`]), and only then is the transaction committed;
//! any failure removes whatever swarm wrote, and nothing it did not.

mod operator;
mod place;
mod report;
mod tag;

use std::fs;
use std::path::{Path, PathBuf};

use pki::{Bundle, BundleKind, Ca, HostName, LeafSpec, PkiError};
use serde::Serialize;

use crate::cli::EnrollArgs;
use crate::clock::{self, whole_seconds};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::{HostRecord, HostStatus, NewHost, Tag};
use crate::output::{self, Cell, Color, Table, outln};
pub(crate) use operator::{
    DenyDelivery, DenyPending, list_denied, operator_add, operator_list, operator_remove,
};
pub(crate) use place::sync_dir;
use place::{Cleanup, place, rename_noreplace, temp_sibling};
use report::{BundleDoc, CaInitDoc, DecommissionDoc, EnrollDoc};
pub(crate) use tag::tag;

/// `swarm ca init [--force]`.
pub(crate) fn ca_init(home: &Home, force: bool, key_file: Option<&Path>, json: bool) -> Result<()> {
    if home.has_ca()? && !force {
        return Err(Error::usage(format!(
            "a CA already exists in {}: keep it, or pass --force to replace it (every enrolled host must then be re-enrolled)",
            home.ca_dir().display()
        )));
    }
    let ca = Ca::generate()?;
    let master = ca.issue(&LeafSpec::master())?;

    let root = home.root();
    let created_root = !root.exists();
    fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        if created_root {
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(root, e))?;
        }
    }
    let cleanup = Cleanup::new();
    let new_ca = temp_sibling(&home.ca_dir(), "new")?;
    let new_master = temp_sibling(&home.master_dir(), "new")?;
    cleanup.add(&new_ca);
    cleanup.add(&new_master);
    ca.save(&new_ca)?;
    Bundle::write(&new_master, BundleKind::Master, ca.cert_pem(), &master)?;
    // The release-signing key (issue 15): beside the CA, or at --key-file.
    let (key_recorded, key_doc) = crate::signing::create(&new_ca, key_file)?;
    if key_recorded.is_some() {
        cleanup.add(&key_doc.key_file);
    }
    let key_doc = crate::signing::KeyDoc {
        key_file: key_recorded
            .clone()
            .unwrap_or_else(|| home.ca_dir().join(pki::sign::RELEASE_KEY)),
        public_key: home.ca_dir().join(pki::sign::RELEASE_PUB),
        key_id: key_doc.key_id,
        endorsed_by: None,
    };

    // Move any previous identity aside, then the new one into place.
    let mut olds = Vec::new();
    for dir in [home.ca_dir(), home.master_dir()] {
        if dir.exists() {
            let old = temp_sibling(&dir, "old")?;
            fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
            olds.push((dir, old));
        }
    }
    let placed = place(&new_ca, &home.ca_dir(), &cleanup)
        .and_then(|()| place(&new_master, &home.master_dir(), &cleanup));
    if let Err(e) = placed {
        // Remove what this run wrote (and only that), then put the previous
        // identity back where it was.
        drop(cleanup);
        let mut kept = Vec::new();
        for (dir, old) in &olds {
            if rename_noreplace(old, dir).is_err() {
                kept.push(old.display().to_string());
            }
        }
        if kept.is_empty() {
            return Err(e);
        }
        return Err(Error::State(format!(
            "{e}; the previous identity could not be moved back and is kept in {}",
            kept.join(", ")
        )));
    }
    cleanup.disarm();
    sync_dir(root);
    for (_, old) in &olds {
        let _ = fs::remove_dir_all(old);
    }

    let mut inv = home.inventory()?;
    inv.set_release_key_file(key_recorded.as_deref())?;
    let mut retired = Vec::new();
    if force {
        for rec in inv.active_hosts()? {
            inv.decommission(&rec.host)?;
            retired.push(rec.host.to_string());
        }
    }
    let ca_fp = pki::identity::CertInfo::parse(&Bundle::load(&home.master_dir())?.ca)?.fingerprint;
    CaInitDoc {
        ca_dir: home.ca_dir(),
        ca_fingerprint: ca_fp.to_string(),
        master_dir: home.master_dir(),
        master_cn: "master",
        inventory: home.db_path(),
        decommissioned: retired,
        release_key: key_doc,
    }
    .print(json)
}

fn bad_san(e: PkiError) -> Error {
    match e {
        PkiError::InvalidSan(s) => Error::usage(format!(
            "invalid address or SAN {s:?}: use an IP address or a DNS name (letters, digits, '-', '_', '.')"
        )),
        other => Error::Pki(other),
    }
}

/// `DIR` → `DIR-updater`.
pub(crate) fn updater_dir_of(out_dir: &Path) -> Result<PathBuf> {
    let name = out_dir.file_name().ok_or_else(|| {
        Error::usage(format!(
            "--out-dir {} must name a new directory",
            out_dir.display()
        ))
    })?;
    Ok(out_dir.with_file_name(format!("{}-updater", name.to_string_lossy())))
}

/// Create the missing ancestors of `dir`, registering the topmost created
/// one with `cleanup` so a failed enrollment leaves nothing behind.
fn create_parents(dir: &Path, cleanup: &Cleanup) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let mut missing = None;
    let mut p = parent;
    while fs::symlink_metadata(p).is_err() {
        missing = Some(p.to_owned());
        match p.parent() {
            Some(pp) => p = pp,
            None => break,
        }
    }
    if !p.is_dir() {
        return Err(Error::State(format!(
            "{} is not a directory: choose a writable --out-dir",
            p.display()
        )));
    }
    if let Some(top) = missing {
        cleanup.add(&top);
        fs::create_dir_all(parent).map_err(|e| {
            Error::State(format!(
                "cannot create {}: {e}; choose a writable --out-dir",
                parent.display()
            ))
        })?;
    }
    Ok(())
}

fn ensure_new(dir: &Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_ok() {
        return Err(Error::usage(format!(
            "{} already exists: remove it or choose another --out-dir",
            dir.display()
        )));
    }
    Ok(())
}

/// Write a bundle to a hidden sibling of `dir`; returns the temp path.
fn stage_bundle(
    dir: &Path,
    kind: BundleKind,
    ca: &Ca,
    leaf: &pki::IssuedLeaf,
    cleanup: &Cleanup,
    release_pub: Option<&pki::sign::ReleasePub>,
) -> Result<PathBuf> {
    let tmp = temp_sibling(dir, "enroll")?;
    cleanup.add(&tmp);
    let written = Bundle::write(&tmp, kind, ca.cert_pem(), leaf).and_then(|()| match release_pub {
        // An updater bundle carries the home's release key (issue 15).
        Some(key) if kind == BundleKind::Updater => key.save(&tmp.join(pki::sign::RELEASE_PUB)),
        _ => Ok(()),
    });
    written.map_err(|e| match e {
        PkiError::Io { source, .. } => Error::State(format!(
            "cannot write the bundle {}: {source}; choose a writable --out-dir",
            dir.display()
        )),
        other => Error::Pki(other),
    })?;
    Ok(tmp)
}

/// `swarm enroll …`.
pub(crate) fn enroll(home: &Home, args: &EnrollArgs) -> Result<()> {
    let host = HostName::new(&args.host)?;
    let out_dir = std::path::absolute(&args.out_dir).map_err(|e| Error::io(&args.out_dir, e))?;
    let updater_dir = updater_dir_of(&out_dir)?;
    if args.updater_only {
        return enroll_updater_only(home, &host, &updater_dir, args.json);
    }
    let address = args
        .address
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            Error::usage(
                "--address is required: the IP or DNS name the master reaches the worker at",
            )
        })?;
    let sans: Vec<String> = args
        .sans
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let agent_spec = LeafSpec::agent(&host, address, &sans).map_err(bad_san)?;
    let updater_spec = LeafSpec::updater(&host, address, &sans).map_err(bad_san)?;
    let tags = Tag::parse_all(&args.tags)?;

    let ca = home.ca()?;
    let mut inv = home.inventory()?;
    inv.ensure_absent(&host)?;
    ensure_new(&out_dir)?;
    if args.updater {
        ensure_new(&updater_dir)?;
    }

    let agent_leaf = ca.issue(&agent_spec)?;
    let updater_leaf = if args.updater {
        Some(ca.issue(&updater_spec)?)
    } else {
        None
    };

    let cleanup = Cleanup::new();
    create_parents(&out_dir, &cleanup)?;
    let agent_tmp = stage_bundle(
        &out_dir,
        BundleKind::Agent,
        &ca,
        &agent_leaf,
        &cleanup,
        None,
    )?;
    let release_pub = crate::signing::release_pub(home)?;
    let updater_tmp = match &updater_leaf {
        Some(leaf) => Some(stage_bundle(
            &updater_dir,
            BundleKind::Updater,
            &ca,
            leaf,
            &cleanup,
            release_pub.as_ref(),
        )?),
        None => None,
    };
    let new = NewHost {
        host: host.clone(),
        address: address.to_owned(),
        sans: sans.clone(),
        agent_port: args.agent_port,
        updater_port: args.updater_port,
        agent_fingerprint: agent_leaf.fingerprint,
        agent_not_after: whole_seconds(agent_leaf.not_after),
        updater: updater_leaf
            .as_ref()
            .map(|l| (l.fingerprint, whole_seconds(l.not_after))),
        tags: tags.clone(),
    };
    inv.insert_host_with(&new, || {
        place(&agent_tmp, &out_dir, &cleanup)?;
        if let Some(tmp) = &updater_tmp {
            place(tmp, &updater_dir, &cleanup)?;
        }
        if let Some(parent) = out_dir.parent() {
            sync_dir(parent);
        }
        Ok(())
    })?;
    cleanup.disarm();

    EnrollDoc {
        host: host.to_string(),
        address: Some(address.to_owned()),
        agent_port: Some(args.agent_port),
        updater_port: Some(args.updater_port),
        agent: Some(BundleDoc {
            dir: out_dir,
            cn: host.to_string(),
            fingerprint: agent_leaf.fingerprint.to_string(),
        }),
        updater: updater_leaf.as_ref().map(|leaf| BundleDoc {
            dir: updater_dir.clone(),
            cn: host.updater_cn(),
            fingerprint: leaf.fingerprint.to_string(),
        }),
        tags: tags.iter().map(ToString::to_string).collect(),
        not_after: report::at(whole_seconds(agent_leaf.not_after)),
    }
    .print(args.json)
}

fn enroll_updater_only(home: &Home, host: &HostName, updater_dir: &Path, json: bool) -> Result<()> {
    let ca = home.ca()?;
    let mut inv = home.inventory()?;
    let rec = match inv.find(host)? {
        None => {
            return Err(Error::usage(format!(
                "host {host} is not enrolled: enroll it with `swarm enroll --host {host} --address ADDR --updater --out-dir DIR`"
            )));
        }
        Some(rec) if rec.status == HostStatus::Decommissioned => {
            return Err(Error::usage(format!(
                "host {host} is decommissioned: enroll it again with `swarm enroll --host {host} --address ADDR --updater --out-dir DIR`"
            )));
        }
        Some(rec) => rec,
    };
    if let Some(fp) = rec.updater_fingerprint {
        return Err(Error::usage(format!(
            "host {host} already has an updater certificate (sha256 {fp}): to replace it, decommission and enroll the host again"
        )));
    }
    ensure_new(updater_dir)?;
    let spec = LeafSpec::updater(host, &rec.address, &rec.sans).map_err(bad_san)?;
    let leaf = ca.issue(&spec)?;
    let cleanup = Cleanup::new();
    create_parents(updater_dir, &cleanup)?;
    let release_pub = crate::signing::release_pub(home)?;
    let tmp = stage_bundle(
        updater_dir,
        BundleKind::Updater,
        &ca,
        &leaf,
        &cleanup,
        release_pub.as_ref(),
    )?;
    inv.set_updater_with(
        host,
        leaf.fingerprint,
        whole_seconds(leaf.not_after),
        || {
            place(&tmp, updater_dir, &cleanup)?;
            if let Some(parent) = updater_dir.parent() {
                sync_dir(parent);
            }
            Ok(())
        },
    )?;
    cleanup.disarm();
    EnrollDoc {
        host: host.to_string(),
        address: None,
        agent_port: None,
        updater_port: None,
        agent: None,
        updater: Some(BundleDoc {
            dir: updater_dir.to_owned(),
            cn: host.updater_cn(),
            fingerprint: leaf.fingerprint.to_string(),
        }),
        tags: rec.tags.iter().map(ToString::to_string).collect(),
        not_after: report::at(whole_seconds(leaf.not_after)),
    }
    .print(json)
}

/// `swarm decommission --host H`: stop targeting it, deny its certificates
/// and push the deny list (`deliver`) to every other active host.
pub(crate) fn decommission(
    home: &Home,
    host: &str,
    json: bool,
    deliver: impl FnOnce(&Home) -> Result<DenyDelivery>,
) -> Result<()> {
    let host = HostName::new(host)?;
    let mut inv = home.inventory()?;
    match inv.find(&host)? {
        None => Err(Error::usage(format!(
            "host {host} is not enrolled (see `swarm list`)"
        ))),
        Some(rec) if rec.status == HostStatus::Decommissioned => Err(Error::usage(format!(
            "host {host} is already decommissioned (see `swarm list`)"
        ))),
        Some(rec) => {
            let mut certs = vec![(rec.agent_fingerprint, host.to_string())];
            if let Some(fp) = rec.updater_fingerprint {
                certs.push((fp, host.updater_cn()));
            }
            inv.decommission(&host)?;
            inv.deny(&certs)?;
            drop(inv);
            DecommissionDoc {
                host: host.to_string(),
                decommissioned: true,
                certificates_valid_until: report::at(rec.cert_not_after()),
                denied: certs.iter().map(|(fp, _)| fp.to_string()).collect(),
                delivery: deliver(home)?,
            }
            .print(json)
        }
    }
}

#[derive(Serialize)]
struct ListDoc<'a> {
    hosts: Vec<ListedHost<'a>>,
}

/// A host as `swarm list --json` shows it: its record, and the days until
/// its first certificate expires (issue 15; negative once expired).
#[derive(Serialize)]
struct ListedHost<'a> {
    #[serde(flatten)]
    rec: &'a HostRecord,
    expires_in_days: i64,
}

/// `swarm list [--json]`.
pub(crate) fn list(home: &Home, json: bool) -> Result<()> {
    let inv = home.inventory()?;
    let hosts = inv.hosts()?;
    if json {
        let hosts = hosts
            .iter()
            .map(|rec| ListedHost {
                rec,
                expires_in_days: clock::days_left(rec.cert_not_after()),
            })
            .collect();
        return output::json(&ListDoc { hosts });
    }
    if hosts.is_empty() {
        outln!("no hosts enrolled yet: swarm enroll --host H --address A --updater --out-dir DIR")?;
        return Ok(());
    }
    let mut t = Table::new(vec![
        "HOST",
        "ADDRESS",
        "AGENT",
        "UPDATER",
        "STATUS",
        "ENROLLED",
        "CERT DAYS",
        "TAGS",
    ]);
    for h in &hosts {
        let updater = match h.updater_fingerprint {
            Some(fp) => format!("{}  {}", h.updater_port, &fp.to_string()[..12]),
            None => format!("{}  (no updater cert)", h.updater_port),
        };
        let status = match h.status {
            HostStatus::Active => Cell::colored("active", Color::Green),
            HostStatus::Decommissioned => Cell::colored("decommissioned", Color::Dim),
        };
        t.row(vec![
            h.host.to_string().into(),
            h.address.clone().into(),
            format!(
                "{}  {}",
                h.agent_port,
                &h.agent_fingerprint.to_string()[..12]
            )
            .into(),
            updater.into(),
            status,
            clock::rfc3339(h.enrolled_at).into(),
            output::expiry_cell(clock::days_left(h.cert_not_after())),
            tag_list(&h.tags).into(),
        ]);
    }
    output::table(&t)
}

/// Tags as `swarm list` shows them: comma separated, `-` for none.
fn tag_list(tags: &[Tag]) -> String {
    if tags.is_empty() {
        return "-".to_owned();
    }
    tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(",")
}
