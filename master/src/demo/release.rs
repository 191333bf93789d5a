//! The demo's release trees: the example tree kept in the repo
//! (`master/demo/`, embedded), the agent binary it ships, and where the
//! worker binaries are.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::output::outln;

/// The example release kept in the repo (`master/demo/`), embedded so the
/// demo works from any directory.
const RELEASE_FILES: [(&str, &str); 4] = [
    ("swarm.toml", include_str!("../../demo/release/swarm.toml")),
    ("README.md", include_str!("../../demo/release/README.md")),
    (
        "www/index.html",
        include_str!("../../demo/release/www/index.html"),
    ),
    (
        ".swarmignore",
        include_str!("../../demo/release/.swarmignore"),
    ),
];
const BROKEN_SWARM_TOML: &str = include_str!("../../demo/broken/swarm.toml");

/// `worker-agent` and `worker-updater`, next to the running `swarm`.
pub(super) fn sibling_binaries() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::State("cannot tell where the swarm executable lives".into()))?;
    let find = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::State(format!(
                "{name} is not next to swarm in {}: build all three binaries first (`cargo build --release`) and run that swarm",
                dir.display()
            )))
        }
    };
    Ok((find("worker-agent")?, find("worker-updater")?))
}

/// Write the example tree into `dir`, with `version`, the agent binary and
/// optionally the broken `swarm.toml`.
pub(super) fn write_release(dir: &Path, version: &str, agent: &Path, broken: bool) -> Result<()> {
    for (rel, text) in RELEASE_FILES {
        let text = if broken && rel == "swarm.toml" {
            BROKEN_SWARM_TOML
        } else {
            text
        };
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    let version_file = dir.join("VERSION");
    fs::write(&version_file, format!("{version}\n")).map_err(|e| Error::io(&version_file, e))?;
    // Files the ignore rules must keep off the workers.
    let secret = dir.join(".env.local");
    fs::write(&secret, "DEMO_SECRET=never-shipped\n").map_err(|e| Error::io(&secret, e))?;
    let scratch = dir.join("notes.tmp");
    fs::write(&scratch, "scratch\n").map_err(|e| Error::io(&scratch, e))?;
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).map_err(|e| Error::io(&bin, e))?;
    fs::copy(agent, bin.join("worker-agent"))
        .map_err(|e| Error::io(bin.join("worker-agent"), e))?;
    Ok(())
}

/// The agent binary to ship: the built one with its debug info stripped
/// when `strip` is available (as for any deploy; a debug build shrinks
/// about fivefold), else a plain copy.
pub(super) fn prepare_agent(agent_bin: &Path, root: &Path) -> Result<PathBuf> {
    let out = root.join("worker-agent");
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(agent_bin)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        let _ = fs::remove_file(&out);
        fs::copy(agent_bin, &out).map_err(|e| Error::io(&out, e))?;
    }
    let size = fs::metadata(&out).map_err(|e| Error::io(&out, e))?.len();
    outln!(
        "\nshipping {} as bin/worker-agent ({}{})",
        agent_bin.display(),
        indicatif::HumanBytes(size),
        if stripped {
            ", debug info stripped"
        } else {
            ""
        }
    )?;
    Ok(out)
}
