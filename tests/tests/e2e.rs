//! swarm's end-to-end tests, one binary with a module per area (cargo runs
//! them as threads of one process; the harness in `tests/src` keeps them
//! apart: own temp dirs, own CA, ports no two tests share).
//!
//! Every test drives the real binaries (`swarm`, `worker-updater`,
//! `worker-agent`) over real mTLS on loopback, or in network namespaces it
//! creates itself.
//!
//! The modules live in `tests/e2e/` (named by `#[path]`: cargo would take
//! every `tests/*.rs` for a binary of its own).

/// `swarm ca init`, `enroll`, `list`, `decommission`, `history`: the identity commands.
#[path = "e2e/cli.rs"]
mod cli;
/// `swarm update`, `rollback`, `status`, `history`, `demo` against real updaters.
#[path = "e2e/fleet.rs"]
mod fleet;
/// The harness itself: the port allocator.
#[path = "e2e/harness.rs"]
mod harness;
/// Two workers in their own network namespaces, reached over veth links.
#[path = "e2e/netns.rs"]
mod netns;
/// The updater's receive path under hostile uploads (issue 10).
#[path = "e2e/receive.rs"]
mod receive;
/// `POST /update-self`: switch, keep flags, refuse, revert.
#[path = "e2e/self_update.rs"]
mod self_update;
/// The tar header guard against hostile extension headers (issue 10).
#[path = "e2e/tar_guard.rs"]
mod tar_guard;
/// The trust core: `pki::serve` and clients with every kind of certificate.
#[path = "e2e/trust.rs"]
mod trust;
/// `worker-updater`: push, probe, roll back, reject, repair.
#[path = "e2e/updater.rs"]
mod updater;
