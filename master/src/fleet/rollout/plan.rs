//! The rollout plan: `swarm update`'s plan flags over the tree's
//! `[rollout]` table (a flag wins), checked against the targets (every bad
//! combination is a usage error, exit 2, before any connection), and the
//! targets cut into waves.

use std::time::Duration;

use pki::rollout::{HostCount, RolloutSection};
use serde::Serialize;

use crate::cli::RolloutArgs;
use crate::error::{Error, Result};
use crate::inventory::{HostRecord, Tag};
use crate::output::outln;

/// The tag that makes a host a canary.
pub(super) const CANARY_TAG: &str = "canary";

/// A checked plan.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The targets, wave by wave (never an empty wave).
    pub(crate) waves: Vec<Vec<HostRecord>>,
    /// Whether the first wave is the canary wave, and how it was chosen.
    pub(crate) canary: Option<CanaryFrom>,
    pub(crate) soak: Duration,
    /// The failure budget: the rollout halts once more hosts than this failed.
    pub(crate) max_fail: usize,
    pub(crate) revert_on_halt: bool,
    pub(crate) pause_after_canary: bool,
    /// Whether any plan setting was given (flag or `[rollout]`): a staged
    /// rollout has an id, a wave column, a summary line and Ctrl-C
    /// handling; without one, `update` behaves as it always did.
    pub(crate) staged: bool,
}

/// How the canary wave was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum CanaryFrom {
    /// The targets tagged `canary`.
    Tag,
    /// The first N targets by host name.
    First,
}

/// What the operator's terminal allows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Interaction {
    /// Standard input and error are terminals.
    pub(crate) terminal: bool,
}

fn bad(flag: &str, why: impl std::fmt::Display) -> Error {
    Error::usage(format!("--{flag}: {why}; nothing was pushed"))
}

/// A count of hosts out of `n` targets (`flag` names it in errors).
fn count(flag: &str, c: HostCount, n: usize) -> Result<usize> {
    c.of(n).map_err(|e| bad(flag, e))
}

/// Merge `args` over `toml`, check it against `hosts`, and cut the waves.
pub(crate) fn plan(
    args: &RolloutArgs,
    toml: &RolloutSection,
    mut hosts: Vec<HostRecord>,
    io: Interaction,
) -> Result<Plan> {
    let n = hosts.len();
    let canary = args.canary.or(toml.canary);
    let batch = args.batch.or(toml.batch);
    let max_fail = args.max_fail.or(toml.max_fail);
    let soak = args.soak.or(toml.soak).unwrap_or(Duration::ZERO);
    let revert_on_halt = args.revert_on_halt || toml.revert_on_halt.unwrap_or(false);
    let pause = args.pause_after_canary || toml.pause_after_canary.unwrap_or(false);
    let staged = canary.is_some()
        || batch.is_some()
        || max_fail.is_some()
        || args.soak.is_some()
        || args.revert_on_halt
        || args.pause_after_canary
        || !toml.is_empty();

    let canary_n = match canary {
        Some(HostCount::Hosts(0)) => {
            return Err(bad("canary", "0 hosts is no canary; leave it out"));
        }
        Some(c) => Some(count("canary", c, n)?),
        None => None,
    };
    if let Some(c) = canary_n
        && c > n
    {
        return Err(bad(
            "canary",
            format!("{c} hosts is more than the {n} target(s)"),
        ));
    }
    let batch_n = match batch {
        Some(HostCount::Hosts(0)) => {
            return Err(bad("batch", "a wave of 0 hosts never ends; give 1 or more"));
        }
        Some(b) => Some(count("batch", b, n)?),
        None => None,
    };
    let max_fail = match max_fail {
        Some(m) => count("max-fail", m, n)?,
        None => 0,
    };
    if revert_on_halt && max_fail >= n {
        return Err(bad(
            "max-fail",
            format!(
                "{max_fail} with --revert-on-halt can never halt a rollout of {n} target(s); give fewer than {n}"
            ),
        ));
    }
    if pause {
        if canary_n.is_none() {
            return Err(bad(
                "pause-after-canary",
                "there is no canary wave: add --canary N",
            ));
        }
        if args.yes {
            return Err(bad(
                "pause-after-canary",
                "--yes never asks; drop one of them",
            ));
        }
        if !io.terminal {
            return Err(bad(
                "pause-after-canary",
                "it asks on a terminal and this is not one; run it from a terminal, or drop the flag",
            ));
        }
    }

    // A stable order: by host name.
    hosts.sort_by(|a, b| a.host.as_str().cmp(b.host.as_str()));
    let mut waves = Vec::new();
    let mut canary_from = None;
    if let Some(c) = canary_n {
        let tag = Tag::new(CANARY_TAG)?;
        let (tagged, rest): (Vec<HostRecord>, Vec<HostRecord>) =
            hosts.into_iter().partition(|h| h.tags.contains(&tag));
        if tagged.is_empty() {
            let mut rest = rest;
            let tail = rest.split_off(c);
            waves.push(rest);
            hosts = tail;
            canary_from = Some(CanaryFrom::First);
        } else {
            waves.push(tagged);
            hosts = rest;
            canary_from = Some(CanaryFrom::Tag);
        }
    }
    match batch_n {
        Some(b) => waves.extend(hosts.chunks(b).map(<[HostRecord]>::to_vec)),
        None if !hosts.is_empty() => waves.push(hosts),
        None => {}
    }
    Ok(Plan {
        waves,
        canary: canary_from,
        soak,
        max_fail,
        revert_on_halt,
        pause_after_canary: pause,
        staged,
    })
}

/// The plan, as `--dry-run --json` shows it.
#[derive(Serialize)]
pub(crate) struct PlanDoc {
    waves: Vec<Vec<String>>,
    canary: Option<CanaryFrom>,
    soak_secs: f64,
    max_fail: usize,
    revert_on_halt: bool,
    pause_after_canary: bool,
}

impl Plan {
    pub(crate) fn doc(&self) -> PlanDoc {
        PlanDoc {
            waves: self.wave_names(),
            canary: self.canary,
            soak_secs: self.soak.as_secs_f64(),
            max_fail: self.max_fail,
            revert_on_halt: self.revert_on_halt,
            pause_after_canary: self.pause_after_canary,
        }
    }

    /// The waves, soak and budget, as `--dry-run` prints them.
    pub(crate) fn print(&self) -> Result<()> {
        let soak = if self.soak.is_zero() {
            "none".to_owned()
        } else {
            format!("{}s per wave", self.soak.as_secs_f64())
        };
        outln!(
            "plan     {} wave(s); soak {soak}; halt when more than {} host(s) fail{}{}",
            self.waves.len(),
            self.max_fail,
            if self.revert_on_halt {
                "; revert on halt"
            } else {
                ""
            },
            if self.pause_after_canary {
                "; pause after the canary"
            } else {
                ""
            }
        )?;
        for (i, wave) in self.waves.iter().enumerate() {
            let canary = match (i, self.canary) {
                (0, Some(CanaryFrom::Tag)) => " (canary: tagged canary)",
                (0, Some(CanaryFrom::First)) => " (canary)",
                _ => "",
            };
            let names: Vec<&str> = wave.iter().map(|h| h.host.as_str()).collect();
            outln!("  wave {}{canary}: {}", i + 1, names.join(" "))?;
        }
        Ok(())
    }

    /// The hosts of each wave, by name.
    pub(crate) fn wave_names(&self) -> Vec<Vec<String>> {
        self.waves
            .iter()
            .map(|w| w.iter().map(|h| h.host.to_string()).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tests::record;

    fn hosts(n: usize) -> Vec<HostRecord> {
        (1..=n).rev().map(|i| record(&format!("w{i}"))).collect()
    }

    const TTY: Interaction = Interaction { terminal: true };

    fn names(p: &Plan) -> Vec<Vec<String>> {
        p.wave_names()
    }

    #[test]
    fn waves_canary_then_batches_in_name_order() {
        let args = RolloutArgs {
            canary: Some(HostCount::Hosts(1)),
            batch: Some(HostCount::Hosts(2)),
            ..RolloutArgs::default()
        };
        let p = plan(&args, &RolloutSection::default(), hosts(5), TTY).unwrap();
        assert_eq!(names(&p), [vec!["w1"], vec!["w2", "w3"], vec!["w4", "w5"]]);
        assert_eq!(p.canary, Some(CanaryFrom::First));
        assert!(p.staged);
        // No plan at all: one wave, as before.
        let p = plan(
            &RolloutArgs::default(),
            &RolloutSection::default(),
            hosts(3),
            TTY,
        )
        .unwrap();
        assert_eq!(names(&p), [vec!["w1", "w2", "w3"]]);
        assert!(!p.staged);
        // Hosts tagged canary are the canary wave.
        let mut hs = hosts(4);
        hs[0].tags = vec![Tag::new("canary").unwrap()];
        let args = RolloutArgs {
            canary: Some(HostCount::Hosts(2)),
            ..RolloutArgs::default()
        };
        let p = plan(&args, &RolloutSection::default(), hs, TTY).unwrap();
        assert_eq!(names(&p), [vec!["w4"], vec!["w1", "w2", "w3"]]);
        assert_eq!(p.canary, Some(CanaryFrom::Tag));
    }

    #[test]
    fn flags_win_over_the_table() {
        let toml: RolloutSection = toml::from_str("batch = 3\nsoak = \"5s\"\n").unwrap();
        let args = RolloutArgs {
            batch: Some(HostCount::Percent(40)),
            ..RolloutArgs::default()
        };
        let p = plan(&args, &toml, hosts(5), TTY).unwrap();
        assert_eq!(names(&p), [vec!["w1", "w2"], vec!["w3", "w4"], vec!["w5"]]);
        assert_eq!(p.soak, Duration::from_secs(5));
    }

    #[test]
    fn bad_plans_are_usage_errors() {
        let none = RolloutSection::default();
        let cases = [
            (
                RolloutArgs {
                    canary: Some(HostCount::Percent(10)),
                    ..RolloutArgs::default()
                },
                "less than one host",
            ),
            (
                RolloutArgs {
                    canary: Some(HostCount::Hosts(6)),
                    ..RolloutArgs::default()
                },
                "more than the 5",
            ),
            (
                RolloutArgs {
                    max_fail: Some(HostCount::Hosts(5)),
                    revert_on_halt: true,
                    ..RolloutArgs::default()
                },
                "can never halt",
            ),
            (
                RolloutArgs {
                    pause_after_canary: true,
                    ..RolloutArgs::default()
                },
                "no canary wave",
            ),
            (
                RolloutArgs {
                    canary: Some(HostCount::Hosts(1)),
                    pause_after_canary: true,
                    yes: true,
                    ..RolloutArgs::default()
                },
                "--yes",
            ),
        ];
        for (args, needle) in cases {
            let e = plan(&args, &none, hosts(5), TTY).unwrap_err();
            assert_eq!(e.code(), crate::EXIT_USAGE);
            assert!(e.to_string().contains(needle), "{e}");
        }
        let args = RolloutArgs {
            canary: Some(HostCount::Hosts(1)),
            pause_after_canary: true,
            ..RolloutArgs::default()
        };
        let e = plan(&args, &none, hosts(5), Interaction { terminal: false }).unwrap_err();
        assert!(e.to_string().contains("not one"), "{e}");
        let toml: RolloutSection = toml::from_str("batch = 0\n").unwrap();
        let e = plan(&RolloutArgs::default(), &toml, hosts(5), TTY).unwrap_err();
        assert!(e.to_string().contains("0 hosts"), "{e}");
    }
}
