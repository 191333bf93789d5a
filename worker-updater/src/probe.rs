//! The health probe: `GET` the agent's health URL over mTLS with the
//! updater's identity, first try at once, then exponential backoff, until it
//! answers 2xx (with the expected release, when it reports one) while the
//! agent it was started for is still running, the attempts run out, or the
//! agent process exits. A 2xx after the spawned agent died came from
//! something else holding the port, and is not health.

use std::time::{Duration, Instant};

use pki::wire::Probe;

use crate::agent::Spawned;

/// Probe knobs.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    pub attempts: u32,
    /// Pause after the first failed attempt; doubles each time.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of one request (connect included).
    pub timeout: Duration,
}

/// Probe `url`. `expect_sha` is the release the agent should report;
/// `agent` is the process that should be answering: its exit ends the probe
/// early, and an answer counts only while it still runs.
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
    let mut backoff = settings.backoff;
    let mut last_error = String::from("not probed");
    let mut attempts = 0;
    let mut reported = None;
    while attempts < settings.attempts {
        attempts += 1;
        match once(client, url, settings.timeout).await {
            Ok(sha) => {
                reported = sha.clone();
                match (expect_sha, sha.as_deref()) {
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
        if attempts == settings.attempts {
            break;
        }
        let sleep = tokio::time::sleep(backoff);
        match exited.as_mut() {
            Some(rx) => {
                tokio::select! {
                    () = sleep => {}
                    _ = rx.wait_for(Option::is_some) => {}
                }
            }
            None => sleep.await,
        }
        backoff = (backoff * 2).min(settings.max_backoff);
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

/// Why the spawned `agent` no longer counts as running, if it does not.
async fn agent_gone(agent: Option<&Spawned>) -> Option<String> {
    let agent = agent?;
    if let Some(status) = agent.exited.borrow().clone() {
        return Some(format!("the agent exited ({status})"));
    }
    // The reaper may not have seen it yet: ask /proc (a zombie is dead).
    let pid = agent.pid;
    let alive = tokio::task::spawn_blocking(move || crate::agent::alive(pid))
        .await
        .unwrap_or(true);
    (!alive).then(|| format!("the agent (pid {pid}) is no longer running"))
}

/// One request: `Ok(reported release sha)` on 2xx.
async fn once(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let resp = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| pki::error_chain(&e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| pki::error_chain(&e))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(300).collect();
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    let sha = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("release")?.get("sha256")?.as_str().map(str::to_owned));
    Ok(sha)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
