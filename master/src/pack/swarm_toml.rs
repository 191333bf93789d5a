//! `swarm.toml` as the master reads it before packing: the schema, its size
//! cap and its checks are [`pki::swarm_toml`], shared with every updater, so
//! a tree the master accepts is a tree the updaters accept.

use std::path::Path;

pub(super) use pki::swarm_toml::SwarmToml;

use super::pack_err;
use crate::error::Result;

/// The one path rule for what `swarm.toml` names (`wiki/security.md`,
/// "Paths in swarm.toml"), applied before anything is packed: the same
/// [`pki::release`] checks every updater applies. A program holding `${…}`
/// is expanded on the worker and checked there.
pub(super) fn check_paths(root: &Path, toml: &SwarmToml) -> Result<()> {
    for (what, cmd) in [
        ("[agent] command", &toml.agent.command),
        ("[install] command", &toml.install.command),
    ] {
        let Some(program) = cmd.as_ref().and_then(|c| c.first()) else {
            continue;
        };
        if !program.contains("${") {
            pki::release::check_program(what, program).map_err(|e| pack_err(root, e))?;
        }
    }
    if let Some(binary) = &toml.updater.binary {
        pki::release::check_updater_binary(binary).map_err(|e| pack_err(root, e))?;
    }
    Ok(())
}

/// Read `root/swarm.toml`; a tree without one gets the defaults.
pub(super) fn read(root: &Path) -> Result<SwarmToml> {
    SwarmToml::read(root).map_err(|e| pack_err(root, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> std::result::Result<(), String> {
        let parsed: SwarmToml = toml::from_str(toml).unwrap();
        check_paths(Path::new("/r"), &parsed).map_err(|e| e.to_string())
    }

    #[test]
    fn one_rule_for_every_path_in_the_tree() {
        for ok in [
            "[agent]\ncommand = [\"bin/worker-agent\", \"--listen\", \"x\"]",
            "[agent]\ncommand = [\"/usr/bin/python3\", \"app.py\"]",
            "[agent]\ncommand = [\"sh\", \"-c\", \"../anything goes in arguments\"]",
            "[agent]\ncommand = [\"${APP_DIR}/../bin/run\"]",
            "[install]\ncommand = [\"sh\", \"install.sh\"]",
            "[install]\ncommand = [\"scripts/install.sh\"]",
            "[updater]\nbinary = \"bin/worker-updater\"",
            "",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (bad, names) in [
            (
                "[agent]\ncommand = [\"../bin/run\"]",
                "[agent] command \"../bin/run\"",
            ),
            ("[agent]\ncommand = [\"bin/../../x\"]", "[agent] command"),
            (
                "[agent]\ncommand = [\"./run.sh\"]",
                "[agent] command \"./run.sh\"",
            ),
            ("[install]\ncommand = [\"bin//x\"]", "[install] command"),
            (
                "[updater]\nbinary = \"/usr/bin/worker-updater\"",
                "is absolute",
            ),
            (
                "[updater]\nbinary = \"../worker-updater\"",
                "[updater] binary",
            ),
            (
                "[updater]\nbinary = \"./bin/worker-updater\"",
                "[updater] binary",
            ),
            ("[updater]\nbinary = \"\"", "[updater] binary"),
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains(names), "{bad}: {err}");
            assert!(err.contains("plain names joined by /"), "{err}");
        }
    }
}
