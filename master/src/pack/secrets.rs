//! Secrets that stay home: which files are left out of a release by their
//! name or by holding a private key.
//!
//! Invariant: `.env.local` never ships; the other secrets ship only when
//! `swarm.toml`'s `[release] include` names them (decided by the caller).

/// The file that never ships, whatever `swarm.toml` says.
pub(super) const NEVER_SHIPPED: &str = ".env.local";

/// How much of each file is read to look for a private key.
pub(super) const SECRET_SNIFF_BYTES: usize = 8 * 1024;

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

/// Whether the head of a file holds a PEM private key. In a `*.pem` file
/// any `PRIVATE KEY` marker counts; elsewhere only a real PEM block does
/// (a `-----BEGIN … PRIVATE KEY-----` line at the start of a line, then a
/// base64 or header line), so source code that merely quotes the marker
/// still ships.
pub(super) fn holds_private_key(name: &str, head: &[u8]) -> bool {
    if name.ends_with(".pem") {
        return head.windows(11).any(|w| w == b"PRIVATE KEY");
    }
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    while let Some(line) = lines.next() {
        let is_begin = line.starts_with(b"-----BEGIN ")
            && (line.ends_with(b"PRIVATE KEY-----") || line.ends_with(b"PRIVATE KEY BLOCK-----"));
        if is_begin {
            let next = lines.next().unwrap_or_default();
            let base64 = !next.is_empty()
                && next
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
            // Old-style encrypted keys: `Proc-Type: 4,ENCRYPTED`.
            let header = next.contains(&b':');
            if base64 || header {
                return true;
            }
        }
    }
    false
}
