//! The prologue every push shares, `/update` and `/update-self` alike:
//! receive into staging → check its signature when this updater requires
//! one ([`crate::signing`]) → parse the [`ReleaseSpec`] once → run the
//! install hook → record the accepted `seq` → (on any error: discard
//! staging) → read the release it replaces → flip. Nothing outside staging is touched before the flip.

use std::sync::Arc;
use std::time::Instant;

use crate::receive::Form;
use pki::wire::Timings;

use super::hook::run_install;
use crate::error::{Result, UpdaterError};
use crate::receive;
use crate::release::{Purpose, ReleaseSpec, write_index, write_manifest};
use crate::slots::Layout;
use crate::state::{Daemon, blocking};

/// A pushed release, flipped in.
#[derive(Debug)]
pub struct Staged {
    /// The new release (its manifest built by the receive).
    pub spec: ReleaseSpec,
    /// The release it replaced, as it was in `active` (no manifest on a
    /// first install), to run from `active` again after a revert.
    pub previous: ReleaseSpec,
}

/// How [`stage`] failed.
#[derive(Debug)]
pub enum StageError {
    /// Before the flip: staging is discarded, nothing else changed.
    Before(UpdaterError),
    /// The flip itself failed: the slots need a repair (the caller's).
    Flip(UpdaterError),
    /// An agent release that is the active one (the same `release_id`,
    /// or for an old manifest the same sha256): staging was discarded
    /// before the hook, nothing changed (issues 11, 12).
    Unchanged(Box<pki::wire::Manifest>),
}

/// What [`prepare`] made of a push.
enum Prepared {
    Ready(Box<Staged>),
    Unchanged(Box<pki::wire::Manifest>),
}

/// Where a push's release comes from.
pub enum Source {
    /// Uploaded in the request (`/update`, `/update-self`).
    Form(Form),
    /// To be fetched from the store (`/update-from-store`, issue 16).
    Store(Box<pki::store::StoreUpdate>),
}

/// Receive `source` into `layout`'s staging, check and hook it, flip it in.
pub async fn stage(
    d: &Arc<Daemon>,
    layout: &Layout,
    source: Source,
    pushed_by: String,
    purpose: Purpose,
    timings: &mut Timings,
) -> std::result::Result<Staged, StageError> {
    let l = layout.clone();
    let staging = blocking(move || l.prepare_staging())
        .await
        .map_err(StageError::Before)?;
    let prepared = prepare(d, layout, source, &staging, pushed_by, purpose, timings).await;
    let staged = match prepared {
        Ok(Prepared::Ready(s)) => *s,
        Ok(Prepared::Unchanged(m)) => {
            discard(layout).await;
            return Err(StageError::Unchanged(m));
        }
        Err(e) => {
            discard(layout).await;
            // Contents a refused store fetch verified are not kept either.
            let install = layout.install_dir().to_owned();
            let _ = blocking(move || {
                crate::fetch::drop_contents(&install);
                Ok(())
            })
            .await;
            return Err(StageError::Before(e));
        }
    };
    let t = Instant::now();
    let (l, m) = (layout.clone(), staged.spec.manifest.clone());
    let flipped = blocking(move || match &m {
        Some(m) => l.flip_in(m),
        None => Err(UpdaterError::Internal(
            "a staged release without a manifest".into(),
        )),
    })
    .await;
    if let Err(e) = flipped {
        return Err(StageError::Flip(e));
    }
    timings.sync_flip_ms = crate::ms(t);
    Ok(staged)
}

/// Remove `layout`'s staging dir: renamed to trash at once, deleted by
/// the content store's sweep, which reseals the objects it linked instead
/// of re-hashing them (issue 12).
async fn discard(layout: &Layout) {
    let l = layout.clone();
    match blocking(move || l.staging_to_trash()).await {
        Ok(Some(trash)) => crate::store::gc::sweep_in_background(
            crate::store::Store::new(layout.store()),
            vec![trash],
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::error!("moving the staging dir to trash: {e}");
            let l = layout.clone();
            let _ = blocking(move || {
                l.discard_staging();
                Ok(())
            })
            .await;
        }
    }
}

/// Receive, write the manifest, parse the spec (the agent command for an
/// update, `confirm_self` and the updater binary for a self-update), read
/// the previous release, run the install hook.
async fn prepare(
    d: &Arc<Daemon>,
    layout: &Layout,
    source: Source,
    staging: &std::path::Path,
    pushed_by: String,
    purpose: Purpose,
    timings: &mut Timings,
) -> Result<Prepared> {
    let t = Instant::now();
    let mut received = match source {
        Source::Form(form) => receive::receive(form, staging, &d.config.caps).await?,
        Source::Store(req) => {
            if purpose != Purpose::Agent {
                return Err(UpdaterError::BadUpload(
                    "/update-self takes uploads, not store fetches".into(),
                ));
            }
            let (store, install) = (layout.store(), layout.install_dir().to_owned());
            crate::fetch::receive(*req, staging, &store, &install, &d.config.caps).await?
        }
    };
    timings.received_bytes = received.size_bytes;
    // A delta: what was received, completed from the store after the checks.
    let mut delta_got = None;
    if let Some(delta) = received.delta.take() {
        if purpose != Purpose::Agent {
            return Err(UpdaterError::BadUpload(
                "/update-self takes whole releases, not deltas".into(),
            ));
        }
        timings.received_bytes += delta.index.wire_len() as u64;
        let (l, caps) = (layout.clone(), d.config.caps.clone());
        let (base, index) = (delta.base, delta.index);
        let want = blocking(move || match base {
            Some(b) => super::materialize::delta_index(&b, &index, &l, &caps),
            // A store fetch with nothing to reuse: the index comes whole.
            None => match &index {
                receive::IndexSent::Whole(text) => pki::index::TreeIndex::parse(
                    text.as_bytes(),
                    usize::try_from(caps.max_entries).unwrap_or(usize::MAX),
                )
                .map_err(|why| UpdaterError::BadUpload(format!("field `index`: {why}"))),
                receive::IndexSent::Patch { .. } => Err(UpdaterError::BadUpload(
                    "an `index_patch` needs the `base` it patches".into(),
                )),
            },
        })
        .await?;
        received.extracted.files = want.files();
        let got = std::mem::replace(&mut received.extracted.index, want);
        if let Some(sha) = delta.release_sha256 {
            received.sha256 = sha;
        }
        delta_got = Some((got, delta.fetched));
    }
    if purpose == Purpose::Updater && received.confirm_self.as_deref() != Some("true") {
        return Err(UpdaterError::BadUpload(
            "/update-self replaces the updater itself: send the field confirm_self=true to confirm"
                .into(),
        ));
    }
    // Signed releases (issue 15): before the hook and the flip.
    let (bundle, install) = (d.config.bundle.dir.clone(), d.config.install_dir.clone());
    let (sig, id) = (
        received.signature.take(),
        received.extracted.index.release_id(),
    );
    let accepted =
        blocking(move || crate::signing::check(&bundle, &install, sig.as_deref(), &id)).await?;
    // Into the content store, only now (issue 12).
    let (l, dir, caps) = (layout.clone(), staging.to_owned(), d.config.caps.clone());
    // Moved there and back, not cloned: a large index is held once.
    let want = std::mem::take(&mut received.extracted.index);
    received.extracted.index = blocking(move || {
        match delta_got {
            Some((got, fetched)) => {
                super::materialize::delta(&dir, &got, &want, &fetched, &l, &caps)?
            }
            None => super::materialize::whole(&dir, &want, &l)?,
        }
        Ok(want)
    })
    .await?;
    let manifest = received.manifest(pushed_by);
    timings.receive_ms = crate::ms(t);
    tracing::info!(
        sha256 = %manifest.sha256,
        bytes = manifest.size_bytes,
        files = manifest.files,
        "release received"
    );
    let (daemon, l, dir) = (d.clone(), layout.clone(), staging.to_owned());
    let index = received.extracted.index;
    let staged = blocking(move || {
        write_index(&dir, &index)?;
        write_manifest(&dir, &manifest)?;
        let host = daemon.host_env()?;
        let live = l.live_dir();
        let spec = ReleaseSpec::staged(&dir, &live, manifest, purpose, &host, &daemon.config)?;
        let previous = ReleaseSpec::on_disk(&l.active(), &live, &host, &daemon.config);
        if purpose == Purpose::Agent {
            daemon.note_program(&spec);
            daemon.note_program(&previous);
        }
        Ok(Staged { spec, previous })
    })
    .await?;
    if purpose == Purpose::Agent
        && let Some(m) = &staged.previous.manifest
        && staged
            .spec
            .manifest
            .as_ref()
            .is_some_and(|n| n.same_release(m))
    {
        return Ok(Prepared::Unchanged(Box::new(m.clone())));
    }
    // New `[agent] listen` addresses are bound before anything rotates: a
    // bind failure is a 500 with nothing changed (issue 14).
    if purpose == Purpose::Agent
        && let Ok(run) = &staged.spec.agent
    {
        super::restart::bind_before_flip(d, run).await?;
    }
    let t = Instant::now();
    if let Some(hook) = staged.spec.hook()? {
        run_install(&hook, layout).await?;
    }
    timings.install_ms = crate::ms(t);
    if let Some(claim) = accepted {
        let install = d.config.install_dir.clone();
        blocking(move || crate::signing::accept(&install, &claim)).await?;
    }
    Ok(Prepared::Ready(Box::new(staged)))
}
