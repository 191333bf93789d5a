//! Everything `swarm` prints on stdout: tables, JSON documents and lines,
//! all through [`write`], so that a closed stdout (`swarm status --json |
//! head -3`) ends the command quietly with [`Error::BrokenPipe`] instead
//! of a panic.
//!
//! Invariant: nothing in this crate uses `print!`/`println!`; progress
//! bars and warnings go to stderr.

pub(crate) mod table;

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;

use crate::error::{Error, Result};

pub(crate) use table::{Cell, Color, Table, stdout_color};

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

/// Write `args` to stdout, flushed.
pub(crate) fn write(args: fmt::Arguments<'_>) -> Result<()> {
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

/// One pretty JSON document on stdout.
pub(crate) fn json<T: Serialize + ?Sized>(doc: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(doc).map_err(|e| Error::Other(e.to_string()))?;
    outln!("{text}")
}

/// A table on stdout, coloured on a terminal.
pub(crate) fn table(t: &Table) -> Result<()> {
    write(format_args!("{}", t.render(stdout_color())))
}
