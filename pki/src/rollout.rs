//! The rollout plan's values as typed: a host count (`N` or `N%` of the
//! targets) and a soak duration (`90s`, `5m`, …), parsed once here for both
//! `swarm update`'s flags and the `[rollout]` table of `swarm.toml`, so the
//! two always accept the same spellings.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// The shortest soak (`0` turns the soak off).
pub const MIN_SOAK: Duration = Duration::from_secs(1);
/// The longest soak: a day.
pub const MAX_SOAK: Duration = Duration::from_secs(24 * 3600);

/// `N` hosts, or `N%` of the targets (1 to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCount {
    Hosts(u32),
    Percent(u8),
}

impl HostCount {
    /// How many of `targets` hosts this is: a percentage is rounded down,
    /// and must come to at least one host. `Err` says why not.
    pub fn of(self, targets: usize) -> Result<usize, String> {
        match self {
            HostCount::Hosts(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            HostCount::Percent(p) => {
                let n = targets.saturating_mul(usize::from(p)) / 100;
                if n == 0 {
                    Err(format!(
                        "{p}% of {targets} target(s) is less than one host; give a larger share or a host count"
                    ))
                } else {
                    Ok(n)
                }
            }
        }
    }
}

impl fmt::Display for HostCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostCount::Hosts(n) => write!(f, "{n}"),
            HostCount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parse `N` or `N%` (the percentage 1 to 100).
pub fn parse_host_count(s: &str) -> Result<HostCount, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: u32 = p
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a percentage: give N% with N from 1 to 100"))?;
        return match u8::try_from(p) {
            Ok(p) if (1..=100).contains(&p) => Ok(HostCount::Percent(p)),
            _ => Err(format!(
                "{s}: a percentage must be from 1% to 100% of the targets"
            )),
        };
    }
    s.parse()
        .map(HostCount::Hosts)
        .map_err(|_| format!("{s:?} is not a host count: give N hosts or N% of the targets"))
}

/// Parse a soak duration: a number with a unit (`ms`, `s`, `m`, `h`; a bare
/// number is seconds), `0` for none, else from [`MIN_SOAK`] to [`MAX_SOAK`].
pub fn parse_soak(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: give e.g. 30s, 5m or 1h"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}; use ms, s, m or h (e.g. 30s)"
            ));
        }
    };
    if d.is_zero() {
        return Ok(d);
    }
    if d < MIN_SOAK {
        return Err(format!(
            "soak {s} is shorter than 1s: a health check needs time to see a crash (0 turns the soak off)"
        ));
    }
    if d > MAX_SOAK {
        return Err(format!("soak {s} is longer than 24h"));
    }
    Ok(d)
}

/// A count in `swarm.toml`: an integer (`batch = 2`) or a string
/// (`batch = "25%"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawCount {
    Int(i64),
    Text(String),
}

fn de_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<HostCount>, D::Error> {
    let raw: Option<RawCount> = Option::deserialize(d)?;
    raw.map(|r| match r {
        RawCount::Int(n) => u32::try_from(n)
            .map(HostCount::Hosts)
            .map_err(|_| format!("{n} is not a host count")),
        RawCount::Text(t) => parse_host_count(&t),
    })
    .transpose()
    .map_err(serde::de::Error::custom)
}

fn de_soak<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let raw: Option<RawCount> = Option::deserialize(d)?;
    raw.map(|r| match r {
        RawCount::Int(n) => parse_soak(&n.to_string()),
        RawCount::Text(t) => parse_soak(&t),
    })
    .transpose()
    .map_err(serde::de::Error::custom)
}

/// `[rollout]` of `swarm.toml`: the defaults of `swarm update`'s plan flags
/// for this tree (a flag always wins). The updater ignores it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    #[serde(default, deserialize_with = "de_count")]
    pub canary: Option<HostCount>,
    #[serde(default, deserialize_with = "de_count")]
    pub batch: Option<HostCount>,
    #[serde(default, deserialize_with = "de_count")]
    pub max_fail: Option<HostCount>,
    #[serde(default, deserialize_with = "de_soak")]
    pub soak: Option<Duration>,
    pub revert_on_halt: Option<bool>,
    pub pause_after_canary: Option<bool>,
}

impl RolloutSection {
    /// Whether the table sets anything.
    pub fn is_empty(&self) -> bool {
        self.canary.is_none()
            && self.batch.is_none()
            && self.max_fail.is_none()
            && self.soak.is_none()
            && self.revert_on_halt.is_none()
            && self.pause_after_canary.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_shares() {
        assert_eq!(parse_host_count("3"), Ok(HostCount::Hosts(3)));
        assert_eq!(parse_host_count("25%"), Ok(HostCount::Percent(25)));
        assert_eq!(parse_host_count("0"), Ok(HostCount::Hosts(0)));
        for bad in ["0%", "101%", "-1", "x", "1.5", "%"] {
            assert!(parse_host_count(bad).is_err(), "{bad}");
        }
        assert_eq!(HostCount::Percent(40).of(5), Ok(2));
        assert_eq!(HostCount::Percent(100).of(5), Ok(5));
        let e = HostCount::Percent(10).of(5).unwrap_err();
        assert!(e.contains("less than one host"), "{e}");
    }

    #[test]
    fn soaks() {
        assert_eq!(parse_soak("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_soak("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_soak("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_soak("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_soak("24h"), Ok(MAX_SOAK));
        assert_eq!(parse_soak("0"), Ok(Duration::ZERO));
        for bad in ["500ms", "25h", "1d", "s", "", "-5s"] {
            assert!(parse_soak(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table() {
        let t: RolloutSection = toml::from_str(
            "canary = 1\nbatch = \"40%\"\nmax_fail = 0\nsoak = \"5s\"\nrevert_on_halt = true\n",
        )
        .unwrap();
        assert_eq!(t.canary, Some(HostCount::Hosts(1)));
        assert_eq!(t.batch, Some(HostCount::Percent(40)));
        assert_eq!(t.soak, Some(Duration::from_secs(5)));
        assert_eq!(t.revert_on_halt, Some(true));
        assert!(!t.is_empty());
        for bad in [
            "batch = \"0%\"",
            "soak = \"100ms\"",
            "bach = 1",
            "canary = -1",
        ] {
            assert!(toml::from_str::<RolloutSection>(bad).is_err(), "{bad}");
        }
    }
}
