//! `POST /renew` (issue 15): new agent and updater certificates from the
//! master, checked before anything is written ([`pki::renew::RenewBody::check`]:
//! this host's names, our CA, each key with its certificate; else 400 with
//! nothing changed), each bundle written whole into a hidden sibling and
//! swapped in with one `renameat2(RENAME_EXCHANGE)` (a crash leaves the old
//! bundle or the new one, never a certificate beside the other's key), then
//! the updater presents its new certificate from the next handshake on (a
//! live swap of the server certificate, [`pki::SwappableCert`]; open
//! connections, the agent and its supervisor are untouched) and the agent
//! is restarted through the normal probed path to pick up its bundle.
//! The new updater bundle carries `release.pub`: the one the body sends
//! (`release_pub`; another key than the one held only with the held key's
//! endorsement, `release_pub_endorsement`), else the one the old bundle held.
//!
//! Either certificate is valid under the CA, so whatever instant a kill
//! hits, the master (which accepts the old or the pending fingerprint
//! until it has seen the new one) can still reach this updater.

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use pki::renew::{RenewAnswer, RenewBody};
use pki::{Bundle, BundleKind, IssuedLeaf, Peer, PeerCert};

use crate::crashpoint;
use crate::error::{AppError, UpdaterError};
use crate::slots::fsx;
use crate::state::{Daemon, blocking};

/// `POST /renew` (master only, by policy).
pub async fn renew(
    State(app): State<Arc<Daemon>>,
    Peer(who): Peer,
    cert: PeerCert,
    body: Result<Json<RenewBody>, JsonRejection>,
) -> Result<Json<RenewAnswer>, AppError> {
    let Json(body) = body.map_err(|e| {
        UpdaterError::BadUpload(format!(
            "{e}: send JSON with agent_cert_pem, agent_key_pem, updater_cert_pem, updater_key_pem"
        ))
    })?;
    let (agent, updater) = body
        .check(&app.config.bundle, &app.config.host)
        .map_err(|e| UpdaterError::BadUpload(format!("renew refused, nothing changed: {e}")))?;
    // The release key goes into the new updater bundle: the one sent, or
    // the one held (a renew never drops the signing requirement). Another
    // key than the one held needs the held key's endorsement, so a stolen
    // master key cannot swap in a release key of its own.
    let held = crate::signing::release_pub(&app.config.bundle.dir)?;
    let refuse = |why: String| {
        UpdaterError::BadUpload(format!(
            "renew refused, nothing changed: release_pub: {why}"
        ))
    };
    let release_pub = match &body.release_pub {
        Some(pem) => {
            let new = pki::sign::ReleasePub::parse(pem).map_err(|e| refuse(e.to_string()))?;
            if let Some(old) = &held
                && *old != new
            {
                let endorsement = body.release_pub_endorsement.as_deref().ok_or_else(|| {
                    refuse(format!(
                        "key {} is not the key {} this updater holds, and no endorsement by it came along (rotate with `swarm key init --force` while the old key is at hand)",
                        new.id(),
                        old.id()
                    ))
                })?;
                old.check_endorsement(&new, endorsement)
                    .map_err(|e| refuse(e.to_string()))?;
            }
            Some(new)
        }
        None => held,
    };
    let guard = app.try_begin("renew")?;
    let d = app.clone();
    let by = cert.by(&who);
    let (a, u) = (agent.clone(), updater.clone());
    let task = tokio::spawn(async move {
        let dd = d.clone();
        let bundle = blocking(move || write_both(&dd, &a, &u, release_pub.as_ref())).await?;
        d.cert
            .replace(&bundle)
            .map_err(|e| UpdaterError::Internal(format!("presenting the new certificate: {e}")))?;
        tracing::info!(fingerprint = %bundle.fingerprint(), "renewed: presenting the new updater certificate");
        crashpoint::at("renew-after-swap");
        // Journaled from this task, so a client that hangs up loses nothing.
        let restarted = crate::ops::caretaker::restart(d.clone(), guard).await;
        crate::views::journal_op(&d, "renew", &by, &restarted).await;
        Ok::<_, UpdaterError>(restarted)
    });
    let restarted = task
        .await
        .map_err(|e| UpdaterError::Internal(format!("renew task: {e}")))??;
    let (agent_healthy, detail) = match &restarted {
        Ok((code, r)) => (
            code.is_success(),
            r.error
                .clone()
                .unwrap_or_else(|| format!("agent restart: HTTP {code}")),
        ),
        Err(e) => (false, e.to_string()),
    };
    Ok(Json(RenewAnswer {
        status: "renewed".into(),
        agent_fingerprint: agent.fingerprint.to_string(),
        updater_fingerprint: updater.fingerprint.to_string(),
        agent_healthy,
        detail,
    }))
}

/// Write the agent's bundle, then the updater's; the updater's as loaded.
fn write_both(
    d: &Daemon,
    agent: &IssuedLeaf,
    updater: &IssuedLeaf,
    release_pub: Option<&pki::sign::ReleasePub>,
) -> crate::error::Result<Bundle> {
    let ca_pem = std::fs::read_to_string(d.config.bundle.dir.join("ca.crt"))
        .map_err(|e| UpdaterError::io(d.config.bundle.dir.join("ca.crt"), e))?;
    replace_bundle(&d.config.agent_dir, BundleKind::Agent, &ca_pem, agent, None)?;
    crashpoint::at("renew-after-agent-bundle");
    replace_bundle(
        &d.config.bundle.dir,
        BundleKind::Updater,
        &ca_pem,
        updater,
        release_pub,
    )?;
    crashpoint::at("renew-after-updater-bundle");
    Bundle::load_kind(&d.config.bundle.dir, BundleKind::Updater)
        .map_err(|e| UpdaterError::Internal(format!("reading back the new bundle: {e}")))
}

/// Put a complete new bundle at `dir` in one atomic step.
fn replace_bundle(
    dir: &Path,
    kind: BundleKind,
    ca_pem: &str,
    leaf: &IssuedLeaf,
    release_pub: Option<&pki::sign::ReleasePub>,
) -> crate::error::Result<()> {
    let pki_err =
        |e: pki::PkiError| UpdaterError::Internal(format!("writing {}: {e}", dir.display()));
    // The whole bundle, release.pub (0644) included, before it is swapped in.
    let write = |at: &Path| {
        Bundle::write(at, kind, ca_pem, leaf)?;
        if let Some(key) = release_pub {
            key.save(&at.join(pki::sign::RELEASE_PUB))?;
        }
        Ok::<(), pki::PkiError>(())
    };
    if !dir.exists() {
        write(dir).map_err(pki_err)?;
        return fsx::fsync_dir(fsx::parent(dir));
    }
    let tmp = fsx::temp_sibling(dir);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(pki_err(e));
    }
    if let Err(e) = fsx::exchange(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fsx::fsync_dir(fsx::parent(dir))?;
    // `tmp` holds the old bundle now.
    fsx::remove_tree(&tmp)
}
