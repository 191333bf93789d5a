//! The release-signing key on the master (issue 15): `swarm key init` (and
//! `swarm ca init`, which makes one too), the key a signing command loads
//! (`ca/release.key`, or where `--key-file` put it: the inventory records
//! the path, never a copy), the one signature a `swarm update` run sends
//! to all its hosts, and `swarm sign` for a push made by hand with curl.
//!
//! Invariants: `ca/release.pub` is the public half of whatever key signs
//! (a key that does not match it is refused); each signing run takes one
//! new `seq` from the inventory; a home without `ca/release.pub` signs
//! nothing, as before.

use std::path::{Path, PathBuf};

use pki::sign::{
    Claim, ENDORSEMENT, RELEASE_KEY, RELEASE_PUB, ReleaseKey, ReleasePub, ReleaseSignature,
};
use serde::Serialize;

use crate::cli::{SignArgs, SigningArgs};
use crate::clock;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::Inventory;
use crate::output::{self, outln};
use crate::pack::{self, PackOptions};

/// Where the public key lives in the home.
pub(crate) fn pub_path(home: &Home) -> PathBuf {
    home.ca_dir().join(RELEASE_PUB)
}

/// The home's release public key, if it has one (for updater bundles and
/// `swarm renew`).
pub(crate) fn release_pub(home: &Home) -> Result<Option<ReleasePub>> {
    Ok(ReleasePub::load(&pub_path(home))?)
}

/// What `swarm renew` sends: the home's release public key and, after a
/// rotation, the previous key's endorsement of it (`ca/release.pub.endorsement`).
pub(crate) fn for_renew(home: &Home) -> Result<Option<(ReleasePub, Option<String>)>> {
    let Some(key) = release_pub(home)? else {
        return Ok(None);
    };
    let path = home.ca_dir().join(ENDORSEMENT);
    let endorsement = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&path, e)),
    };
    Ok(Some((key, endorsement)))
}

/// What `key init` (or `ca init`) made.
#[derive(Debug, Serialize)]
pub(crate) struct KeyDoc {
    pub(crate) key_file: PathBuf,
    pub(crate) public_key: PathBuf,
    pub(crate) key_id: String,
    /// After a rotation: the id of the old key that endorsed this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) endorsed_by: Option<String>,
}

impl KeyDoc {
    pub(crate) fn print_lines(&self) -> Result<()> {
        if let Some(old) = &self.endorsed_by {
            outln!(
                "endorsed by the previous key {old}: `swarm renew --all` moves updaters to the new key"
            )?;
        }
        outln!(
            "release key {} in {} (0600; keep it safe: it signs every push)",
            self.key_id,
            self.key_file.display()
        )?;
        outln!(
            "release public key {}: every updater bundle issued from now on carries it; `swarm renew --all` delivers it to enrolled updaters, which then take only signed releases",
            self.public_key.display()
        )
    }
}

/// An absolute `--key-file`.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// Write a new key: the private half to `key_file` (default
/// `ca_dir/release.key`), the public half to `ca_dir/release.pub`. Both
/// must be new files. Returns the key file as it is to be recorded
/// (`None` for the default) and the doc.
pub(crate) fn create(ca_dir: &Path, key_file: Option<&Path>) -> Result<(Option<PathBuf>, KeyDoc)> {
    let key = ReleaseKey::generate()?;
    let recorded = key_file.map(absolute).transpose()?;
    let path = recorded.clone().unwrap_or_else(|| ca_dir.join(RELEASE_KEY));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    key.save(&path).map_err(|e| match e {
        pki::PkiError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Error::usage(format!(
                "{} already exists: swarm never overwrites a key; move it away or choose another --key-file",
                path.display()
            ))
        }
        other => other.into(),
    })?;
    let public = ca_dir.join(RELEASE_PUB);
    if let Err(e) = key.public().save(&public) {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    Ok((
        recorded,
        KeyDoc {
            key_file: path,
            public_key: public,
            key_id: key.public().id(),
            endorsed_by: None,
        },
    ))
}

/// `swarm key init [--key-file PATH] [--force]`: a release key for a home
/// that has a CA but no key (or, with `--force`, a new one in place of the
/// old: rotation).
pub(crate) fn key_init(
    home: &Home,
    key_file: Option<&Path>,
    force: bool,
    json: bool,
) -> Result<()> {
    let mut inv = home.inventory()?;
    let public = pub_path(home);
    let old_key = key_path(home, &inv, None)?;
    let mut endorser = None;
    if let Some(p) = key_file
        && absolute(p)?.exists()
    {
        return Err(Error::usage(format!(
            "{} already exists: swarm never overwrites a key; move it away or choose another --key-file",
            p.display()
        )));
    }
    if public.exists() {
        if !force {
            return Err(Error::usage(format!(
                "this home already has a release key ({}): keep it, or pass --force to make a new one (updaters then refuse releases signed with it until `swarm renew` gives them its release.pub)",
                public.display()
            )));
        }
        // Rotation: the old key endorses the new one (updaters that hold
        // it take the new one from `swarm renew` only so), so it must be
        // at hand; then the old public key moves aside (kept, for the
        // record), and the old private key is left where it is for its
        // owner to destroy.
        let old = load_key(home, &inv, None)
            .map_err(|e| {
                Error::State(format!(
                    "{e}; rotation needs the old key to endorse the new one (updaters holding it take no other)"
                ))
            })?
            .ok_or_else(|| Error::State("no release key to rotate".into()))?;
        endorser = Some(old);
        let aside = home
            .ca_dir()
            .join(format!("release.pub.old-{}", clock::now().unix_timestamp()));
        std::fs::rename(&public, &aside).map_err(|e| Error::io(&public, e))?;
        if key_file.is_none() && old_key == home.ca_dir().join(RELEASE_KEY) && old_key.exists() {
            let old = home
                .ca_dir()
                .join(format!("release.key.old-{}", clock::now().unix_timestamp()));
            std::fs::rename(&old_key, &old).map_err(|e| Error::io(&old_key, e))?;
        }
    }
    let (recorded, mut doc) = create(&home.ca_dir(), key_file)?;
    inv.set_release_key_file(recorded.as_deref())?;
    let endorsement = home.ca_dir().join(ENDORSEMENT);
    match endorser.zip(release_pub(home)?) {
        Some((old, new)) => {
            std::fs::write(&endorsement, old.endorse(&new) + "\n")
                .map_err(|e| Error::io(&endorsement, e))?;
            doc.endorsed_by = Some(old.public().id());
        }
        None => {
            let _ = std::fs::remove_file(&endorsement);
        }
    }
    if json {
        return output::json(&doc);
    }
    doc.print_lines()
}

/// Where the private key is: `--key-file`, else what the inventory
/// recorded, else `ca/release.key`.
fn key_path(home: &Home, inv: &Inventory, flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return absolute(p);
    }
    Ok(inv
        .release_key_file()?
        .unwrap_or_else(|| home.ca_dir().join(RELEASE_KEY)))
}

/// The key that signs for this home, checked against `ca/release.pub`;
/// `None` when the home has no release key.
fn load_key(home: &Home, inv: &Inventory, flag: Option<&Path>) -> Result<Option<ReleaseKey>> {
    let Some(public) = release_pub(home)? else {
        if flag.is_some() {
            return Err(Error::usage(format!(
                "--key-file: this home has no release key ({} is missing): run `swarm key init` first",
                pub_path(home).display()
            )));
        }
        return Ok(None);
    };
    let path = key_path(home, inv, flag)?;
    if !path.exists() {
        return Err(Error::State(format!(
            "the release key {} is not there (removable media not mounted?): mount it, or pass --key-file PATH",
            path.display()
        )));
    }
    let key = ReleaseKey::load(&path)?;
    if key.public() != public {
        return Err(Error::State(format!(
            "the release key {} (key {}) is not the one this home's updaters trust ({}, key {}): pass the right --key-file",
            path.display(),
            key.public().id(),
            pub_path(home).display(),
            public.id()
        )));
    }
    Ok(Some(key))
}

/// Who signs: `master` or `operator:NAME`, as the home's master
/// certificate says.
fn signer(home: &Home) -> Result<String> {
    let bundle = home.master_bundle()?;
    let info = bundle.info()?;
    Ok(bundle.identity().acted_by(info.operator.as_ref()))
}

/// The one signature of a signing run for `release_id` (a new `seq`), or
/// `None` when this home has no release key.
pub(crate) fn sign_release(
    home: &Home,
    inv: &mut Inventory,
    release_id: &str,
    args: &SigningArgs,
) -> Result<Option<ReleaseSignature>> {
    let Some(key) = load_key(home, inv, args.key_file.as_deref())? else {
        if args.allow_downgrade {
            return Err(Error::usage(
                "--allow-downgrade: this home has no release key, so nothing is signed (run `swarm key init`)",
            ));
        }
        return Ok(None);
    };
    let claim = Claim {
        release_id: release_id.to_owned(),
        seq: inv.next_release_seq()?,
        created_at: clock::rfc3339(clock::now()),
        signer: signer(home)?,
        downgrade: args.allow_downgrade,
    };
    Ok(Some(key.sign(claim)))
}

/// `swarm sign --root DIR`: scan the tree as `swarm update` would, sign
/// its `release_id`, print the `signature` field (or, with `--json`, a
/// document that holds it).
pub(crate) fn sign(home: &Home, args: &SignArgs) -> Result<()> {
    let mut inv = home.inventory()?;
    let release = pack::scan(
        &PackOptions {
            root: args.root.clone(),
            excludes: args.exclude.clone(),
            cache_dir: Some(home.root().join("cache")),
        },
        &pack::PackProgress::new(&|_, _| {}),
    )?;
    let Some(sig) = sign_release(home, &mut inv, &release.info.release_id, &args.signing)? else {
        return Err(Error::State(format!(
            "this home has no release key ({} is missing): run `swarm key init` first",
            pub_path(home).display()
        )));
    };
    if args.json {
        #[derive(Serialize)]
        struct SignDoc<'a> {
            release_id: &'a str,
            seq: u64,
            signature: String,
        }
        return output::json(&SignDoc {
            release_id: &release.info.release_id,
            seq: sig.claim.seq,
            signature: sig.to_json(),
        });
    }
    outln!("{}", sig.to_json())
}
