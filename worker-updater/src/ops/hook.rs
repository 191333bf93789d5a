//! Bounded child runs: the install hook, and (for the self-update's
//! `--check`) any child that must finish within a timeout, in a process
//! group of its own that is killed whole when it ends, however it ends
//! (exit, failure, timeout), so nothing it backgrounded lives on.
//!
//! The install hook's group leader is this binary again
//! ([`HOOK_LEADER`], [`hook_leader`]): it sets `PR_SET_PDEATHSIG` on
//! itself (a `pre_exec` would need `unsafe`, which the workspace forbids),
//! runs the hook as its child and, when the updater dies, kills its whole
//! group. The group is also recorded in `releases/.hook.json` for the
//! start-up repair ([`reap_hook_leftovers`]), which kills what is left of
//! it before it touches staging.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal, killpg};
use nix::unistd::{Pid, getpgrp, getppid};
use tokio::io::AsyncReadExt;

use crate::agent::proc;
use crate::error::{Result, UpdaterError};
use crate::release::Hook;
use crate::slots::{HookJournal, Layout};
use crate::state::blocking;

/// The first argument that makes `worker-updater` an install hook's group
/// leader: `worker-updater --hook-leader <updater pid> -- <hook argv…>`.
pub const HOOK_LEADER: &str = "--hook-leader";
/// How long a hook's group may take to die after SIGKILL.
const GROUP_KILL_WAIT: Duration = Duration::from_secs(5);

/// How much of a child's stderr is kept.
const STDERR_TAIL: usize = 8 * 1024;

/// Run the install hook in its dir with its timeout, under a
/// [`hook_leader`], its group recorded in `layout`'s hook journal until it
/// is dead; on failure, the tail of its stderr.
pub async fn run_install(hook: &Hook, layout: &Layout) -> Result<()> {
    let (argv, timeout) = (&hook.argv, hook.timeout);
    let Some((program, args)) = argv.split_first() else {
        return Err(UpdaterError::ReleaseConfig(
            "[install] command is empty".into(),
        ));
    };
    let program = Path::new(program);
    tracing::info!(?argv, "running the install hook");
    // The leader is this very binary, as it runs now (even if replaced).
    // PDEATHSIG fires when the forking *thread* ends: the spawn below runs
    // on a runtime worker thread, which lives as long as the updater.
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg(HOOK_LEADER)
        .arg(std::process::id().to_string())
        .arg("--")
        .arg(program)
        .args(args)
        .current_dir(&hook.dir)
        .envs(hook.env.iter().map(|(k, v)| (k, v)));
    let release_dir = hook
        .env
        .iter()
        .find(|(k, _)| k == "SWARM_RELEASE_DIR")
        .map_or_else(|| hook.dir.display().to_string(), |(_, v)| v.clone());
    let l = layout.clone();
    let record = move |pgid: i32| {
        let journal = HookJournal {
            pgid,
            boot_id: proc::boot_id(),
            release_dir,
        };
        async move {
            let written = blocking(move || l.begin_hook(&journal)).await;
            if let Err(e) = written {
                // The leader's PDEATHSIG still ties the hook to us.
                tracing::warn!("recording the install hook's process group: {e}");
            }
        }
    };
    let ran = run_bounded_with(&mut command, timeout, record).await;
    // Its group is dead; what left the group (setsid, a double fork) is
    // found by its SWARM_RELEASE_DIR and killed too, before staging is
    // flipped in or discarded.
    let l = layout.clone();
    if let Err(e) = blocking(move || reap_hook_leftovers(&l)).await {
        return Err(UpdaterError::Install {
            message: format!("install hook {argv:?}: {e}; nothing was rotated"),
            stderr: String::new(),
        });
    }
    let (finished, stderr) = ran.map_err(|e| UpdaterError::Install {
        message: format!("cannot run the install hook {}: {e}", program.display()),
        stderr: String::new(),
    })?;
    match finished {
        Finished::Exited(status) if status.success() => Ok(()),
        Finished::Exited(status) => Err(UpdaterError::Install {
            message: format!("install hook {argv:?} failed ({status}); nothing was rotated"),
            stderr,
        }),
        Finished::WaitFailed(e) => Err(UpdaterError::Install {
            message: format!("waiting for the install hook: {e}"),
            stderr,
        }),
        Finished::TimedOut => Err(UpdaterError::Install {
            message: format!(
                "install hook {argv:?} timed out after {timeout:?}; nothing was rotated"
            ),
            stderr,
        }),
    }
}

/// How a bounded child run ended.
#[derive(Debug)]
pub enum Finished {
    Exited(std::process::ExitStatus),
    /// Killed (its whole process group) when the timeout expired.
    TimedOut,
    /// Waiting failed, or it ended but members of its group outlived
    /// SIGKILL.
    WaitFailed(std::io::Error),
}

/// Run `cmd` in a process group of its own with stdin and stdout closed,
/// killing the group when it ends or after `timeout`; returns how it
/// ended and the tail of its stderr. Errs only when it cannot be started.
pub async fn run_bounded(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
) -> std::io::Result<(Finished, String)> {
    run_bounded_with(cmd, timeout, |_| async {}).await
}

/// [`run_bounded`], calling `spawned` with the group id once it runs.
async fn run_bounded_with<F, Fut>(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
    spawned: F,
) -> std::io::Result<(Finished, String)>
where
    F: FnOnce(i32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    if let Some(pid) = pid {
        spawned(pid).await;
    }
    let mut stderr = child.stderr.take();
    let reader = tokio::spawn(async move {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8192];
        if let Some(s) = stderr.as_mut() {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    let outcome = tokio::time::timeout(timeout, child.wait()).await;
    // However it ended, nothing of its group lives on: what it
    // backgrounded would go on writing into staging, or into the release
    // staging becomes.
    let mut lingering = false;
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = child.wait().await;
        lingering = !proc::wait_group_gone(pid, GROUP_KILL_WAIT).await;
    }
    // A grandchild may hold the pipe open; do not wait for it forever.
    let stderr = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let finished = match outcome {
        _ if lingering => Finished::WaitFailed(std::io::Error::other(format!(
            "processes of its group survived SIGKILL for {GROUP_KILL_WAIT:?}"
        ))),
        Ok(Ok(status)) => Finished::Exited(status),
        Ok(Err(e)) => Finished::WaitFailed(e),
        Err(_) => Finished::TimedOut,
    };
    Ok((finished, stderr))
}

/// What a crash left of an install hook: kill its recorded group (same
/// boot, and some member still carries the hook's `SWARM_RELEASE_DIR`) and
/// any process whose environment names this layout's staging dir, wait
/// until they are gone, then drop the journal. Runs before the repair
/// touches staging. Blocking.
pub fn reap_hook_leftovers(layout: &Layout) -> Result<()> {
    let staging = layout.staging().display().to_string();
    let journal = layout.read_hook();
    let mut marks = vec![staging];
    if let Some(j) = &journal
        && !marks.contains(&j.release_dir)
    {
        marks.push(j.release_dir.clone());
    }
    let marked = |pid: i32| {
        proc::environ(pid).is_some_and(|env| {
            env.iter().any(|(k, v)| {
                k == b"SWARM_RELEASE_DIR" && marks.iter().any(|m| m.as_bytes() == v.as_slice())
            })
        })
    };
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    if let Some(j) = &journal
        && j.boot_id == proc::boot_id()
        && j.pgid > 1
    {
        let members = proc::group_members(j.pgid);
        if members.iter().any(|&p| marked(p)) {
            tracing::warn!(pgid = j.pgid, "killing what is left of an install hook");
            let _ = killpg(Pid::from_raw(j.pgid), Signal::SIGKILL);
            killed.extend(members);
        }
    }
    for pid in proc::pids() {
        if pid != me && proc::alive(pid) && marked(pid) {
            tracing::warn!(pid, "killing a leftover process of an install hook");
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
    }
    let deadline = std::time::Instant::now() + GROUP_KILL_WAIT;
    while killed.iter().any(|&p| proc::alive(p)) {
        if std::time::Instant::now() >= deadline {
            return Err(UpdaterError::Internal(format!(
                "processes of an interrupted install hook survived SIGKILL: {killed:?}; not touching {}",
                layout.staging().display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in killed {
        // Orphans adopted by us (the subreaper) become our zombies.
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    layout.end_hook()
}

/// `worker-updater --hook-leader <updater pid> -- <argv…>`: lead an install
/// hook's process group. Sets `PR_SET_PDEATHSIG` (SIGTERM) on itself, runs
/// the hook as its child, relays its exit status, and kills the whole group
/// when the updater dies (or when it was gone before the prctl).
pub fn hook_leader(args: &[OsString]) -> ExitCode {
    let (Some(parent), Some(sep)) = (
        args.first()
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse::<i32>().ok()),
        args.get(1),
    ) else {
        eprintln!("usage: worker-updater {HOOK_LEADER} <updater pid> -- <command…>");
        return ExitCode::from(64);
    };
    let Some((program, rest)) = args.get(2..).and_then(|a| a.split_first()) else {
        eprintln!("usage: worker-updater {HOOK_LEADER} <updater pid> -- <command…>");
        return ExitCode::from(64);
    };
    if sep != "--" {
        eprintln!("usage: worker-updater {HOOK_LEADER} <updater pid> -- <command…>");
        return ExitCode::from(64);
    }
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    // Blocked here, taken with sigwait below; the child starts with an
    // empty mask (std resets it before exec).
    if let Err(e) = set.thread_block() {
        eprintln!("hook leader: blocking signals: {e}");
        return ExitCode::from(70);
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("hook leader: PR_SET_PDEATHSIG: {e}");
        return ExitCode::from(70);
    }
    if getppid().as_raw() != parent {
        // The updater died before the prctl took effect.
        kill_own_group();
    }
    let mut child = match std::process::Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "cannot run the install hook {}: {e}",
                Path::new(program).display()
            );
            return ExitCode::from(127);
        }
    };
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => match child.try_wait() {
                Ok(Some(status)) => return relay(status, &set),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("hook leader: waiting for the hook: {e}");
                    kill_own_group();
                }
            },
            // The updater died (PDEATHSIG), or someone asked us to stop.
            Ok(_) => kill_own_group(),
            Err(_) => {}
        }
    }
}

/// SIGKILL to the leader's own group, itself included.
fn kill_own_group() -> ! {
    let _ = killpg(getpgrp(), Signal::SIGKILL);
    std::process::exit(137)
}

/// End the way the hook ended: its exit code, or its signal.
fn relay(status: std::process::ExitStatus, blocked: &SigSet) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if let Some(sig) = status.signal().and_then(|s| Signal::try_from(s).ok()) {
        let _ = blocked.thread_unblock();
        let _ = nix::sys::signal::raise(sig);
        return ExitCode::from(u8::try_from(128 + sig as i32).unwrap_or(1));
    }
    ExitCode::from(1)
}
