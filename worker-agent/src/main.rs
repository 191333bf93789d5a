//! `worker-agent`: parse arguments, bind, and hand over to [`worker_agent::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    pki::daemon::unblock_shutdown_signals();
    pki::warm_random();
    let args = match worker_agent::Args::try_parse() {
        Ok(args) => args,
        // --help and --version are not errors.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(64);
        }
    };
    pki::daemon::init_tracing();
    let config = match worker_agent::Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker-agent: {e:#}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker-agent: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(worker_agent::main(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
