//! Test-only crash points: `SWARM_UPDATER_CRASH_AT=<step>` makes the
//! updater kill itself with SIGKILL when it reaches `<step>`, so the
//! end-to-end tests can stop it at every phase of an update, a revert, a
//! rollback and a rollback's undo, restart it, and check the repair.
//!
//! Compiled only with `debug_assertions` (the test builds): in a release
//! build [`at`] is an empty function and the variable is never read.

/// The variable naming the step to die at.
pub const CRASH_AT: &str = "SWARM_UPDATER_CRASH_AT";

/// Die here (SIGKILL, like `kill -9`: no destructor, no flush) if
/// [`CRASH_AT`] names `step`. A no-op in release builds.
#[cfg(debug_assertions)]
pub fn at(step: &str) {
    if std::env::var_os(CRASH_AT).is_some_and(|v| v == step) {
        tracing::error!("{CRASH_AT}={step}: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Release builds: never crash on purpose.
#[cfg(not(debug_assertions))]
pub fn at(_step: &str) {}
