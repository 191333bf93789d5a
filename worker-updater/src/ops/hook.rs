//! Bounded child runs: the install hook, and (for the self-update's
//! `--check`) any child that must finish within a timeout, in a process
//! group of its own that is killed whole when the timeout expires.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::{Result, UpdaterError};
use crate::release::Hook;

/// How much of a child's stderr is kept.
const STDERR_TAIL: usize = 8 * 1024;

/// Run the install hook in its dir with its timeout; on failure, the tail of its stderr.
pub async fn run_install(hook: &Hook) -> Result<()> {
    let (argv, timeout) = (&hook.argv, hook.timeout);
    let Some((program, args)) = argv.split_first() else {
        return Err(UpdaterError::ReleaseConfig(
            "[install] command is empty".into(),
        ));
    };
    let program = Path::new(program);
    tracing::info!(?argv, "running the install hook");
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(&hook.dir)
        .envs(hook.env.iter().map(|(k, v)| (k, v)));
    let (finished, stderr) =
        run_bounded(&mut command, timeout)
            .await
            .map_err(|e| UpdaterError::Install {
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
    WaitFailed(std::io::Error),
}

/// Run `cmd` in a process group of its own with stdin and stdout closed,
/// killing the group after `timeout`; returns how it ended and the tail of
/// its stderr. Errs only when it cannot be started.
pub async fn run_bounded(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
) -> std::io::Result<(Finished, String)> {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
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
    if outcome.is_err()
        && let Some(pid) = pid
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait().await;
    }
    // A grandchild may hold the pipe open; do not wait for it forever.
    let stderr = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let finished = match outcome {
        Ok(Ok(status)) => Finished::Exited(status),
        Ok(Err(e)) => Finished::WaitFailed(e),
        Err(_) => Finished::TimedOut,
    };
    Ok((finished, stderr))
}
