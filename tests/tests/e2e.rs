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
/// `swarm completions` and `swarm man` produce what bash, zsh, fish and man accept.
#[path = "e2e/completions.rs"]
mod completions;
/// Crash windows: the updater killed at every step, hooks that must die with it.
#[path = "e2e/crash.rs"]
mod crash;
/// Faults: a full install filesystem, an agent that daemonizes, a forged pidfile.
#[path = "e2e/faults.rs"]
mod faults;
/// `swarm update`, `rollback`, `status`, `history`, `demo` against real updaters.
#[path = "e2e/fleet.rs"]
mod fleet;
/// The harness itself: the port allocator.
#[path = "e2e/harness.rs"]
mod harness;
/// The master against a hostile worker (escapes, huge answers) and a kill mid-push.
#[path = "e2e/hostile.rs"]
mod hostile;
/// Hostile connections: idle floods, trickled and stalled uploads, accept failures.
#[path = "e2e/hostile_conn.rs"]
mod hostile_conn;
/// Issue 11 from the master: status from the updaters, drift, restart, logs, the worker journal.
#[path = "e2e/keep.rs"]
mod keep;
/// Issue 9's master bugs: a closed stdout, a worker's wrong clock, Ctrl-C mid-push.
#[path = "e2e/master_bugs.rs"]
mod master_bugs;
/// Two workers in their own network namespaces, reached over veth links.
#[path = "e2e/netns.rs"]
mod netns;
/// The worker package: `install.sh` on a bare host in its own namespaces, the shipped unit.
#[path = "e2e/package.rs"]
mod package;
/// What `swarm update` leaves at home: private keys found by content.
#[path = "e2e/packer.rs"]
mod packer;
/// The updater's receive path under hostile uploads (issue 10).
#[path = "e2e/receive.rs"]
mod receive;
/// Issue 12: release_id, the kept index, zstd, kept releases, verify.
#[path = "e2e/releases.rs"]
mod releases;
/// Staged rollouts and host tags (issue 13): canary, waves, soak, halt, revert.
#[path = "e2e/rollout.rs"]
mod rollout;
/// `POST /update-self`: switch, keep flags, refuse, revert.
#[path = "e2e/self_update.rs"]
mod self_update;
/// A CLI that fits a shell: usage errors, an unreadable home, `--json`, colour, path rule.
#[path = "e2e/shell.rs"]
mod shell;
/// Issue 15: signed releases: the release key, refusals, downgrade, curl with `swarm sign`, renew.
#[path = "e2e/signing.rs"]
mod signing;
/// Issue 14: held listen sockets, socket activation, start-first, zero downtime.
#[path = "e2e/sockets.rs"]
mod sockets;
/// Issue 11 on the worker: supervision, crash-loop revert, unchanged, journal, logs.
#[path = "e2e/supervise.rs"]
mod supervise;
/// The tar header guard against hostile extension headers (issue 10).
#[path = "e2e/tar_guard.rs"]
mod tar_guard;
/// The trust core: `pki::serve` and clients with every kind of certificate.
#[path = "e2e/trust.rs"]
mod trust;
/// Issue 15: named operators, the deny list, the policy matrix with real certificates.
#[path = "e2e/trust_life.rs"]
mod trust_life;
/// `worker-updater`: push, probe, roll back, reject, repair.
#[path = "e2e/updater.rs"]
mod updater;
/// Issue 9 bugs in the updater: what `--check` says, a busy answer.
#[path = "e2e/updater_bugs.rs"]
mod updater_bugs;
