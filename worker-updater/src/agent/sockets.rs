//! The socket holder (issue 14): the agent's `[agent] listen` sockets,
//! bound once by the updater and kept across agent restarts, updates,
//! rollbacks, supervision restarts and the updater's own re-exec, handed to
//! every agent with the systemd protocol (`LISTEN_FDS`, fds from 3).
//!
//! The held sockets live in [`SLOTS`] fixed descriptors reserved at start
//! (unbound sockets as placeholders, contiguous from the first): binding an
//! address `dup2`s the listening socket onto a slot, closing it puts a
//! placeholder back. So a self-update's exec can pass all of them at once,
//! contiguous, and the new updater takes them back with `listenfd`
//! ([`Sockets::exec_env`]) — without a line of `unsafe`. A plain restart of
//! the updater cannot inherit anything: it binds again, which succeeds
//! beside the copy a running agent still holds because every held socket is
//! bound with `SO_REUSEPORT` (the kernel shares a port only between sockets
//! of the same user that all set it; an agent binding the port itself
//! fails with "address in use").

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Result, UpdaterError};

/// How many sockets can be held at once: [`pki::swarm_toml::MAX_LISTEN`]
/// for the running release and as many again for one changing its
/// `listen` (old and new are held until the old agent has stopped).
pub const SLOTS: usize = 2 * pki::swarm_toml::MAX_LISTEN;
/// The backlog of a held socket: connections wait there while no agent
/// accepts (a stop-first restart).
const BACKLOG: i32 = 1024;
/// Set on the exec of a self-update: the first slot's fd. With
/// `LISTEN_FDS` (= [`SLOTS`]) and `LISTEN_PID` (= our pid, kept by exec).
pub const HELD_VAR: &str = "SWARM_HELD_SOCKETS";

/// The held sockets of this process.
#[derive(Debug)]
pub struct Sockets {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Fixed descriptors; a `Some` address is a listening socket we hold.
    slots: Vec<(OwnedFd, Option<SocketAddr>)>,
    /// Whether the slots are contiguous descriptors (else an exec cannot
    /// pass them and the new updater binds again).
    contiguous: bool,
    /// Whether the sockets came through a self-update's exec.
    inherited: bool,
    /// What the reservation has to say, logged by [`Sockets::log_start`].
    notes: Vec<String>,
}

static GLOBAL: OnceLock<Sockets> = OnceLock::new();

impl Sockets {
    /// The sockets of this process: reserved by the first call, which
    /// `main` makes before anything else opens a descriptor.
    pub fn global() -> &'static Sockets {
        GLOBAL.get_or_init(Sockets::reserve)
    }

    /// Take the slots a self-update's exec passed ([`HELD_VAR`] and
    /// `LISTEN_FDS`), else reserve fresh ones.
    fn reserve() -> Sockets {
        // Said once tracing is up ([`Sockets::log_start`]): this runs first.
        let mut notes = Vec::new();
        if std::env::var_os(HELD_VAR).is_some() && std::env::var_os("LISTEN_FDS").is_some() {
            let mut fds = listenfd::ListenFd::from_env();
            let mut slots = Vec::new();
            for i in 0..fds.len() {
                match fds.take_tcp_listener(i) {
                    Ok(Some(l)) => {
                        let addr = l.local_addr().ok().filter(|a| a.port() != 0);
                        slots.push((OwnedFd::from(l), addr));
                    }
                    Ok(None) => {}
                    Err(e) => notes.push(format!("an inherited socket slot: {e}")),
                }
            }
            if slots.len() == SLOTS {
                let contiguous = contiguous(&slots);
                let held: Vec<_> = slots.iter().filter_map(|(_, a)| *a).collect();
                notes.push(format!(
                    "took the held sockets {held:?} over from the previous updater"
                ));
                return Sockets {
                    inner: Mutex::new(Inner {
                        slots,
                        contiguous,
                        inherited: true,
                        notes,
                    }),
                };
            }
            notes.push(format!(
                "the previous updater passed {} socket slots, not {SLOTS}; binding again",
                slots.len()
            ));
        }
        let slots = contiguous_placeholders();
        let contiguous = slots.len() == SLOTS;
        if !contiguous {
            notes.push(
                "no run of free descriptors for the socket slots: a self-update binds the listen sockets again".into(),
            );
        }
        Sockets {
            inner: Mutex::new(Inner {
                slots,
                contiguous,
                inherited: false,
                notes,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| UpdaterError::Internal("socket holder lock poisoned".into()))?;
        f(&mut inner)
    }

    /// Log what the reservation (before tracing was set up) had to say.
    pub fn log_start(&self) {
        let _ = self.with(|i| {
            for n in i.notes.drain(..) {
                tracing::info!("socket slots: {n}");
            }
            Ok(())
        });
    }

    /// Whether the held sockets came through a self-update's exec.
    pub fn inherited(&self) -> bool {
        self.with(|i| Ok(i.inherited)).unwrap_or(false)
    }

    /// The addresses held now (for the tests).
    #[cfg(test)]
    pub fn held(&self) -> Vec<SocketAddr> {
        self.with(|i| Ok(i.slots.iter().filter_map(|(_, a)| *a).collect()))
            .unwrap_or_default()
    }

    /// Bind every address of `addrs` not held yet. All or nothing: on a
    /// failure the ones bound by this call are closed again and the error
    /// says which address and why.
    pub fn ensure(&self, addrs: &[SocketAddr]) -> Result<()> {
        self.with(|inner| {
            let mut bound = Vec::new();
            for addr in addrs {
                if inner.slots.iter().any(|(_, a)| a == &Some(*addr)) {
                    continue;
                }
                let result = listen_on(*addr).and_then(|sock| inner.put(sock, *addr));
                if let Err(e) = result {
                    for a in bound {
                        inner.close(a);
                    }
                    return Err(e);
                }
                tracing::info!(%addr, "holding a listen socket for the agent");
                bound.push(*addr);
            }
            Ok(())
        })
    }

    /// Close every held socket whose address is not in `keep` (no release
    /// that runs uses it any more).
    pub fn retain(&self, keep: &[SocketAddr]) {
        let _ = self.with(|inner| {
            let gone: Vec<SocketAddr> = inner
                .slots
                .iter()
                .filter_map(|(_, a)| *a)
                .filter(|a| !keep.contains(a))
                .collect();
            for a in gone {
                tracing::info!(addr = %a, "closing a listen socket no release uses any more");
                inner.close(a);
            }
            Ok(())
        });
    }

    /// A duplicate of the socket held for each of `addrs`, in order, for a
    /// child (`LISTEN_FDS`). Every address must be held.
    pub fn fds_for(&self, addrs: &[SocketAddr]) -> Result<Vec<OwnedFd>> {
        self.with(|inner| {
            addrs
                .iter()
                .map(|addr| {
                    let (fd, _) = inner
                        .slots
                        .iter()
                        .find(|(_, a)| a == &Some(*addr))
                        .ok_or_else(|| {
                            UpdaterError::Agent(format!("the listen socket {addr} is not held"))
                        })?;
                    fd.try_clone().map_err(|e| {
                        UpdaterError::Agent(format!("duplicating the socket {addr}: {e}"))
                    })
                })
                .collect()
        })
    }

    /// Make the slots survive an exec and say so in the environment it
    /// gets; `None` when the slots cannot be passed (not contiguous).
    /// After a failed exec call [`Sockets::after_failed_exec`].
    pub fn exec_env(&self) -> Option<Vec<(String, String)>> {
        self.with(|inner| {
            if !inner.contiguous || inner.slots.is_empty() {
                return Ok(None);
            }
            for (fd, _) in &inner.slots {
                fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))
                    .map_err(|e| UpdaterError::Internal(format!("clearing FD_CLOEXEC: {e}")))?;
            }
            let first = inner.slots[0].0.as_raw_fd();
            Ok(Some(vec![
                (HELD_VAR.to_owned(), first.to_string()),
                ("LISTEN_FDS".to_owned(), inner.slots.len().to_string()),
                ("LISTEN_FDS_FIRST_FD".to_owned(), first.to_string()),
                ("LISTEN_PID".to_owned(), std::process::id().to_string()),
            ]))
        })
        .unwrap_or_else(|e| {
            tracing::warn!("preparing the held sockets for the exec: {e}");
            None
        })
    }

    /// The exec failed: no child may inherit the slots.
    pub fn after_failed_exec(&self) {
        let _ = self.with(|inner| {
            for (fd, _) in &inner.slots {
                let _ = cloexec(fd);
            }
            Ok(())
        });
    }
}

impl Inner {
    /// Put the listening `sock` for `addr` into a free slot.
    fn put(&mut self, sock: Socket, addr: SocketAddr) -> Result<()> {
        let Some(slot) = self.slots.iter_mut().find(|(_, a)| a.is_none()) else {
            return Err(UpdaterError::Agent(format!(
                "cannot hold {addr}: all {SLOTS} socket slots are in use"
            )));
        };
        nix::unistd::dup2(&sock, &mut slot.0)
            .map_err(|e| UpdaterError::Internal(format!("dup2 of the socket {addr}: {e}")))?;
        cloexec(&slot.0)?;
        slot.1 = Some(addr);
        Ok(())
    }

    /// Close the socket held for `addr`: its slot gets a placeholder.
    fn close(&mut self, addr: SocketAddr) {
        if let Some(slot) = self.slots.iter_mut().find(|(_, a)| a == &Some(addr)) {
            match placeholder().and_then(|p| {
                nix::unistd::dup2(&p, &mut slot.0)
                    .map_err(|e| UpdaterError::Internal(format!("dup2: {e}")))?;
                cloexec(&slot.0)
            }) {
                Ok(()) => slot.1 = None,
                Err(e) => tracing::error!(%addr, "closing a held socket: {e}"),
            }
        }
    }
}

/// An unbound TCP socket holding a slot's descriptor (`listenfd` takes it
/// back as a listener whose port is 0).
fn placeholder() -> Result<OwnedFd> {
    Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map(OwnedFd::from)
        .map_err(|e| UpdaterError::Internal(format!("creating a socket: {e}")))
}

/// A listening socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
/// The error names the address and what to do.
fn listen_on(addr: SocketAddr) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| UpdaterError::Agent(format!("creating a socket for {addr}: {e}")))?;
    let bind = || -> std::io::Result<()> {
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.bind(&addr.into())?;
        sock.listen(BACKLOG)
    };
    bind().map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
                "; port {} is below 1024: the updater needs CAP_NET_BIND_SERVICE (or root) to bind it",
                addr.port()
            ),
            std::io::ErrorKind::AddrInUse => {
                "; another process holds it (a service outside swarm, or an agent that bound it itself)".to_owned()
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "; no interface of this host has that address".to_owned()
            }
            _ => String::new(),
        };
        UpdaterError::Bind(format!("cannot bind [agent] listen {addr}: {e}{hint}; nothing was rotated"))
    })?;
    Ok(sock)
}

fn cloexec(fd: &OwnedFd) -> Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(|_| ())
        .map_err(|e| UpdaterError::Internal(format!("setting FD_CLOEXEC: {e}")))
}

/// [`SLOTS`] placeholders on consecutive descriptors: opened one after
/// the other (each takes the lowest free number) until a run is long
/// enough, stepping over descriptors someone left open for us (a
/// jobserver pipe, say); the ones outside the run are closed again.
/// Fewer when no run was found within a bounded number of tries.
fn contiguous_placeholders() -> Vec<(OwnedFd, Option<SocketAddr>)> {
    let mut opened: Vec<OwnedFd> = Vec::new();
    let mut run_start = 0;
    for _ in 0..SLOTS * 8 {
        let Ok(fd) = placeholder() else {
            break;
        };
        if opened
            .last()
            .is_some_and(|last| last.as_raw_fd() + 1 != fd.as_raw_fd())
        {
            run_start = opened.len();
        }
        opened.push(fd);
        if opened.len() - run_start == SLOTS {
            return opened
                .into_iter()
                .skip(run_start)
                .map(|fd| (fd, None))
                .collect();
        }
    }
    opened
        .into_iter()
        .take(SLOTS)
        .map(|fd| (fd, None))
        .collect()
}

fn contiguous(slots: &[(OwnedFd, Option<SocketAddr>)]) -> bool {
    slots
        .windows(2)
        .all(|w| w[1].0.as_raw_fd() == w[0].0.as_raw_fd() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_all_or_nothing_share_the_port_and_close() {
        let s = Sockets::reserve();
        let free = |_: u8| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
        };
        let (a, b) = (free(0), free(1));
        // `b` taken by a stranger without SO_REUSEPORT: nothing is bound.
        let stranger = std::net::TcpListener::bind(b).unwrap();
        let e = s.ensure(&[a, b]).unwrap_err().to_string();
        assert!(
            e.contains(&b.to_string()) && e.contains("another process"),
            "{e}"
        );
        assert!(s.held().is_empty());
        drop(stranger);
        s.ensure(&[a, b]).unwrap();
        assert_eq!(s.held(), vec![a, b]);
        // A second holder (a restarted updater) binds beside the first.
        let again = Sockets::reserve();
        again.ensure(&[a]).unwrap();
        // The duplicates handed to a child accept connections.
        let fds = s.fds_for(&[a]).unwrap();
        let l = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(l.local_addr().unwrap(), a);
        s.retain(&[b]);
        assert_eq!(s.held(), vec![b]);
        assert!(s.fds_for(&[a]).is_err());
    }
}
