//! `worker-updater`: parse arguments into a validated config (exit 64 when
//! it is bad, before binding); `--check` stops there with 0, `--watchdog`
//! guards a self-update trial instead of serving; an install filesystem
//! without `RENAME_EXCHANGE` exits 64 too; otherwise settle the
//! updater's own slots (which may exec `updater/current`), bind, announce
//! the address, and hand over to [`worker_updater::run`].

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// EX_USAGE / EX_CONFIG-style exit code for bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    // An install hook's group leader (spawned by the updater itself).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == worker_updater::ops::hook::HOOK_LEADER)
    {
        return worker_updater::ops::hook::hook_leader(argv.get(2..).unwrap_or_default());
    }
    // A socket-activated agent's trampoline (spawned by the updater).
    if argv
        .get(1)
        .is_some_and(|a| a == worker_updater::agent::supervisor::EXEC_AGENT)
    {
        return worker_updater::agent::supervisor::exec_agent(argv.get(2..).unwrap_or_default());
    }
    // Before anything opens a descriptor: the agent's listen sockets take
    // the first ones (passed on by a self-update's exec, or reserved).
    let _ = worker_updater::agent::sockets::Sockets::global();
    pki::daemon::unblock_shutdown_signals();
    let args = match worker_updater::Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    pki::daemon::init_tracing();
    worker_updater::agent::sockets::Sockets::global().log_start();
    let (check, watchdog) = (args.check, args.watchdog);
    let mut config = match worker_updater::Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker-updater: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if watchdog {
        return worker_updater::selfupdate::watchdog(&config);
    }
    let tls = match pki::server_config(&config.bundle) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("worker-updater: TLS configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check {
        if !config.install_dir.is_dir() {
            eprintln!(
                "worker-updater: --install-dir {} is not a directory",
                config.install_dir.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        if let Err(e) = worker_updater::slots::check_install_exchange(&config.install_dir) {
            eprintln!("worker-updater: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        match config.check_host() {
            Ok(said) => {
                println!("configuration ok ({said})");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("worker-updater: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    match config.check_host() {
        Ok(said) => tracing::info!("{said}"),
        Err(e) => tracing::warn!("{e}"),
    }
    // Every slot swap relies on RENAME_EXCHANGE; refuse to run without it.
    if let Err(e) = std::fs::create_dir_all(&config.install_dir)
        .map_err(|e| {
            format!(
                "creating --install-dir {}: {e}",
                config.install_dir.display()
            )
        })
        .and_then(|()| worker_updater::slots::check_install_exchange(&config.install_dir))
    {
        eprintln!("worker-updater: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // May exec the updater in updater/current instead of returning.
    worker_updater::selfupdate::prestart(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker-updater: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        // Before announcing: a SIGTERM right after `listening on` drains.
        let shutdown = pki::daemon::shutdown_signal()
            .map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        // A re-exec binds exactly this address again (port 0 included).
        config.stash.set_listen(addr);
        {
            // Best effort: whoever read the first start's stdout may be gone
            // by the time a self-update's exec announces again.
            let mut out = std::io::stdout().lock();
            if let Err(e) = writeln!(out, "listening on {addr}").and_then(|()| out.flush()) {
                tracing::debug!("announcing on stdout: {e}");
            }
        }
        tracing::info!(%addr, host = %config.host, install = %config.install_dir.display(), "updater listening");
        worker_updater::run(listener, tls, config, shutdown).await
    });
    // A background delete of a replaced release must not hold up the exit:
    // the next start's repair removes the trash it leaves.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker-updater: {e:#}");
            ExitCode::FAILURE
        }
    }
}
