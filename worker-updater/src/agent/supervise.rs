//! The supervision state machine (issue 11): what the updater knows of the
//! agent it runs ([`Watch`]) and what to do when it exits unexpectedly
//! ([`Decision`]). Pure bookkeeping under one mutex, no I/O and no
//! waiting: the tasks that act on it are in [`crate::ops::caretaker`].
//!
//! Every agent an operation spawns is *adopted* with a new generation; a
//! deliberate stop *retires* the current one first, so its exit belongs to
//! no generation and never counts as a crash. Restarts back off from
//! [`FIRST_BACKOFF`], doubling to [`MAX_BACKOFF`], reset after
//! [`RESET_AFTER`] of uptime; an exit that would make more than
//! [`LOOP_RESTARTS`] restarts within [`LOOP_WINDOW`] is a crash loop.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pki::wire::{AgentState, SupervisedAgent};

/// The first restart's delay.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest delay between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Uptime after which the backoff starts again from [`FIRST_BACKOFF`].
pub const RESET_AFTER: Duration = Duration::from_secs(60);
/// The window crash loops are counted in.
pub const LOOP_WINDOW: Duration = Duration::from_secs(60);
/// Restarts allowed within [`LOOP_WINDOW`]; one more is a crash loop.
pub const LOOP_RESTARTS: usize = 5;

/// Why an agent was spawned, which decides what its adoption resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A release went live (update, rollback, revert): counters reset, the
    /// revert window starts.
    Live,
    /// The supervisor's own restart after a crash: counters kept.
    Restart,
    /// A restart asked for (`POST /agent/restart`, the start-up
    /// reconcile, a swap back): counters reset, the window is kept.
    Manual,
}

impl Origin {
    /// The origin of a restart in probe phase `phase`.
    pub fn of_phase(phase: &str) -> Origin {
        match phase {
            "forward" | "rollback" => Origin::Live,
            RESTART_PHASE => Origin::Restart,
            _ => Origin::Manual,
        }
    }
}

/// How to check the running agent's health: its release's `health_url`,
/// the request timeout, and the release it should report.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    pub url: String,
    pub timeout: Duration,
    pub sha256: Option<String>,
}

/// The probe phase of the supervisor's own restarts.
pub const RESTART_PHASE: &str = "restart";

/// What to do about an unexpected exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Restart after this delay.
    Restart(Duration),
    /// Stop restarting. `revert`: the release went live less than its
    /// rollback window ago and an automatic revert is still allowed.
    CrashLoop { restarts: usize, revert: bool },
}

/// The agent as the supervisor sees it.
#[derive(Debug)]
pub struct Watch {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    generation: u64,
    state: AgentState,
    since: String,
    pid: Option<i32>,
    restarts: u32,
    healthy: Option<bool>,
    last_exit: Option<String>,
    /// When the current agent was spawned.
    spawned_at: Instant,
    /// When the running release went live (`None`: not known to be recent).
    live_since: Option<Instant>,
    /// Restarts within the last [`LOOP_WINDOW`].
    recent: VecDeque<Instant>,
    /// The next restart's delay.
    backoff: Duration,
    /// Whether a crash loop may still revert: false after a revert, until
    /// the next release goes live.
    revert_armed: bool,
    /// Set while a revert runs, so the release it restores is not armed.
    reverting: bool,
    /// How to probe the current agent, and the release it should report.
    check: Option<HealthCheck>,
    window: Duration,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            inner: Mutex::new(Inner {
                generation: 0,
                state: AgentState::Stopped,
                since: crate::now_rfc3339(),
                pid: None,
                restarts: 0,
                healthy: None,
                last_exit: None,
                spawned_at: Instant::now(),
                live_since: None,
                recent: VecDeque::new(),
                backoff: FIRST_BACKOFF,
                revert_armed: false,
                reverting: false,
                check: None,
                window: Duration::ZERO,
            }),
        }
    }
}

impl Inner {
    fn enter(&mut self, state: AgentState) {
        if self.state != state {
            self.state = state;
            self.since = crate::now_rfc3339();
        }
    }
}

impl Watch {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut i| f(&mut i))
    }

    /// The `agent` object of `/health`.
    pub fn snapshot(&self) -> Option<SupervisedAgent> {
        self.with(|i| SupervisedAgent {
            state: i.state,
            pid: i.pid.and_then(|p| u32::try_from(p).ok()),
            restarts: i.restarts,
            healthy: i.healthy,
            last_exit: i.last_exit.clone(),
            since: i.since.clone(),
        })
    }

    /// The current generation, and the state it is in.
    pub fn current(&self) -> Option<(u64, AgentState)> {
        self.with(|i| (i.generation, i.state))
    }

    /// Whether `generation` still is the agent being supervised.
    pub fn is_current(&self, generation: u64) -> bool {
        self.with(|i| i.generation == generation).unwrap_or(false)
    }

    /// A deliberate stop is coming: whatever runs now is no longer watched.
    pub fn retire(&self) {
        self.with(|i| {
            i.generation += 1;
            i.pid = None;
            i.healthy = None;
            i.check = None;
            i.enter(AgentState::Stopped);
        });
    }

    /// A new agent, `pid`, spawned for `origin`, to run and probe as `run`
    /// with the release's rollback `window`. Returns its generation.
    pub fn adopt(
        &self,
        pid: i32,
        origin: Origin,
        check: Option<HealthCheck>,
        window: Duration,
    ) -> u64 {
        self.with(|i| {
            i.generation += 1;
            i.pid = Some(pid);
            i.healthy = None;
            i.spawned_at = Instant::now();
            i.check = check;
            i.window = window;
            if origin != Origin::Restart {
                i.restarts = 0;
                i.recent.clear();
                i.backoff = FIRST_BACKOFF;
                i.last_exit = None;
            }
            if origin == Origin::Live {
                i.live_since = Some(Instant::now());
                i.revert_armed = !i.reverting;
            }
            i.enter(AgentState::Starting);
            i.generation
        })
        .unwrap_or(0)
    }

    /// A probe of `generation` said `healthy`.
    pub fn probed(&self, generation: u64, healthy: bool) {
        self.with(|i| {
            if i.generation == generation && i.pid.is_some() {
                i.healthy = Some(healthy);
                if healthy && i.state == AgentState::Starting {
                    i.enter(AgentState::Running);
                }
            }
        });
    }

    /// How to probe the current agent, when it should be running.
    pub fn probe_target(&self) -> Option<(u64, HealthCheck)> {
        self.with(|i| match (&i.check, i.state) {
            (Some(check), AgentState::Running | AgentState::Starting) => {
                Some((i.generation, check.clone()))
            }
            _ => None,
        })
        .flatten()
    }

    /// `generation` exited unexpectedly (`status`) at `now`: count it and
    /// decide. `None` when it is not the current generation any more.
    pub fn exited(&self, generation: u64, status: &str, now: Instant) -> Option<Decision> {
        self.with(|i| {
            if i.generation != generation {
                return None;
            }
            i.pid = None;
            i.healthy = Some(false);
            i.last_exit = Some(status.to_owned());
            if now.saturating_duration_since(i.spawned_at) >= RESET_AFTER {
                i.backoff = FIRST_BACKOFF;
            }
            while i
                .recent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > LOOP_WINDOW)
            {
                i.recent.pop_front();
            }
            if i.recent.len() >= LOOP_RESTARTS {
                i.enter(AgentState::CrashLoop);
                let revert = i.revert_armed
                    && !i.window.is_zero()
                    && i.live_since
                        .is_some_and(|t| now.saturating_duration_since(t) <= i.window);
                return Some(Decision::CrashLoop {
                    restarts: i.recent.len(),
                    revert,
                });
            }
            let delay = i.backoff;
            i.backoff = (i.backoff * 2).min(MAX_BACKOFF);
            i.recent.push_back(now + delay);
            i.restarts = i.restarts.saturating_add(1);
            i.enter(AgentState::Backoff);
            Some(Decision::Restart(delay))
        })
        .flatten()
    }

    /// A revert starts (`true`) or ends (`false`): the release it restores
    /// is not reverted again by itself.
    pub fn set_reverting(&self, on: bool) {
        self.with(|i| {
            i.reverting = on;
            if on {
                i.revert_armed = false;
            }
        });
    }

    /// A restart of `generation` could not even spawn: it stays down, as
    /// in a crash loop, until an operation starts it.
    pub fn gave_up(&self, generation: u64, why: &str) {
        self.with(|i| {
            if i.generation == generation {
                i.last_exit = Some(why.to_owned());
                i.enter(AgentState::CrashLoop);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_crash_loop_and_only_live_releases_revert() {
        let w = Watch::default();
        let t0 = Instant::now();
        let mut g = w.adopt(1, Origin::Live, None, Duration::from_secs(600));
        let mut delays = Vec::new();
        let mut now = t0;
        let verdict = loop {
            match w.exited(g, "exit status: 1", now).unwrap() {
                Decision::Restart(d) => {
                    delays.push(d);
                    now += d;
                    g = w.adopt(1, Origin::Restart, None, Duration::from_secs(600));
                }
                other => break other,
            }
            assert!(delays.len() <= LOOP_RESTARTS, "never stops restarting");
        };
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800]);
        assert_eq!(
            verdict,
            Decision::CrashLoop {
                restarts: 5,
                revert: true
            }
        );
        let s = w.snapshot().unwrap();
        assert_eq!((s.state, s.restarts), (AgentState::CrashLoop, 5));
        // A stale generation is nobody's.
        assert_eq!(w.exited(g - 1, "x", now), None);
        // After a revert the restored release does not revert by itself.
        w.set_reverting(true);
        let mut g = w.adopt(2, Origin::Live, None, Duration::from_secs(600));
        w.set_reverting(false);
        for _ in 0..LOOP_RESTARTS {
            assert!(matches!(w.exited(g, "x", now), Some(Decision::Restart(_))));
            g = w.adopt(2, Origin::Restart, None, Duration::from_secs(600));
        }
        assert_eq!(
            w.exited(g, "x", now),
            Some(Decision::CrashLoop {
                restarts: 5,
                revert: false
            })
        );
    }

    #[test]
    fn backoff_caps_and_resets_after_a_minute_up_and_old_restarts_expire() {
        let w = Watch::default();
        let mut now = Instant::now();
        let mut g = w.adopt(1, Origin::Manual, None, Duration::ZERO);
        // Crashes a little over a minute apart never make a loop, and each
        // starts from the first backoff again.
        for _ in 0..10 {
            now += RESET_AFTER + Duration::from_secs(1);
            assert_eq!(
                w.exited(g, "x", now),
                Some(Decision::Restart(FIRST_BACKOFF))
            );
            g = w.adopt(1, Origin::Restart, None, Duration::ZERO);
            // `spawned_at` is real time; stand in for a long uptime.
            w.with(|i| i.spawned_at = now);
        }
        assert_eq!(w.snapshot().unwrap().restarts, 10);
        // Left alone the delay grows to the cap.
        w.with(|i| i.recent.clear());
        let mut d = Duration::ZERO;
        for _ in 0..12 {
            w.with(|i| i.recent.clear());
            if let Some(Decision::Restart(x)) = w.exited(g, "x", now) {
                d = x;
            }
            g = w.adopt(1, Origin::Restart, None, Duration::ZERO);
            w.with(|i| i.spawned_at = now);
        }
        assert_eq!(d, MAX_BACKOFF);
        // A release not known to have gone live recently (adopted at
        // start-up, restarted by hand) only stops in a crash loop.
        let w = Watch::default();
        let mut g = w.adopt(1, Origin::Manual, None, Duration::from_secs(600));
        let verdict = loop {
            match w.exited(g, "x", now) {
                Some(Decision::Restart(_)) => {
                    g = w.adopt(1, Origin::Restart, None, Duration::from_secs(600));
                }
                other => break other,
            }
        };
        assert_eq!(
            verdict,
            Some(Decision::CrashLoop {
                restarts: LOOP_RESTARTS,
                revert: false
            })
        );
    }
}
