//! The index a delta or store push must end up with: the one sent whole
//! (`index`), or the base's kept index with `index_patch` applied, which
//! must give the `release_id` sent; and the index of the base whose
//! contents may be reused (empty without a base). A base that is not the
//! live release → 412 ([`UpdaterError::NoBase`]).

use std::path::Path;

use pki::index::TreeIndex;

use super::{Caps, IndexSent};
use crate::error::{Result, UpdaterError};

/// `(want, base_index)` for a push against `base` (the live release `live`).
pub fn resolve(
    base: Option<&str>,
    index: &IndexSent,
    live: &Path,
    caps: &Caps,
) -> Result<(TreeIndex, TreeIndex)> {
    let max = usize::try_from(caps.max_entries).unwrap_or(usize::MAX);
    let base_index = match base {
        None => TreeIndex::default(),
        Some(base) => {
            let live_id = pki::wire::Manifest::read(live).and_then(|m| m.release_id);
            if live_id.as_deref() != Some(base) {
                return Err(UpdaterError::NoBase(format!(
                    "this delta is against release {base}, but the live release here is {}: push the whole release",
                    live_id.as_deref().unwrap_or("none with a release_id")
                )));
            }
            crate::release::read_index(live, max)?.ok_or_else(|| {
                UpdaterError::NoBase(format!(
                    "the live release {base} has no kept index: push the whole release"
                ))
            })?
        }
    };
    let want = match index {
        IndexSent::Whole(text) => TreeIndex::parse(text.as_bytes(), max)
            .map_err(|why| UpdaterError::BadUpload(format!("field `index`: {why}")))?,
        IndexSent::Patch { patch, release_id } => {
            if base.is_none() {
                return Err(UpdaterError::BadUpload(
                    "an `index_patch` needs the `base` it patches".into(),
                ));
            }
            let want = base_index
                .apply_patch(patch, max)
                .map_err(|why| UpdaterError::BadUpload(format!("field `index_patch`: {why}")))?;
            if want.release_id() != *release_id {
                return Err(UpdaterError::BadUpload(format!(
                    "field `index_patch` applied to release {} gives release {}, not {release_id}",
                    base.unwrap_or_default(),
                    want.release_id()
                )));
            }
            want
        }
    };
    Ok((want, base_index))
}
