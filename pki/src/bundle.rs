//! Certificate bundles on disk: `ca.crt` plus one leaf certificate and key,
//! written atomically (dir 0700, key 0600) and loaded with a permission check.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::CertInfo;
use crate::{Fingerprint, Identity, IssuedLeaf, PkiError};

/// Which leaf a bundle holds; it decides the file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleKind {
    /// `master.crt`, `master.key`
    Master,
    /// `worker.crt`, `worker.key` (the agent)
    Agent,
    /// `updater.crt`, `updater.key`
    Updater,
}

impl BundleKind {
    pub fn stem(self) -> &'static str {
        match self {
            BundleKind::Master => "master",
            BundleKind::Agent => "worker",
            BundleKind::Updater => "updater",
        }
    }
    /// "master", "agent", "updater".
    pub fn name(self) -> &'static str {
        match self {
            BundleKind::Master => "master",
            BundleKind::Agent => "agent",
            BundleKind::Updater => "updater",
        }
    }
    /// "an agent bundle (worker.crt)", for messages.
    pub fn describe(self) -> String {
        let article = if self == BundleKind::Master {
            "a"
        } else {
            "an"
        };
        format!("{article} {} bundle ({}.crt)", self.name(), self.stem())
    }
    const ALL: [BundleKind; 3] = [BundleKind::Master, BundleKind::Updater, BundleKind::Agent];
}

/// A loaded bundle: our CA, our certificate chain and our private key.
pub struct Bundle {
    pub dir: PathBuf,
    pub kind: BundleKind,
    pub ca: CertificateDer<'static>,
    /// Never empty (checked by [`Bundle::load`], the only constructor):
    /// the leaf first. Private so that invariant holds.
    chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Bundle {
    /// Our certificate chain, leaf first (never empty).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Clone for Bundle {
    fn clone(&self) -> Self {
        Bundle {
            dir: self.dir.clone(),
            kind: self.kind,
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Bundle {
    /// Load the bundle in `dir`, whichever kind it is.
    pub fn load(dir: &Path) -> Result<Bundle, PkiError> {
        for kind in BundleKind::ALL {
            if dir.join(format!("{}.crt", kind.stem())).exists() {
                return Bundle::load_kind(dir, kind);
            }
        }
        Err(PkiError::NoBundle(dir.to_owned()))
    }

    /// Load a bundle of a known kind from `dir`.
    pub fn load_kind(dir: &Path, kind: BundleKind) -> Result<Bundle, PkiError> {
        let ca_path = dir.join("ca.crt");
        let cert_path = dir.join(format!("{}.crt", kind.stem()));
        let key_path = dir.join(format!("{}.key", kind.stem()));
        if !cert_path.exists() || !ca_path.exists() {
            // Another kind's bundle here is a different mistake than none.
            if let Some(found) = BundleKind::ALL
                .into_iter()
                .find(|k| *k != kind && dir.join(format!("{}.crt", k.stem())).exists())
            {
                return Err(PkiError::WrongBundle {
                    dir: dir.to_owned(),
                    found: found.describe(),
                    expected: format!("the {} bundle ({}.crt)", kind.name(), kind.stem()),
                });
            }
            return Err(PkiError::NoBundle(dir.to_owned()));
        }
        let ca = read_certs(&ca_path)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::NoPem {
                path: ca_path.clone(),
                what: "certificate",
            })?;
        let chain = read_certs(&cert_path)?;
        if chain.is_empty() {
            return Err(PkiError::NoPem {
                path: cert_path,
                what: "certificate",
            });
        }
        let key_pem = read_private(&key_path)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::BadPem {
                path: key_path,
                message: e.to_string(),
            })?;
        Ok(Bundle {
            dir: dir.to_owned(),
            kind,
            ca,
            chain,
            key,
        })
    }

    /// The identity our own certificate carries.
    pub fn identity(&self) -> Identity {
        Identity::from_client_cert(&self.chain[0])
    }

    /// SHA-256 of our own certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.chain[0])
    }

    /// What our own certificate says.
    pub fn info(&self) -> Result<CertInfo, PkiError> {
        CertInfo::parse(&self.chain[0])
    }

    /// Write a bundle into a new directory `dir` atomically: the files go
    /// into a hidden sibling first, which is renamed into place only when
    /// complete. Fails if `dir` already exists.
    pub fn write(
        dir: &Path,
        kind: BundleKind,
        ca_pem: &str,
        leaf: &IssuedLeaf,
    ) -> Result<(), PkiError> {
        if dir.exists() {
            return Err(PkiError::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; remove it or choose another --out-dir",
                ),
            ));
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        let tmp = parent.join(format!(".{name}.tmp-{:08x}", rand::random::<u32>()));
        let result = (|| {
            create_private_dir(&tmp)?;
            write_public(&tmp.join("ca.crt"), ca_pem)?;
            write_public(&tmp.join(format!("{}.crt", kind.stem())), &leaf.cert_pem)?;
            write_private(&tmp.join(format!("{}.key", kind.stem())), &leaf.key_pem)?;
            fs::rename(&tmp, dir).map_err(|e| PkiError::io(dir, e))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = fs::read(path).map_err(|e| PkiError::io(path, e))?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Read a private key file, refusing one that group or others can read.
pub(crate) fn read_private(path: &Path) -> Result<String, PkiError> {
    let meta = fs::metadata(path).map_err(|e| PkiError::io(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(PkiError::KeyMode {
            path: path.to_owned(),
            mode: meta.permissions().mode() & 0o777,
        });
    }
    fs::read_to_string(path).map_err(|e| PkiError::io(path, e))
}

/// Create a directory (and parents) with mode 0700 for the last component.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent).map_err(|e| PkiError::io(parent, e))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| PkiError::io(dir, e))
        }
        Err(e) => Err(PkiError::io(dir, e)),
    }
}

fn write_mode(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| PkiError::io(path, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| PkiError::io(path, e))
}

pub(crate) fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_mode(path, contents, 0o644)
}

pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_mode(path, contents, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, HostName, LeafSpec};

    #[test]
    fn a_bundle_of_the_wrong_kind_and_a_readable_key_say_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let host = HostName::new("w1").unwrap();
        let leaf = ca
            .issue(&LeafSpec::agent(&host, "127.0.0.1", &[]).unwrap())
            .unwrap();
        let dir = tmp.path().join("agent");
        Bundle::write(&dir, BundleKind::Agent, ca.cert_pem(), &leaf).unwrap();
        let e = Bundle::load_kind(&dir, BundleKind::Updater)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "this is an agent bundle (worker.crt), pass the updater bundle (updater.crt)"
            ),
            "{e}"
        );
        let key = dir.join("worker.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Bundle::load_kind(&dir, BundleKind::Agent).unwrap_err();
        // Said once: no source that `{:#}` (anyhow's chain) prints again.
        assert_eq!(
            e.to_string().matches("private key is mode 644").count(),
            1,
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_none(), "{e:?}");
    }
}
