//! Downloading one object from the store by its presigned URL into
//! `<fetch dir>/<sha256>.part`: a deadline per request, retries with
//! backoff, each retry resuming with `Range` from what is already on disk
//! (so does the next push after a crash), and never more bytes than the
//! master said the object has (itself capped by the index's size). The
//! store's own words (an error body) are sanitised before they are shown.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pki::store::{EXPIRED, StoreObject, UNREACHABLE};
use reqwest::StatusCode;

use crate::error::{Result, UpdaterError};

/// Attempts per object.
const ATTEMPTS: u32 = 4;
/// Deadline to connect, and for one request to make progress.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one request: a floor, plus the object at a pessimistic 256 KiB/s.
const REQUEST_FLOOR: Duration = Duration::from_secs(30);
/// Largest error body read from the store.
const MAX_ERROR_BODY: usize = 4096;

/// The HTTP client for the store: rustls with the system roots for https,
/// plain http for a loopback store; never our mTLS identity.
pub(super) fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| UpdaterError::Internal(format!("HTTP client for the store: {e}")))
}

/// Download `obj` (at most `cap` bytes) to `dir/<sha>.part`; its path.
pub(super) async fn download(
    client: &reqwest::Client,
    obj: &StoreObject,
    cap: u64,
    dir: &Path,
) -> Result<PathBuf> {
    let part = dir.join(format!("{}.part", obj.sha256));
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        match once(client, obj, cap, &part).await {
            Ok(()) => return Ok(part),
            Err(e @ (UpdaterError::UrlExpired(_) | UpdaterError::BadUpload(_))) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| UpdaterError::Internal("no attempt made".into())))
}

/// One GET, resumed from what `part` holds.
async fn once(client: &reqwest::Client, obj: &StoreObject, cap: u64, part: &Path) -> Result<()> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > cap {
        let _ = std::fs::remove_file(part);
    }
    let have = have.min(cap);
    if have == obj.stored_size && have > 0 {
        return Ok(());
    }
    let timeout = REQUEST_FLOOR + Duration::from_secs(obj.stored_size / (256 * 1024));
    crate::fetch::slow_down().await;
    let mut req = client.get(&obj.url).timeout(timeout);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            UpdaterError::StoreUnreachable(format!("{UNREACHABLE}: {}", chain(&e)))
        } else {
            UpdaterError::Internal(format!("object {}: {}", obj.sha256, chain(&e)))
        }
    })?;
    let status = resp.status();
    let resumed = status == StatusCode::PARTIAL_CONTENT;
    if !status.is_success() {
        let body = error_body(resp).await;
        return Err(refusal(obj, status, &body));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| UpdaterError::io(part, e))?;
    let mut written = if resumed { have } else { 0 };
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| UpdaterError::Internal(format!("object {}: {}", obj.sha256, chain(&e))))?
    {
        written += chunk.len() as u64;
        if written > cap {
            return Err(UpdaterError::BadUpload(format!(
                "object {} from the store is larger than the {cap} bytes its index entry allows: refused",
                obj.sha256
            )));
        }
        file.write_all(&chunk)
            .map_err(|e| UpdaterError::io(part, e))?;
        if written >= obj.stored_size / 2 {
            crate::crashpoint::at("fetch-downloading");
        }
    }
    file.sync_all().map_err(|e| UpdaterError::io(part, e))?;
    Ok(())
}

/// What a non-2xx answer of the store means.
fn refusal(obj: &StoreObject, status: StatusCode, body: &str) -> UpdaterError {
    let said = pki::text::sanitize(body, 300);
    // AWS answers an expired presigned URL 403 AccessDenied "Request has
    // expired"; Garage 400 "Date is too old" (a clock skew reads alike).
    let lower = body.to_ascii_lowercase();
    let expired = (status == StatusCode::FORBIDDEN && lower.contains("expired"))
        || (status == StatusCode::BAD_REQUEST && lower.contains("too old"));
    if expired {
        return UpdaterError::UrlExpired(format!(
            "{EXPIRED} for object {}: the store said {said}",
            obj.sha256
        ));
    }
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        return UpdaterError::Internal(format!(
            "object {}: the store refused to resume: {said}",
            obj.sha256
        ));
    }
    if status.is_server_error() {
        return UpdaterError::StoreUnreachable(format!(
            "{UNREACHABLE}: object {}: HTTP {status}: {said}",
            obj.sha256
        ));
    }
    UpdaterError::BadUpload(format!(
        "object {} could not be fetched from the store: HTTP {status}: {said}",
        obj.sha256
    ))
}

async fn error_body(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        if buf.len() >= MAX_ERROR_BODY {
            buf.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// An error with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
