//! The agent processes: [`supervisor`] finds, stops and spawns them,
//! [`pidfile`] records the one spawned, [`proc`] reads `/proc` and holds
//! the one SIGTERM → grace → SIGKILL → wait ([`proc::terminate`]),
//! [`port`] says who holds the agent's port, [`supervise`] is the
//! restart/crash-loop state machine (issue 11), and [`sockets`] holds the
//! agent's listen sockets across its restarts (issue 14).
//!
//! An agent we spawn leads its own process group; stopping it signals the
//! whole group and waits until the group is empty, so a wrapper script's
//! children do not outlive it (and keep its port).

pub mod pidfile;
pub mod port;
pub mod proc;
pub mod sockets;
pub mod supervise;
pub mod supervisor;

pub use pidfile::PidFile;
pub use supervisor::{Launch, Matcher, Spawned, Stopped, Supervisor};
