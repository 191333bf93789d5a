//! The environment of an agent or install hook: ours, then the host's
//! `.env.local` (parsed by `dotenvy`), then `SWARM_AGENT_DIR`,
//! `SWARM_RELEASE_DIR`, `SWARM_INSTALL_DIR`; and our `${VAR}` expansion of
//! `swarm.toml` values against it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Result, UpdaterError};

/// The host's `.env.local`, read once per operation.
#[derive(Clone, Debug, Default)]
pub struct HostEnv {
    pub vars: BTreeMap<String, String>,
}

impl HostEnv {
    /// Read `path` (a missing file is empty).
    pub fn read(path: &Path) -> Result<HostEnv> {
        Ok(HostEnv {
            vars: read_env_file(path)?,
        })
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
        host: &HostEnv,
        agent_dir: &Path,
        release_dir: &Path,
        install_dir: &Path,
    ) -> AgentEnv {
        let mut added = host.vars.clone();
        added.insert("SWARM_AGENT_DIR".into(), agent_dir.display().to_string());
        added.insert(
            "SWARM_RELEASE_DIR".into(),
            release_dir.display().to_string(),
        );
        added.insert(
            "SWARM_INSTALL_DIR".into(),
            install_dir.display().to_string(),
        );
        AgentEnv { added }
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

/// Parse a `.env`-style file with `dotenvy` (`KEY=VALUE`, `#` comments,
/// `export `, quotes and escapes as a shell would read them); a line it
/// cannot parse is logged and skipped. A missing file is empty.
///
/// `dotenvy` beats the hand-written parser it replaces: it handles
/// multi-line quoted values, escapes and inline comments the way other
/// `.env` tools do, so a file shared with them means the same here.
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(UpdaterError::io(path, e)),
    };
    let mut vars = BTreeMap::new();
    for item in dotenvy::from_read_iter(file) {
        match item {
            Ok((k, v)) => {
                vars.insert(k, v);
            }
            Err(dotenvy::Error::Io(e)) => return Err(UpdaterError::io(path, e)),
            Err(e) => tracing::warn!("{}: {e}; line ignored", path.display()),
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
