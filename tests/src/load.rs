//! A load generator for zero-downtime checks (issue 14): tasks that keep
//! requesting a URL over fresh connections (no reuse: every request is a
//! new TCP connection and TLS handshake, as new users arrive) and count
//! what succeeded and what was refused or failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How many failures are kept verbatim for the report.
const KEPT_ERRORS: usize = 20;

/// A running load: stop it with [`Load::finish`].
pub struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a load saw.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub ok: u64,
    /// Refused connections, resets, timeouts and non-2xx answers.
    pub failed: u64,
    /// The first few failures, as the client said them.
    pub errors: Vec<String>,
}

impl Load {
    /// `tasks` loops, each sending `GET url` with `client` and pausing
    /// `pause` between requests (about `tasks / pause` requests a second
    /// when the answers are fast).
    pub fn start(client: reqwest::Client, url: String, tasks: usize, pause: Duration) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..tasks)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                let (ok, failed, errors, stop) =
                    (ok.clone(), failed.clone(), errors.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        // `Connection: close`: a new user each time, never a
                        // kept-alive connection handed from one loop to the other.
                        let req = client.get(&url).header("connection", "close");
                        let outcome = match req.send().await {
                            Ok(r) if r.status().is_success() => r
                                .bytes()
                                .await
                                .map(|_| ())
                                .map_err(|e| pki::error_chain(&e)),
                            Ok(r) => Err(format!("HTTP {}", r.status())),
                            Err(e) => Err(pki::error_chain(&e)),
                        };
                        match outcome {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut v) = errors.lock()
                                    && v.len() < KEPT_ERRORS
                                {
                                    let at = time::OffsetDateTime::now_utc()
                                        .format(&time::format_description::well_known::Rfc3339)
                                        .unwrap_or_default();
                                    v.push(format!("{at}: {e}"));
                                }
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            ok,
            failed,
            errors,
            stop,
            tasks,
        }
    }

    /// Requests answered so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stop the loops (each finishes its request in flight) and tally.
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Tally {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            errors: self.errors.lock().map(|v| v.clone()).unwrap_or_default(),
        }
    }
}

/// An mTLS client for the load: `bundle`'s identity, the server's CN
/// `cn`, a fresh connection per request, a generous timeout (a stop-first
/// restart holds connections in the backlog for as long as the new agent
/// takes to start).
pub fn client(bundle: &pki::Bundle, cn: &str) -> anyhow::Result<reqwest::Client> {
    Ok(pki::http_client(bundle, pki::ServerExpectation::cn(cn))?
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?)
}
