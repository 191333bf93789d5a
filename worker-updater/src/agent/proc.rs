//! The one `/proc` reader (stat fields, cmdline, environ, the pid list) and
//! the one [`terminate`]: SIGTERM, a bounded grace, SIGKILL, then a bounded
//! wait until the process (and its process group, when it leads one) is gone.
//!
//! A small module rather than the `procfs` crate: the updater needs three
//! `stat` fields, two NUL-separated files as raw bytes and the pid list;
//! `procfs` would bring a large API and its own dependency tree for ~60
//! lines, and the matching on raw bytes would still be ours.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

/// The fields of `/proc/<pid>/stat` after the command name (field 3 on).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// A zombie: exited, not reaped yet.
pub fn zombie(pid: i32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state == "Z")
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
/// With the pid it names one process for the life of the machine.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(22 - 3)?.parse().ok()
}

/// Field 5: the process group.
pub fn pgrp(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(5 - 3)?.parse().ok()
}

/// Whether `pid` is alive and still the process that started at `start`
/// (`None`: any process with that pid).
pub fn same_process(pid: i32, start: Option<u64>) -> bool {
    pid > 1 && alive(pid) && (start.is_none() || start_time(pid) == start)
}

/// `/proc/<pid>/cmdline`, one entry per argument.
pub fn cmdline(pid: i32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut parts: Vec<Vec<u8>> = raw.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    if parts.last().is_some_and(Vec::is_empty) {
        parts.pop();
    }
    Some(parts)
}

/// `/proc/<pid>/environ` as (name, value) pairs.
pub fn environ(pid: i32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter_map(|kv| {
                let i = kv.iter().position(|b| *b == b'=')?;
                Some((kv[..i].to_vec(), kv[i + 1..].to_vec()))
            })
            .collect(),
    )
}

/// Every pid in `/proc`.
pub fn pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .collect()
}

/// `/proc/sys/kernel/random/boot_id`: names this boot (empty if unreadable).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Field 4: the parent.
pub fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(4 - 3)?.parse().ok()
}

/// Whether `pid` descends from `ancestor` (its parent chain reaches it).
pub fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    // A chain is never longer than the pid space; 4096 hops is plenty.
    for _ in 0..4096 {
        match ppid(p) {
            Some(parent) if parent == ancestor => return true,
            Some(parent) if parent > 1 => p = parent,
            _ => return false,
        }
    }
    false
}

/// Every live process descending from `root` (not `root` itself).
pub fn descendants(root: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&p| p != root && alive(p) && descends_from(p, root))
        .collect()
}

/// The live processes of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&p| pgrp(p) == Some(pgid) && alive(p))
        .collect()
}

/// Wait (on the blocking pool, polling) until no live process is left in
/// group `pgid`, up to `limit`. True when it emptied.
pub async fn wait_group_gone(pgid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let busy = tokio::task::spawn_blocking(move || group_alive(pgid))
            .await
            .unwrap_or(false);
        if !busy {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a live (not zombie) process is left in process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    if matches!(
        killpg(Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    ) {
        return false;
    }
    pids()
        .into_iter()
        .any(|pid| pgrp(pid) == Some(pgid) && alive(pid))
}

/// Signal `pid`'s process group (`group`), else the process. False when
/// nothing was there to signal.
fn signal(pid: i32, group: bool, sig: Signal) -> bool {
    let p = Pid::from_raw(pid);
    let r = if group { killpg(p, sig) } else { kill(p, sig) };
    !matches!(r, Err(nix::errno::Errno::ESRCH))
}

/// What [`terminate`] signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The process alone.
    Process,
    /// Its whole process group when it leads one (the agents we spawn do),
    /// waiting until the group is empty, so a wrapper's children do not
    /// outlive it.
    GroupIfLeader,
}

/// The process to stop.
#[derive(Clone, Debug)]
pub struct Target {
    pub pid: i32,
    /// Its start time, when known: a recycled pid is never waited on as if
    /// it were still the target.
    pub start_time: Option<u64>,
    pub scope: Scope,
    /// For our own child: turns `Some` once its reaper saw it exit.
    pub exited: Option<watch::Receiver<Option<String>>>,
}

/// How [`terminate`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Nothing was there to signal.
    AlreadyGone,
    /// Gone within the grace after SIGTERM.
    OnTerm(Duration),
    /// Gone after SIGKILL.
    Killed,
    /// Still there after SIGKILL and `kill_wait`.
    Survived,
}

/// SIGTERM, wait up to `grace`, SIGKILL, wait up to `kill_wait`: the one
/// way the updater stops a process. Never signals a process other than the
/// target once it is known to be gone.
pub async fn terminate(target: &Target, grace: Duration, kill_wait: Duration) -> Ended {
    let t0 = Instant::now();
    let group = target.scope == Scope::GroupIfLeader && pgrp(target.pid) == Some(target.pid);
    // A group is signalled even when its leader is a zombie already: its
    // members may live on. A lone process only while it is still the target.
    if (!group && target.start_time.is_some() && !same_process(target.pid, target.start_time))
        || !signal(target.pid, group, Signal::SIGTERM)
    {
        return Ended::AlreadyGone;
    }
    if wait_gone(target, group, grace).await {
        return Ended::OnTerm(t0.elapsed());
    }
    tracing::warn!(pid = target.pid, ?grace, "ignored SIGTERM; sending SIGKILL");
    if group || target.start_time.is_none() || same_process(target.pid, target.start_time) {
        signal(target.pid, group, Signal::SIGKILL);
    }
    if wait_gone(target, group, kill_wait).await {
        Ended::Killed
    } else {
        tracing::error!(pid = target.pid, "survived SIGKILL for {kill_wait:?}");
        Ended::Survived
    }
}

/// Wait until the target is gone (reaped when it is our child) and, with
/// `group`, until no live process is left in its process group.
async fn wait_gone(target: &Target, group: bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    if !wait_leader_gone(target, limit).await {
        return false;
    }
    if !group {
        return true;
    }
    let pgid = target.pid;
    loop {
        let busy = tokio::task::spawn_blocking(move || group_alive(pgid))
            .await
            .unwrap_or(false);
        if !busy {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_leader_gone(target: &Target, limit: Duration) -> bool {
    if let Some(mut rx) = target.exited.clone() {
        let done = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        return matches!(done, Ok(Ok(_)));
    }
    let deadline = Instant::now() + limit;
    loop {
        if !same_process(target.pid, target.start_time) {
            // A child without a reaper task (an agent spawned before a
            // self-update's exec): reap it. ECHILD for anyone else.
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(target.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
