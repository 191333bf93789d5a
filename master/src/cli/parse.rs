//! Parsing the command line as an operator sees it: `--help` and
//! `--version` as clap prints them, a usage error as one line plus a hint
//! (exit 2), and `--color` honoured by clap's own output too.

use clap::{CommandFactory, FromArgMatches, ValueEnum};

use super::{Cli, ColorWhen};

impl Cli {
    /// Parse `std::env::args`. `--help`/`--version` print as clap does; a
    /// usage error is printed as one line (what is wrong, and the usage of
    /// the command it concerns) plus a hint, and exits 2.
    pub fn parse_or_exit() -> Cli {
        let args: Vec<String> = std::env::args().collect();
        // clap's own help and errors follow `--color` too.
        let choice = match color_in(&args) {
            Some(ColorWhen::Always) => clap::ColorChoice::Always,
            Some(ColorWhen::Never) => clap::ColorChoice::Never,
            _ => clap::ColorChoice::Auto,
        };
        let parsed = Cli::command()
            .color(choice)
            .try_get_matches_from(&args)
            .and_then(|m| Cli::from_arg_matches(&m));
        match parsed {
            Ok(cli) => cli,
            Err(e) => {
                use clap::error::ErrorKind;
                if matches!(
                    e.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) {
                    e.exit()
                }
                eprintln!("{}", usage_error(&e, &args));
                std::process::exit(e.exit_code())
            }
        }
    }
}

/// The value of `--color` in `args`, before clap has parsed them.
fn color_in(args: &[String]) -> Option<ColorWhen> {
    let mut value = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--color=") {
            value = Some(v.to_owned());
        } else if a == "--color" {
            value = it.next().cloned();
        }
    }
    value.and_then(|v| ColorWhen::from_str(&v, true).ok())
}

/// A clap error as `error: <what>; usage: <usage>` on one line, then a
/// hint line. The command it concerns is found in `args` (the command
/// line); its usage is rendered from the command itself, not from what was
/// typed, so a flag set through the environment (`SWARM_HOME`) is not
/// shown as if it were required.
pub fn usage_error(e: &clap::Error, args: &[String]) -> String {
    let rendered = e.render().to_string();
    let mut what = String::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage: ") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if what.is_empty() {
        } else if what.ends_with(':') {
            what.push(' ');
        } else if line.starts_with(['<', '-']) {
            // The second and later of a list of missing arguments.
            what.push_str(", ");
        } else {
            what.push_str("; ");
        }
        what.push_str(line);
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut sub = &cmd;
    let mut words = vec!["swarm"];
    for arg in args.iter().skip(1) {
        if let Some(s) = sub.find_subcommand(arg) {
            sub = s;
            words.push(s.get_name());
        }
    }
    let usage = sub.clone().render_usage().to_string();
    let usage = usage.trim();
    let usage = usage.strip_prefix("Usage: ").unwrap_or(usage);
    format!(
        "error: {what}; usage: {usage}\nhint: `{} --help` lists every option",
        words.join(" ")
    )
}
