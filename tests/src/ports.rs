//! Loopback ports for daemons whose port must be known before they bind it
//! (agents, which the updater starts and restarts on a port fixed in
//! advance; updaters enrolled with `--updater-port`): race-free within this
//! process and across every process that uses this module.
//!
//! Bind-and-release (`bind :0`, read the port, close) is not enough: the
//! kernel may hand the same port to the next `bind :0`, in this process or
//! any other, before the daemon that was meant to have it binds it (issue 9,
//! bug 2). Here a port is handed out only when
//! 1. it lies below the kernel's ephemeral range
//!    (`/proc/sys/net/ipv4/ip_local_port_range`), so no `bind :0` and no
//!    outgoing connection anywhere on the machine is ever given it;
//! 2. this process never handed it out before (a process-wide set, so tests
//!    running as threads of one binary never share one);
//! 3. no other process holds its claim: while a [`Port`] lives it keeps a
//!    listener on `127.0.0.2:<port>`, which another process using this
//!    module fails to bind, and which the kernel drops when this process
//!    dies, however it dies (a listener on 127.0.0.2 does not conflict with
//!    the daemon binding `127.0.0.1:<port>`);
//! 4. `127.0.0.1:<port>` can be bound right now (nobody else listens there).
//!
//! Who else is kept apart, and how: the e2e tests are threads of one
//! process (rule 2); the bench and a second test run, in this worktree or
//! another, use this module too (rule 3); daemons the tests bind on port 0,
//! crate-local tests (`cargo test -p worker-updater`, …) and anything else
//! that binds `:0` or connects out get ephemeral ports (rule 1). What it
//! cannot keep out is a process that picks a fixed port below the
//! ephemeral range on its own (rule 4 only sees one that already listens).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use anyhow::{Context, bail};

/// The lowest port handed out: clear of the well-known and most registered
/// service ports.
const FIRST: u16 = 10_000;
/// Where the ephemeral range starts when `/proc` does not say (Linux's default).
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;
/// The address a claim is held on.
const CLAIM_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Every port this process handed out, with the next candidate to try.
struct Allocator {
    given: BTreeSet<u16>,
    next: Option<u16>,
}

static ALLOCATOR: Mutex<Allocator> = Mutex::new(Allocator {
    given: BTreeSet::new(),
    next: None,
});

/// A loopback port reserved for one daemon: free when it was handed out,
/// never handed out again by this process, and claimed against other
/// processes using this module until dropped.
#[derive(Debug)]
pub struct Port {
    port: u16,
    _claim: TcpListener,
}

impl Port {
    /// Reserve a port (see the module docs for what that guarantees).
    pub fn reserve() -> anyhow::Result<Port> {
        let (first, end) = range();
        if end <= first {
            bail!("no port range below the ephemeral range (which starts at {end})");
        }
        let span = u32::from(end - first);
        let mut a = ALLOCATOR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Processes start at different places in the range (by pid), so two
        // test binaries started together seldom contend for the same claims.
        let start = match a.next {
            Some(p) if (first..end).contains(&p) => p,
            _ => first + (std::process::id() % span) as u16,
        };
        for i in 0..span {
            // < span ≤ u16::MAX, so the cast is exact.
            let port = first + ((u32::from(start - first) + i) % span) as u16;
            if a.given.contains(&port) {
                continue;
            }
            let claim = match TcpListener::bind((CLAIM_ADDR, port)) {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    bail!("cannot hold port claims on {CLAIM_ADDR} (is 127.0.0.0/8 on lo?): {e}")
                }
                Err(_) => continue,
            };
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            a.given.insert(port);
            a.next = Some(if port + 1 == end { first } else { port + 1 });
            return Ok(Port {
                port,
                _claim: claim,
            });
        }
        bail!(
            "no loopback port left in {first}..{end} that this process has not handed out \
             and no other process claims"
        )
    }

    /// The port number.
    pub fn get(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.port.fmt(f)
    }
}

/// `[FIRST, start of the ephemeral range)`.
fn range() -> (u16, u16) {
    let low = ephemeral_low().unwrap_or(DEFAULT_EPHEMERAL_LOW);
    // A machine whose ephemeral range starts very low still gets a range.
    (FIRST.min(low.saturating_sub(2_000)).max(1_024), low)
}

fn ephemeral_low() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .context("reading the ephemeral port range")
        .ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// [`Port::reserve`] for tests: panics when no port is left.
pub fn free_port() -> Port {
    Port::reserve().unwrap_or_else(|e| panic!("{e:#}"))
}
