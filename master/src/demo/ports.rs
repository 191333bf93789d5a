//! Loopback ports for the demo's workers, never handed out twice within
//! this process.
//!
//! An agent binds its port only when its updater starts it, long after the
//! port was chosen, so a bind-and-release probe alone can hand the same
//! free port to two workers. Every port given out is remembered, and a
//! candidate is taken only if it is both free now (we just bound it) and
//! new to this process. Candidates lie below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), so no `bind :0` and no
//! outgoing connection on the machine is handed the port before the agent
//! binds it; they start at a random point of a band above the ports the
//! test harness hands out, so a demo and tests running side by side do not
//! meet.

use std::collections::BTreeSet;
use std::io;
use std::net::TcpListener;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// How many candidates to try before giving up.
const TRIES: usize = 64;

/// Every port this process has handed out.
static GIVEN: Ports = Ports::new();

/// A set of ports handed out, and the rule for taking a new one.
#[derive(Debug)]
struct Ports {
    given: Mutex<BTreeSet<u16>>,
}

impl Ports {
    const fn new() -> Ports {
        Ports {
            given: Mutex::new(BTreeSet::new()),
        }
    }

    /// The first candidate from `probe` not handed out before.
    fn take(&self, mut probe: impl FnMut() -> io::Result<u16>) -> Result<u16> {
        for _ in 0..TRIES {
            let port = probe().map_err(|e| Error::io("127.0.0.1", e))?;
            let mut given = self
                .given
                .lock()
                .map_err(|_| Error::Other("port allocator lock poisoned".into()))?;
            if given.insert(port) {
                return Ok(port);
            }
        }
        Err(Error::Other(format!(
            "no new loopback port after {TRIES} tries"
        )))
    }
}

/// The band candidates come from: above what the test harness hands out
/// (it counts up from 10000), below the ephemeral range.
const BAND_LOW: u16 = 20_000;
/// Where the ephemeral range starts when `/proc` does not say.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

/// Candidates in the band, from a random start, each bound once on
/// 127.0.0.1 to see it is free now.
fn probe_band() -> impl FnMut() -> io::Result<u16> {
    let high = ephemeral_low().max(BAND_LOW + 1024);
    let span = high - BAND_LOW;
    // A random start (std's per-process hash keys are random): two demos
    // side by side begin at different points of the band.
    let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), std::process::id());
    let mut next = BAND_LOW + (seed % u64::from(span)) as u16;
    move || {
        for _ in 0..span {
            let port = next;
            next = if next + 1 >= high { BAND_LOW } else { next + 1 };
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("no free loopback port in {BAND_LOW}..{high}"),
        ))
    }
}

/// A loopback port free a moment ago, below the ephemeral range, and never
/// handed out by this process.
pub(super) fn loopback_port() -> Result<u16> {
    GIVEN.take(probe_band())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9 #2: the kernel may offer a port again once it was released;
    /// the allocator must not hand it out a second time.
    #[test]
    fn a_port_offered_twice_is_handed_out_once() {
        let ports = Ports::new();
        let mut offers = [40001, 40001, 40001, 40002].into_iter();
        let mut probe = || Ok(offers.next().unwrap_or(40003));
        assert_eq!(ports.take(&mut probe).unwrap(), 40001);
        assert_eq!(ports.take(&mut probe).unwrap(), 40002);
        let stuck = Ports::new();
        stuck.take(|| Ok(7)).unwrap();
        assert!(stuck.take(|| Ok(7)).is_err(), "gives up, never repeats");
    }

    #[test]
    fn real_ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: BTreeSet<u16> = (0..20).map(|_| loopback_port().unwrap()).collect();
        assert_eq!(ports.len(), 20);
        let low = ephemeral_low();
        assert!(
            ports.iter().all(|p| (BAND_LOW..low).contains(p)),
            "{ports:?}"
        );
    }
}
