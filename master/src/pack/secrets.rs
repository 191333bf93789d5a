//! Secrets that stay home: which files are left out of a release by their
//! name or by holding a private key.
//!
//! Invariant: `.env.local` never ships; the other secrets ship only when
//! `swarm.toml`'s `[release] include` names them (decided by the caller);
//! every other file is scanned whole for a private key before it is packed.

use std::fs::File;
use std::io;
use std::path::Path;

use super::pack_err;
use crate::error::{Error, Result};
use crate::keyscan;

/// The file that never ships, whatever `swarm.toml` says.
pub(super) const NEVER_SHIPPED: &str = ".env.local";

/// File names that are private keys whatever they hold.
const KEY_FILE_NAMES: &[&str] = &[
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "id_ecdsa_sk",
    "id_ed25519_sk",
];

/// Whether a file is a secret by its name: `.env*`, `*.key`, key stores,
/// and SSH private keys.
pub(super) fn is_secret_name(name: &str) -> bool {
    name.starts_with(".env")
        || [".key", ".p12", ".pfx", ".jks", ".keystore"]
            .iter()
            .any(|ext| name.ends_with(ext))
        || KEY_FILE_NAMES.contains(&name)
}

/// Whether the open file `f` (named `name`, at `rel` in the tree at
/// `root`) holds a private key: the whole file is scanned by
/// [`keyscan`](crate::keyscan) (PEM blocks anywhere, escaped PEM in
/// strings, DER keys by structure) and rewound for packing. A file too
/// large to scan stops the pack with a message naming it: it is never
/// shipped unscanned, nor silently left out.
pub(super) fn holds_private_key(f: &mut File, name: &str, rel: &str, root: &Path) -> Result<bool> {
    match keyscan::scan_open_file(f, name) {
        Ok(found) => Ok(found.is_some()),
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
            Err(pack_err(root, format!("{rel}: {e}")))
        }
        Err(e) => Err(Error::io(root.join(rel), e)),
    }
}
