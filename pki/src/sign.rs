//! Release signatures (issue 15), one home for both sides: the ed25519
//! release-signing key (`release.key`, PKCS#8 PEM, 0600) and its public half
//! (`release.pub`, SPKI PEM, in every updater bundle), the signed [`Claim`]
//! (`release_id`, the home's monotonic `seq`, `created_at`, the signer,
//! a downgrade flag), its canonical bytes behind a domain-separation
//! prefix, and the `signature` form field's JSON ([`ReleaseSignature`]).
//!
//! Invariant: only [`Claim::signed_bytes`] says what is signed; the master
//! signs and the updater verifies those bytes and nothing else.

use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::PkiError;
use crate::bundle::{read_private, write_private, write_public};

/// The public key's file name in an updater bundle (and in `$SWARM_HOME/ca`).
pub const RELEASE_PUB: &str = "release.pub";
/// The private key's default file name, beside the CA.
pub const RELEASE_KEY: &str = "release.key";
/// Largest `signature` field an updater reads.
pub const MAX_SIGNATURE_FIELD: usize = 2048;
/// What every signed message starts with, so no other swarm (or foreign)
/// ed25519 signature can pass for a release signature.
const DOMAIN: &[u8] = b"swarm release signature v1\0";
/// What a key's endorsement of its successor signs, before the new key.
const ROTATION_DOMAIN: &[u8] = b"swarm release key rotation v1\0";
/// The file beside `release.pub` in the home holding the previous key's
/// endorsement of it (hex), sent with `swarm renew`.
pub const ENDORSEMENT: &str = "release.pub.endorsement";
/// The format version in the JSON.
const VERSION: u32 = 1;
/// Longest signer name and `created_at` accepted.
const MAX_NAME: usize = 300;

fn bad(what: impl Into<String>) -> PkiError {
    PkiError::Signature(what.into())
}

/// The release-signing key (private).
pub struct ReleaseKey(SigningKey);

impl std::fmt::Debug for ReleaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseKey")
            .field("key", &self.public().id())
            .finish_non_exhaustive()
    }
}

impl ReleaseKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<ReleaseKey, PkiError> {
        use rand::TryRngCore;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| bad(format!("no randomness for a new key: {e}")))?;
        Ok(ReleaseKey(SigningKey::from_bytes(&seed)))
    }

    /// Write the key to the new file `path` (0600; fails if it exists).
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        let pem = self
            .0
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| bad(format!("encoding the key: {e}")))?;
        write_private(path, &pem)
    }

    /// Read a key written by [`ReleaseKey::save`] (refusing a file others can read).
    pub fn load(path: &Path) -> Result<ReleaseKey, PkiError> {
        let pem = read_private(path)?;
        SigningKey::from_pkcs8_pem(&pem)
            .map(ReleaseKey)
            .map_err(|e| PkiError::BadPem {
                path: path.to_owned(),
                message: format!("not an ed25519 release key (PKCS#8 PEM): {e}"),
            })
    }

    pub fn public(&self) -> ReleasePub {
        ReleasePub(self.0.verifying_key())
    }

    /// Endorse `next` as this key's successor (rotation): what lets an
    /// updater that trusts this key take `next` from `swarm renew`.
    pub fn endorse(&self, next: &ReleasePub) -> String {
        hex::encode(self.0.sign(&rotation_bytes(next)).to_bytes())
    }

    /// Sign `claim`.
    pub fn sign(&self, claim: Claim) -> ReleaseSignature {
        let sig = self.0.sign(&claim.signed_bytes());
        ReleaseSignature {
            v: VERSION,
            key: self.public().id(),
            sig: hex::encode(sig.to_bytes()),
            claim,
        }
    }
}

/// The release-signing key's public half.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasePub(VerifyingKey);

impl ReleasePub {
    /// Parse an SPKI PEM (`release.pub`).
    pub fn parse(pem: &str) -> Result<ReleasePub, PkiError> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(ReleasePub)
            .map_err(|e| bad(format!("not an ed25519 public key (SPKI PEM): {e}")))
    }

    /// Read `path`; `None` when there is no such file.
    pub fn load(path: &Path) -> Result<Option<ReleasePub>, PkiError> {
        match std::fs::read_to_string(path) {
            Ok(text) => ReleasePub::parse(&text)
                .map(Some)
                .map_err(|e| bad(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PkiError::io(path, e)),
        }
    }

    pub fn to_pem(&self) -> Result<String, PkiError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| bad(format!("encoding the public key: {e}")))
    }

    /// Write the PEM to the new file `path` (0644; fails if it exists).
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        write_public(path, &self.to_pem()?)
    }

    /// A short name for the key (16 hex digits of the SHA-256 of its bytes),
    /// to say which key signed what.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// Whether `endorsement` is this key's endorsement of `next`.
    pub fn check_endorsement(&self, next: &ReleasePub, endorsement: &str) -> Result<(), PkiError> {
        let raw: [u8; 64] = hex::decode(endorsement.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the endorsement is not 128 hex digits"))?;
        self.0
            .verify_strict(
                &rotation_bytes(next),
                &ed25519_dalek::Signature::from_bytes(&raw),
            )
            .map_err(|_| {
                bad(format!(
                    "key {} is not endorsed by key {}, the one held",
                    next.id(),
                    self.id()
                ))
            })
    }

    /// Check `sig` against this key; the claim it makes, when it holds.
    pub fn verify(&self, sig: &ReleaseSignature) -> Result<Claim, PkiError> {
        if sig.v != VERSION {
            return Err(bad(format!(
                "format version {} is not {VERSION}: sign with this swarm",
                sig.v
            )));
        }
        sig.claim.check()?;
        let raw: [u8; 64] = hex::decode(&sig.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("`sig` is not 128 hex digits"))?;
        let parsed = ed25519_dalek::Signature::from_bytes(&raw);
        self.0
            .verify_strict(&sig.claim.signed_bytes(), &parsed)
            .map_err(|_| {
                bad(format!(
                    "the signature does not verify with this updater's release.pub (key {}; the signature names key {})",
                    self.id(),
                    crate::text::sanitize(&sig.key, 32)
                ))
            })?;
        Ok(sig.claim.clone())
    }
}

fn rotation_bytes(next: &ReleasePub) -> Vec<u8> {
    let mut out = ROTATION_DOMAIN.to_vec();
    out.extend_from_slice(next.0.as_bytes());
    out
}

/// What a release signature says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The release's `release_id` (64 hex digits).
    pub release_id: String,
    /// The signing home's counter, one per signing run.
    pub seq: u64,
    /// When it was signed (RFC 3339).
    pub created_at: String,
    /// `master` or `operator:NAME` ([`crate::Identity::acted_by`]).
    pub signer: String,
    /// Whether the signer allows a `seq` below the highest accepted.
    pub downgrade: bool,
}

impl Claim {
    /// The bytes the signature covers: the domain prefix, then each field
    /// (strings as a big-endian u32 length and their bytes, `seq` as a
    /// big-endian u64, `downgrade` as one byte), in declaration order.
    pub fn signed_bytes(&self) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, v: &str) {
            let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(DOMAIN.len() + 128);
        out.extend_from_slice(DOMAIN);
        field(&mut out, &self.release_id);
        out.extend_from_slice(&self.seq.to_be_bytes());
        field(&mut out, &self.created_at);
        field(&mut out, &self.signer);
        out.push(u8::from(self.downgrade));
        out
    }

    fn check(&self) -> Result<(), PkiError> {
        let id = &self.release_id;
        if id.len() != 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(bad("`release_id` is not 64 lowercase hex digits"));
        }
        if self.signer.len() > MAX_NAME || self.created_at.len() > MAX_NAME {
            return Err(bad(format!(
                "`signer` or `created_at` is longer than {MAX_NAME} bytes"
            )));
        }
        Ok(())
    }
}

/// The `signature` form field: a [`Claim`], the signing key's id and the
/// signature, as one flat JSON object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSignature {
    /// Format version (1).
    pub v: u32,
    #[serde(flatten)]
    pub claim: Claim,
    /// [`ReleasePub::id`] of the signing key (informative: what verifies is
    /// the updater's own `release.pub`).
    pub key: String,
    /// The ed25519 signature over [`Claim::signed_bytes`], hex.
    pub sig: String,
}

impl ReleaseSignature {
    /// Parse the field as sent.
    pub fn parse(text: &str) -> Result<ReleaseSignature, PkiError> {
        if text.len() > MAX_SIGNATURE_FIELD {
            return Err(bad(format!(
                "the field is longer than {MAX_SIGNATURE_FIELD} bytes"
            )));
        }
        serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "the field is not the JSON `swarm sign` prints: {}",
                crate::text::sanitize(&e.to_string(), 200)
            ))
        })
    }

    /// The one-line JSON for the form field.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, integers and a bool cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Claim {
        Claim {
            release_id: "ab".repeat(32),
            seq: 7,
            created_at: "2026-12-02T00:00:00Z".into(),
            signer: "operator:alice".into(),
            downgrade: false,
        }
    }

    #[test]
    fn a_signature_verifies_once_and_breaks_on_any_change() {
        let key = ReleaseKey::generate().unwrap();
        let sig = key.sign(claim());
        let back = ReleaseSignature::parse(&sig.to_json()).unwrap();
        assert_eq!(key.public().verify(&back).unwrap(), claim());
        for change in [
            |c: &mut Claim| c.release_id = "cd".repeat(32),
            |c: &mut Claim| c.seq = 8,
            |c: &mut Claim| c.created_at.push('x'),
            |c: &mut Claim| c.signer = "master".into(),
            |c: &mut Claim| c.downgrade = true,
        ] {
            let mut s = back.clone();
            change(&mut s.claim);
            let e = key.public().verify(&s).unwrap_err().to_string();
            assert!(e.contains("does not verify"), "{e}");
        }
        let other = ReleaseKey::generate().unwrap();
        assert!(other.public().verify(&back).is_err());
    }

    #[test]
    fn only_the_held_key_endorses_its_successor() {
        let (old, new, other) = (
            ReleaseKey::generate().unwrap(),
            ReleaseKey::generate().unwrap(),
            ReleaseKey::generate().unwrap(),
        );
        let e = old.endorse(&new.public());
        old.public().check_endorsement(&new.public(), &e).unwrap();
        assert!(old.public().check_endorsement(&other.public(), &e).is_err());
        assert!(new.public().check_endorsement(&new.public(), &e).is_err());
        let by_other = other.endorse(&new.public());
        assert!(
            old.public()
                .check_endorsement(&new.public(), &by_other)
                .is_err()
        );
        // A release signature is no endorsement (domains differ).
        let sig = old.sign(claim()).sig;
        assert!(old.public().check_endorsement(&new.public(), &sig).is_err());
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        // "a" + "bc" and "ab" + "c" must sign different bytes.
        let mut a = claim();
        a.created_at = "a".into();
        a.signer = "bc".into();
        let mut b = claim();
        b.created_at = "ab".into();
        b.signer = "c".into();
        assert_ne!(a.signed_bytes(), b.signed_bytes());
        assert!(a.signed_bytes().starts_with(DOMAIN));
    }

    #[test]
    fn keys_round_trip_through_their_files_and_the_private_one_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = ReleaseKey::generate().unwrap();
        key.save(&dir.path().join(RELEASE_KEY)).unwrap();
        key.public().save(&dir.path().join(RELEASE_PUB)).unwrap();
        let mode = std::fs::metadata(dir.path().join(RELEASE_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = ReleaseKey::load(&dir.path().join(RELEASE_KEY)).unwrap();
        assert_eq!(back.public(), key.public());
        let public = ReleasePub::load(&dir.path().join(RELEASE_PUB)).unwrap();
        assert_eq!(public, Some(key.public()));
        assert_eq!(ReleasePub::load(&dir.path().join("none")).unwrap(), None);
        assert!(
            key.save(&dir.path().join(RELEASE_KEY)).is_err(),
            "never overwritten"
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let key = ReleaseKey::generate().unwrap();
        assert!(ReleaseSignature::parse("{").is_err());
        assert!(ReleaseSignature::parse(&"x".repeat(MAX_SIGNATURE_FIELD + 1)).is_err());
        let mut s = key.sign(claim());
        s.sig = "00".into();
        assert!(
            key.public()
                .verify(&s)
                .unwrap_err()
                .to_string()
                .contains("128 hex")
        );
        let mut s = key.sign(claim());
        s.claim.release_id = "AB".repeat(32);
        assert!(key.public().verify(&s).is_err());
        assert!(ReleasePub::parse("nope").is_err());
    }
}
