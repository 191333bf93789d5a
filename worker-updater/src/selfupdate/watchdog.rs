//! `--watchdog`: the previous, known-good updater binary guarding a
//! self-update trial. It removes the marker once the new updater's
//! `/health` reports the new release, or stops it ([`terminate`]), puts
//! the previous release back and starts the previous updater.

use std::time::Duration;

use pki::wire::UpdaterHealth;

use super::trial::revert_trial;
use super::{Marker, Trial, append_log, desired, now_unix_ms, updater_command};
use crate::agent::proc::{Scope, Target, same_process, terminate};
use crate::config::Config;
use crate::short;
use crate::slots::Layout;

/// SIGTERM → SIGKILL grace for a new updater that failed its trial.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long a killed updater may take to go.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the watchdog asks `/health`.
const POLL: Duration = Duration::from_millis(200);
const RESTORED_LOG: &str = "updater.log";

/// `--watchdog`: guard the trial in `updater/trial.json`. Success: the
/// updater on the stashed address reports the new release on `/health`
/// before the deadline; the marker goes. Failure (deadline, or the new
/// updater died): kill it if it is still the same process, put the
/// previous updater release back, start the previous updater detached.
/// Takes nothing from the network but the health answer.
pub fn watchdog(config: &Config) -> std::process::ExitCode {
    // Out of the updater's session and process group, so what stops the
    // updater (a terminal's ^C, a killpg) does not stop its watchdog.
    if let Err(e) = nix::unistd::setsid() {
        tracing::warn!("watchdog: setsid: {e}");
    }
    let layout = Layout::updater(&config.install_dir, config.failed_keep);
    let trial = match Trial::read(&layout) {
        Marker::Trial(t) => t,
        Marker::None => {
            tracing::info!("watchdog: no trial to guard");
            return std::process::ExitCode::SUCCESS;
        }
        Marker::Corrupt(why) => {
            tracing::error!("watchdog: {why}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("watchdog: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let verdict = runtime.block_on(watch(config, &trial));
    match verdict {
        Ok(()) => {
            // Remove the marker only if it is still the trial we guarded.
            if let Marker::Trial(now) = Trial::read(&layout)
                && now.release_sha256 == trial.release_sha256
                && now.updater_pid == trial.updater_pid
                && let Err(e) = Trial::remove(&layout)
            {
                tracing::error!("watchdog: removing the trial marker: {e}");
            }
            tracing::info!(
                release = %short(&trial.release_sha256),
                "watchdog: the new updater is healthy; self-update confirmed"
            );
            std::process::ExitCode::SUCCESS
        }
        Err(why) => {
            tracing::error!("watchdog: {why}; reverting to the previous updater");
            runtime.block_on(stop(trial.updater_pid, trial.updater_start_time));
            match revert_trial(&layout, &trial) {
                Ok(done) => tracing::warn!("watchdog: {done}"),
                Err(e) => tracing::error!("watchdog: reverting the updater slots: {e}"),
            }
            if config.supervised {
                tracing::warn!(
                    "watchdog: leaving the restart to the service manager (--supervised)"
                );
                return std::process::ExitCode::SUCCESS;
            }
            let (exe, release_dir) = desired(&layout, &config.base_exe);
            let log_path = layout.root().join(RESTORED_LOG);
            let mut cmd = updater_command(&exe, release_dir.as_deref(), &config.stash);
            cmd.current_dir(&config.install_dir)
                .stdin(std::process::Stdio::null());
            match (append_log(&log_path), append_log(&log_path)) {
                (Ok(out), Ok(err)) => {
                    cmd.stdout(out).stderr(err);
                }
                _ => tracing::error!("watchdog: cannot open {}", log_path.display()),
            }
            match cmd.spawn() {
                Ok(child) => {
                    tracing::warn!(
                        pid = child.id(),
                        exe = %exe.display(),
                        "watchdog: previous updater started (output in {})",
                        log_path.display()
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(
                        "watchdog: cannot start the previous updater {}: {e}; the updater is down until it is started by hand or by its service manager",
                        exe.display()
                    );
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// Poll the updater's `/health` until it reports the release on trial.
async fn watch(config: &Config, trial: &Trial) -> std::result::Result<(), String> {
    let client = pki::http_client(
        &config.bundle,
        pki::ServerExpectation::cn(config.host.updater_cn()),
    )
    .and_then(|b| Ok(b.timeout(Duration::from_secs(2)).build()?))
    .map_err(|e| format!("cannot build the health client: {e}"))?;
    let mut addr = config.stash.listen().unwrap_or(config.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("https://{addr}/health");
    tracing::info!(
        %url,
        release = %short(&trial.release_sha256),
        pid = trial.updater_pid,
        "watchdog: waiting for the new updater"
    );
    let mut last: String;
    loop {
        match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => {
                match crate::probe::read_capped(resp).await.and_then(|b| {
                    serde_json::from_slice::<UpdaterHealth>(&b).map_err(|e| e.to_string())
                }) {
                    Ok(h) => {
                        let got = h.release.map(|m| m.sha256);
                        // The process before the exec still holds `update-self`;
                        // only the one after it counts (even for the same tree).
                        let after_exec = h.busy.as_deref() != Some("update-self");
                        if after_exec && got.as_deref() == Some(trial.release_sha256.as_str()) {
                            return Ok(());
                        }
                        last = format!(
                            "pid {} reports release {}",
                            h.pid,
                            got.as_deref().map_or("none", short)
                        );
                    }
                    Err(e) => last = format!("unreadable health answer: {e}"),
                }
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) => last = pki::error_chain(&e),
        }
        if !same_process(trial.updater_pid, trial.updater_start_time) {
            return Err(format!(
                "the new updater (pid {}) exited before answering /health with its release (last: {last})",
                trial.updater_pid
            ));
        }
        if now_unix_ms() >= trial.deadline_unix_ms {
            return Err(format!(
                "the new updater did not report release {} on {url} in time (last: {last})",
                short(&trial.release_sha256)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stop the new updater `pid` — only while it is still the process that
/// started at `start` (a recycled pid is never signalled).
async fn stop(pid: i32, start: Option<u64>) {
    let target = Target {
        pid,
        start_time: start,
        scope: Scope::Process,
        exited: None,
    };
    tracing::warn!(pid, "watchdog: stopping the new updater");
    terminate(&target, KILL_GRACE, KILL_WAIT).await;
}
