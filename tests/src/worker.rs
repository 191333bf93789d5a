//! One worker: a real `worker-updater` with its own install dir, the
//! master-authenticated client to drive it, and its agent's `/health`.
//!
//! ```no_run
//! # async fn demo() {
//! use tests::{TestPki, release::ReleaseTree, worker::{Worker, WorkerOptions}};
//! let pki = TestPki::new();
//! let w = Worker::start(&pki, "w1", WorkerOptions::default());
//! let client = w.master_client(&pki);
//! let tree = ReleaseTree::new().file("hello.txt", b"hi");
//! let (code, body) = w.push(&client, &tree.tarball()).await;
//! assert_eq!(code, 200, "{body:?}");
//! # }
//! ```
//!
//! Every worker gets a loopback port for its agent in advance; the updater's
//! default agent command is the `worker-agent` listening there, so a tree
//! without `swarm.toml` runs the reference agent. The updater's stderr goes
//! to `<dir>/updater.log` (see [`Worker::log`]) for post-mortems. Dropping
//! a [`Worker`] kills the updater and everything it left running.
//!
//! The tests start workers with [`Worker::start`] (bundles from a
//! [`TestPki`], updater on port 0) or through [`crate::Swarm`] (bundles
//! from `swarm enroll`); the bench through the same `Swarm`, with
//! [`WorkerOptions::as_shipped`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pki::wire::{AgentHealth, OpResponse, Releases, UpdaterHealth};
use tempfile::TempDir;

use crate::process::{self, Daemon};
use crate::release::{release_form, sha256_hex};
use crate::{Bins, Port, TestPki, WorkerBundles};

/// How long an updater may take to print `listening on …`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `/health` request to an agent may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the tests poll an agent.
const POLL: Duration = Duration::from_millis(20);

/// Knobs for [`Worker::try_start`]. The defaults keep probes short so
/// broken releases fail fast in tests, with a deadline a little above the
/// updater's default (2.5 s) so that agents starting on a host loaded by
/// the whole suite still pass. `None` leaves the updater's own default.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The binaries to run.
    pub bins: Bins,
    /// Where `install/` and `updater.log` go; `None`: a temp dir of its own.
    pub dir: Option<PathBuf>,
    /// Port for the agent; `None` reserves one.
    pub agent_port: Option<u16>,
    /// `--agent-cmd`; `None` means `<worker-agent> --listen 127.0.0.1:<agent_port>`.
    pub agent_cmd: Option<String>,
    /// Probe deadline, ms (`--probe-deadline-ms`).
    pub probe_deadline_ms: Option<u64>,
    /// Most probe attempts, 0 for no limit (`--probe-attempts`).
    pub probe_attempts: Option<u32>,
    /// First backoff between probe attempts, ms (`--probe-backoff-ms`).
    pub probe_backoff_ms: Option<u64>,
    /// Largest backoff between probe attempts, ms (`--probe-max-backoff-ms`).
    pub probe_max_backoff_ms: Option<u64>,
    /// Timeout of one probe request, ms (`--probe-timeout-ms`).
    pub probe_timeout_ms: Option<u64>,
    /// Grace between SIGTERM and SIGKILL for the agent, ms (`--stop-grace-ms`).
    pub stop_grace_ms: Option<u64>,
    /// Extra command-line arguments for the updater.
    pub extra_args: Vec<String>,
    /// Environment variables for the updater.
    pub env: Vec<(String, String)>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            bins: Bins::built(),
            dir: None,
            agent_port: None,
            agent_cmd: None,
            probe_deadline_ms: Some(4000),
            probe_attempts: Some(0),
            probe_backoff_ms: Some(20),
            probe_max_backoff_ms: Some(200),
            probe_timeout_ms: Some(1000),
            stop_grace_ms: Some(3000),
            extra_args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info,worker_updater=debug".into())],
        }
    }
}

impl WorkerOptions {
    /// The updater as it ships (every default its own), running `bins`:
    /// what the bench measures.
    pub fn as_shipped(bins: Bins) -> WorkerOptions {
        WorkerOptions {
            bins,
            dir: None,
            agent_port: None,
            agent_cmd: None,
            probe_deadline_ms: None,
            probe_attempts: None,
            probe_backoff_ms: None,
            probe_max_backoff_ms: None,
            probe_timeout_ms: None,
            stop_grace_ms: None,
            extra_args: Vec::new(),
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
        }
    }
}

/// A running `worker-updater` with its own install dir and bundles.
pub struct Worker {
    /// The worker's enrolled bundles (agent and updater).
    pub bundles: WorkerBundles,
    /// `--install-dir`.
    pub install_dir: PathBuf,
    /// The updater's bound address.
    pub addr: SocketAddr,
    /// The agent's loopback port.
    pub agent_port: u16,
    /// The options it was started with (reused by [`Worker::restart`]).
    pub options: WorkerOptions,
    /// Holds `install/` and `updater.log`.
    dir: PathBuf,
    /// `dir`, when it is the worker's own.
    _tmp: Option<TempDir>,
    /// `--listen` (port 0 unless started with a fixed address).
    listen: SocketAddr,
    updater: Option<Daemon>,
    /// The updater's identity, pinned to the agent's CN, no connection
    /// reuse: "answering" means the process that listens now.
    health_client: reqwest::Client,
    /// Ports reserved for this worker, held as long as it lives.
    ports: Vec<Port>,
}

impl Worker {
    /// Enroll `host` in `pki` and start its updater on port 0; panics on failure.
    pub fn start(pki: &TestPki, host: &str, options: WorkerOptions) -> Worker {
        Worker::start_with(
            pki.worker(host),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            options,
        )
    }

    /// [`Worker::try_start`] for tests: panics on failure.
    pub fn start_with(
        bundles: WorkerBundles,
        listen: SocketAddr,
        options: WorkerOptions,
    ) -> Worker {
        let host = bundles.host.clone();
        Worker::try_start(bundles, listen, options)
            .unwrap_or_else(|e| panic!("worker {host}: {e:#}"))
    }

    /// Start an updater holding `bundles` (issued by a [`TestPki`] or
    /// `swarm enroll`), listening on `listen` (port 0 picks one).
    pub fn try_start(
        bundles: WorkerBundles,
        listen: SocketAddr,
        options: WorkerOptions,
    ) -> anyhow::Result<Worker> {
        let (dir, tmp) = match &options.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().context("creating a temp dir")?;
                (t.path().to_owned(), Some(t))
            }
        };
        let install_dir = dir.join("install");
        std::fs::create_dir_all(&install_dir)
            .with_context(|| format!("creating {}", install_dir.display()))?;
        let mut ports = Vec::new();
        let agent_port = match options.agent_port {
            Some(p) => p,
            None => {
                let p = Port::reserve()?;
                let n = p.get();
                ports.push(p);
                n
            }
        };
        let health_client = health_client(
            &pki::Bundle::load(&bundles.updater_dir)?,
            bundles.host.as_str(),
        )?;
        let mut w = Worker {
            bundles,
            install_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent_port,
            options,
            dir,
            _tmp: tmp,
            listen,
            updater: None,
            health_client,
            ports,
        };
        w.spawn_updater()?;
        Ok(w)
    }

    /// Keep `port` reserved as long as this worker lives.
    pub fn hold(&mut self, port: Port) {
        self.ports.push(port);
    }

    /// The directory holding `install/` and `updater.log` (room for a
    /// test's own files too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The default agent command: the reference agent on our port.
    pub fn default_agent_cmd(&self) -> String {
        format!(
            "{} --listen 127.0.0.1:{}",
            self.options.bins.agent.display(),
            self.agent_port
        )
    }

    /// The agent's health URL.
    pub fn agent_url(&self) -> String {
        format!("https://127.0.0.1:{}/health", self.agent_port)
    }

    /// The updater command line this worker runs with.
    pub fn updater_command(&self) -> Command {
        let o = &self.options;
        let mut cmd = Command::new(&o.bins.updater);
        cmd.arg("--listen")
            .arg(self.listen.to_string())
            .arg("--updater-dir")
            .arg(&self.bundles.updater_dir)
            .arg("--agent-dir")
            .arg(&self.bundles.agent_dir)
            .arg("--install-dir")
            .arg(&self.install_dir)
            .arg("--agent-cmd")
            .arg(
                o.agent_cmd
                    .clone()
                    .unwrap_or_else(|| self.default_agent_cmd()),
            )
            .arg("--agent-url")
            .arg(self.agent_url());
        let tuning = [
            ("--probe-deadline-ms", o.probe_deadline_ms),
            ("--probe-attempts", o.probe_attempts.map(u64::from)),
            ("--probe-backoff-ms", o.probe_backoff_ms),
            ("--probe-max-backoff-ms", o.probe_max_backoff_ms),
            ("--probe-timeout-ms", o.probe_timeout_ms),
            ("--stop-grace-ms", o.stop_grace_ms),
        ];
        for (flag, value) in tuning {
            if let Some(v) = value {
                cmd.arg(flag).arg(v.to_string());
            }
        }
        cmd.args(&o.extra_args);
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn_updater(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.updater_command();
        let name = format!("worker-updater of {}", self.bundles.host);
        let log = self.dir.join("updater.log");
        let (daemon, addr) = Daemon::spawn_listening(&name, &mut cmd, &log, START_TIMEOUT)?;
        self.addr = match addr.parse() {
            Ok(a) => a,
            Err(e) => bail!("{name} announced {addr:?} ({e}); log:\n{}", self.log()),
        };
        self.updater = Some(daemon);
        Ok(())
    }

    /// The updater's pid.
    pub fn updater_pid(&self) -> u32 {
        self.updater
            .as_ref()
            .map(Daemon::pid)
            .expect("updater running")
    }

    /// Kill the updater with SIGKILL (the agent it spawned keeps running).
    pub fn kill_updater(&mut self) {
        if let Some(mut d) = self.updater.take() {
            d.kill();
        }
    }

    /// SIGTERM the updater and wait for it to exit; its exit status.
    pub fn terminate_updater(&mut self) -> std::process::ExitStatus {
        let mut daemon = self.updater.take().expect("updater running");
        daemon
            .signal(nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM the updater");
        daemon
            .wait(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Start the updater again on the same install dir (new port unless
    /// started on a fixed one).
    pub fn restart(&mut self) {
        self.kill_updater();
        if let Err(e) = self.spawn_updater() {
            panic!("restarting the updater: {e:#}");
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A client with the master identity, pinned to this updater's CN.
    pub fn master_client(&self, pki: &TestPki) -> reqwest::Client {
        client_for(&pki.master(), &self.bundles.host.updater_cn())
    }

    /// A client with the agent's identity (for 403 tests), pinned to the updater.
    pub fn agent_identity_client(&self) -> reqwest::Client {
        let b = pki::Bundle::load(&self.bundles.agent_dir).expect("agent bundle");
        client_for(&b, &self.bundles.host.updater_cn())
    }

    /// A client with the updater's own identity, pinned to the agent's CN
    /// (what the updater itself uses to probe), opening a fresh connection
    /// for every request.
    pub fn agent_probe_client(&self) -> reqwest::Client {
        self.health_client.clone()
    }

    /// Push `tgz` with its correct digest.
    pub async fn push(&self, client: &reqwest::Client, tgz: &[u8]) -> (u16, OpResponse) {
        self.push_with_digest(client, tgz, &sha256_hex(tgz)).await
    }

    /// Push `tgz` claiming digest `sha256`.
    pub async fn push_with_digest(
        &self,
        client: &reqwest::Client,
        tgz: &[u8],
        sha256: &str,
    ) -> (u16, OpResponse) {
        let resp = client
            .post(self.url("/update"))
            .multipart(release_form(tgz, sha256, &[]))
            .send()
            .await
            .expect("POST /update");
        op_response(resp).await
    }

    /// `POST /rollback`.
    pub async fn rollback(&self, client: &reqwest::Client) -> (u16, OpResponse) {
        let resp = client
            .post(self.url("/rollback"))
            .send()
            .await
            .expect("POST /rollback");
        op_response(resp).await
    }

    /// `GET /releases`.
    pub async fn releases(&self, client: &reqwest::Client) -> Releases {
        self.get_ok(client, "/releases").await
    }

    /// `GET /health` on the updater.
    pub async fn health(&self, client: &reqwest::Client) -> UpdaterHealth {
        self.get_ok(client, "/health").await
    }

    /// `GET path` on the updater, expecting 200 and a `T`.
    async fn get_ok<T: serde::de::DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        path: &str,
    ) -> T {
        let resp = client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: body: {e}"))
    }

    /// The agent's `/health`, or `None` when it does not answer 200.
    pub async fn agent_health(&self) -> Option<AgentHealth> {
        agent_health(&self.health_client, &self.agent_url()).await
    }

    /// Poll the agent every `every` until it answers on release `sha256`;
    /// what it said, and the instant it did.
    pub async fn wait_release(
        &self,
        sha256: &str,
        timeout: Duration,
        every: Duration,
    ) -> anyhow::Result<(AgentHealth, Instant)> {
        wait_health(
            &self.health_client,
            &self.agent_url(),
            Some(sha256),
            timeout,
            every,
        )
        .await
        .with_context(|| format!("agent of {}", self.bundles.host))
    }

    /// Wait until the agent reports the release with `sha256`; panics
    /// after 15 s.
    pub async fn wait_agent_release(&self, sha256: &str) -> AgentHealth {
        match self
            .wait_release(sha256, Duration::from_secs(15), POLL)
            .await
        {
            Ok((health, _)) => health,
            Err(e) => panic!("agent reporting release: {e:#}"),
        }
    }

    /// [`Worker::wait_agent_release`] from a test without a runtime.
    pub fn wait_agent_release_blocking(&self, sha256: &str) -> AgentHealth {
        crate::block_on(self.wait_agent_release(sha256))
    }

    /// Where `current` points, relative, or `None` when it is missing.
    pub fn current_target(&self) -> Option<PathBuf> {
        std::fs::read_link(self.install_dir.join("current")).ok()
    }

    /// The sha256 in the manifest of `releases/<slot>`, if any.
    pub fn slot_sha(&self, slot: &str) -> Option<String> {
        manifest_sha(&self.install_dir.join("releases").join(slot))
    }

    /// The `release_id` of the release in `releases/<slot>` (what the
    /// master names a release by).
    pub fn slot_id(&self, slot: &str) -> Option<String> {
        let dir = self.install_dir.join("releases").join(slot);
        pki::wire::Manifest::read(&dir)?.release_id
    }

    /// The pid in `agent.pid`, if it names one.
    pub fn agent_pid(&self) -> Option<i32> {
        process::read_pidfile(&self.install_dir.join("agent.pid"))
    }

    /// The updater's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("updater.log")).unwrap_or_default()
    }

    /// The agent's spawn log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.install_dir.join("agent.spawn.log")).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill_updater();
        process::kill_worker_leftovers(&self.install_dir);
    }
}

/// The sha256 in the manifest of the release in `dir`, if any.
pub fn manifest_sha(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(pki::wire::MANIFEST_FILE)).ok()?;
    let m: pki::wire::Manifest = serde_json::from_str(&text).ok()?;
    Some(m.sha256)
}

/// A reqwest client presenting `bundle`, expecting a server with CN `cn`.
pub fn client_for(bundle: &pki::Bundle, cn: &str) -> reqwest::Client {
    pki::http_client(bundle, pki::ServerExpectation::cn(cn))
        .expect("client config")
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// An mTLS client for an agent's `/health`, presenting `bundle` and
/// expecting CN `cn`, with no connection reuse: every poll is a fresh
/// connection, so "answering" means the process that listens now.
pub fn health_client(bundle: &pki::Bundle, cn: &str) -> anyhow::Result<reqwest::Client> {
    pki::http_client(bundle, pki::ServerExpectation::cn(cn))?
        .pool_max_idle_per_host(0)
        .timeout(HEALTH_TIMEOUT)
        .build()
        .context("building the health client")
}

/// One `GET url`: the agent's `/health` when it answered 200.
pub async fn agent_health(client: &reqwest::Client, url: &str) -> Option<AgentHealth> {
    let resp = client.get(url).send().await.ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.json().await.ok()
}

/// Poll `url` every `every` until the agent answers 200 (and, with `want`,
/// reports that release); what it said and the instant it did.
pub async fn wait_health(
    client: &reqwest::Client,
    url: &str,
    want: Option<&str>,
    timeout: Duration,
    every: Duration,
) -> anyhow::Result<(AgentHealth, Instant)> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(health) = agent_health(client, url).await {
            let sha = health.release.as_ref().map(|m| m.sha256.clone());
            if want.is_none() || sha.as_deref() == want {
                return Ok((health, Instant::now()));
            }
            last = sha;
        }
        if Instant::now() > deadline {
            bail!(
                "{url} did not answer healthy{} within {timeout:?} (last release seen: {last:?})",
                want.map(|w| format!(" on release {}", short(w)))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// The first 12 hex digits of a digest, for messages.
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

async fn op_response(resp: reqwest::Response) -> (u16, OpResponse) {
    let code = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {code}: body {text:?} is not an OpResponse: {e}"));
    (code, body)
}
