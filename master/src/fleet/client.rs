//! Pinned mTLS clients for updaters, and reqwest failures in
//! words an operator can act on (a worker whose clock is wrong included).

use std::time::Duration;

use pki::{Bundle, ServerExpectation};
use time::OffsetDateTime;

use super::deny::DenySync;
use super::said::{self, Clean};
use crate::clock;
use crate::error::Result;
use crate::home::Home;
use crate::inventory::HostRecord;

/// How long to wait for a TCP+TLS connection before calling a host down.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request limit for `status` calls.
pub(super) const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The master's identity, and the validity of its certificate (to tell a
/// worker's wrong clock from our expired certificate).
#[derive(Debug)]
pub(crate) struct Master {
    bundle: Bundle,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// The deny list hosts are given before anything else (issue 15).
    deny: Option<DenySync>,
    /// The `signature` field of this run's pushes (issue 15), if the home signs.
    signature: Option<String>,
}

impl Master {
    pub(crate) fn new(bundle: Bundle) -> Result<Master> {
        let info = bundle.info()?;
        Ok(Master {
            bundle,
            not_before: info.not_before,
            not_after: info.not_after,
            deny: None,
            signature: None,
        })
    }

    /// The same master, sending `signature` with every push of this run.
    pub(crate) fn with_signature(
        mut self,
        signature: Option<pki::sign::ReleaseSignature>,
    ) -> Master {
        self.signature = signature.map(|s| s.to_json());
        self
    }

    pub(super) fn signature(&self) -> Option<&str> {
        self.signature.as_deref()
    }

    /// The master identity of `home`, with its deny list to deliver.
    pub(crate) fn for_home(home: &Home) -> Result<Master> {
        let mut master = Master::new(home.master_bundle()?)?;
        master.deny = Some(DenySync::load(home)?);
        Ok(master)
    }

    pub(super) fn deny(&self) -> Option<&DenySync> {
        self.deny.as_ref()
    }

    /// A client for `rec`'s updater whose deny list is up to date (issue
    /// 15): what every command that contacts an updater starts with.
    pub(super) async fn ready_client(
        &self,
        rec: &HostRecord,
        timeout: Duration,
    ) -> std::result::Result<reqwest::Client, String> {
        let client = self.updater_client(rec, timeout)?;
        super::deny::deliver(self, &client, rec).await?;
        Ok(client)
    }

    /// [`Master::updater_stream_client`], once the deny list is up to date.
    pub(super) async fn ready_stream_client(
        &self,
        rec: &HostRecord,
    ) -> std::result::Result<reqwest::Client, String> {
        self.ready_client(rec, STATUS_TIMEOUT).await?;
        self.updater_stream_client(rec)
    }

    /// A client for `rec`'s updater, pinned to its CN and recorded fingerprint.
    pub(super) fn updater_client(
        &self,
        rec: &HostRecord,
        timeout: Duration,
    ) -> std::result::Result<reqwest::Client, String> {
        pki::http_client(&self.bundle, expectation(rec)?)
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("HTTP client: {}", pki::error_chain(&e)))
    }

    /// A client for a stream from `rec`'s updater that lasts as long as
    /// the reader wants (`swarm logs -f`): the connect is bounded, the
    /// whole request is not; TCP keepalive notices a peer that vanished.
    pub(super) fn updater_stream_client(
        &self,
        rec: &HostRecord,
    ) -> std::result::Result<reqwest::Client, String> {
        pki::http_client(&self.bundle, expectation(rec)?)
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {}", pki::error_chain(&e)))
    }

    /// A reqwest failure in words an operator can act on (one safe line:
    /// a transport error may quote what the peer sent).
    pub(super) fn describe(&self, e: &reqwest::Error, timeout: Duration) -> String {
        said::line(&self.describe_raw(e, timeout), said::DETAIL_CHARS)
    }

    fn describe_raw(&self, e: &reqwest::Error, timeout: Duration) -> String {
        let cause = std::error::Error::source(e)
            .map(pki::error_chain)
            .unwrap_or_default();
        if e.is_timeout() {
            if e.is_connect() {
                return format!("connect timed out after {}s", CONNECT_TIMEOUT.as_secs());
            }
            return format!("timed out after {}s", timeout.as_secs());
        }
        let said = if e.is_connect() {
            format!("cannot connect: {cause}")
        } else if cause.is_empty() {
            e.to_string()
        } else {
            cause
        };
        match self.clock_skew(e) {
            Some(hint) => format!("{said}: {hint}"),
            None => said,
        }
    }

    /// When the worker refused our certificate as expired (or not yet
    /// valid) although it is valid by our clock, the worker's clock is
    /// the likely culprit: say so, with the validity it rejected.
    fn clock_skew(&self, e: &reqwest::Error) -> Option<String> {
        if !rejected_as_expired(e) {
            return None;
        }
        let now = OffsetDateTime::now_utc();
        (self.not_before <= now && now <= self.not_after).then(|| {
            format!(
                "the worker's clock is probably wrong (it rejected a certificate valid from {} to {})",
                clock::rfc3339(self.not_before),
                clock::rfc3339(self.not_after)
            )
        })
    }

    /// A client for `rec`'s updater that accepts only `fingerprint` (a
    /// renewal's check that the updater presents its new certificate).
    pub(super) fn updater_client_pinned(
        &self,
        rec: &HostRecord,
        fingerprint: pki::Fingerprint,
        timeout: Duration,
    ) -> std::result::Result<reqwest::Client, String> {
        let expect = ServerExpectation::pinned(rec.host.updater_cn(), fingerprint);
        pki::http_client(&self.bundle, expect)
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("HTTP client: {}", pki::error_chain(&e)))
    }
}

/// What `rec`'s updater must present: CN `updater@<host>` and the pinned
/// fingerprint, or a renewal's pending one (issue 15).
fn expectation(rec: &HostRecord) -> std::result::Result<ServerExpectation, String> {
    let fp = rec.updater_fingerprint.ok_or_else(|| no_updater(rec))?;
    Ok(ServerExpectation::pinned_any(
        rec.host.updater_cn(),
        fp,
        rec.pending_updater_fingerprint.into_iter().collect(),
    ))
}

/// Why a host enrolled without an updater bundle cannot be asked.
fn no_updater(rec: &HostRecord) -> String {
    format!(
        "no updater certificate enrolled: run `swarm enroll --host {} --updater-only --out-dir DIR`",
        rec.host
    )
}

/// Whether the error chain holds the TLS alert a peer sends when it finds
/// our certificate expired or not yet valid (TLS has one alert for both).
fn rejected_as_expired(e: &reqwest::Error) -> bool {
    let is_it = |r: &rustls::Error| {
        matches!(
            r,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired)
        )
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>()
            && is_it(r)
        {
            return true;
        }
        // `io::Error::source` skips the error it wraps: look inside.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
            && is_it(r)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// GET `url` and parse its JSON answer (at most `cap` bytes, cleaned); a
/// non-2xx answer is an error carrying its `error` field (or the start of
/// its body), sanitised.
pub(super) async fn get_json<T: serde::de::DeserializeOwned + Clean>(
    master: &Master,
    client: &reqwest::Client,
    url: String,
    cap: usize,
) -> std::result::Result<T, String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| master.describe(&e, STATUS_TIMEOUT))?;
    said::read_json(resp, cap).await
}
