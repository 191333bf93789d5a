//! What a release says about itself and its host: `swarm.toml` (agent and
//! install commands, health URL) with `${VAR}` expansion, `.env.local`, the
//! agent's environment, and the release manifest on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pki::wire::{MANIFEST_FILE, Manifest};
use serde::Deserialize;

use crate::error::{Result, UpdaterError};

/// `swarm.toml` at a release root. Unknown sections are ignored so newer
/// trees still install on older updaters.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SwarmToml {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub install: InstallSection,
    #[serde(default)]
    pub updater: UpdaterSection,
}

/// `[agent]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub command: Option<Vec<String>>,
    pub health_url: Option<String>,
    /// How long the probe of this release's agent may last, when it needs
    /// more (or less) than the updater's `--probe-deadline-ms`.
    pub probe_deadline_secs: Option<u64>,
}

/// The longest `[agent] probe_deadline_secs`: the worker is held (and the
/// master waits) for the whole probe.
pub const MAX_PROBE_DEADLINE_SECS: u64 = 3600;

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
    pub binary: Option<String>,
}

/// The file name at a release root.
pub const SWARM_TOML: &str = "swarm.toml";

impl SwarmToml {
    /// Read `swarm.toml` from `release`; none is the empty config.
    pub fn load(release: &Path) -> Result<SwarmToml> {
        let path = release.join(SWARM_TOML);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SwarmToml::default()),
            Err(e) => return Err(UpdaterError::ReleaseConfig(format!("cannot read it: {e}"))),
        };
        let parsed: SwarmToml =
            toml::from_str(&text).map_err(|e| UpdaterError::ReleaseConfig(e.to_string()))?;
        for (what, cmd) in [
            ("[agent] command", &parsed.agent.command),
            ("[install] command", &parsed.install.command),
        ] {
            if cmd
                .as_ref()
                .is_some_and(|c| c.is_empty() || c[0].is_empty())
            {
                return Err(UpdaterError::ReleaseConfig(format!(
                    "{what} is empty; give at least the program"
                )));
            }
        }
        if let Some(secs) = parsed.agent.probe_deadline_secs
            && !(1..=MAX_PROBE_DEADLINE_SECS).contains(&secs)
        {
            return Err(UpdaterError::ReleaseConfig(format!(
                "[agent] probe_deadline_secs = {secs}: give 1 to {MAX_PROBE_DEADLINE_SECS} seconds"
            )));
        }
        Ok(parsed)
    }

    /// The probe deadline this release asks for, if any.
    pub fn probe_deadline(&self) -> Option<std::time::Duration> {
        self.agent
            .probe_deadline_secs
            .map(std::time::Duration::from_secs)
    }
}

/// The environment an agent (or install hook) runs with: ours, then
/// `.env.local`, then `SWARM_AGENT_DIR`, `SWARM_RELEASE_DIR`, `SWARM_INSTALL_DIR`.
#[derive(Clone, Debug, Default)]
pub struct AgentEnv {
    /// Only what we add on top of the inherited environment.
    pub added: BTreeMap<String, String>,
}

impl AgentEnv {
    pub fn new(
        env_local: &Path,
        agent_dir: &Path,
        release_dir: &Path,
        install_dir: &Path,
    ) -> Result<AgentEnv> {
        let mut added = read_env_file(env_local)?;
        added.insert("SWARM_AGENT_DIR".into(), agent_dir.display().to_string());
        added.insert(
            "SWARM_RELEASE_DIR".into(),
            release_dir.display().to_string(),
        );
        added.insert(
            "SWARM_INSTALL_DIR".into(),
            install_dir.display().to_string(),
        );
        Ok(AgentEnv { added })
    }

    /// Look a variable up: what we add wins over what we inherited.
    pub fn get(&self, name: &str) -> Option<String> {
        self.added
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }

    /// Expand `${NAME}` in `s`. An unknown name is an error; a `$` not
    /// followed by `{` is kept as is.
    pub fn expand(&self, s: &str) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
            let name = &after[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!("bad variable name {name:?} in {s:?}"));
            }
            let value = self.get(name).ok_or_else(|| {
                format!("${{{name}}} is not set (add it to .env.local on the worker)")
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Parse a `.env`-style file: `KEY=VALUE` lines, `#` comments, optional
/// `export `, optional single or double quotes around the value. A missing
/// file is empty.
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(UpdaterError::io(path, e)),
    };
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            tracing::warn!("{}:{}: not KEY=VALUE; ignored", path.display(), n + 1);
            continue;
        };
        let k = k.trim();
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        vars.insert(k.to_owned(), v.to_owned());
    }
    Ok(vars)
}

/// Split a command line into words: whitespace separates, single and double
/// quotes group, backslash escapes the next character outside single quotes.
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated ' in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err(format!("trailing \\ in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated \" in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(format!("trailing \\ in {s:?}")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
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
    fn expansion() {
        let mut env = AgentEnv::default();
        env.added.insert("PORT".into(), "9000".into());
        assert_eq!(
            env.expand("127.0.0.1:${PORT}/x").unwrap(),
            "127.0.0.1:9000/x"
        );
        assert_eq!(
            env.expand("$HOME and $ alone").unwrap(),
            "$HOME and $ alone"
        );
        assert!(env.expand("${NOPE_NOT_SET_ANYWHERE}").is_err());
        assert!(env.expand("${PORT").is_err());
        assert!(env.expand("${1X}").is_err());
    }

    #[test]
    fn env_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".env.local");
        std::fs::write(&p, "# c\nA=1\nexport B = \"two words\"\nC='x'\nnonsense\n").unwrap();
        let v = read_env_file(&p).unwrap();
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "two words");
        assert_eq!(v["C"], "x");
        assert_eq!(v.len(), 3);
        assert!(
            read_env_file(&tmp.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn toml() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(SwarmToml::load(tmp.path()).unwrap().agent.command.is_none());
        std::fs::write(
            tmp.path().join(SWARM_TOML),
            "[agent]\ncommand=[\"bin/a\",\"--x\"]\nhealth_url=\"https://127.0.0.1:1/health\"\n[install]\ncommand=[\"sh\",\"i.sh\"]\ntimeout_secs=5\n[other]\nx=1\n",
        )
        .unwrap();
        let t = SwarmToml::load(tmp.path()).unwrap();
        assert_eq!(
            t.agent.command.as_deref(),
            Some(&["bin/a".to_owned(), "--x".to_owned()][..])
        );
        assert_eq!(t.install.timeout_secs, Some(5));
        assert_eq!(t.probe_deadline(), None);
        std::fs::write(
            tmp.path().join(SWARM_TOML),
            "[agent]\nprobe_deadline_secs = 30\n",
        )
        .unwrap();
        let t = SwarmToml::load(tmp.path()).unwrap();
        assert_eq!(t.probe_deadline(), Some(std::time::Duration::from_secs(30)));
        for bad in ["0", "3601"] {
            std::fs::write(
                tmp.path().join(SWARM_TOML),
                format!("[agent]\nprobe_deadline_secs = {bad}\n"),
            )
            .unwrap();
            let e = SwarmToml::load(tmp.path()).unwrap_err().to_string();
            assert!(e.contains("probe_deadline_secs"), "{e}");
        }
        std::fs::write(tmp.path().join(SWARM_TOML), "[agent]\ncommand=[]\n").unwrap();
        assert!(SwarmToml::load(tmp.path()).is_err());
        std::fs::write(tmp.path().join(SWARM_TOML), "[agent]\ncomand=[\"x\"]\n").unwrap();
        assert!(SwarmToml::load(tmp.path()).is_err());
    }
}
