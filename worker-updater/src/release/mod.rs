//! A release as the updater runs it: [`ReleaseSpec`], parsed once from a
//! release dir (its manifest, `swarm.toml`, the host's `.env.local`, the
//! launch command, health URL and probe settings) and carried through the
//! operation, so no step reads `swarm.toml` or `.env.local` again.

pub mod env;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pki::swarm_toml::{RestartMode, SwarmToml};
use pki::wire::{MANIFEST_FILE, Manifest};

pub use env::{AgentEnv, HostEnv};

use crate::agent::Launch;
use crate::config::Config;
use crate::error::{Result, UpdaterError};
use crate::probe::ProbeSettings;

/// `[agent] rollback_window_secs` when a release does not say (issue 11).
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(600);

/// Which slots a tree is for, so which parts of `swarm.toml` must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `/update`: the agent's release; its launch must expand.
    Agent,
    /// `/update-self`: the updater's own release; its binary must be there.
    Updater,
}

/// How to run and check the agent of a release.
#[derive(Clone, Debug)]
pub struct AgentRun {
    pub launch: Launch,
    pub health_url: String,
    pub probe: ProbeSettings,
    /// `[agent] listen`, expanded: the sockets the updater holds and hands
    /// to the agent (issue 14).
    pub listen: Vec<std::net::SocketAddr>,
    /// `[agent] restart` (`start-first` only ever with `listen`).
    pub restart: RestartMode,
}

impl AgentRun {
    /// Whether the new agent starts beside the old one.
    pub fn start_first(&self) -> bool {
        self.restart == RestartMode::StartFirst && !self.listen.is_empty()
    }
}

/// The install hook of a release, ready to run in the dir it was read from.
#[derive(Clone, Debug)]
pub struct Hook {
    /// Program (resolved) and arguments, expanded.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    pub timeout: Duration,
}

/// A release parsed once.
#[derive(Clone, Debug)]
pub struct ReleaseSpec {
    /// The manifest: built by the receive for a pushed tree, read once for
    /// one already on disk.
    pub manifest: Option<Manifest>,
    toml: SwarmToml,
    /// The hook's environment (`SWARM_RELEASE_DIR` = where the files are now).
    hook_env: AgentEnv,
    hook_dir: PathBuf,
    install_timeout: Duration,
    /// How to run its agent once it is live, or why it cannot be run (the
    /// inner message of a [`UpdaterError::ReleaseConfig`]).
    pub agent: std::result::Result<AgentRun, String>,
}

impl ReleaseSpec {
    /// A pushed tree in `files_dir` (staging) that will run from `run_dir`
    /// after the flip, with the manifest the receive built. Refuses (400)
    /// what would fail later: an unreadable `swarm.toml`, an agent command
    /// that does not expand (for [`Purpose::Agent`]), a missing updater
    /// binary (for [`Purpose::Updater`]).
    pub fn staged(
        files_dir: &Path,
        run_dir: &Path,
        manifest: Manifest,
        purpose: Purpose,
        host: &HostEnv,
        config: &Config,
    ) -> Result<ReleaseSpec> {
        let toml = read_toml(files_dir)?;
        let spec = ReleaseSpec::build(files_dir, run_dir, Some(manifest), toml, host, config);
        match purpose {
            Purpose::Agent => {
                if let Err(e) = &spec.agent {
                    return Err(UpdaterError::ReleaseConfig(e.clone()));
                }
            }
            Purpose::Updater => {
                updater_binary_in(files_dir, spec.updater_binary())?;
            }
        }
        Ok(spec)
    }

    /// The release already in `dir` (a slot): manifest and `swarm.toml`
    /// read once. Never fails: what makes it unrunnable is in
    /// [`ReleaseSpec::agent`], for the probe to report.
    /// `run_dir` is where it runs from (a `prev` about to be swapped in
    /// runs from `active`).
    pub fn on_disk(dir: &Path, run_dir: &Path, host: &HostEnv, config: &Config) -> ReleaseSpec {
        let manifest = Manifest::read(dir);
        match read_toml(dir) {
            Ok(toml) => ReleaseSpec::build(dir, run_dir, manifest, toml, host, config),
            Err(e) => {
                let mut spec =
                    ReleaseSpec::build(dir, run_dir, manifest, SwarmToml::default(), host, config);
                spec.agent = Err(match e {
                    UpdaterError::ReleaseConfig(m) => m,
                    other => other.to_string(),
                });
                spec
            }
        }
    }

    fn build(
        files_dir: &Path,
        run_dir: &Path,
        manifest: Option<Manifest>,
        toml: SwarmToml,
        host: &HostEnv,
        config: &Config,
    ) -> ReleaseSpec {
        let env = AgentEnv::new(host, &config.agent_dir, run_dir, &config.install_dir);
        let agent = agent_run(&toml, &env, run_dir, manifest.as_ref(), config);
        ReleaseSpec {
            manifest,
            hook_env: AgentEnv::new(host, &config.agent_dir, files_dir, &config.install_dir),
            hook_dir: files_dir.to_owned(),
            install_timeout: config.install_timeout,
            toml,
            agent,
        }
    }

    /// How soon after going live a crash loop reverts to `prev` by itself
    /// (`[agent] rollback_window_secs`, default [`DEFAULT_ROLLBACK_WINDOW`]).
    pub fn rollback_window(&self) -> Duration {
        self.toml
            .agent
            .rollback_window_secs
            .map_or(DEFAULT_ROLLBACK_WINDOW, Duration::from_secs)
    }

    /// The sha of its manifest, if it has one.
    pub fn sha256(&self) -> Option<&str> {
        self.manifest.as_ref().map(|m| m.sha256.as_str())
    }

    /// The install hook, expanded, if the release has one.
    pub fn hook(&self) -> Result<Option<Hook>> {
        let Some(cmd) = &self.toml.install.command else {
            return Ok(None);
        };
        let mut argv = cmd
            .iter()
            .map(|a| self.hook_env.expand(a))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| UpdaterError::ReleaseConfig(format!("[install] command: {e}")))?;
        let Some(program) = argv.first_mut() else {
            return Err(UpdaterError::ReleaseConfig(
                "[install] command is empty".into(),
            ));
        };
        pki::release::check_program("[install] command", program)
            .map_err(UpdaterError::ReleaseConfig)?;
        *program = resolve_program(program, &self.hook_dir)
            .display()
            .to_string();
        Ok(Some(Hook {
            argv,
            env: self.hook_env.added.clone().into_iter().collect(),
            dir: self.hook_dir.clone(),
            timeout: self
                .toml
                .install
                .timeout_secs
                .map_or(self.install_timeout, Duration::from_secs),
        }))
    }

    /// `[updater] binary` (relative to the release root), checked.
    pub fn updater_binary(&self) -> &str {
        self.toml.updater_binary()
    }

    /// The program name of its agent (for recognising it in `/proc`).
    pub fn program_name(&self) -> Option<String> {
        let argv0 = self.agent.as_ref().ok()?.launch.argv.first()?;
        Some(Path::new(argv0).file_name()?.to_string_lossy().into_owned())
    }
}

fn read_toml(dir: &Path) -> Result<SwarmToml> {
    SwarmToml::read(dir).map_err(|e| match e {
        pki::PkiError::SwarmToml(m) => UpdaterError::ReleaseConfig(m),
        other => UpdaterError::ReleaseConfig(other.to_string()),
    })
}

/// The agent's launch, health URL and probe settings, expanded against `env`.
fn agent_run(
    toml: &SwarmToml,
    env: &AgentEnv,
    run_dir: &Path,
    manifest: Option<&Manifest>,
    config: &Config,
) -> std::result::Result<AgentRun, String> {
    let raw = toml.agent.command.as_ref().unwrap_or(&config.agent_cmd);
    let mut argv = raw
        .iter()
        .map(|a| env.expand(a))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("[agent] command: {e}"))?;
    if let Some(p) = argv.first_mut() {
        pki::release::check_program("[agent] command", p)?;
        *p = resolve_program(p, run_dir).display().to_string();
    }
    let health_url = match &toml.agent.health_url {
        Some(u) => env
            .expand(u)
            .map_err(|e| format!("[agent] health_url: {e}"))?,
        None => config.agent_url.clone(),
    };
    let mut listen = Vec::new();
    for a in &toml.agent.listen {
        let expanded = env.expand(a).map_err(|e| format!("[agent] listen: {e}"))?;
        let addr = pki::swarm_toml::parse_listen(&expanded)?;
        if listen.contains(&addr) {
            return Err(format!("[agent] listen names {addr} twice"));
        }
        listen.push(addr);
    }
    let restart = toml.restart();
    let mut probe = config.probe.with_deadline(toml.probe_deadline());
    // Old and new agents share the sockets: only the answering pid tells
    // which one the probe reached.
    probe.require_pid = restart == RestartMode::StartFirst;
    Ok(AgentRun {
        launch: Launch {
            argv,
            env: env.added.clone().into_iter().collect(),
            release_dir: run_dir.to_owned(),
            sha256: manifest.map(|m| m.sha256.clone()),
            listen: listen.clone(),
        },
        health_url,
        probe,
        listen,
        restart,
    })
}

/// The updater binary `rel` inside the release in `dir`: an executable file.
pub fn updater_binary_in(dir: &Path, rel: &str) -> Result<PathBuf> {
    pki::release::check_updater_binary(rel).map_err(UpdaterError::ReleaseConfig)?;
    let path = dir.join(rel);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.mode() & 0o111 != 0 => Ok(path),
        Ok(_) => Err(UpdaterError::BadUpload(format!(
            "the updater binary {rel} in the tree is not an executable file"
        ))),
        Err(e) => Err(UpdaterError::BadUpload(format!(
            "the tree has no updater binary at {rel} ({e}); /update-self needs one (or set [updater] binary in swarm.toml)"
        ))),
    }
}

/// The updater binary of the release in `release_dir` (`[updater] binary`
/// of its `swarm.toml`, default `bin/worker-updater`), an executable file.
pub fn updater_binary(release_dir: &Path) -> Result<PathBuf> {
    let toml = read_toml(release_dir)?;
    updater_binary_in(release_dir, toml.updater_binary())
}

/// Split a command line (`--agent-cmd`) into words as a POSIX shell would
/// (`shlex`: quotes group, backslash escapes), without running a shell.
pub fn split_command(s: &str) -> std::result::Result<Vec<String>, String> {
    shlex::split(s).ok_or_else(|| format!("unbalanced quotes or a trailing backslash in {s:?}"))
}

/// Resolve a command's program: a relative path with a `/` is relative to
/// the release root; a bare name is looked up on `PATH`; absolute stays.
pub fn resolve_program(program: &str, release_dir: &Path) -> PathBuf {
    let p = Path::new(program);
    if p.is_relative() && program.contains('/') {
        release_dir.join(p)
    } else {
        p.to_owned()
    }
}

/// Write `manifest` into the release in `dir` (not synced: the one sync
/// before the flip covers it).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| UpdaterError::Internal(format!("serializing the manifest: {e}")))?;
    std::fs::write(&path, json).map_err(|e| UpdaterError::io(&path, e))
}

/// Write `index` as `.swarm-index` beside the manifest in `dir`, its
/// canonical bytes (whose SHA-256 is the manifest's `release_id`).
pub fn write_index(dir: &Path, index: &pki::index::TreeIndex) -> Result<()> {
    let path = dir.join(pki::index::INDEX_FILE);
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        index.write_to(&mut out)?;
        std::io::Write::flush(&mut out)
    };
    write().map_err(|e| UpdaterError::io(&path, e))
}

/// The index kept with the release in `dir`, if it has a readable one
/// (releases installed before issue 12 have none).
pub fn read_index(dir: &Path, max_entries: usize) -> Result<Option<pki::index::TreeIndex>> {
    let path = dir.join(pki::index::INDEX_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => pki::index::TreeIndex::parse(&bytes, max_entries)
            .map(Some)
            .map_err(|why| UpdaterError::Internal(format!("{}: {why}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(UpdaterError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split() {
        assert_eq!(split_command("a b  c").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_command("a 'b c' \"d \\\" e\"").unwrap(),
            ["a", "b c", "d \" e"]
        );
        assert_eq!(split_command("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_command("a ''").unwrap(), ["a", ""]);
        assert!(split_command("a 'b").is_err());
    }

    #[test]
    fn binary_must_be_an_executable_inside_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(updater_binary(dir).is_err(), "missing");
        std::fs::create_dir(dir.join("bin")).unwrap();
        std::fs::write(dir.join(pki::release::DEFAULT_UPDATER_BINARY), "x").unwrap();
        assert!(updater_binary(dir).is_err(), "not executable");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join(pki::release::DEFAULT_UPDATER_BINARY),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(
            updater_binary(dir).unwrap(),
            dir.join(pki::release::DEFAULT_UPDATER_BINARY)
        );
        for bad in ["/bin/sh", "../x", "bin/../bin/worker-updater", ""] {
            std::fs::write(
                dir.join("swarm.toml"),
                format!("[updater]\nbinary = {bad:?}\n"),
            )
            .unwrap();
            assert!(updater_binary(dir).is_err(), "{bad}");
        }
    }
}
