//! `swarm.toml`, the file at a release root that says how to run it: the
//! schema (the master reads `[release]` and checks the rest before it packs,
//! the updater runs `[agent]`, `[install]` and `[updater]`; `[rollout]`,
//! typed in [`crate::rollout`], is the master's too), parsed and
//! checked in one place. The file is capped at [`MAX_BYTES`].

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::PkiError;

/// The file name at a release root.
pub const FILE: &str = "swarm.toml";
/// The largest `swarm.toml` read; more is refused with a clear error (it is
/// a few lines of settings, and a peer-supplied tree must not make anyone
/// buffer hundreds of megabytes of it).
pub const MAX_BYTES: u64 = 1 << 20;
/// The longest `[agent] probe_deadline_secs`: the worker is held (and the
/// master waits) for the whole probe.
pub const MAX_PROBE_DEADLINE_SECS: u64 = 3600;
/// The longest `[agent] rollback_window_secs`: a week (0 turns the
/// automatic revert off).
pub const MAX_ROLLBACK_WINDOW_SECS: u64 = 7 * 24 * 3600;
/// The most `[agent] listen` addresses (the updater holds each socket for
/// the agent, issue 14).
pub const MAX_LISTEN: usize = 16;

/// `[agent] restart`: how an agent is replaced (issue 14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Stop the old agent, then start the new one (the default). With
    /// `listen` the sockets stay bound meanwhile: connections wait in the
    /// backlog instead of being refused.
    #[default]
    StopFirst,
    /// Start the new agent beside the old one on the same sockets; stop the
    /// old one only once the new one is healthy. Needs `listen`.
    StartFirst,
}

/// `swarm.toml` at a release root. Unknown sections are ignored so newer
/// trees still install on older updaters; unknown keys inside a known
/// section are refused (a typo must not silently fall back to a default).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SwarmToml {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub install: InstallSection,
    #[serde(default)]
    pub updater: UpdaterSection,
    #[serde(default)]
    pub release: ReleaseSection,
    /// `[rollout]`: the master's default rollout plan for this tree.
    #[serde(default)]
    pub rollout: crate::rollout::RolloutSection,
}

/// `[agent]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Program and arguments, `${VAR}` expanded on the worker.
    pub command: Option<Vec<String>>,
    pub health_url: Option<String>,
    /// How long the probe of this release's agent may last, when it needs
    /// more (or less) than the updater's `--probe-deadline-ms`.
    pub probe_deadline_secs: Option<u64>,
    /// A crash loop this soon (seconds) after the release went live reverts
    /// to `prev` by itself (issue 11; default 600).
    pub rollback_window_secs: Option<u64>,
    /// TCP addresses (`host:port`, `${VAR}` expanded on the worker) the
    /// updater binds and hands to every agent it spawns with the systemd
    /// socket-activation protocol (issue 14).
    #[serde(default)]
    pub listen: Vec<String>,
    /// `"stop-first"` (default) or `"start-first"` (needs `listen`).
    pub restart: Option<RestartMode>,
}

/// `[install]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallSection {
    pub command: Option<Vec<String>>,
    pub timeout_secs: Option<u64>,
}

/// `[updater]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdaterSection {
    /// What `/update-self` re-execs, relative to the release root
    /// (default [`crate::release::DEFAULT_UPDATER_BINARY`]).
    pub binary: Option<String>,
}

/// `[release]` (the master's packing settings).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSection {
    /// Gitignore-style globs of secrets to ship anyway.
    #[serde(default)]
    pub include: Vec<String>,
}

impl SwarmToml {
    /// Read `swarm.toml` from the release root `dir`; none is the empty
    /// config. Errors are [`PkiError::SwarmToml`].
    pub fn read(dir: &Path) -> Result<SwarmToml, PkiError> {
        let path = dir.join(FILE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SwarmToml::default()),
            Err(e) => return Err(PkiError::SwarmToml(format!("cannot read it: {e}"))),
        };
        let mut bytes = Vec::new();
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| PkiError::SwarmToml(format!("cannot read it: {e}")))?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(PkiError::SwarmToml(format!(
                "larger than {} KiB; it holds a few settings, keep data elsewhere",
                MAX_BYTES / 1024
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| PkiError::SwarmToml("not UTF-8".into()))?;
        SwarmToml::parse(&text)
    }

    /// Parse and check `swarm.toml` text.
    pub fn parse(text: &str) -> Result<SwarmToml, PkiError> {
        let parsed: SwarmToml =
            toml::from_str(text).map_err(|e| PkiError::SwarmToml(e.message().to_owned()))?;
        for (what, cmd) in [
            ("[agent] command", &parsed.agent.command),
            ("[install] command", &parsed.install.command),
        ] {
            if cmd
                .as_ref()
                .is_some_and(|c| c.first().is_none_or(String::is_empty))
            {
                return Err(PkiError::SwarmToml(format!(
                    "{what} is empty; give at least the program"
                )));
            }
        }
        if let Some(secs) = parsed.agent.probe_deadline_secs
            && !(1..=MAX_PROBE_DEADLINE_SECS).contains(&secs)
        {
            return Err(PkiError::SwarmToml(format!(
                "[agent] probe_deadline_secs = {secs}: give 1 to {MAX_PROBE_DEADLINE_SECS} seconds"
            )));
        }
        if let Some(secs) = parsed.agent.rollback_window_secs
            && secs > MAX_ROLLBACK_WINDOW_SECS
        {
            return Err(PkiError::SwarmToml(format!(
                "[agent] rollback_window_secs = {secs}: give 0 (never revert by itself) to {MAX_ROLLBACK_WINDOW_SECS} seconds"
            )));
        }
        if let Some(bin) = &parsed.updater.binary {
            crate::release::check_updater_binary(bin).map_err(PkiError::SwarmToml)?;
        }
        check_listen(&parsed.agent)?;
        Ok(parsed)
    }

    /// `[agent] restart`, or the default (`stop-first`).
    pub fn restart(&self) -> RestartMode {
        self.agent.restart.unwrap_or_default()
    }

    /// `[updater] binary`, or the default.
    pub fn updater_binary(&self) -> &str {
        self.updater
            .binary
            .as_deref()
            .unwrap_or(crate::release::DEFAULT_UPDATER_BINARY)
    }

    /// The probe deadline this release asks for, if any.
    pub fn probe_deadline(&self) -> Option<std::time::Duration> {
        self.agent
            .probe_deadline_secs
            .map(std::time::Duration::from_secs)
    }
}

/// `[agent] listen` and `restart`: at most [`MAX_LISTEN`] addresses, each
/// a `host:port` with a fixed port (once `${VAR}`s are expanded: see
/// [`parse_listen`]), none twice; `start-first` only with `listen`.
fn check_listen(agent: &AgentSection) -> Result<(), PkiError> {
    if agent.listen.len() > MAX_LISTEN {
        return Err(PkiError::SwarmToml(format!(
            "[agent] listen has {} addresses; at most {MAX_LISTEN}",
            agent.listen.len()
        )));
    }
    if agent.restart == Some(RestartMode::StartFirst) && agent.listen.is_empty() {
        return Err(PkiError::SwarmToml(
            "[agent] restart = \"start-first\" needs [agent] listen: two agents can share a port only through sockets the updater holds (or use \"stop-first\")".into(),
        ));
    }
    let mut seen = Vec::new();
    for a in &agent.listen {
        if a.contains("${") {
            continue;
        }
        let addr = parse_listen(a).map_err(PkiError::SwarmToml)?;
        if seen.contains(&addr) {
            return Err(PkiError::SwarmToml(format!(
                "[agent] listen names {addr} twice"
            )));
        }
        seen.push(addr);
    }
    Ok(())
}

/// One `[agent] listen` address, expanded: `ip:port` (`[v6]:port`) with a
/// port other than 0 (the health URL and the clients name a fixed port).
pub fn parse_listen(a: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = a.trim().parse().map_err(|_| {
        format!(
            "[agent] listen {a:?} is not an address: give ip:port, e.g. \"0.0.0.0:8080\" or \"[::]:8080\""
        )
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "[agent] listen {a:?}: give a fixed port (port 0 would change at every bind)"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_checks_and_the_size_cap() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(SwarmToml::read(tmp.path()).unwrap().agent.command.is_none());
        let t = SwarmToml::parse(
            "[agent]\ncommand=[\"bin/a\",\"--x\"]\n[install]\ntimeout_secs=5\n[release]\ninclude=[\"a.key\"]\n[other]\nx=1\n",
        )
        .unwrap();
        assert_eq!(t.install.timeout_secs, Some(5));
        assert_eq!(t.release.include, ["a.key"]);
        assert_eq!(t.updater_binary(), "bin/worker-updater");
        assert_eq!(t.restart(), RestartMode::StopFirst);
        let l = SwarmToml::parse(
            "[agent]\nlisten = [\"127.0.0.1:8080\", \"[::1]:${PORT}\"]\nrestart = \"start-first\"\n",
        )
        .unwrap();
        assert_eq!(l.agent.listen.len(), 2);
        assert_eq!(l.restart(), RestartMode::StartFirst);
        let many: Vec<String> = (1..=17).map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let e = SwarmToml::parse(&format!("[agent]\nlisten = [{}]\n", many.join(",")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 16"), "{e}");
        let e = SwarmToml::parse("[agent]\nrestart = \"start-first\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs [agent] listen"), "{e}");
        let w = SwarmToml::parse("[agent]\nrollback_window_secs = 0\n").unwrap();
        assert_eq!(w.agent.rollback_window_secs, Some(0));
        let r = SwarmToml::parse("[rollout]\nbatch = 2\nsoak = \"5s\"\n").unwrap();
        assert_eq!(r.rollout.batch, Some(crate::rollout::HostCount::Hosts(2)));
        for bad in [
            "[agent]\ncommand=[]\n",
            "[agent]\ncomand=[\"x\"]\n",
            "[agent]\nprobe_deadline_secs = 0\n",
            "[agent]\nrollback_window_secs = 604801\n",
            "[updater]\nbinary = \"../x\"\n",
            "[rollout]\nbatch = \"0%\"\n",
            "[rollout]\nsoak = \"25h\"\n",
            "[agent]\nrestart = \"start-first\"\n",
            "[agent]\nrestart = \"sideways\"\n",
            "[agent]\nlisten = [\"localhost:80\"]\n",
            "[agent]\nlisten = [\"127.0.0.1:0\"]\n",
            "[agent]\nlisten = [\"127.0.0.1:80\", \"127.0.0.1:80\"]\n",
        ] {
            assert!(SwarmToml::parse(bad).is_err(), "{bad}");
        }
        // A comment-only file just over the cap is refused without parsing.
        let mut big = String::from("[agent]\n");
        while (big.len() as u64) <= MAX_BYTES {
            big.push_str("# padding padding padding padding padding padding\n");
        }
        std::fs::write(tmp.path().join(FILE), &big).unwrap();
        let e = SwarmToml::read(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }

    #[test]
    fn toml() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(SwarmToml::read(tmp.path()).unwrap().agent.command.is_none());
        std::fs::write(
            tmp.path().join(FILE),
            "[agent]\ncommand=[\"bin/a\",\"--x\"]\nhealth_url=\"https://127.0.0.1:1/health\"\n[install]\ncommand=[\"sh\",\"i.sh\"]\ntimeout_secs=5\n[other]\nx=1\n",
        )
        .unwrap();
        let t = SwarmToml::read(tmp.path()).unwrap();
        assert_eq!(
            t.agent.command.as_deref(),
            Some(&["bin/a".to_owned(), "--x".to_owned()][..])
        );
        assert_eq!(t.install.timeout_secs, Some(5));
        assert_eq!(t.probe_deadline(), None);
        std::fs::write(tmp.path().join(FILE), "[agent]\nprobe_deadline_secs = 30\n").unwrap();
        let t = SwarmToml::read(tmp.path()).unwrap();
        assert_eq!(t.probe_deadline(), Some(std::time::Duration::from_secs(30)));
        for bad in ["0", "3601"] {
            std::fs::write(
                tmp.path().join(FILE),
                format!("[agent]\nprobe_deadline_secs = {bad}\n"),
            )
            .unwrap();
            let e = SwarmToml::read(tmp.path()).unwrap_err().to_string();
            assert!(e.contains("probe_deadline_secs"), "{e}");
        }
        std::fs::write(tmp.path().join(FILE), "[agent]\ncommand=[]\n").unwrap();
        assert!(SwarmToml::read(tmp.path()).is_err());
        std::fs::write(tmp.path().join(FILE), "[agent]\ncomand=[\"x\"]\n").unwrap();
        assert!(SwarmToml::read(tmp.path()).is_err());
    }
}
