//! The S3 calls the master makes (list, get, put, delete) and the
//! presigned GET URLs it hands to workers: requests signed by rusty-s3
//! (SigV4, query-string signing), sent with reqwest over rustls (system
//! roots for https; plain http for a loopback store). Every call has a
//! deadline and every answer body a cap.

use std::time::Duration;

use rusty_s3::actions::{ListObjectsV2, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use super::StoreConfig;
use crate::error::{Error, Result};

/// How long the URLs the master itself uses stay valid.
const OWN_URLS: Duration = Duration::from_secs(600);
/// Deadline of one small call (list, head, delete).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body read (a list page is ~1000 keys).
const MAX_ANSWER: usize = 4 << 20;
/// Largest error body read (only quoted, sanitised).
const MAX_ERROR_BODY: usize = 4096;

/// The configured store, opened with its credentials.
pub(crate) struct Store {
    pub(crate) config: StoreConfig,
    creds: Credentials,
    bucket: Bucket,
    /// The bucket as workers reach it (`worker_endpoint`).
    worker_bucket: Bucket,
    client: reqwest::Client,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Store")
            .field("url", &self.config.url())
            .finish()
    }
}

impl Store {
    pub(crate) fn new(config: StoreConfig) -> Result<Store> {
        let creds = super::creds::load(config.credentials_file.as_deref())?;
        let bucket = bucket(&config, &config.endpoint)?;
        let worker_bucket = bucket_for(&config, config.worker_endpoint.as_deref())?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Other(format!("HTTP client for the store: {e}")))?;
        Ok(Store {
            config,
            creds,
            bucket,
            worker_bucket,
            client,
        })
    }

    /// The key prefix, empty or ending in `/`.
    pub(crate) fn prefix(&self) -> String {
        pki::store::dir(&self.config.prefix)
    }

    /// A presigned GET of `key`, valid for `ttl`: names that one object,
    /// carries no credential (only a signature by it).
    pub(crate) fn presign_get(&self, key: &str, ttl: Duration) -> String {
        self.worker_bucket
            .get_object(Some(&self.creds), key)
            .sign(ttl)
            .to_string()
    }

    /// Every key under `prefix` (a full key prefix), with its size.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.creds));
            action.with_prefix(prefix.to_owned());
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(OWN_URLS);
            let text = self.call(self.client.get(url), "listing").await?;
            let page = ListObjectsV2::parse_response(&text).map_err(|e| {
                self.fail(format!(
                    "listing: unreadable answer ({e}): {}",
                    pki::text::sanitize(&text, 200)
                ))
            })?;
            out.extend(page.contents.into_iter().map(|c| (c.key, c.size)));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// The object `key`, at most `cap` bytes of it (more is an error).
    pub(crate) async fn get(&self, key: &str, cap: usize) -> Result<Vec<u8>> {
        let url = self
            .bucket
            .get_object(Some(&self.creds), key)
            .sign(OWN_URLS);
        let timeout = CALL_TIMEOUT + Duration::from_secs(cap as u64 / (1 << 20));
        self.send_capped(
            self.client.get(url),
            &format!("reading {key}"),
            timeout,
            cap,
        )
        .await
    }

    /// Upload `body` as `key`.
    pub(crate) async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
        let url = self
            .bucket
            .put_object(Some(&self.creds), key)
            .sign(OWN_URLS);
        let timeout = CALL_TIMEOUT + Duration::from_secs(body.len() as u64 / (256 * 1024));
        self.call(
            self.client.put(url).body(body).timeout(timeout),
            "uploading",
        )
        .await
        .map(|_| ())
    }

    /// Upload the file `path` (`len` bytes) as `key`, streamed.
    pub(crate) async fn put_file(&self, key: &str, path: &std::path::Path, len: u64) -> Result<()> {
        let url = self
            .bucket
            .put_object(Some(&self.creds), key)
            .sign(OWN_URLS);
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(path, e))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ));
        let timeout = CALL_TIMEOUT + Duration::from_secs(len / (256 * 1024));
        let req = self
            .client
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        self.call_within(req, "uploading", timeout)
            .await
            .map(|_| ())
    }

    /// Delete `key` (absent is fine).
    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        let url = self
            .bucket
            .delete_object(Some(&self.creds), key)
            .sign(OWN_URLS);
        self.call(self.client.delete(url), "deleting")
            .await
            .map(|_| ())
    }

    /// Send `req`; a non-2xx answer is an error quoting the store.
    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> Result<String> {
        self.call_within(req, what, CALL_TIMEOUT).await
    }

    /// [`Store::call`] with its own deadline.
    async fn call_within(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        timeout: Duration,
    ) -> Result<String> {
        let body = self.send_capped(req, what, timeout, MAX_ANSWER).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Send `req` (`what` in messages) under `timeout`: the answer's body,
    /// at most `cap` bytes (more is an error); a non-2xx answer is an
    /// error quoting the store.
    async fn send_capped(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        timeout: Duration,
        cap: usize,
    ) -> Result<Vec<u8>> {
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.fail(format!("{what}: {}", pki::error_chain(&e))))?;
        let status = resp.status();
        if !status.is_success() {
            let body = pki::body::read_prefix(resp, MAX_ERROR_BODY).await;
            return Err(self.fail(format!(
                "{what}: HTTP {status}: {}",
                pki::text::sanitize(&String::from_utf8_lossy(&body), 300)
            )));
        }
        pki::body::read_capped(resp, cap)
            .await
            .map_err(|e| self.fail(format!("{what}: {e}")))
    }

    fn fail(&self, why: String) -> Error {
        Error::Other(format!(
            "store {} ({}): {why}",
            self.config.url(),
            self.config.endpoint
        ))
    }
}

/// The configured bucket at `endpoint`.
fn bucket(config: &StoreConfig, endpoint: &str) -> Result<Bucket> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| Error::State(format!("store endpoint {endpoint:?}: {e}")))?;
    let style = if config.path_style {
        UrlStyle::Path
    } else {
        UrlStyle::VirtualHost
    };
    Bucket::new(url, style, config.bucket.clone(), config.region.clone())
        .map_err(|e| Error::State(format!("store {}: {e}", config.url())))
}

/// [`bucket`] at `endpoint`, or at the master's.
fn bucket_for(config: &StoreConfig, endpoint: Option<&str>) -> Result<Bucket> {
    bucket(config, endpoint.unwrap_or(&config.endpoint))
}
