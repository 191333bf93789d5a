//! Loopback ports for the demo's workers, never handed out twice within
//! this process.
//!
//! An agent binds its port only when its updater starts it, long after the
//! port was chosen, so a bind-and-release probe alone can hand the same
//! free port to two workers. Every port given out is remembered, and a
//! candidate is taken only if it is both free now (the kernel just bound
//! it for us) and new to this process.

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
            let port = probe().map_err(|e| Error::io("127.0.0.1:0", e))?;
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

/// A port the kernel says is free on 127.0.0.1 right now.
fn probe_free() -> io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// A loopback port free a moment ago and never handed out by this process.
pub(super) fn loopback_port() -> Result<u16> {
    GIVEN.take(probe_free)
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
    fn real_ports_are_distinct() {
        let ports: BTreeSet<u16> = (0..20).map(|_| loopback_port().unwrap()).collect();
        assert_eq!(ports.len(), 20);
    }
}
