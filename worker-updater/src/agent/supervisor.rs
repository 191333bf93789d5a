//! Agent process control: find the running agent (pidfile checked against
//! `/proc`, or a `/proc` scan for one started by hand), stop it
//! ([`proc::terminate`]), and spawn a new one from a release with its
//! environment, its output in `agent.spawn.log` and a pidfile.
//!
//! Our own pidfile is trusted when pid and start time match, whatever the
//! process shows as its command line (a shebang script runs as `/bin/sh
//! script`, a service may rewrite its argv). The agents this process
//! spawned are known without any file. A pidfile that is a bare number
//! (written by hand) is trusted only if that process looks like our agent
//! (see [`Matcher`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::pidfile::PidFile;
use super::proc::{self, Ended, Scope, Target};
use crate::error::{Result, UpdaterError};

/// How long to wait for an agent to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Interpreters never matched by a `/proc` scan: a shell in the install dir
/// is an operator, not an agent.
const NEVER_SCANNED: &[&str] = &["sh", "bash", "dash", "zsh", "env", "sudo", "sleep"];

/// What makes a process "our agent" when no exact pidfile says so: its
/// program name, and a tie to this worker (our agent bundle dir or our
/// install dir in its environment or arguments, or its binary inside the
/// install dir).
#[derive(Clone, Debug)]
pub struct Matcher {
    pub programs: Vec<String>,
    pub install_dir: PathBuf,
    pub agent_dir: PathBuf,
}

impl Matcher {
    fn matches(&self, pid: i32) -> bool {
        let Some(argv) = proc::cmdline(pid) else {
            return false;
        };
        let Some(argv0) = argv.first() else {
            return false;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let base = |p: &[u8]| {
            Path::new(OsStr::from_bytes(p)).file_name().map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
        };
        let names = [
            base(argv0),
            exe.as_ref().and_then(|e| base(e.as_os_str().as_bytes())),
        ];
        let named = names
            .iter()
            .flatten()
            .any(|n| self.programs.iter().any(|p| p == n) && !NEVER_SCANNED.contains(&n.as_str()));
        if !named {
            return false;
        }
        let agent_dir = self.agent_dir.as_os_str().as_bytes();
        let install_dir = self.install_dir.as_os_str().as_bytes();
        let arg_tie = argv
            .windows(2)
            .any(|w| w[0] == b"--agent-dir" && w[1] == agent_dir)
            || argv
                .iter()
                .any(|a| a.strip_prefix(b"--agent-dir=") == Some(agent_dir));
        let env_tie = proc::environ(pid).is_some_and(|env| {
            env.iter().any(|(k, v)| {
                (k == b"SWARM_AGENT_DIR" && v == agent_dir)
                    || (k == b"SWARM_INSTALL_DIR" && v == install_dir)
            })
        });
        let exe_tie = exe
            .as_ref()
            .is_some_and(|e| e.starts_with(&self.install_dir));
        arg_tie || env_tie || exe_tie
    }
}

/// How stopping one agent went.
#[derive(Clone, Debug)]
pub struct Stopped {
    pub pid: i32,
    /// Still there after SIGKILL (stuck in the kernel, or not ours to kill):
    /// starting another agent now would race it for the port.
    pub survived: bool,
    /// What happened, for the log.
    pub note: String,
}

/// A spawned agent: its pid and a receiver that turns `Some(status)` when it exits.
#[derive(Clone, Debug)]
pub struct Spawned {
    pub pid: i32,
    pub exited: watch::Receiver<Option<String>>,
}

/// How to start an agent.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Program (resolved) and arguments.
    pub argv: Vec<String>,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    pub release_dir: PathBuf,
    pub sha256: Option<String>,
    /// `[agent] listen`: the held sockets it gets as `LISTEN_FDS`, in order.
    pub listen: Vec<std::net::SocketAddr>,
}

/// The first argument that makes `worker-updater` the trampoline of a
/// socket-activated agent: `worker-updater --exec-agent -- <argv…>` sets
/// `LISTEN_PID` to its own pid and execs the agent (same pid), so
/// `LISTEN_PID` is the agent's without a `pre_exec` of ours.
pub const EXEC_AGENT: &str = "--exec-agent";

/// The variables of the socket-activation protocol, removed from what an
/// agent inherits and set anew when it gets sockets.
const ACTIVATION_VARS: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
    super::sockets::HELD_VAR,
];

/// `worker-updater --exec-agent -- <program> <args…>`: exec the agent with
/// `LISTEN_PID` = this pid. Returns only when the exec failed.
pub fn exec_agent(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::os::unix::process::CommandExt;
    let Some((program, rest)) = args
        .split_first()
        .filter(|(sep, _)| *sep == "--")
        .and_then(|(_, a)| a.split_first())
    else {
        eprintln!("usage: worker-updater {EXEC_AGENT} -- <command…>");
        return std::process::ExitCode::from(64);
    };
    let err = std::process::Command::new(program)
        .args(rest)
        .env("LISTEN_PID", std::process::id().to_string())
        .exec();
    eprintln!(
        "cannot start the agent {}: {err}",
        Path::new(program).display()
    );
    std::process::ExitCode::from(127)
}

/// The `LISTEN_FDNAMES` name of a held socket: its address with the
/// protocol's separator `:` replaced (`127.0.0.1_8080`, `[__1]_8080`).
pub fn fd_name(addr: &std::net::SocketAddr) -> String {
    addr.to_string().replace(':', "_")
}

/// Starts and stops agents for one install dir. Children we spawned are
/// reaped by a task each, so a dead agent never lingers as a zombie.
#[derive(Debug)]
pub struct Supervisor {
    pub install_dir: PathBuf,
    pub pidfile: PathBuf,
    pub spawn_log: PathBuf,
    pub grace: Duration,
    children: Mutex<HashMap<i32, Child>>,
}

/// An agent this process spawned.
#[derive(Debug)]
struct Child {
    start_time: Option<u64>,
    exited: watch::Receiver<Option<String>>,
}

impl Supervisor {
    pub fn new(install_dir: &Path, pidfile: PathBuf, spawn_log: PathBuf, grace: Duration) -> Self {
        Supervisor {
            install_dir: install_dir.to_owned(),
            pidfile,
            spawn_log,
            grace,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// The agents of this worker that are running now: those this process
    /// spawned, the pidfile's if it really is ours, else whatever a `/proc`
    /// scan finds. Reads `/proc`: call it off the async threads.
    pub fn find(&self, matcher: &Matcher) -> Vec<(i32, Option<u64>)> {
        let mut found: Vec<(i32, Option<u64>)> = self
            .children
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(pid, child)| {
                        child.exited.borrow().is_none()
                            && proc::alive(**pid)
                            && (child.start_time.is_none()
                                || proc::start_time(**pid) == child.start_time)
                    })
                    .map(|(pid, child)| (*pid, child.start_time))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(pf) = PidFile::read(&self.pidfile)
            && !found.iter().any(|(pid, _)| *pid == pf.pid)
        {
            if self.pidfile_is_live(&pf, matcher) {
                found.push((pf.pid, pf.start_time));
            } else {
                tracing::info!(
                    pid = pf.pid,
                    "agent.pid names a process that is not our agent (or is gone); ignoring it"
                );
            }
        }
        if !found.is_empty() {
            return found;
        }
        scan(matcher)
            .into_iter()
            .map(|pid| (pid, proc::start_time(pid)))
            .collect()
    }

    /// Our JSON pidfile: pid and start time must match (we wrote both; the
    /// start time rules out a recycled pid), and the process must carry our
    /// marks ([`Supervisor::is_ours`]): a forged pidfile naming a stranger
    /// with its real start time is not enough. A bare number: the process
    /// must look like our agent.
    fn pidfile_is_live(&self, pf: &PidFile, matcher: &Matcher) -> bool {
        if pf.pid <= 1 || pf.pid == std::process::id() as i32 || !proc::alive(pf.pid) {
            return false;
        }
        match pf.start_time {
            Some(st) => proc::start_time(pf.pid) == Some(st) && self.is_ours(pf.pid),
            None => matcher.matches(pf.pid),
        }
    }

    /// Whether `pid` carries our marks: it descends from this updater, or
    /// its environment names this install dir (`SWARM_INSTALL_DIR`, which
    /// every agent and hook we start gets, and its children inherit).
    fn is_ours(&self, pid: i32) -> bool {
        proc::descends_from(pid, std::process::id() as i32) || marked(&self.install_dir, pid)
    }

    /// Stop `agents` (as found by [`Supervisor::find`]) and then every
    /// stray of theirs ([`strays`]): a listener that
    /// daemonized (setsid, double fork) must not keep the port.
    pub async fn stop_all(&self, agents: Vec<(i32, Option<u64>)>) -> Vec<Stopped> {
        self.stop_all_but(agents, None).await
    }

    /// [`Supervisor::stop_all`], sparing `spare` and its descendants (the
    /// new agent of a start-first restart, which carries the same marks).
    pub async fn stop_all_but(
        &self,
        agents: Vec<(i32, Option<u64>)>,
        spare: Option<i32>,
    ) -> Vec<Stopped> {
        let find_strays = |agents: &[(i32, Option<u64>)]| {
            let pids: Vec<i32> = agents.iter().map(|(p, _)| *p).collect();
            let dir = self.install_dir.clone();
            tokio::task::spawn_blocking(move || {
                let mut found = strays(&dir, &pids);
                if let Some(spare) = spare {
                    found.retain(|(p, _)| *p != spare && !proc::descends_from(*p, spare));
                }
                found
            })
        };
        let before = find_strays(&agents).await.unwrap_or_default();
        let mut stopped = Vec::new();
        for (pid, start_time) in &agents {
            stopped.push(self.stop_pid(*pid, *start_time).await);
        }
        let mut strays = find_strays(&agents).await.unwrap_or_default();
        strays.extend(before);
        strays.sort_unstable();
        strays.dedup();
        for (pid, start_time) in strays {
            if !proc::same_process(pid, start_time) {
                continue;
            }
            let mut s = self.stop_pid(pid, start_time).await;
            s.note = format!("stray process of the agent: {}", s.note);
            stopped.push(s);
        }
        let ours: Vec<i32> = self
            .children
            .lock()
            .map(|c| c.keys().copied().collect())
            .unwrap_or_default();
        let _ = tokio::task::spawn_blocking(move || reap_adopted(&ours)).await;
        stopped
    }

    /// The agent `pid` as this process spawned it (its exit receiver), if
    /// it did and it still runs.
    pub fn child(&self, pid: i32) -> Option<Spawned> {
        let c = self.children.lock().ok()?;
        let child = c.get(&pid)?;
        child.exited.borrow().is_none().then(|| Spawned {
            pid,
            exited: child.exited.clone(),
        })
    }

    /// Whether any agent of this worker is running.
    pub fn running(&self, matcher: &Matcher) -> bool {
        !self.find(matcher).is_empty()
    }

    /// Stop every agent of this worker: SIGTERM, wait up to the grace,
    /// SIGKILL, wait again. Returns what it did, for the log.
    pub async fn stop(&self, matcher: &Matcher) -> Vec<Stopped> {
        let mut notes = Vec::new();
        for (pid, start_time) in self.find(matcher) {
            notes.push(self.stop_pid(pid, start_time).await);
        }
        notes
    }

    /// Stop one process we know is ours (and its process group, when it
    /// leads one, as the agents we spawn do): [`proc::terminate`].
    pub async fn stop_pid(&self, pid: i32, start_time: Option<u64>) -> Stopped {
        let exited = self
            .children
            .lock()
            .ok()
            .and_then(|c| c.get(&pid).map(|c| c.exited.clone()));
        let target = Target {
            pid,
            start_time,
            scope: Scope::GroupIfLeader,
            exited,
        };
        let ended = proc::terminate(&target, self.grace, KILL_WAIT).await;
        if ended != Ended::Survived
            && let Ok(mut c) = self.children.lock()
        {
            c.remove(&pid);
        }
        let (survived, note) = match ended {
            Ended::AlreadyGone => (false, format!("agent {pid} was already gone")),
            Ended::OnTerm(t) => (false, format!("agent {pid} stopped on SIGTERM in {t:?}")),
            Ended::Killed => (
                false,
                format!("agent {pid} killed after the {:?} grace", self.grace),
            ),
            Ended::Survived => (
                true,
                format!("agent {pid} survived SIGKILL for {KILL_WAIT:?}"),
            ),
        };
        Stopped {
            pid,
            survived,
            note,
        }
    }

    /// Start an agent: `cwd` = install dir, output appended to
    /// `agent.spawn.log`, its own process group (so a signal to the
    /// updater's terminal does not reach it), then the pidfile.
    pub fn spawn(&self, launch: &Launch, sockets: Vec<std::os::fd::OwnedFd>) -> Result<Spawned> {
        // On a full disk the log may not open: the agent starts all the same.
        let (out, err) = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spawn_log)
            .and_then(|log| Ok((log.try_clone()?, log)))
        {
            Ok((mut log, err_log)) => {
                let _ = writeln!(
                    log,
                    "--- {} starting {:?} from {}",
                    crate::now_rfc3339(),
                    launch.argv,
                    launch.release_dir.display()
                );
                (Stdio::from(log), Stdio::from(err_log))
            }
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; the agent's output is discarded",
                    self.spawn_log.display()
                );
                (Stdio::null(), Stdio::null())
            }
        };
        let Some((program, args)) = launch.argv.split_first() else {
            return Err(UpdaterError::Agent("empty agent command".into()));
        };
        let mut cmd = if sockets.is_empty() {
            tokio::process::Command::new(program)
        } else {
            // Through the trampoline, which sets LISTEN_PID to the pid the
            // agent will have.
            let mut c = tokio::process::Command::new("/proc/self/exe");
            c.arg(EXEC_AGENT).arg("--").arg(program);
            c
        };
        for var in ACTIVATION_VARS {
            cmd.env_remove(var);
        }
        if !sockets.is_empty() {
            use command_fds::{CommandFdExt, FdMapping};
            let names: Vec<String> = launch.listen.iter().map(fd_name).collect();
            cmd.env("LISTEN_FDS", sockets.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            let mappings = sockets
                .into_iter()
                .zip(3..)
                .map(|(parent_fd, child_fd)| FdMapping {
                    parent_fd,
                    child_fd,
                })
                .collect();
            cmd.fd_mappings(mappings)
                .map_err(|e| UpdaterError::Agent(format!("passing the listen sockets: {e}")))?;
        }
        cmd.args(args)
            .current_dir(&self.install_dir)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| UpdaterError::Agent(format!("cannot start {program:?}: {e}")))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| UpdaterError::Agent("spawned agent has no pid".into()))?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown status ({e})"),
            };
            tracing::info!(pid, "agent exited: {status}");
            let _ = tx.send(Some(status));
        });
        let start_time = proc::start_time(pid);
        if let Ok(mut c) = self.children.lock() {
            c.retain(|_, child| child.exited.borrow().is_none());
            c.insert(
                pid,
                Child {
                    start_time,
                    exited: rx.clone(),
                },
            );
        }
        let pf = PidFile {
            pid,
            start_time,
            argv: launch.argv.clone(),
            release_dir: Some(launch.release_dir.clone()),
            sha256: launch.sha256.clone(),
            started_at: Some(crate::now_rfc3339()),
        };
        if let Err(e) = pf.write(&self.pidfile) {
            // It runs and we know it; a later updater finds it by the
            // `/proc` scan. Never leave it running unknown to the caller.
            tracing::warn!("writing the pidfile: {e}");
        }
        tracing::info!(pid, argv = ?launch.argv, "agent started");
        Ok(Spawned { pid, exited: rx })
    }
}

/// Processes of this worker's agents that a stop of their process
/// group misses: descendants of `agents` (taken before the stop: a
/// double fork reparents them) and every process whose environment
/// names this install dir (a daemon that outlived an earlier updater
/// and was reparented to init). Reads `/proc`: call it off the async
/// threads.
pub fn strays(install_dir: &Path, agents: &[i32]) -> Vec<(i32, Option<u64>)> {
    let me = std::process::id() as i32;
    let mut out: Vec<i32> = agents.iter().flat_map(|&a| proc::descendants(a)).collect();
    out.extend(
        proc::pids()
            .into_iter()
            .filter(|&p| p != me && p > 1 && proc::alive(p) && marked(install_dir, p)),
    );
    out.sort_unstable();
    out.dedup();
    out.retain(|p| !agents.contains(p) && *p != me);
    out.into_iter().map(|p| (p, proc::start_time(p))).collect()
}

/// Reap the zombies reparented to us (we are a child subreaper) that are
/// not children we spawned and wait for ourselves (`ours`): an agent's
/// double-forked helper that exited on its own. Blocking.
fn reap_adopted(ours: &[i32]) {
    let me = std::process::id() as i32;
    for pid in proc::pids() {
        if !ours.contains(&pid) && proc::ppid(pid) == Some(me) && proc::zombie(pid) {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// Whether `pid`'s environment names `install_dir` (`SWARM_INSTALL_DIR`).
fn marked(install_dir: &Path, pid: i32) -> bool {
    let dir = install_dir.as_os_str().as_bytes();
    proc::environ(pid).is_some_and(|env| {
        env.iter()
            .any(|(k, v)| k == b"SWARM_INSTALL_DIR" && v.as_slice() == dir)
    })
}

/// Every process matching `matcher`, except us.
fn scan(matcher: &Matcher) -> Vec<i32> {
    let me = std::process::id() as i32;
    proc::pids()
        .into_iter()
        .filter(|&pid| pid != me && proc::alive(pid) && matcher.matches(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn proc_fields() {
        let me = std::process::id() as i32;
        assert!(proc::alive(me));
        assert!(proc::start_time(me).is_some());
        assert!(proc::cmdline(me).is_some_and(|a| !a.is_empty()));
        assert!(!proc::alive(i32::MAX));
    }

    #[test]
    fn pidfile_formats() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("agent.pid");
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(PidFile::read(&p).unwrap().pid, 1234);
        let pf = PidFile {
            pid: 7,
            start_time: Some(9),
            ..PidFile::default()
        };
        pf.write(&p).unwrap();
        let back = PidFile::read(&p).unwrap();
        assert_eq!((back.pid, back.start_time), (7, Some(9)));
        std::fs::write(&p, "garbage").unwrap();
        assert!(PidFile::read(&p).is_none());
    }

    #[tokio::test]
    async fn stale_pidfile_spares_a_stranger_and_spawn_stop_reaps() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(
            tmp.path(),
            tmp.path().join("agent.pid"),
            tmp.path().join("agent.spawn.log"),
            Duration::from_secs(2),
        );
        let matcher = Matcher {
            programs: vec!["sleep".into()],
            install_dir: tmp.path().to_owned(),
            agent_dir: tmp.path().join("agent"),
        };
        // A stranger named in a bare pidfile is not ours.
        let mut stranger = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&sup.pidfile, format!("{}\n", stranger.id())).unwrap();
        assert!(sup.find(&matcher).is_empty());
        // Nor is one named in our JSON pidfile with another start time.
        let stale = PidFile {
            pid: stranger.id() as i32,
            start_time: proc::start_time(stranger.id() as i32).map(|t| t + 1),
            argv: vec!["sleep".into(), "30".into()],
            ..PidFile::default()
        };
        stale.write(&sup.pidfile).unwrap();
        assert!(sup.find(&matcher).is_empty());
        // One we spawn is found through the pidfile, stopped and reaped.
        let launch = Launch {
            argv: vec!["sleep".into(), "30".into()],
            env: vec![],
            release_dir: tmp.path().to_owned(),
            sha256: None,
            listen: vec![],
        };
        let s = sup.spawn(&launch, vec![]).unwrap();
        assert_eq!(sup.find(&matcher), vec![(s.pid, proc::start_time(s.pid))]);
        let note = sup.stop(&matcher).await;
        assert!(
            note[0].note.contains("SIGTERM") && !note[0].survived,
            "{note:?}"
        );
        assert!(s.exited.borrow().is_some());
        assert!(!proc::alive(s.pid));
        assert!(proc::alive(stranger.id() as i32));
        let _ = stranger.kill();
        let _ = stranger.wait();
    }

    #[tokio::test]
    async fn a_shebang_script_agent_is_found_by_its_pidfile_and_stopped_with_its_children() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("run.sh");
        let child_pid = tmp.path().join("child.pid");
        // Runs its service as a child and waits (no exec): /proc shows
        // `/bin/sh …/run.sh`, not the argv the pidfile recorded.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nsleep 300 &\necho $! > {}\nwait\necho done\n",
                child_pid.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let new_sup = || {
            Supervisor::new(
                tmp.path(),
                tmp.path().join("agent.pid"),
                tmp.path().join("agent.spawn.log"),
                Duration::from_secs(2),
            )
        };
        let matcher = Matcher {
            programs: vec!["run.sh".into()],
            install_dir: tmp.path().join("elsewhere"),
            agent_dir: tmp.path().join("agent"),
        };
        let sup = new_sup();
        let s = sup
            .spawn(
                &Launch {
                    argv: vec![script.display().to_string()],
                    env: vec![],
                    release_dir: tmp.path().to_owned(),
                    sha256: None,
                    listen: vec![],
                },
                vec![],
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let child = loop {
            if let Some(pid) = std::fs::read_to_string(&child_pid)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the script never started its child"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let cmdline = proc::cmdline(s.pid).unwrap();
        assert_ne!(cmdline.len(), 1, "the kernel shows the interpreter");
        let found = vec![(s.pid, proc::start_time(s.pid))];
        assert_eq!(sup.find(&matcher), found, "known as our child");
        // A fresh supervisor (a restarted updater) trusts the pidfile.
        let restarted = new_sup();
        assert_eq!(restarted.find(&matcher), found, "known by its pidfile");
        let notes = sup.stop(&matcher).await;
        assert!(notes[0].note.contains("SIGTERM"), "{notes:?}");
        assert!(!proc::alive(s.pid));
        assert!(!proc::alive(child), "the script's child went with it");
    }

    #[tokio::test]
    async fn a_forged_pidfile_with_the_real_start_time_spares_a_stranger() {
        // A `sleep` that is neither our descendant (double-forked away
        // from this process) nor marked with our install dir, named in a
        // JSON pidfile with its real start time (issue 10).
        let tmp = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(
            tmp.path(),
            tmp.path().join("agent.pid"),
            tmp.path().join("agent.spawn.log"),
            Duration::from_secs(2),
        );
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(!proc::descends_from(pid, std::process::id() as i32));
        let forged = PidFile {
            pid,
            start_time: proc::start_time(pid),
            argv: vec!["sleep".into(), "30".into()],
            ..PidFile::default()
        };
        forged.write(&sup.pidfile).unwrap();
        let matcher = Matcher {
            programs: vec!["sleep".into()],
            install_dir: tmp.path().to_owned(),
            agent_dir: tmp.path().join("agent"),
        };
        assert!(sup.find(&matcher).is_empty(), "a stranger was trusted");
        assert!(sup.stop(&matcher).await.is_empty());
        assert!(proc::alive(pid));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
