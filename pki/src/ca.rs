//! The swarm CA: ECDSA P-256, path length 0, random serials, backdated a few
//! minutes; and issuance of leaf certificates with explicit EKUs and SANs.

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::bundle::{write_private, write_public};
use crate::identity::{Fingerprint, MASTER_CN, OperatorName};
use crate::{HostName, PkiError};

/// How far back a new certificate's validity starts, to absorb clock skew.
const BACKDATE: Duration = Duration::minutes(5);
/// CA lifetime.
const CA_DAYS: i64 = 3650;
/// Leaf lifetime.
pub const LEAF_DAYS: i64 = 825;

/// A loaded CA: certificate and signing key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// What a leaf certificate should say.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub cn: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// URI SANs, e.g. `swarm:operator:NAME` (issue 15).
    pub uris: Vec<String>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// A freshly issued leaf.
#[derive(Clone)]
pub struct IssuedLeaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: Fingerprint,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

impl LeafSpec {
    fn base(cn: String, server_auth: bool, client_auth: bool) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            cn,
            dns: Vec::new(),
            ips: Vec::new(),
            uris: Vec::new(),
            server_auth,
            client_auth,
            not_before: now - BACKDATE,
            not_after: now + Duration::days(LEAF_DAYS),
        }
    }

    /// The master's client identity: CN `master`, clientAuth only.
    pub fn master() -> LeafSpec {
        LeafSpec::base(MASTER_CN.to_owned(), false, true)
    }

    /// A named operator's client identity: the master's role (CN `master`,
    /// clientAuth only) plus the URI SAN `swarm:operator:NAME`, which
    /// journals and manifests record as `operator:NAME`.
    pub fn operator(name: &OperatorName) -> LeafSpec {
        let mut spec = LeafSpec::master();
        spec.uris.push(name.uri());
        spec
    }

    /// A worker agent: CN `<host>`, serverAuth+clientAuth, SANs for its
    /// address, extra SANs, the host name, `127.0.0.1` and `localhost`.
    pub fn agent(host: &HostName, address: &str, sans: &[String]) -> Result<LeafSpec, PkiError> {
        let mut spec = LeafSpec::base(host.to_string(), true, true);
        spec.add_worker_sans(host, address, sans)?;
        Ok(spec)
    }

    /// A worker updater: CN `updater@<host>`, same SANs as the agent.
    pub fn updater(host: &HostName, address: &str, sans: &[String]) -> Result<LeafSpec, PkiError> {
        let mut spec = LeafSpec::base(host.updater_cn(), true, true);
        spec.add_worker_sans(host, address, sans)?;
        Ok(spec)
    }

    fn add_worker_sans(
        &mut self,
        host: &HostName,
        address: &str,
        sans: &[String],
    ) -> Result<(), PkiError> {
        let names = std::iter::once(address)
            .chain(sans.iter().map(String::as_str))
            .chain([host.as_str(), "127.0.0.1", "localhost"]);
        for name in names {
            self.add_san(name)?;
        }
        Ok(())
    }

    /// Add one SAN: an IP address if it parses as one, else a DNS name.
    pub fn add_san(&mut self, name: &str) -> Result<(), PkiError> {
        let name = name.trim();
        if let Ok(ip) = name.parse::<IpAddr>() {
            if !self.ips.contains(&ip) {
                self.ips.push(ip);
            }
            return Ok(());
        }
        if !crate::identity::is_dns_name(name) {
            return Err(PkiError::InvalidSan(name.to_owned()));
        }
        let name = name.to_ascii_lowercase();
        if !self.dns.contains(&name) {
            self.dns.push(name);
        }
        Ok(())
    }
}

impl Ca {
    /// Create a new CA.
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "swarm CA");
        dn.push(DnType::OrganizationName, "swarm");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(CA_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Load `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let cert_pem = fs::read_to_string(&cert_path).map_err(|e| PkiError::io(&cert_path, e))?;
        let key_pem = crate::bundle::read_private(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadPem {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        // Check the pair parses as a CA certificate before anyone signs with it.
        Issuer::from_ca_cert_pem(&cert_pem, &key).map_err(|e| PkiError::BadPem {
            path: cert_path,
            message: e.to_string(),
        })?;
        Ok(Ca { cert_pem, key })
    }

    /// Write `ca.crt` (0644) and `ca.key` (0600) into `dir` (created 0700).
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        crate::bundle::create_private_dir(dir)?;
        write_public(&dir.join("ca.crt"), &self.cert_pem)?;
        write_private(&dir.join("ca.key"), &self.key.serialize_pem())?;
        Ok(())
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a leaf certificate signed by this CA, with a fresh P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedLeaf, PkiError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.cn.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        for d in &spec.dns {
            params.subject_alt_names.push(SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|_| PkiError::InvalidSan(d.clone()))?,
            ));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for uri in &spec.uris {
            params.subject_alt_names.push(SanType::URI(
                uri.clone()
                    .try_into()
                    .map_err(|_| PkiError::InvalidSan(uri.clone()))?,
            ));
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedLeaf {
            fingerprint: Fingerprint::of_der(cert.der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: spec.not_after,
        })
    }
}
