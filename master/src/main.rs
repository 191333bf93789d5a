//! `swarm`: parse the command line, run it, print any error chain on one
//! line and exit with its code (0 ok, 1 some host failed, 2 usage, 3 local, 141
//! stdout closed, quietly).

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = swarm::cli::Cli::parse_or_exit();
    match swarm::run(cli) {
        Ok(code) => ExitCode::from(code),
        // The reader of our stdout went away: nothing more to say.
        Err(e @ swarm::Error::BrokenPipe) => ExitCode::from(e.code()),
        Err(e) => {
            let code = e.code();
            eprintln!("error: {:#}", anyhow::Error::new(e));
            ExitCode::from(code)
        }
    }
}
