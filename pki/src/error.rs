//! The error type of the `pki` crate.

use std::path::PathBuf;

/// Everything that can go wrong while creating, loading or using certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "invalid host name {0:?}: use [A-Za-z0-9._-], starting with a letter or digit, with 1-63 characters between dots and at most 253 in all (\"master\" is reserved)"
    )]
    InvalidHostName(String),
    #[error(
        "invalid operator name {0:?}: use [A-Za-z0-9._-], starting with a letter or digit, with 1-63 characters between dots and at most 253 in all (\"master\" is reserved)"
    )]
    InvalidOperatorName(String),
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found in it")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error(
        "{0}: no bundle here (expected ca.crt with one of master.crt, updater.crt, worker.crt and its .key)"
    )]
    NoBundle(PathBuf),
    #[error("{}: this is {found}, pass {expected}", .dir.display())]
    WrongBundle {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
    /// `swarm.toml` at a release root is unusable (what to fix).
    #[error("swarm.toml: {0}")]
    SwarmToml(String),
    /// A private key file group or others can read.
    #[error(
        "{}: private key is mode {mode:o}; it must be 0600 (chmod 600 {})",
        .path.display(),
        .path.display()
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A response body over the reader's cap (`announced` is its
    /// `Content-Length`, `read` what had arrived when the read stopped).
    #[error("answer too large: over the {cap}-byte cap{}", match announced {
        Some(n) => format!(" (announced {n} bytes)"),
        None => format!(" ({read} bytes and more sent)"),
    })]
    BodyTooLarge {
        cap: usize,
        announced: Option<u64>,
        read: usize,
    },
    /// A response body that is not the JSON expected (message sanitised).
    #[error("answer is not the expected JSON: {0}")]
    BadBody(String),
    /// A release key or signature that is unusable, or does not verify.
    #[error("release signature: {0}")]
    Signature(String),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io {
            path: path.into(),
            source,
        }
    }
}
