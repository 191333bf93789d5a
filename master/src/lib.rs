//! The `swarm` master: the CA and enrollment, the inventory, packing a
//! working tree into a release, and pushing it across the fleet.
//!
//! Code map, top down; a module imports only modules below it (and `cli`,
//! the raw arguments the commands take), so there is no cycle:
//! - [`cli`]: the command line as clap sees it (raw values).
//! - `demo`: the local three-worker fleet, driven through the commands below.
//! - `fleet`: update/rollback/status/history/restart/logs over pinned mTLS.
//! - `package`: worker packages (bundles, binaries, unit, install.sh) from
//!   the bundles `enroll` wrote.
//! - `shell`: shell completions and man pages, generated from `cli`.
//! - `enroll`: `ca init`, `enroll`, `list`, `tag`, `decommission`, `operator`.
//! - `signing`: the release-signing key, `key init`, `sign`, the one
//!   signature of an update run.
//! - `pack`: the release tarball, built once per push.
//! - `keyscan`: private keys found by content (PEM, escaped PEM, DER).
//! - `home`: the state directory; `inventory`: the SQLite database.
//! - `output`: everything printed on stdout (tables, JSON, lines).
//! - `clock`: time as shown and stored; `error`: the one error enum.
//!
//! Invariants: the master only talks to updaters whose CN and certificate
//! fingerprint match the inventory; nothing here turns TLS verification off.

pub mod cli;
mod clock;
mod demo;
mod enroll;
mod error;
mod fleet;
mod home;
mod inventory;
mod keyscan;
mod output;
mod pack;
mod package;
mod shell;
mod signing;

pub use error::{EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_LOCAL, EXIT_USAGE, Error};

use cli::{CaCommand, Cli, Command, KeyCommand, OperatorCommand};
use home::Home;

/// Run one parsed command line. `Ok(code)` is the exit code of a command
/// that ran to its end (0, or [`EXIT_FAILED`] when some host failed);
/// `Err` is a command that could not run, with [`Error::code`].
pub fn run(cli: Cli) -> Result<u8, Error> {
    output::set_color(cli.color);
    // These need no state directory, not even a $HOME.
    match &cli.command {
        Command::Completions(args) => return shell::completions(args).map(|()| 0),
        Command::Man(args) => return shell::man(args).map(|()| 0),
        _ => {}
    }
    let home = Home::resolve(cli.home.as_deref())?;
    match cli.command {
        Command::Ca {
            command:
                CaCommand::Init {
                    force,
                    key_file,
                    json,
                },
        } => enroll::ca_init(&home, force, key_file.as_deref(), json).map(|()| 0),
        Command::Key {
            command:
                KeyCommand::Init {
                    key_file,
                    force,
                    json,
                },
        } => signing::key_init(&home, key_file.as_deref(), force, json).map(|()| 0),
        Command::Sign(args) => signing::sign(&home, &args).map(|()| 0),
        Command::Enroll(args) => package::enroll(&home, args).map(|()| 0),
        Command::List {
            json,
            denied: false,
        } => enroll::list(&home, json).map(|()| 0),
        Command::List { json, denied: true } => enroll::list_denied(&home, json).map(|()| 0),
        Command::Operator { command } => match command {
            OperatorCommand::Add {
                name,
                out_dir,
                json,
            } => enroll::operator_add(&home, &name, &out_dir, json).map(|()| 0),
            OperatorCommand::List { json } => enroll::operator_list(&home, json).map(|()| 0),
            OperatorCommand::Remove { name, json } => {
                enroll::operator_remove(&home, &name, json, fleet::deliver_deny_all)
            }
        },
        Command::Tag(args) => enroll::tag(&home, &args).map(|()| 0),
        Command::Decommission { host, json } => {
            enroll::decommission(&home, &host, json, fleet::deliver_deny_all).map(|()| 0)
        }
        Command::Update(args) => fleet::update(&home, &args),
        Command::Rollback(args) => fleet::rollback(&home, &args),
        Command::Renew(args) => fleet::renew(&home, &args),
        Command::Status(args) => fleet::status(&home, &args),
        Command::History(args) => fleet::history(&home, &args),
        Command::Restart(args) => fleet::restart(&home, &args),
        Command::Logs(args) => fleet::logs(&home, &args),
        Command::Verify(args) => fleet::verify(&home, &args),
        Command::Releases(args) => fleet::releases(&home, &args),
        Command::Demo(args) => demo::run(&args),
        Command::Package(args) => package::package(&home, &args).map(|()| 0),
        // Answered above.
        Command::Completions(_) | Command::Man(_) => Ok(0),
    }
}
