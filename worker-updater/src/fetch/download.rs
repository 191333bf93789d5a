//! Downloading from the store by presigned URL: the release document into
//! memory ([`small`], capped), and byte ranges of packs into
//! `<fetch dir>/<name>.part` ([`range`]). A deadline per request, retries
//! with backoff, each retry (and the next push after a crash) resuming
//! with `Range` from what is already on disk, and never more bytes than
//! asked for. The store's own words (an error body) are sanitised before
//! they are shown.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use pki::store::{EXPIRED, UNREACHABLE};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use crate::error::{Result, UpdaterError};

/// Attempts per download.
const ATTEMPTS: u32 = 4;
/// Deadline to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one request: a floor, plus its bytes at a pessimistic 256 KiB/s.
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

fn deadline(bytes: u64) -> Duration {
    REQUEST_FLOOR + Duration::from_secs(bytes / (256 * 1024))
}

/// Run `attempt` until it succeeds, is refused for good, or has had
/// [`ATTEMPTS`] tries.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut last = None;
    for n in 0..ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(200 << n)).await;
        }
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e @ (UpdaterError::UrlExpired(_) | UpdaterError::BadUpload(_))) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| UpdaterError::Internal("no attempt made".into())))
}

/// Send `req` for `what`; a non-2xx answer is the matching error.
async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
    crate::fetch::slow_down().await;
    let resp = req.send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            UpdaterError::StoreUnreachable(format!("{UNREACHABLE}: {}", pki::error_chain(&e)))
        } else {
            UpdaterError::Internal(format!("{what}: {}", pki::error_chain(&e)))
        }
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = pki::body::read_prefix(resp, MAX_ERROR_BODY).await;
        return Err(refusal(what, status, &String::from_utf8_lossy(&body)));
    }
    Ok(resp)
}

/// The whole object at `url` (`what` in messages), at most `cap` bytes.
pub(super) async fn small(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    cap: usize,
) -> Result<Vec<u8>> {
    retrying(|| async {
        let resp = send(client.get(url).timeout(deadline(cap as u64)), what).await?;
        pki::body::read_capped(resp, cap)
            .await
            .map_err(|e| match e {
                pki::PkiError::BodyTooLarge { .. } => UpdaterError::BadUpload(format!(
                    "{what} from the store is larger than {cap} bytes: refused"
                )),
                e => UpdaterError::Internal(format!("{what}: {e}")),
            })
    })
    .await
}

/// Bytes `start..end` of the object at `url` (`what` in messages) into
/// `part`, resumed from what it holds.
pub(super) async fn range(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    (start, end): (u64, u64),
    part: &Path,
) -> Result<()> {
    retrying(|| once(client, url, what, (start, end), part)).await
}

async fn once(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    (start, end): (u64, u64),
    part: &Path,
) -> Result<()> {
    let want = end.saturating_sub(start);
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > want {
        let _ = std::fs::remove_file(part);
    }
    let have = if have > want { 0 } else { have };
    if have == want {
        return Ok(());
    }
    let from = start + have;
    let req = client
        .get(url)
        .timeout(deadline(want - have))
        .header(RANGE, format!("bytes={from}-{}", end - 1));
    let mut resp = send(req, what).await?;
    // A 206 must start where asked; a 200 (the store ignored the range)
    // is usable only when that is the object's first byte.
    let ok = match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            resp.headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok())
                == Some(from)
        }
        _ => from == 0,
    };
    if !ok {
        return Err(UpdaterError::Internal(format!(
            "{what}: the store did not answer the range {from}-{} asked for",
            end - 1
        )));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| UpdaterError::io(part, e))?;
    let mut written = have;
    while written < want {
        let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| UpdaterError::Internal(format!("{what}: {}", pki::error_chain(&e))))?
        else {
            break;
        };
        // Never past the end asked for (a 200 sends the whole object).
        let take = usize::try_from(want - written)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        file.write_all(&chunk[..take])
            .map_err(|e| UpdaterError::io(part, e))?;
        written += take as u64;
        if written >= want / 2 {
            crate::crashpoint::at("fetch-downloading");
        }
    }
    if written < want {
        return Err(UpdaterError::Internal(format!(
            "{what}: the store ended the answer after {written} of {want} bytes"
        )));
    }
    Ok(())
}

/// What a non-2xx answer of the store means.
fn refusal(what: &str, status: StatusCode, body: &str) -> UpdaterError {
    let said = pki::text::sanitize(body, 300);
    // AWS answers an expired presigned URL 403 AccessDenied "Request has
    // expired"; Garage 400 "Date is too old" (a clock skew reads alike).
    let lower = body.to_ascii_lowercase();
    let expired = (status == StatusCode::FORBIDDEN && lower.contains("expired"))
        || (status == StatusCode::BAD_REQUEST && lower.contains("too old"));
    if expired {
        return UpdaterError::UrlExpired(format!("{EXPIRED} for {what}: the store said {said}"));
    }
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        return UpdaterError::BadUpload(format!(
            "{what}: the store holds less than the release document says: {said}"
        ));
    }
    if status.is_server_error() {
        return UpdaterError::StoreUnreachable(format!(
            "{UNREACHABLE}: {what}: HTTP {status}: {said}"
        ));
    }
    UpdaterError::BadUpload(format!(
        "{what} could not be fetched from the store: HTTP {status}: {said}"
    ))
}
