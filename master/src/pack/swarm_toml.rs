//! `swarm.toml` as the master reads it before packing: the schema, its size
//! cap and its checks are [`pki::swarm_toml`], shared with every updater, so
//! a tree the master accepts is a tree the updaters accept.

use std::path::Path;

pub(super) use pki::swarm_toml::SwarmToml;

use super::pack_err;
use crate::error::Result;

/// Whether `rel` is a path inside the tree by the one rule for tree paths:
/// plain names only, separated by `/` (no `..`, no `.`, no empty part, not
/// absolute). The updater applies the same rule to `[updater] binary`.
fn inside_tree(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// The one path rule for what `swarm.toml` names, applied before anything
/// is packed (`wiki/security.md`, "Paths in swarm.toml"):
/// - a program given as a relative path (it has a `/`) is a file of the
///   tree and must obey [`inside_tree`]: `bin/run`, never `../run`,
///   `./run` or `bin//run`;
/// - `[agent] command` and `[install] command` may also name a host
///   program, absolutely (`/usr/bin/python3`) or by a bare name looked up
///   on `PATH` (`sh`); a program holding `${…}` is expanded on the worker
///   and checked there;
/// - `[updater] binary` always names a file of the tree (self-update
///   ships it), so it must obey [`inside_tree`].
pub(super) fn check_paths(root: &Path, toml: &SwarmToml) -> Result<()> {
    let refuse = |what: &str, path: &str, why: &str| {
        pack_err(
            root,
            format!(
                "swarm.toml {what} {path:?} {why}; a path in the tree is plain names joined by / \
                 (like bin/worker-agent), never with `..`, `.` or an empty part"
            ),
        )
    };
    for (what, cmd) in [
        ("[agent] command", &toml.agent.command),
        ("[install] command", &toml.install.command),
    ] {
        let Some(program) = cmd.as_ref().and_then(|c| c.first()) else {
            continue;
        };
        let relative = program.contains('/') && !program.starts_with('/');
        if relative && !program.contains("${") && !inside_tree(program) {
            return Err(refuse(
                what,
                program,
                "leaves the tree or is not a plain path",
            ));
        }
    }
    if let Some(binary) = &toml.updater.binary
        && !inside_tree(binary)
    {
        let why = if binary.starts_with('/') {
            "is absolute (the updater binary must ship in the tree)"
        } else {
            "is not a plain path inside the tree"
        };
        return Err(refuse("[updater] binary", binary, why));
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
