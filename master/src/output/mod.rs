//! Everything `swarm` prints on stdout: tables, JSON documents and lines,
//! all through [`write`], so that a closed stdout (`swarm status --json |
//! head -3`) ends the command quietly with [`Error::BrokenPipe`] instead
//! of a panic.
//!
//! Invariant: nothing in this crate uses `print!`/`println!`; progress
//! bars and warnings go to stderr. `swarm demo --json` gathers what the
//! commands it drives print into [`Step`]s and prints one document.

pub(crate) mod table;

use std::fmt;
use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::error::{Error, Result};

pub(crate) use table::{Cell, Color, Table, expiry_cell, set_color, stdout_color};

/// `println!` that returns [`Error::BrokenPipe`] when stdout is closed.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// One step of `swarm demo --json`: the command it ran, its exit code,
/// the JSON document it printed and any lines it printed besides.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Step {
    pub(crate) command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exit_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) notes: Vec<String>,
}

/// While `swarm demo --json` runs, what its commands print is gathered
/// here instead of written, so stdout carries one document.
static CAPTURE: Mutex<Option<Vec<Step>>> = Mutex::new(None);

fn with_capture<T>(f: impl FnOnce(&mut Option<Vec<Step>>) -> T) -> T {
    let mut guard = CAPTURE.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut guard)
}

/// Start gathering output into steps.
pub(crate) fn capture_start() {
    with_capture(|c| *c = Some(Vec::new()));
}

/// Begin a new step for `command`; false when nothing is being gathered.
pub(crate) fn capture_step(command: &str) -> bool {
    with_capture(|c| match c {
        Some(steps) => {
            steps.push(Step {
                command: command.to_owned(),
                ..Step::default()
            });
            true
        }
        None => false,
    })
}

/// The exit code of the current step.
pub(crate) fn capture_exit(code: u8) {
    with_capture(|c| {
        if let Some(step) = c.as_mut().and_then(|s| s.last_mut()) {
            step.exit_code = Some(code);
        }
    });
}

/// Stop gathering; the steps gathered.
pub(crate) fn capture_end() -> Vec<Step> {
    with_capture(Option::take).unwrap_or_default()
}

/// The current step, created when there is none yet; `None` when nothing
/// is being gathered.
fn current(c: &mut Option<Vec<Step>>) -> Option<&mut Step> {
    let steps = c.as_mut()?;
    if steps.is_empty() {
        steps.push(Step::default());
    }
    steps.last_mut()
}

/// Write `args` to stdout, flushed (or add them to the current step's
/// notes while gathering).
pub(crate) fn write(args: fmt::Arguments<'_>) -> Result<()> {
    let gathered = with_capture(|c| match current(c) {
        Some(step) => {
            let text = args.to_string();
            step.notes.extend(
                text.lines()
                    .map(str::trim_end)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
            true
        }
        None => false,
    });
    if gathered {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

fn stdout_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Error::BrokenPipe
    } else {
        Error::io("stdout", e)
    }
}

/// One pretty JSON document on stdout (or the current step's output while
/// gathering).
pub(crate) fn json<T: Serialize + ?Sized>(doc: &T) -> Result<()> {
    let gathered = with_capture(|c| {
        current(c).map(|step| serde_json::to_value(doc).map(|v| step.output = Some(v)))
    });
    if let Some(done) = gathered {
        return done.map_err(|e| Error::Other(e.to_string()));
    }
    let text = serde_json::to_string_pretty(doc).map_err(|e| Error::Other(e.to_string()))?;
    outln!("{text}")
}

/// A table on stdout, coloured on a terminal.
pub(crate) fn table(t: &Table) -> Result<()> {
    write(format_args!("{}", t.render(stdout_color())))
}
