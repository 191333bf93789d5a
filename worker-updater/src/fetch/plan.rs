//! What to download: for every content this worker lacks, the first chunk
//! of the release document that holds it; the chunks checked against the
//! caps and the packs' sizes, and grouped per pack into byte ranges of
//! neighbouring chunks (at most [`RANGE_BYTES`] each: about one chunk, so downloads run in
//! parallel and a retry resumes a bounded piece).

use std::collections::{BTreeMap, HashMap, HashSet};

use pki::store::{Chunk, ReleaseDoc, StorePack, max_stored};

use super::hex64;
use crate::error::{Result, UpdaterError};
use crate::receive::Caps;

/// Ranges grow up to this many bytes.
const RANGE_BYTES: u64 = 1 << 20;

/// One download: bytes `start..end` of pack `pack` (by `url`), holding
/// `chunks` (in order).
#[derive(Debug)]
pub(super) struct Range {
    pub(super) pack: String,
    pub(super) url: String,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) chunks: Vec<Chunk>,
}

impl Range {
    /// The name of its download in the fetch dir.
    pub(super) fn part_name(&self) -> String {
        format!("{}-{}-{}.part", self.pack, self.start, self.end)
    }
}

/// The ranges to download for `lacking` out of `doc`, with the URLs the
/// master sent (`packs`). A content no chunk holds → 400; a pack without a
/// URL → 412 (the master sends every pack).
pub(super) fn plan(
    doc: &ReleaseDoc,
    lacking: &HashSet<(String, u64)>,
    packs: &[StorePack],
    caps: &Caps,
) -> Result<Vec<Range>> {
    for p in &doc.packs {
        if !hex64(&p.sha256) {
            return Err(bad(format!(
                "pack {:?} is not named by a SHA-256",
                pki::text::sanitize(&p.sha256, 80)
            )));
        }
    }
    let mut holder: HashMap<(&str, u64), usize> = HashMap::new();
    for (i, c) in doc.chunks.iter().enumerate() {
        for (sha, size) in &c.contents {
            holder.entry((sha.as_str(), *size)).or_insert(i);
        }
    }
    let mut picked: BTreeMap<(u32, u64), &Chunk> = BTreeMap::new();
    for (sha, size) in lacking {
        let Some(&i) = holder.get(&(sha.as_str(), *size)) else {
            return Err(bad(format!("it names no chunk holding content {sha}")));
        };
        let c = &doc.chunks[i];
        picked.insert((c.pack, c.offset), c);
    }
    let urls: HashMap<&str, &str> = packs
        .iter()
        .map(|p| (p.sha256.as_str(), p.url.as_str()))
        .collect();
    // The chunks may hold other releases' contents too, but never more
    // than this in all.
    let total = picked
        .values()
        .fold(0u64, |n, c| n.saturating_add(c.content_bytes()));
    if total > caps.max_unpacked.saturating_mul(2) {
        return Err(UpdaterError::Cap(format!(
            "fetching this release would decompress {total} bytes, more than twice --max-unpacked-bytes"
        )));
    }
    let mut ranges: Vec<Range> = Vec::new();
    for ((pack_no, _), c) in picked {
        let Some(pack) = doc.packs.get(pack_no as usize) else {
            return Err(bad(format!("a chunk names pack {pack_no}, which it lacks")));
        };
        check_chunk(c, pack.size, caps)?;
        let Some(url) = urls.get(pack.sha256.as_str()) else {
            return Err(UpdaterError::NoBase(format!(
                "pack {} holds content this worker lacks, and the request has no URL for it",
                pack.sha256
            )));
        };
        let end = c.offset + c.len;
        match ranges.last_mut() {
            Some(r) if r.pack == pack.sha256 && r.end > c.offset => {
                return Err(bad(format!("its chunks overlap at {}", c.offset)));
            }
            Some(r)
                if r.pack == pack.sha256 && r.end == c.offset && end - r.start <= RANGE_BYTES =>
            {
                r.end = end;
                r.chunks.push(c.clone());
            }
            _ => ranges.push(Range {
                pack: pack.sha256.clone(),
                url: (*url).to_owned(),
                start: c.offset,
                end,
                chunks: vec![c.clone()],
            }),
        }
    }
    Ok(ranges)
}

/// A chunk within its pack, its contents named by SHA-256s, within the caps.
fn check_chunk(c: &Chunk, pack_size: u64, caps: &Caps) -> Result<()> {
    let bytes = c.content_bytes();
    let ok = !c.contents.is_empty()
        && c.contents.len() as u64 <= caps.max_entries
        && c.contents.iter().all(|(s, _)| hex64(s))
        && bytes <= caps.max_unpacked
        && c.len > 0
        && c.len <= max_stored(bytes)
        && c.offset.checked_add(c.len).is_some_and(|e| e <= pack_size);
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "its chunk at {} ({} bytes for {bytes} content bytes) is not one we accept",
            c.offset, c.len
        )))
    }
}

fn bad(why: String) -> UpdaterError {
    UpdaterError::BadUpload(format!(
        "the store's release document: {why}: refused (altered in the store?)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::store::PackRef;

    fn caps() -> Caps {
        Caps {
            max_compressed: 1 << 30,
            max_unpacked: 1 << 30,
            max_entries: 1000,
            max_path_bytes: 4096,
            max_path_depth: 64,
        }
    }

    fn sha(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn neighbouring_chunks_share_a_range_and_only_what_is_lacking_is_fetched() {
        let pack = sha(0xaa);
        let chunk = |offset, s| Chunk {
            pack: 0,
            offset,
            len: 10,
            contents: vec![(sha(s), 5)],
        };
        let doc = ReleaseDoc {
            packs: vec![PackRef {
                sha256: pack.clone(),
                size: 40,
            }],
            chunks: vec![chunk(0, 1), chunk(10, 2), chunk(20, 3), chunk(30, 4)],
            ..ReleaseDoc::default()
        };
        let urls = [StorePack {
            sha256: pack.clone(),
            url: "http://s/p".into(),
        }];
        let lacking: HashSet<(String, u64)> = [(sha(1), 5), (sha(2), 5), (sha(4), 5)].into();
        let r = plan(&doc, &lacking, &urls, &caps()).unwrap();
        let spans: Vec<(u64, u64)> = r.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(spans, [(0, 20), (30, 40)]);

        // A content no chunk holds; a pack without a URL; a chunk past its pack.
        let e = plan(&doc, &[(sha(9), 5)].into(), &urls, &caps()).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        let e = plan(&doc, &lacking, &[], &caps()).unwrap_err();
        assert!(matches!(e, UpdaterError::NoBase(_)), "{e}");
        let mut long = doc.clone();
        long.chunks[3].len = 11;
        assert!(plan(&long, &lacking, &urls, &caps()).is_err());
    }
}
