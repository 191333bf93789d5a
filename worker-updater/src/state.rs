//! The daemon's state ([`Daemon`]): configuration, the two slot sets, the
//! agent supervisor, the probe client, and the operation guard — one
//! operation per worker at a time, handed out only by [`Daemon::try_begin`].

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use pki::wire::Manifest;

use crate::agent::sockets::Sockets;
use crate::agent::supervise::Watch;
use crate::agent::{Matcher, Supervisor};
use crate::config::Config;
use crate::error::{Result, UpdaterError};
use crate::install::Install;
use crate::journal::Journal;
use crate::logs::SpawnLog;
use crate::release::{HostEnv, ReleaseSpec};
use crate::slots::Layout;

/// Shared state of the daemon. Its methods are the state's own; the
/// operations on it live in [`crate::ops`] and [`crate::selfupdate`].
pub struct Daemon {
    pub config: Config,
    pub install: Install,
    /// The agent's slots (`<install>/current`, `releases/`).
    pub layout: Layout,
    /// The updater's own slots (`updater/`), touched only by `/update-self`.
    pub updater_layout: Layout,
    pub supervisor: Supervisor,
    /// What the supervisor knows of the agent (issue 11).
    pub watch: Watch,
    /// The operation journal (`GET /history`).
    pub journal: Journal,
    /// Certificates the master revoked (`deny.json`, `POST /deny`).
    pub deny: pki::DenyList,
    /// The certificate the updater presents, replaced by `POST /renew`.
    pub cert: Arc<pki::SwappableCert>,
    /// The agent's output (`GET /logs`, `log_tail`).
    pub spawn_log: SpawnLog,
    pub probe_client: reqwest::Client,
    /// The updater's own release (the slot it runs from), read at start.
    pub own_release: Option<Manifest>,
    /// The agent's listen sockets (issue 14).
    pub sockets: &'static Sockets,
    /// An old agent a failed start-first left serving: the restore of its
    /// release takes it back instead of restarting it.
    pub kept: Mutex<Option<Kept>>,
    /// Program names our agents run as (default, reference agent, and every
    /// release parsed since the start), for the `/proc` scan.
    programs: Mutex<BTreeSet<String>>,
    busy: Mutex<Option<&'static str>>,
    /// A self-update's exec, waiting for the server to stop and its
    /// connections to finish ([`Daemon::request_handoff`]).
    handoff: Mutex<Option<HandoffFn>>,
    handoff_ready: tokio::sync::Notify,
}

/// An agent left running by a failed start-first restart.
#[derive(Clone, Debug)]
pub struct Kept {
    pub pid: i32,
    pub start_time: Option<u64>,
    /// The release it runs.
    pub sha256: Option<String>,
}

/// What runs once the server has stopped: the exec (it returns only when
/// the exec failed, after putting the previous release back).
pub type HandoffFn = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.config)
            .field("layout", &self.layout)
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

/// Holds the worker for one operation; released on drop.
#[derive(Debug)]
pub struct OpGuard {
    daemon: Arc<Daemon>,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if let Ok(mut b) = self.daemon.busy.lock() {
            *b = None;
        }
    }
}

impl Daemon {
    pub fn new(config: Config, own_release: Option<Manifest>) -> anyhow::Result<Daemon> {
        let install = Install::new(&config.install_dir);
        let layout = Layout::new(&config.install_dir, config.failed_keep)
            .keeping(config.keep_releases.saturating_sub(2));
        let supervisor = Supervisor::new(
            &config.install_dir,
            install.pidfile(),
            install.spawn_log(),
            config.stop_grace,
        );
        let probe_client = pki::http_client(
            &config.bundle,
            pki::ServerExpectation::cn(config.host.as_str()),
        )?
        .connect_timeout(config.probe.timeout)
        // A fresh connection per probe: a kept-alive one would keep
        // reaching the agent that accepted it (start-first, issue 14).
        .pool_max_idle_per_host(0)
        .build()?;
        let updater_layout = Layout::updater(&config.install_dir, config.failed_keep);
        let mut programs = BTreeSet::from(["worker-agent".to_owned()]);
        if let Some(name) = config
            .agent_cmd
            .first()
            .and_then(|c| Path::new(c).file_name())
        {
            programs.insert(name.to_string_lossy().into_owned());
        }
        let journal = Journal::new(crate::journal::path_in(&config.install_dir));
        let spawn_log = SpawnLog::new(install.spawn_log());
        let deny = crate::deny::load(&config.install_dir)?;
        // An unusable release.pub or seq file stops the start (fail closed).
        crate::signing::release_pub(&config.bundle.dir)?;
        crate::signing::highest(&config.install_dir)?;
        let cert = Arc::new(pki::SwappableCert::new(&config.bundle)?);
        Ok(Daemon {
            config,
            install,
            layout,
            updater_layout,
            supervisor,
            watch: Watch::default(),
            journal,
            deny,
            cert,
            spawn_log,
            probe_client,
            own_release,
            sockets: Sockets::global(),
            kept: Mutex::new(None),
            programs: Mutex::new(programs),
            busy: Mutex::new(None),
            handoff: Mutex::new(None),
            handoff_ready: tokio::sync::Notify::new(),
        })
    }

    /// Take the worker for `op`, or fail at once with `Busy`.
    pub fn try_begin(self: &Arc<Self>, op: &'static str) -> Result<OpGuard> {
        let mut b = self
            .busy
            .lock()
            .map_err(|_| UpdaterError::Internal("operation lock poisoned".into()))?;
        if let Some(running) = *b {
            return Err(UpdaterError::Busy(running));
        }
        *b = Some(op);
        Ok(OpGuard {
            daemon: self.clone(),
        })
    }

    /// The operation running now, if any.
    pub fn busy(&self) -> Option<String> {
        self.busy.lock().ok().and_then(|b| b.map(str::to_owned))
    }

    /// Ask the server to stop accepting, let every connection finish (the
    /// self-update's answer flushed and its connection closed, bounded by
    /// the server's shutdown grace), then run `exec` ([`crate::run`]).
    pub fn request_handoff(&self, exec: HandoffFn) {
        if let Ok(mut h) = self.handoff.lock() {
            *h = Some(exec);
        }
        self.handoff_ready.notify_one();
    }

    /// Resolves once a hand-over was requested.
    pub async fn handoff_requested(&self) {
        self.handoff_ready.notified().await;
    }

    /// The hand-over waiting to run, if any.
    pub fn take_handoff(&self) -> Option<HandoffFn> {
        self.handoff.lock().ok().and_then(|mut h| h.take())
    }

    /// How to recognise this worker's agent in `/proc`.
    pub fn matcher(&self) -> Matcher {
        Matcher {
            programs: self
                .programs
                .lock()
                .map(|p| p.iter().cloned().collect())
                .unwrap_or_default(),
            install_dir: self.config.install_dir.clone(),
            agent_dir: self.config.agent_dir.clone(),
        }
    }

    /// The host's `.env.local`, read now (blocking: call it off the async threads).
    pub fn host_env(&self) -> Result<HostEnv> {
        HostEnv::read(&self.install.env_local())
    }

    /// The agent release in slot `dir`, to run from `releases/active`
    /// (blocking). Its program joins those the `/proc` scan knows.
    pub fn spec_on_disk(&self, dir: &Path, host: &HostEnv) -> ReleaseSpec {
        let spec = ReleaseSpec::on_disk(dir, &self.layout.live_dir(), host, &self.config);
        self.note_program(&spec);
        spec
    }

    /// Remember the program `spec`'s agent runs as.
    pub fn note_program(&self, spec: &ReleaseSpec) {
        if let Some(name) = spec.program_name()
            && let Ok(mut p) = self.programs.lock()
        {
            p.insert(name);
        }
    }
}

/// Run blocking filesystem work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UpdaterError::Internal(format!("blocking task: {e}")))?
}
