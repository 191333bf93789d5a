//! One upload to an updater's `/update` (or `/update-self`): a multipart
//! body written by hand so the release can be packed straight into it —
//! the text fields, the `tarball` part (the whole release streamed from
//! the packer, or a shared delta from memory), then the `sha256` part,
//! known only once the last byte is packed (the updater checks the digest
//! at the end, whichever order the fields come in) — and the answer
//! interpreted, including an updater that refused the release part-way.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use indicatif::ProgressBar;

use super::client::Master;
use super::report::{HostResult, interpret};
use super::said::{self, ANSWER_CAP};
use crate::inventory::{HostRecord, Op};
use crate::pack::{Have, Next, Recording, Tree};

/// What goes in the `tarball` part.
#[derive(Clone, Debug)]
pub(super) enum Payload {
    /// The whole release, packed for this upload.
    Whole,
    /// A pack recorded in memory, shared by the uploads that send it (a
    /// small whole release, or the delta of the hosts on one base).
    Shared(Arc<Recording>),
    /// A delta too large to keep, packed for this upload.
    Without(Arc<Have>),
}

/// Where an upload goes and what it carries besides the release.
pub(super) struct Upload<'a> {
    pub(super) path: &'static str,
    pub(super) payload: Payload,
    /// Text fields sent before the tarball.
    pub(super) fields: Vec<(&'static str, String)>,
    pub(super) bar: &'a ProgressBar,
}

/// The multipart body and why packing it failed, if it did.
struct Body {
    content_type: String,
    body: reqwest::Body,
    failure: Option<Arc<std::sync::Mutex<Option<String>>>>,
}

fn part_head(boundary: &str, name: &str) -> String {
    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
}

/// The form: `fields`, the run's `signature` (issue 15; one line of JSON),
/// the tarball, then `sha256`.
fn body(tree: &Arc<Tree>, up: &Upload<'_>, signature: Option<&str>) -> Body {
    let boundary = format!("swarm-{:032x}", rand::random::<u128>());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let mut head = String::new();
    if let Some(commit) = &tree.info.git_commit {
        head += &part_head(&boundary, "git_commit");
        head += commit;
        head += "\r\n";
    }
    for (k, v) in &up.fields {
        head += &part_head(&boundary, k);
        head += v;
        head += "\r\n";
    }
    if let Some(sig) = signature {
        head += &part_head(&boundary, "signature");
        head += sig;
        head += "\r\n";
    }
    head += &format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"tarball\"; filename=\"release.tar.zst\"\r\nContent-Type: application/zstd\r\n\r\n"
    );
    let tail = move |sha: &str| {
        Bytes::from(format!(
            "\r\n{}{sha}\r\n--{boundary}--\r\n",
            part_head(&boundary, "sha256")
        ))
    };
    let head = stream::once(async move { Ok::<_, io::Error>(Bytes::from(head)) });
    let counter = up.bar.clone();
    type Chunks = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
    let (tarball, failure): (Chunks, _) = match &up.payload {
        Payload::Shared(rec) => {
            let rec = rec.clone();
            // (chunk index, tree bytes counted so far); `None` once ended.
            let chunks = stream::unfold(Some((0usize, 0u64)), move |at| {
                let (rec, counter, tail) = (rec.clone(), counter.clone(), tail.clone());
                async move {
                    let (i, counted) = at?;
                    match rec.get(i).await {
                        Next::Chunk(c, read) => {
                            counter.inc(read.saturating_sub(counted));
                            Some((Ok(c), Some((i + 1, read.max(counted)))))
                        }
                        Next::End(Ok(d)) => Some((Ok(tail(&d.sha256)), None)),
                        Next::End(Err(why)) => Some((Err(io::Error::other(why)), None)),
                    }
                }
            });
            (Box::pin(chunks), None)
        }
        Payload::Whole | Payload::Without(_) => {
            let have = match &up.payload {
                Payload::Without(h) => Some(h.clone()),
                _ => None,
            };
            let packing = tree.stream(have, move |n| counter.inc(n));
            let failure = packing.failure.clone();
            let chunks = stream::unfold(packing.chunks, |mut rx| async move {
                rx.recv().await.map(|c| (c, rx))
            });
            let done = packing.done;
            let end = stream::once(async move {
                match done.await {
                    Ok(Ok(d)) => Ok(tail(&d.sha256)),
                    Ok(Err(why)) => Err(io::Error::other(why)),
                    Err(_) => Err(io::Error::other("the packer stopped")),
                }
            });
            (Box::pin(chunks.chain(end)), Some(failure))
        }
    };
    Body {
        content_type,
        body: reqwest::Body::wrap_stream(head.chain(tarball)),
        failure,
    }
}

/// Why an upload got no usable answer.
#[derive(Debug)]
pub(super) struct Unanswered {
    pub(super) why: String,
    /// Whether the request may have reached the updater (`false`: the
    /// connection failed or the pack did, so nothing was installed).
    pub(super) reached: bool,
}

/// Send `up` to `rec` and read the answer (`tree` is the release being
/// sent).
pub(super) async fn send(
    master: &Master,
    client: &reqwest::Client,
    rec: &HostRecord,
    tree: &Arc<Tree>,
    up: Upload<'_>,
    timeout: Duration,
) -> Result<(reqwest::StatusCode, Vec<u8>), Unanswered> {
    let Body {
        content_type,
        body,
        failure,
    } = body(tree, &up, master.signature());
    let sent = client
        .post(rec.updater_url(up.path))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await;
    up.bar.set_message("installing and probing");
    let packing_failed = || {
        failure
            .as_ref()
            .and_then(|f| f.lock().ok().and_then(|f| f.clone()))
    };
    // An updater that refuses a release part-way answers 400 at once and
    // drains the rest; an older one closes, and the error may come while
    // sending, before any answer could be read: say what it means.
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let unsent = |why| Unanswered {
                why,
                reached: false,
            };
            if let Some(why) = packing_failed() {
                return Err(unsent(format!("{why}; nothing was installed")));
            }
            if e.is_connect() {
                return Err(unsent(master.describe(&e, timeout)));
            }
            let why = if !e.is_timeout() && cut_while_sending(&e) {
                format!(
                    "the updater closed the connection during the upload, before an answer could be read (it refused the release part-way: a cap such as --max-upload-bytes, or an unsafe entry; its log says which): {}",
                    master.describe(&e, timeout)
                )
            } else {
                master.describe(&e, timeout)
            };
            return Err(Unanswered { why, reached: true });
        }
    };
    let status = resp.status();
    said::read_answer(resp, ANSWER_CAP)
        .await
        .map_err(|why| Unanswered {
            why: format!("answer unusable: {why} (HTTP {})", status.as_u16()),
            reached: true,
        })
}

/// Upload to `/update` and make the host's row: `tree` is the release the
/// host should end up on.
pub(super) async fn upload(
    master: &Master,
    client: &reqwest::Client,
    rec: &HostRecord,
    tree: &Arc<Tree>,
    up: Upload<'_>,
    timeout: Duration,
    started: Instant,
) -> HostResult {
    up.bar.set_message("uploading");
    match send(master, client, rec, tree, up, timeout).await {
        Ok((status, body)) => interpret(
            Op::Update,
            rec,
            status,
            &body,
            Some(&tree.info.release_id),
            started,
        ),
        Err(e) => HostResult::error(rec, e.why, started),
    }
}

/// Whether the connection broke under our upload (the peer closed or
/// reset it while we were still sending).
fn cut_while_sending(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}
