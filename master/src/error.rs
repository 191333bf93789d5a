//! The master's one error type: every cause, and the exit code it maps to.

use std::path::{Path, PathBuf};

/// Exit code: an operation failed (or rolled back) on at least one host.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line asked for something impossible (bad host
/// name, unknown or duplicate host, missing flag). Same as clap's own.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the master itself could not do its part (no CA yet, an
/// unwritable directory, a broken inventory, a tree that cannot be packed).
pub const EXIT_LOCAL: u8 = 3;
/// Exit code: stdout was closed under us (`swarm status | head`). The
/// shell's code for a process ended by SIGPIPE, without its noise: the
/// output was cut short, which a pipeline with `pipefail` should see.
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// Everything that stops a `swarm` command before or outside the fleet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input on the command line; the message says what to fix.
    #[error("{0}")]
    Usage(String),
    /// The master's state is not what the command needs (e.g. no CA yet).
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("inventory {}: {source}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("inventory {}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot pack {}: {message}", root.display())]
    Pack { root: PathBuf, message: String },
    /// Stdout was closed (the reader went away): end quietly.
    #[error("stdout closed")]
    BrokenPipe,
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_owned(),
            source,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error::Usage(message.into())
    }

    /// The process exit code this error maps to.
    pub fn code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Pki(pki::PkiError::InvalidHostName(_) | pki::PkiError::InvalidSan(_)) => {
                EXIT_USAGE
            }
            Error::BrokenPipe => EXIT_BROKEN_PIPE,
            _ => EXIT_LOCAL,
        }
    }
}

/// Results of the master's library.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
