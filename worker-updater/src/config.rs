//! Command-line arguments (each with a `SWARM_UPDATER_*` variable, so a
//! re-exec can rebuild them from the environment) and the validated
//! [`Config`] built from them before anything is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use pki::{Bundle, BundleKind, HostName, Identity};

use crate::probe::ProbeSettings;
use crate::receive::Caps;

/// `worker-updater` arguments.
#[derive(Clone, Debug, clap::Parser, serde::Serialize)]
#[command(
    name = "worker-updater",
    version,
    about = "swarm updater: receives releases over mTLS, installs them in A/B slots, restarts and probes the agent, rolls back"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "SWARM_UPDATER_LISTEN", default_value = "0.0.0.0:8766")]
    pub listen: SocketAddr,
    /// The updater's bundle (ca.crt, updater.crt, updater.key). Default ~/.swarm/updater.
    #[arg(long, env = "SWARM_UPDATER_BUNDLE_DIR")]
    pub updater_dir: Option<PathBuf>,
    /// The install directory holding `current`, `releases/`, `agent.pid`.
    #[arg(long, env = "SWARM_UPDATER_INSTALL_DIR", default_value = "/opt/swarm")]
    pub install_dir: PathBuf,
    /// The agent's bundle dir, passed to the agent as SWARM_AGENT_DIR. Default ~/.swarm/agent.
    #[arg(long, env = "SWARM_UPDATER_AGENT_DIR")]
    pub agent_dir: Option<PathBuf>,
    /// Agent command when a release has no `[agent] command` (relative
    /// programs with a `/` are relative to the release root).
    #[arg(
        long,
        env = "SWARM_UPDATER_AGENT_CMD",
        default_value = "bin/worker-agent"
    )]
    pub agent_cmd: String,
    /// Agent health URL when a release has no `[agent] health_url`.
    #[arg(
        long,
        env = "SWARM_UPDATER_AGENT_URL",
        default_value = "https://127.0.0.1:8765/health"
    )]
    pub agent_url: String,
    /// How long the health probe of a freshly started agent may last, in
    /// ms, before the release is declared unhealthy (a release's `[agent]
    /// probe_deadline_secs` replaces it for that release).
    #[arg(long, env = "SWARM_UPDATER_PROBE_DEADLINE_MS", default_value_t = 2500)]
    pub probe_deadline_ms: u64,
    /// Most probe attempts, on top of the deadline; 0 for no limit.
    #[arg(long, env = "SWARM_UPDATER_PROBE_ATTEMPTS", default_value_t = 0)]
    pub probe_attempts: u32,
    /// Pause after a failed probe, in ms, for the first 500 ms; then it
    /// doubles up to the max.
    #[arg(long, env = "SWARM_UPDATER_PROBE_BACKOFF_MS", default_value_t = 5)]
    pub probe_backoff_ms: u64,
    /// Largest pause between probes, in ms.
    #[arg(
        long,
        env = "SWARM_UPDATER_PROBE_MAX_BACKOFF_MS",
        default_value_t = 250
    )]
    pub probe_max_backoff_ms: u64,
    /// Timeout of one probe request, in ms.
    #[arg(long, env = "SWARM_UPDATER_PROBE_TIMEOUT_MS", default_value_t = 3000)]
    pub probe_timeout_ms: u64,
    /// Largest upload (compressed), in bytes.
    #[arg(long, env = "SWARM_UPDATER_MAX_UPLOAD_BYTES", default_value_t = 1 << 30)]
    pub max_upload_bytes: u64,
    /// Largest unpacked tar stream, in bytes.
    #[arg(long, env = "SWARM_UPDATER_MAX_UNPACKED_BYTES", default_value_t = 4 << 30)]
    pub max_unpacked_bytes: u64,
    /// Most tar entries in one release.
    #[arg(long, env = "SWARM_UPDATER_MAX_ENTRIES", default_value_t = 200_000)]
    pub max_entries: u64,
    /// Longest entry path (and link target), in bytes.
    #[arg(long, env = "SWARM_UPDATER_MAX_PATH_BYTES", default_value_t = 1024)]
    pub max_path_bytes: usize,
    /// Deepest entry path, in components.
    #[arg(long, env = "SWARM_UPDATER_MAX_PATH_DEPTH", default_value_t = 64)]
    pub max_path_depth: usize,
    /// Grace between SIGTERM and SIGKILL when stopping the agent, in ms.
    #[arg(long, env = "SWARM_UPDATER_STOP_GRACE_MS", default_value_t = 10_000)]
    pub stop_grace_ms: u64,
    /// Install hook timeout when `swarm.toml` gives none, in seconds.
    #[arg(
        long,
        env = "SWARM_UPDATER_INSTALL_TIMEOUT_SECS",
        default_value_t = 300
    )]
    pub install_timeout_secs: u64,
    /// Failed releases kept in `releases/failed/`.
    #[arg(long, env = "SWARM_UPDATER_FAILED_KEEP", default_value_t = 5)]
    pub failed_keep: usize,
    /// Good releases kept (issue 12), `active` and `prev` included: the
    /// others wait in `releases/kept/` for `POST /rollback` with a
    /// `release_id`. At least 2.
    #[arg(long, env = "SWARM_UPDATER_KEEP_RELEASES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=1000))]
    pub keep_releases: u64,
    /// At start-up, start the agent from `current` if none of ours is running.
    #[arg(long, env = "SWARM_UPDATER_START_AGENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub start_agent: bool,
    /// Time a new updater binary gets to pass `--check` during
    /// `/update-self`, in seconds.
    #[arg(
        long,
        env = "SWARM_UPDATER_SELF_CHECK_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub self_check_timeout_secs: u64,
    /// Time a self-updated updater gets to answer `/health` with its new
    /// release before the watchdog puts the previous one back, in seconds.
    #[arg(long, env = "SWARM_UPDATER_SELF_TRIAL_SECS", default_value_t = 20)]
    pub self_trial_secs: u64,
    /// A service manager restarts the updater whenever it exits (systemd
    /// `Restart=always`): a failed self-update trial then leaves the restart
    /// to it instead of starting the previous updater itself.
    #[arg(long, env = "SWARM_UPDATER_SUPERVISED", default_value_t = false, action = clap::ArgAction::Set)]
    pub supervised: bool,
    /// The updater binary to run when `updater/` holds no release (after a
    /// first self-update is reverted). Default: this executable, recorded at
    /// the first start and carried across self-updates.
    #[arg(long, env = "SWARM_UPDATER_BASE_EXE")]
    pub base_exe: Option<PathBuf>,
    /// Validate the configuration (flags, bundle, TLS key, install dir) and
    /// exit 0 without binding. `/update-self` runs a new updater binary this
    /// way, with the argv it will get, before switching to it.
    #[arg(long, conflicts_with = "watchdog")]
    pub check: bool,
    /// Internal: guard a self-update trial (started by the updater itself,
    /// from the previous binary; see wiki/operations.md "Self-update").
    #[arg(long, hide = true)]
    pub watchdog: bool,
}

/// Validated configuration: bundle loaded, paths absolute, numbers sane.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub bundle: Bundle,
    pub host: HostName,
    pub install_dir: PathBuf,
    pub agent_dir: PathBuf,
    pub agent_cmd: Vec<String>,
    pub agent_url: String,
    pub probe: ProbeSettings,
    pub caps: Caps,
    pub stop_grace: Duration,
    pub install_timeout: Duration,
    pub failed_keep: usize,
    /// Good releases kept, `active` and `prev` included.
    pub keep_releases: usize,
    pub start_agent: bool,
    pub self_check_timeout: Duration,
    pub self_trial: Duration,
    pub supervised: bool,
    /// What to run when `updater/` holds no release.
    pub base_exe: PathBuf,
    /// Every effective setting as `SWARM_UPDATER_*` variables: what a
    /// re-exec rebuilds its argv from.
    pub stash: Stash,
    /// The accept loop's bounds (`SWARM_SERVE_*`, checked here so a bad
    /// value exits 64 before the port is bound; inherited by a re-exec).
    pub serve_limits: pki::ServeLimits,
}

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Config> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let home = || {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .context("HOME is not set; give the directory explicitly")
        };
        let updater_dir = match &args.updater_dir {
            Some(d) => cwd.join(d),
            None => home()?.join(".swarm/updater"),
        };
        let agent_dir = match &args.agent_dir {
            Some(d) => cwd.join(d),
            None => home()?.join(".swarm/agent"),
        };
        let install_dir = clean(&cwd.join(&args.install_dir));
        let bundle = Bundle::load_kind(&updater_dir, BundleKind::Updater).with_context(|| {
            format!("loading the updater bundle from {}", updater_dir.display())
        })?;
        let host = match bundle.identity() {
            Identity::Updater(h) => h,
            other => bail!(
                "{}: certificate CN {other} is not an updater identity (expected updater@<host>)",
                updater_dir.display()
            ),
        };
        let agent_cmd = crate::release::split_command(&args.agent_cmd)
            .map_err(|e| anyhow::anyhow!("--agent-cmd: {e}"))?;
        if agent_cmd.first().is_none_or(String::is_empty) {
            bail!("--agent-cmd is empty");
        }
        let url = reqwest::Url::parse(&args.agent_url)
            .with_context(|| format!("--agent-url {:?}", args.agent_url))?;
        if url.scheme() != "https" {
            bail!("--agent-url must be https:// (the agent speaks mTLS only)");
        }
        let base_exe = match &args.base_exe {
            Some(p) => cwd.join(p),
            None => std::env::current_exe().context("cannot find this executable's path")?,
        };
        if args.self_trial_secs == 0 || args.self_check_timeout_secs == 0 {
            bail!("--self-trial-secs and --self-check-timeout-secs must be positive");
        }
        for (flag, v) in [
            ("--max-upload-bytes", args.max_upload_bytes),
            ("--max-unpacked-bytes", args.max_unpacked_bytes),
            ("--max-entries", args.max_entries),
            ("--max-path-bytes", args.max_path_bytes as u64),
            ("--max-path-depth", args.max_path_depth as u64),
            ("--probe-timeout-ms", args.probe_timeout_ms),
            ("--probe-deadline-ms", args.probe_deadline_ms),
        ] {
            if v == 0 {
                bail!("{flag} must be positive");
            }
        }
        let serve_limits = pki::ServeLimits::from_env().map_err(|e| anyhow::anyhow!(e))?;
        let stash = Stash::capture(&args, &updater_dir, &agent_dir, &install_dir, &base_exe);
        Ok(Config {
            serve_limits,
            listen: args.listen,
            bundle,
            host,
            install_dir,
            agent_dir,
            agent_cmd,
            agent_url: args.agent_url,
            probe: ProbeSettings {
                deadline: Duration::from_millis(args.probe_deadline_ms),
                attempts: (args.probe_attempts > 0).then_some(args.probe_attempts),
                backoff: Duration::from_millis(args.probe_backoff_ms),
                max_backoff: Duration::from_millis(
                    args.probe_max_backoff_ms.max(args.probe_backoff_ms),
                ),
                timeout: Duration::from_millis(args.probe_timeout_ms),
                require_pid: false,
            },
            caps: Caps {
                max_compressed: args.max_upload_bytes,
                max_unpacked: args.max_unpacked_bytes,
                max_entries: args.max_entries,
                max_path_bytes: args.max_path_bytes,
                max_path_depth: args.max_path_depth,
            },
            stop_grace: Duration::from_millis(args.stop_grace_ms),
            install_timeout: Duration::from_secs(args.install_timeout_secs),
            failed_keep: args.failed_keep,
            keep_releases: usize::try_from(args.keep_releases).unwrap_or(5),
            start_agent: args.start_agent,
            self_check_timeout: Duration::from_secs(args.self_check_timeout_secs),
            self_trial: Duration::from_secs(args.self_trial_secs),
            supervised: args.supervised,
            base_exe,
            stash,
        })
    }
}

impl Config {
    /// Which host the bundles are for: `Ok("bundle for updater@H")`, or an
    /// error when the agent bundle in `--agent-dir` (if there is one) is
    /// another host's — the two bundles of one enrollment always name the
    /// same host, so this catches another host's updater bundle.
    pub fn check_host(&self) -> Result<String, String> {
        let said = format!("bundle for {}", self.host.updater_cn());
        match Bundle::load_kind(&self.agent_dir, BundleKind::Agent).map(|b| b.identity()) {
            Ok(Identity::Agent(agent)) if agent != self.host => Err(format!(
                "the updater bundle in {} is for {} but the agent bundle in {} (--agent-dir) is for {agent}: pass the two bundles of one host",
                self.bundle.dir.display(),
                self.host.updater_cn(),
                self.agent_dir.display()
            )),
            // No agent bundle here (it is the agent's), or one for this host.
            _ => Ok(said),
        }
    }
}

/// The effective settings of this updater as `SWARM_UPDATER_*` variables
/// (paths resolved, the listen address as actually bound). A re-exec sets
/// them in the new process's environment and rebuilds its argv from them
/// alone, never from our own argv, so flags given at the first start
/// survive any number of self-updates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stash {
    vars: std::collections::BTreeMap<String, String>,
}

impl Stash {
    /// Every flag of [`Args`] that has a variable, with its effective value,
    /// derived from the clap definition (each argument's id names the field
    /// whose value it takes), so a flag added later is stashed without
    /// touching this. The paths resolved at start replace their raw flags.
    fn capture(
        args: &Args,
        updater_dir: &Path,
        agent_dir: &Path,
        install_dir: &Path,
        base_exe: &Path,
    ) -> Stash {
        use clap::CommandFactory;
        let fields = match serde_json::to_value(args) {
            Ok(serde_json::Value::Object(m)) => m,
            // Args is a struct of plain fields: it always serializes to an object.
            _ => serde_json::Map::new(),
        };
        let resolved = [
            ("updater_dir", updater_dir),
            ("agent_dir", agent_dir),
            ("install_dir", install_dir),
            ("base_exe", base_exe),
        ];
        let mut vars = std::collections::BTreeMap::new();
        for a in Args::command().get_arguments() {
            let Some(env) = a.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            let id = a.get_id().as_str();
            let value = match resolved.iter().find(|(k, _)| *k == id) {
                Some((_, p)) => p.display().to_string(),
                None => match fields.get(id) {
                    Some(serde_json::Value::String(v)) => v.clone(),
                    Some(serde_json::Value::Null) | None => continue,
                    Some(v) => v.to_string(),
                },
            };
            vars.insert(env.to_owned(), value);
        }
        Stash { vars }
    }

    /// Record the address actually bound (port 0 becomes the real port, so
    /// the next process binds the same one).
    pub fn set_listen(&mut self, addr: SocketAddr) {
        self.vars
            .insert("SWARM_UPDATER_LISTEN".into(), addr.to_string());
    }

    /// The stashed variables, for a child's environment.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The listen address as stashed.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.vars.get("SWARM_UPDATER_LISTEN")?.parse().ok()
    }

    /// The argv (without the program) rebuilt from the variables alone:
    /// `--<flag>=<value>` for every flag whose variable is stashed.
    pub fn argv(&self) -> Vec<String> {
        use clap::CommandFactory;
        Args::command()
            .get_arguments()
            .filter_map(|a| {
                let env = a.get_env()?.to_str()?;
                let value = self.vars.get(env)?;
                Some(format!("--{}={value}", a.get_long()?))
            })
            .collect()
    }
}

/// Drop `.` components (a lexical clean; `..` is kept as given).
fn clean(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn stash_covers_every_setting_and_round_trips() {
        let args = Args::try_parse_from([
            "worker-updater",
            "--listen=127.0.0.1:9999",
            "--updater-dir=/u",
            "--agent-dir=/a",
            "--install-dir=/i",
            "--agent-cmd=bin/a --x 'y z'",
            "--probe-attempts=3",
            "--start-agent=false",
            "--self-trial-secs=4",
        ])
        .unwrap();
        let stash = Stash::capture(
            &args,
            Path::new("/u"),
            Path::new("/a"),
            Path::new("/i"),
            Path::new("/bin/wu"),
        );
        // Every flag with a variable is stashed, and nothing else.
        let envs: Vec<String> = Args::command()
            .get_arguments()
            .filter_map(|a| Some(a.get_env()?.to_str()?.to_owned()))
            .collect();
        let stashed: Vec<String> = stash.vars().map(|(k, _)| k.to_owned()).collect();
        let mut sorted = envs.clone();
        sorted.sort();
        assert_eq!(sorted, stashed);
        // The rebuilt argv parses back to the same settings.
        let argv = stash.argv();
        assert_eq!(argv.len(), envs.len());
        let again =
            Args::try_parse_from(std::iter::once("worker-updater".to_owned()).chain(argv)).unwrap();
        let stash2 = Stash::capture(
            &again,
            Path::new("/u"),
            Path::new("/a"),
            Path::new("/i"),
            Path::new("/bin/wu"),
        );
        assert_eq!(stash, stash2);
        assert_eq!(again.agent_cmd, "bin/a --x 'y z'");
        assert!(!again.start_agent);
        assert_eq!(again.self_trial_secs, 4);
        assert_eq!(
            again.updater_dir.as_deref(),
            Some(Path::new("/u")),
            "resolved dirs are passed explicitly"
        );
    }
}
