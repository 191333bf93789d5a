//! `worker-updater`: parse arguments into a validated config (exit 64 when
//! it is bad, before binding), bind, announce the address, and hand over to
//! [`worker_updater::run`].

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// EX_USAGE / EX_CONFIG-style exit code for bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
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
    worker_updater::init_tracing();
    let config = match worker_updater::Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker-updater: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let tls = match pki::server_config(&config.bundle) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("worker-updater: TLS configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker-updater: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        tracing::info!(%addr, host = %config.host, install = %config.install_dir.display(), "updater listening");
        worker_updater::run(listener, tls, config, worker_updater::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker-updater: {e:#}");
            ExitCode::FAILURE
        }
    }
}
