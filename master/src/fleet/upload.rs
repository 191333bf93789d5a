//! One upload to an updater's `/update` (or `/update-self`): the multipart
//! form with the release file streamed from its temp file, and the answer
//! interpreted, including an updater that refused the release part-way.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::ProgressBar;

use super::client::Master;
use super::report::{HostResult, interpret};
use super::said::{self, ANSWER_CAP};
use crate::inventory::{HostRecord, Op};
use crate::pack::ReleaseInfo;

/// The multipart body of a push: the digest, the commit, `extra` text
/// fields, the run's `signature` (issue 15) and the release file streamed
/// (counted on `bar`).
pub(super) async fn release_form(
    master: &Master,
    release: &(PathBuf, ReleaseInfo),
    bar: &ProgressBar,
    extra: &[(&'static str, String)],
) -> std::result::Result<reqwest::multipart::Form, String> {
    let (path, info) = (&release.0, &release.1);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let counter = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.inc(c.len() as u64);
        }
        chunk
    });
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(stream),
        info.size_bytes,
    )
    .file_name("release.tar.zst")
    .mime_str("application/zstd")
    .map_err(|e| e.to_string())?;
    let mut form = reqwest::multipart::Form::new().text("sha256", info.sha256.clone());
    if let Some(commit) = &info.git_commit {
        form = form.text("git_commit", commit.clone());
    }
    for (k, v) in extra {
        form = form.text(*k, v.clone());
    }
    if let Some(sig) = master.signature() {
        form = form.text("signature", sig.to_owned());
    }
    Ok(form.part("tarball", part))
}

/// Upload `release` (the whole one, or a delta with its `extra` fields) to
/// `/update`; `info` is the whole release the host should end up on.
#[allow(clippy::too_many_arguments)]
pub(super) async fn upload(
    master: &Master,
    client: &reqwest::Client,
    rec: &HostRecord,
    release: &(PathBuf, ReleaseInfo),
    extra: &[(&'static str, String)],
    info: &ReleaseInfo,
    bar: &ProgressBar,
    timeout: Duration,
    started: Instant,
) -> HostResult {
    bar.set_message("uploading");
    let form = match release_form(master, release, bar, extra).await {
        Ok(f) => f,
        Err(e) => return HostResult::error(rec, e, started),
    };
    let sent = client
        .post(rec.updater_url("/update"))
        .multipart(form)
        .send()
        .await;
    bar.set_message("installing and probing");
    // An updater that refuses a release part-way answers 400 at once and
    // drains the rest; an older one closes, and the error may come while
    // sending, before any answer could be read: say what it means.
    let resp = match sent {
        Ok(r) => r,
        Err(e) if !e.is_connect() && !e.is_timeout() && cut_while_sending(&e) => {
            let detail = format!(
                "the updater closed the connection during the upload, before an answer could be read (it refused the release part-way: a cap such as --max-upload-bytes, or an unsafe entry; its log says which): {}",
                master.describe(&e, timeout)
            );
            return HostResult::error(rec, detail, started);
        }
        Err(e) => return HostResult::error(rec, master.describe(&e, timeout), started),
    };
    // An answer came: report it (read under the cap), even when its body is
    // cut off or too large.
    let status = resp.status();
    match said::read_answer(resp, ANSWER_CAP).await {
        Ok((status, body)) => {
            interpret(Op::Update, rec, status, &body, Some(&info.sha256), started)
        }
        Err(why) => {
            let mut r = HostResult::error(rec, format!("answer unusable: {why}"), started);
            r.http_status = Some(status.as_u16());
            r
        }
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
