//! The reference agent: an mTLS daemon that answers `GET /health` and
//! `GET /status`, reporting the release it was started from.
//!
//! A user's own service can take its place through `swarm.toml`; this one
//! exists so a fresh fleet has something real to update and probe.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pki::wire::{AgentHealth, AgentStatus, ErrorBody, MANIFEST_FILE, Manifest};
use pki::{Bundle, Identity};
use tokio::net::TcpListener;

/// How long `--health-cmd` may run before the agent calls itself unhealthy.
const HEALTH_CMD_TIMEOUT: Duration = Duration::from_secs(5);

/// Command-line arguments.
#[derive(Debug, clap::Parser)]
#[command(
    name = "worker-agent",
    version,
    about = "swarm's reference agent: an mTLS daemon answering /health and /status"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "SWARM_AGENT_LISTEN", default_value = "0.0.0.0:8765")]
    pub listen: SocketAddr,
    /// Directory holding the agent bundle (ca.crt, worker.crt, worker.key).
    #[arg(long, env = "SWARM_AGENT_DIR")]
    pub agent_dir: Option<PathBuf>,
    /// The release this agent runs from (set by the updater).
    #[arg(long, env = "SWARM_RELEASE_DIR")]
    pub release_dir: Option<PathBuf>,
    /// The worker's install directory (set by the updater).
    #[arg(long, env = "SWARM_INSTALL_DIR")]
    pub install_dir: Option<PathBuf>,
    /// A shell command run on every /health; non-zero exit answers 503.
    #[arg(long, env = "SWARM_AGENT_HEALTH_CMD")]
    pub health_cmd: Option<String>,
    /// Time and connection bounds of the mTLS listener.
    #[command(flatten)]
    pub serve: pki::ServeArgs,
}

/// Validated configuration: the bundle is loaded, paths resolved.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub bundle: Bundle,
    pub host: String,
    pub release_dir: Option<PathBuf>,
    pub install_dir: Option<PathBuf>,
    pub health_cmd: Option<String>,
    /// The bounds the listener enforces on every peer.
    pub limits: pki::ServeLimits,
}

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Config> {
        let agent_dir = match args.agent_dir {
            Some(d) => d,
            None => home_dir()
                .context("no --agent-dir and no HOME to find ~/.swarm/agent")?
                .join(".swarm/agent"),
        };
        let bundle = Bundle::load(&agent_dir)
            .with_context(|| format!("loading the agent bundle from {}", agent_dir.display()))?;
        let host = match bundle.identity() {
            Identity::Agent(h) => h.to_string(),
            other => anyhow::bail!(
                "{}: certificate CN {other} is not an agent identity (expected the bare host name)",
                agent_dir.display()
            ),
        };
        Ok(Config {
            listen: args.listen,
            bundle,
            host,
            release_dir: args.release_dir,
            install_dir: args.install_dir,
            health_cmd: args.health_cmd.filter(|c| !c.trim().is_empty()),
            limits: args.serve.limits(),
        })
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Bind, announce, and serve until SIGTERM or SIGINT.
pub async fn main(config: Config) -> anyhow::Result<()> {
    let tls = pki::server_config(&config.bundle)?;
    // Register the handlers before announcing, so a SIGTERM that follows
    // the "listening" line is always a graceful stop.
    let shutdown = pki::daemon::shutdown_signal().context("installing signal handlers")?;
    let listener = match activated()? {
        Some(l) => l,
        None => TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?,
    };
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, host = %config.host, "agent listening");
    run(listener, tls, config, shutdown).await
}

/// The listener passed by socket activation (systemd's protocol, as the
/// updater speaks it for `[agent] listen`): `LISTEN_FDS` sockets from fd 3,
/// meant for us only when `LISTEN_PID` is our pid. The first one is served
/// (`--listen` is then ignored); none passed, or passed to another
/// process, is `None`: bind `--listen` as usual.
///
/// `listenfd` does the taking: turning fd 3 into a listener needs
/// `FromRawFd`, which is `unsafe` (forbidden in this workspace), and it
/// checks the fd really is a TCP socket and marks it close-on-exec.
fn activated() -> anyhow::Result<Option<TcpListener>> {
    let Some(count) = std::env::var("LISTEN_FDS").ok() else {
        return Ok(None);
    };
    let me = std::process::id().to_string();
    match std::env::var("LISTEN_PID") {
        Ok(pid) if pid == me => {}
        Ok(pid) => {
            tracing::warn!(
                "LISTEN_FDS={count} is meant for pid {pid}, not this process ({me}); binding --listen"
            );
            return Ok(None);
        }
        Err(_) => {
            tracing::warn!("LISTEN_FDS={count} without LISTEN_PID; binding --listen");
            return Ok(None);
        }
    }
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 1 {
        tracing::warn!(
            "{} sockets passed (LISTEN_FDS); serving the first only",
            fds.len()
        );
    }
    let Some(listener) = fds
        .take_tcp_listener(0)
        .context("taking the socket passed as fd 3 (LISTEN_FDS)")?
    else {
        return Ok(None);
    };
    listener
        .set_nonblocking(true)
        .context("making the passed socket non-blocking")?;
    let listener = TcpListener::from_std(listener).context("the passed socket")?;
    tracing::info!("serving the socket passed by LISTEN_FDS");
    Ok(Some(listener))
}

struct AppState {
    host: String,
    release: Option<Manifest>,
    release_dir: Option<PathBuf>,
    install_dir: Option<PathBuf>,
    health_cmd: Option<String>,
    started: Instant,
    started_at: String,
}

/// Serve the agent's endpoints on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let release = config.release_dir.as_deref().and_then(read_manifest);
    let limits = config.limits;
    let state = Arc::new(AppState {
        host: config.host,
        release,
        release_dir: config.release_dir,
        install_dir: config.install_dir,
        health_cmd: config.health_cmd,
        started: Instant::now(),
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .with_state(state);
    pki::serve_with(listener, tls, app, shutdown, limits).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The manifest of the release we start from; read once, at start.
fn read_manifest(release_dir: &std::path::Path) -> Option<Manifest> {
    let m = Manifest::read(release_dir);
    if m.is_none() {
        tracing::warn!(
            "{}: no readable {MANIFEST_FILE}; reporting no release",
            release_dir.display()
        );
    }
    m
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if let Some(cmd) = &state.health_cmd
        && let Err(why) = run_health_cmd(cmd).await
    {
        return ErrorBody::response(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    Json(AgentHealth {
        status: "ok".into(),
        role: "agent".into(),
        host: state.host.clone(),
        release: state.release.clone(),
        pid: std::process::id(),
        uptime_secs: state.started.elapsed().as_secs(),
    })
    .into_response()
}

async fn run_health_cmd(cmd: &str) -> Result<(), String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(HEALTH_CMD_TIMEOUT, child).await {
        Err(_) => Err(format!(
            "health command {cmd:?} timed out after {HEALTH_CMD_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!("health command {cmd:?} could not run: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "health command {cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Json<AgentStatus> {
    Json(AgentStatus {
        status: "ok".into(),
        role: "agent".into(),
        host: state.host.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_secs: state.started.elapsed().as_secs(),
        started_at: state.started_at.clone(),
        release: state.release.clone(),
        release_dir: state.release_dir.as_ref().map(|p| p.display().to_string()),
        install_dir: state.install_dir.as_ref().map(|p| p.display().to_string()),
    })
}
