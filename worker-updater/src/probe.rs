//! The health probe: `GET` the agent's health URL over mTLS with the
//! updater's identity, first try at once, then a steady short pause, then
//! exponential backoff, until it
//! answers 2xx (with the expected release, when it reports one) while the
//! agent it was started for is still running, the deadline passes (or the
//! optional attempt limit is reached), or the agent process exits. A 2xx
//! after the spawned agent died came from something else holding the port,
//! and is not health.

use std::time::{Duration, Instant};

use pki::wire::Probe;

use crate::agent::Spawned;

/// Probe knobs.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// How long the probe may last: no try starts after it, and each
    /// request is cut at it (a release's `[agent] probe_deadline_secs`
    /// replaces it, see [`ProbeSettings::with_deadline`]).
    pub deadline: Duration,
    /// Most tries, on top of the deadline; `None` for no limit.
    pub attempts: Option<u32>,
    /// Pause after the first failed attempt; doubles each time.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of one request (connect included).
    pub timeout: Duration,
    /// Count an answer only when its `pid` is the probed agent's (or a
    /// descendant's): with `start-first` the old agent answers on the same
    /// sockets (issue 14).
    pub require_pid: bool,
}

/// The largest health answer read: 64 KiB.
pub const MAX_HEALTH_BODY: usize = 64 * 1024;

/// For this long after the first try, the pause stays `backoff`: an agent
/// usually answers within it (the bench's starts in 45–80 ms), and a
/// doubling pause would land the try that finds it up to one pause late.
/// A refused connection costs next to nothing.
const STEADY: Duration = Duration::from_millis(500);

/// The least time the last try, made at the deadline, gets for its request
/// (a TLS handshake on a busy host), so that a try is never started only to
/// be cut at once.
const LAST_TRY: Duration = Duration::from_millis(250);

impl ProbeSettings {
    /// These settings with another deadline (a release's own).
    pub fn with_deadline(&self, deadline: Option<Duration>) -> ProbeSettings {
        ProbeSettings {
            deadline: deadline.unwrap_or(self.deadline),
            ..self.clone()
        }
    }
}

/// Probe `url`. `expect_sha` is the release the agent should report;
/// `agent` is the process that should be answering: its exit ends the probe
/// early, and an answer counts only while it still runs.
///
/// Tries start at once, then after pauses of `backoff` (for the first 500 ms),
/// then doubling up to `max_backoff`, the last pause shortened so that a try lands on the
/// deadline itself; each request is cut at the deadline (but gets at least
/// `LAST_TRY`), so the probe lasts at most the deadline plus that.
pub async fn probe(
    client: &reqwest::Client,
    url: &str,
    phase: &str,
    expect_sha: Option<&str>,
    settings: &ProbeSettings,
    agent: Option<&Spawned>,
) -> Probe {
    let mut exited = agent.map(|a| a.exited.clone());
    let t0 = Instant::now();
    let deadline = t0 + settings.deadline;
    let mut backoff = settings.backoff;
    let mut last_error;
    let mut attempts = 0;
    let mut reported = None;
    let mut gave_up = false;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = settings.timeout.min(left.max(LAST_TRY));
        // An agent that exits while the request waits (queued in the
        // backlog of a held socket nobody accepts on) ends the try at once.
        let answer = match exited.as_mut() {
            Some(rx) => {
                let gone = async {
                    if rx.wait_for(Option::is_some).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    a = once(client, url, timeout) => a,
                    () = gone => Err("no answer before the agent exited".to_owned()),
                }
            }
            None => once(client, url, timeout).await,
        };
        match answer {
            Ok(Answer { sha, pid }) => {
                reported = sha.clone();
                let other = match (settings.require_pid, agent) {
                    (true, Some(a)) => not_from(a.pid, pid).await,
                    _ => None,
                };
                match (expect_sha, sha.as_deref()) {
                    _ if other.is_some() => {
                        last_error = other.unwrap_or_default();
                        // The kernel hands each connection to one of the
                        // agents sharing the socket: ask again soon.
                        backoff = settings.backoff;
                    }
                    (Some(want), Some(got)) if want != got => {
                        last_error = format!(
                            "the agent answering reports release {got}, not {want} (is an old agent still holding the port?)"
                        );
                    }
                    _ => {
                        if let Some(why) = agent_gone(agent).await {
                            last_error = format!(
                                "{why}, yet something answered 2xx on {url} (another process holds the port?)"
                            );
                            break;
                        }
                        return Probe {
                            phase: phase.into(),
                            url: url.into(),
                            healthy: true,
                            attempts,
                            elapsed_ms: ms(t0.elapsed()),
                            release_sha256: sha,
                            error: None,
                        };
                    }
                }
            }
            Err(e) => last_error = e,
        }
        if let Some(status) = exited.as_ref().and_then(|rx| rx.borrow().clone()) {
            last_error = format!("the agent exited ({status}); last probe error: {last_error}");
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || settings.attempts.is_some_and(|max| attempts >= max) {
            gave_up = true;
            break;
        }
        let sleep = tokio::time::sleep(backoff.min(left));
        match exited.as_mut() {
            Some(rx) => {
                tokio::select! {
                    () = sleep => {}
                    _ = rx.wait_for(Option::is_some) => {}
                }
            }
            None => sleep.await,
        }
        // Steady while an agent usually comes up, doubling after.
        if t0.elapsed() >= STEADY {
            backoff = (backoff * 2).min(settings.max_backoff);
        }
    }
    if gave_up {
        last_error = format!(
            "{last_error} (no healthy answer in {attempts} attempt(s) over {:.1}s; probe deadline {}s)",
            t0.elapsed().as_secs_f64(),
            secs(settings.deadline)
        );
    }
    tracing::warn!(phase, url, attempts, "probe failed: {last_error}");
    Probe {
        phase: phase.into(),
        url: url.into(),
        healthy: false,
        attempts,
        elapsed_ms: ms(t0.elapsed()),
        release_sha256: reported,
        error: Some(last_error),
    }
}

/// A duration in seconds, without trailing zeros (`2.5`, `30`).
fn secs(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Why the spawned `agent` no longer counts as running, if it does not.
async fn agent_gone(agent: Option<&Spawned>) -> Option<String> {
    let agent = agent?;
    if let Some(status) = agent.exited.borrow().clone() {
        return Some(format!("the agent exited ({status})"));
    }
    // The reaper may not have seen it yet: ask /proc (a zombie is dead).
    let pid = agent.pid;
    let alive = tokio::task::spawn_blocking(move || crate::agent::proc::alive(pid))
        .await
        .unwrap_or(true);
    (!alive).then(|| format!("the agent (pid {pid}) is no longer running"))
}

/// Why an answer from `pid` is not from the agent `want` (or one of its
/// descendants: a wrapper script's server), if it is not.
async fn not_from(want: i32, pid: Option<i64>) -> Option<String> {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return Some(
            "its /health reports no \"pid\": with restart = \"start-first\" the old and the new agent answer on the same sockets, and only the pid tells the new one (add \"pid\" to the answer, or use stop-first)".to_owned(),
        );
    };
    if pid == want {
        return None;
    }
    let ours = tokio::task::spawn_blocking(move || crate::agent::proc::descends_from(pid, want))
        .await
        .unwrap_or(false);
    (!ours).then(|| {
        format!("answered by pid {pid}, not by the new agent {want} (the old agent still serves the shared sockets)")
    })
}

/// What a 2xx health answer reported.
#[derive(Clone, Debug, Default)]
pub(crate) struct Answer {
    /// `release.sha256`.
    pub(crate) sha: Option<String>,
    /// `pid`.
    pub(crate) pid: Option<i64>,
}

/// One request: what the answer reported, on 2xx.
pub(crate) async fn once(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let resp = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| pki::error_chain(&e))?;
    let status = resp.status();
    let body = read_capped(resp).await?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(300).collect();
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    let v = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let sha = v
        .as_ref()
        .and_then(|v| v.get("release")?.get("sha256")?.as_str().map(str::to_owned));
    let pid = v.as_ref().and_then(|v| v.get("pid")?.as_i64());
    Ok(Answer { sha, pid })
}

/// Read a health answer's body, at most [`MAX_HEALTH_BODY`] bytes: a
/// health answer is a small JSON object, and whatever answers on the port
/// must not make the updater buffer an unbounded body. More is unhealthy.
pub(crate) async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| pki::error_chain(&e))? {
        if body.len() + chunk.len() > MAX_HEALTH_BODY {
            return Err(format!(
                "the health answer is larger than {} KiB; a health answer is a small JSON object",
                MAX_HEALTH_BODY / 1024
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(deadline_ms: u64, attempts: Option<u32>) -> ProbeSettings {
        ProbeSettings {
            deadline: Duration::from_millis(deadline_ms),
            attempts,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(250),
            timeout: Duration::from_secs(3),
            require_pid: false,
        }
    }

    /// A loopback URL nobody listens on (the port was just released).
    fn closed_url() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        format!("https://127.0.0.1:{port}/health")
    }

    #[tokio::test]
    async fn the_deadline_ends_the_probe_and_is_named() {
        let client = reqwest::Client::new();
        let p = probe(
            &client,
            &closed_url(),
            "forward",
            None,
            &settings(300, None),
            None,
        )
        .await;
        assert!(!p.healthy);
        assert!(p.attempts >= 2, "tried at once and again: {p:?}");
        let e = p.error.unwrap_or_default();
        assert!(e.contains("probe deadline 0.3s"), "{e}");
    }

    #[tokio::test]
    async fn an_attempt_limit_still_applies_within_the_deadline() {
        let client = reqwest::Client::new();
        let p = probe(
            &client,
            &closed_url(),
            "forward",
            None,
            &settings(60_000, Some(3)),
            None,
        )
        .await;
        assert!(!p.healthy);
        assert_eq!(p.attempts, 3, "{p:?}");
    }

    /// An mTLS `/health` on 127.0.0.1:0 serving `body`, with an agent
    /// identity for host `w1`; and a probe client with the updater's.
    async fn agent_answering(body: Vec<u8>) -> (reqwest::Client, String) {
        let tmp = tempfile::tempdir().unwrap();
        let ca = pki::Ca::generate().unwrap();
        let host = pki::HostName::new("w1").unwrap();
        let agent = ca
            .issue(&pki::LeafSpec::agent(&host, "127.0.0.1", &[]).unwrap())
            .unwrap();
        let updater = ca
            .issue(&pki::LeafSpec::updater(&host, "127.0.0.1", &[]).unwrap())
            .unwrap();
        let (adir, udir) = (tmp.path().join("a"), tmp.path().join("u"));
        pki::Bundle::write(&adir, pki::BundleKind::Agent, ca.cert_pem(), &agent).unwrap();
        pki::Bundle::write(&udir, pki::BundleKind::Updater, ca.cert_pem(), &updater).unwrap();
        let tls = pki::server_config(&pki::Bundle::load(&adir).unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = bytes::Bytes::from(body);
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let body = body.clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        tokio::spawn(pki::serve(listener, tls, app, std::future::pending()));
        let client = pki::http_client(
            &pki::Bundle::load(&udir).unwrap(),
            pki::ServerExpectation::cn("w1"),
        )
        .unwrap()
        .build()
        .unwrap();
        (client, format!("https://127.0.0.1:{}/health", addr.port()))
    }

    #[tokio::test]
    async fn a_huge_health_answer_is_unhealthy_and_not_buffered() {
        // 16 MiB of JSON whitespace before a valid answer: it parses, so
        // only the cap can make it unhealthy (issue 9 #5).
        let mut huge = vec![b' '; 16 << 20];
        huge.extend_from_slice(br#"{"status":"ok","release":null}"#);
        let (client, url) = agent_answering(huge).await;
        let p = probe(
            &client,
            &url,
            "forward",
            None,
            &settings(5000, Some(1)),
            None,
        )
        .await;
        assert!(!p.healthy, "{p:?}");
        let e = p.error.unwrap_or_default();
        assert!(e.contains("larger than 64 KiB"), "{e}");
        // A normal answer is still healthy.
        let (client, url) = agent_answering(br#"{"status":"ok","release":null}"#.to_vec()).await;
        let p = probe(
            &client,
            &url,
            "forward",
            None,
            &settings(5000, Some(1)),
            None,
        )
        .await;
        assert!(p.healthy, "{p:?}");
    }

    #[test]
    fn a_release_deadline_replaces_the_default_only() {
        let s = settings(2500, Some(4));
        let r = s.with_deadline(Some(Duration::from_secs(30)));
        assert_eq!(r.deadline, Duration::from_secs(30));
        assert_eq!((r.attempts, r.backoff), (s.attempts, s.backoff));
        assert_eq!(s.with_deadline(None).deadline, s.deadline);
        assert_eq!(secs(Duration::from_millis(2500)), "2.5");
        assert_eq!(secs(Duration::from_secs(30)), "30");
    }
}
