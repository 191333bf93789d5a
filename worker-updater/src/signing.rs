//! Signed releases on the worker (issue 15): an updater whose bundle dir
//! holds `release.pub` takes only releases whose `signature` field verifies
//! with it, names the `release_id` computed from what was received, and
//! carries a `seq` at least the highest it has accepted (unless the signer
//! allowed a downgrade). That highest `seq` lives in
//! `<install>/release-seq.json`, written atomically and durably before the
//! flip, so a crash cannot reopen a replay. Without `release.pub` nothing
//! here applies: pushes are taken as before.
//!
//! Invariant: a refusal is a 403 ([`UpdaterError::Unsigned`]) raised before
//! the install hook and the flip: staging is discarded, nothing rotated.

use std::path::{Path, PathBuf};

use pki::sign::{Claim, RELEASE_PUB, ReleasePub, ReleaseSignature};
use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdaterError};

/// The highest accepted `seq`, as persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Highest {
    seq: u64,
    release_id: String,
    signer: String,
}

/// Where the highest accepted `seq` lives in the install dir.
pub fn path_in(install_dir: &Path) -> PathBuf {
    install_dir.join("release-seq.json")
}

/// `release.pub` in the updater's bundle dir, if there is one. One that
/// is there but unusable is an error (fail closed: it exists to refuse).
pub fn release_pub(bundle_dir: &Path) -> Result<Option<ReleasePub>> {
    ReleasePub::load(&bundle_dir.join(RELEASE_PUB)).map_err(|e| {
        UpdaterError::Internal(format!(
            "{e}: restore it with `swarm renew`, or remove it to take unsigned releases"
        ))
    })
}

/// The highest `seq` accepted so far (0 when none was).
pub fn highest(install_dir: &Path) -> Result<u64> {
    let path = path_in(install_dir);
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice::<Highest>(&text)
            .map(|h| h.seq)
            .map_err(|e| {
                UpdaterError::Internal(format!(
                    "{} is unreadable ({e}): restore it (or remove it, reopening replays of older signed releases)",
                    path.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(UpdaterError::io(&path, e)),
    }
}

/// Check a push's `signature` for the release `release_id` (computed from
/// what was received). `Ok(None)`: this updater does not require
/// signatures; `Ok(Some(claim))`: it verifies, to be [`accept`]ed.
pub fn check(
    bundle_dir: &Path,
    install_dir: &Path,
    signature: Option<&str>,
    release_id: &str,
) -> Result<Option<Claim>> {
    let Some(key) = release_pub(bundle_dir)? else {
        return Ok(None);
    };
    let refuse =
        |why: String| UpdaterError::Unsigned(format!("release refused, nothing changed: {why}"));
    let Some(text) = signature else {
        return Err(refuse(format!(
            "this updater takes only signed releases (its bundle has release.pub, key {}): push with `swarm update`, or add -F signature=\"$(swarm sign --root DIR)\"",
            key.id()
        )));
    };
    let sig = ReleaseSignature::parse(text).map_err(|e| refuse(e.to_string()))?;
    let claim = key.verify(&sig).map_err(|e| refuse(e.to_string()))?;
    if claim.release_id != release_id {
        return Err(refuse(format!(
            "the signature is for release {}, but what was received is release {release_id} (tampered, or signed for another tree)",
            claim.release_id
        )));
    }
    let held = highest(install_dir)?;
    if claim.seq < held && !claim.downgrade {
        return Err(refuse(format!(
            "signature seq {} is below {held}, the highest this updater has accepted (a replayed older release?): push it again with `swarm update --allow-downgrade` if you mean it",
            claim.seq
        )));
    }
    Ok(Some(claim))
}

/// Record `claim` as accepted (durably, before the flip): the highest
/// `seq` only ever grows, a signed downgrade leaves it where it is.
pub fn accept(install_dir: &Path, claim: &Claim) -> Result<()> {
    if claim.seq <= highest(install_dir)? {
        return Ok(());
    }
    let value = Highest {
        seq: claim.seq,
        release_id: claim.release_id.clone(),
        signer: claim.signer.clone(),
    };
    crate::slots::fsx::write_json_durable(&path_in(install_dir), &value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::sign::ReleaseKey;

    fn claim(id: &str, seq: u64, downgrade: bool) -> Claim {
        Claim {
            release_id: id.into(),
            seq,
            created_at: "2026-12-02T00:00:00Z".into(),
            signer: "master".into(),
            downgrade,
        }
    }

    #[test]
    fn seq_only_grows_and_a_signed_downgrade_passes() {
        let (bundle, install) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (b, i) = (bundle.path(), install.path());
        let id = "ab".repeat(32);
        assert!(
            check(b, i, None, &id).unwrap().is_none(),
            "no release.pub: as before"
        );
        let key = ReleaseKey::generate().unwrap();
        key.public().save(&b.join(RELEASE_PUB)).unwrap();
        let e = check(b, i, None, &id).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN);
        let five = key.sign(claim(&id, 5, false)).to_json();
        let c = check(b, i, Some(&five), &id).unwrap().unwrap();
        accept(i, &c).unwrap();
        assert_eq!(highest(i).unwrap(), 5);
        assert!(
            check(b, i, Some(&five), &"cd".repeat(32)).is_err(),
            "release_id"
        );
        let four = key.sign(claim(&id, 4, false)).to_json();
        assert!(
            check(b, i, Some(&four), &id)
                .unwrap_err()
                .to_string()
                .contains("below 5")
        );
        let down = key.sign(claim(&id, 4, true)).to_json();
        let c = check(b, i, Some(&down), &id).unwrap().unwrap();
        accept(i, &c).unwrap();
        assert_eq!(highest(i).unwrap(), 5, "a downgrade does not lower it");
        std::fs::write(path_in(i), "{").unwrap();
        assert!(
            check(b, i, Some(&five), &id).is_err(),
            "unreadable: fail closed"
        );
    }
}
