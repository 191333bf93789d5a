//! Typed identities: host names, certificate fingerprints, and the role a
//! verified peer certificate carries.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use crate::PkiError;

/// The CN of the master's client certificate.
pub const MASTER_CN: &str = "master";
/// The prefix of an updater's CN: `updater@<host>`.
pub const UPDATER_PREFIX: &str = "updater@";

/// Whether `s` is usable as a DNS name in a certificate SAN: dot-separated
/// labels of 1 to 63 characters from `[A-Za-z0-9_-]`, at most 253 in all.
/// The one rule for host names and `--sans` alike, so every [`HostName`]
/// lands in its certificates.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

/// A worker host name, checked once: a DNS name ([`is_dns_name`]: labels
/// of 1-63 characters from `[A-Za-z0-9_-]`, at most 253 in all) that starts
/// with a letter or digit and is not `master`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct HostName(String);

impl HostName {
    pub fn new(s: &str) -> Result<Self, PkiError> {
        let ok = s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && is_dns_name(s)
            && s != MASTER_CN;
        if ok {
            Ok(HostName(s.to_owned()))
        } else {
            Err(PkiError::InvalidHostName(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The CN of this host's updater certificate.
    pub fn updater_cn(&self) -> String {
        format!("{UPDATER_PREFIX}{}", self.0)
    }
}

impl FromStr for HostName {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostName::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostName::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The URI SAN prefix that names an operator: `swarm:operator:NAME`.
pub const OPERATOR_URI_PREFIX: &str = "swarm:operator:";

/// A named operator (issue 15): same rules as a [`HostName`] (a DNS name
/// starting with a letter or digit, not `master`). Operators hold the
/// master's role; the name only says who acted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct OperatorName(String);

impl OperatorName {
    pub fn new(s: &str) -> Result<Self, PkiError> {
        HostName::new(s)
            .map(|h| OperatorName(h.0))
            .map_err(|_| PkiError::InvalidOperatorName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI SAN of this operator's certificate.
    pub fn uri(&self) -> String {
        format!("{OPERATOR_URI_PREFIX}{}", self.0)
    }

    /// Who acted, as journals and manifests record it: `operator:NAME`.
    pub fn by(&self) -> String {
        format!("operator:{}", self.0)
    }
}

impl FromStr for OperatorName {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OperatorName::new(s)
    }
}

impl fmt::Display for OperatorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|e| PkiError::Parse(format!("fingerprint {s:?}: {e}")))?;
        Ok(Fingerprint(out))
    }
}

/// Who a verified peer is, from its certificate's CN and extended key usages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// CN `master` with clientAuth.
    Master,
    /// CN `<host>`: a worker's agent.
    Agent(HostName),
    /// CN `updater@<host>`: a worker's updater.
    Updater(HostName),
    /// CA-signed but not one of ours (odd CN, or no clientAuth EKU).
    Other(String),
}

impl Identity {
    /// Map a peer's end-entity certificate (already verified against our CA
    /// by rustls) to an identity. A certificate without an explicit clientAuth
    /// EKU is `Other`, whatever its CN: webpki accepts certs with no EKU at
    /// all, so the EKU is checked here too.
    pub fn from_client_cert(der: &[u8]) -> Identity {
        let info = match CertInfo::parse(der) {
            Ok(info) => info,
            Err(e) => return Identity::Other(format!("unparsable certificate: {e}")),
        };
        if !info.client_auth {
            return Identity::Other(format!("{} (no clientAuth usage)", info.cn));
        }
        Identity::from_cn(&info.cn)
    }

    /// Map a CN to a role, without looking at usages.
    pub fn from_cn(cn: &str) -> Identity {
        if cn == MASTER_CN {
            return Identity::Master;
        }
        if let Some(host) = cn.strip_prefix(UPDATER_PREFIX) {
            return match HostName::new(host) {
                Ok(h) => Identity::Updater(h),
                Err(_) => Identity::Other(cn.to_owned()),
            };
        }
        match HostName::new(cn) {
            Ok(h) => Identity::Agent(h),
            Err(_) => Identity::Other(cn.to_owned()),
        }
    }

    /// Who acted, as the updater's journal (`by`) and a manifest's
    /// `pushed_by` record it: `operator:NAME` for a master-role certificate
    /// that names an operator, else the CN (`master` for the master's own).
    pub fn acted_by(&self, operator: Option<&OperatorName>) -> String {
        match (self, operator) {
            (Identity::Master, Some(op)) => op.by(),
            _ => self.cn(),
        }
    }

    /// The CN this identity stands for (`Other` gives its description).
    pub fn cn(&self) -> String {
        match self {
            Identity::Master => MASTER_CN.to_owned(),
            Identity::Agent(h) => h.to_string(),
            Identity::Updater(h) => h.updater_cn(),
            Identity::Other(s) => s.clone(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cn())
    }
}

/// What swarm reads out of a certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub cn: String,
    pub dns_sans: Vec<String>,
    /// The operator a `swarm:operator:NAME` URI SAN names, if any (and valid).
    pub operator: Option<OperatorName>,
    pub ip_sans: Vec<std::net::IpAddr>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub has_eku: bool,
    pub not_before: ::time::OffsetDateTime,
    pub not_after: ::time::OffsetDateTime,
    pub is_ca: bool,
    pub fingerprint: Fingerprint,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PkiError::Parse(e.to_string()))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut dns_sans = Vec::new();
        let mut ip_sans = Vec::new();
        let mut operator = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                    GeneralName::URI(u) => {
                        if let Some(name) = u.strip_prefix(OPERATOR_URI_PREFIX) {
                            operator = OperatorName::new(name).ok();
                        }
                    }
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            ip_sans.push(std::net::IpAddr::from(a));
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            ip_sans.push(std::net::IpAddr::from(a));
                        }
                    }
                    _ => {}
                }
            }
        }
        let (has_eku, server_auth, client_auth) = match cert.extended_key_usage() {
            Ok(Some(eku)) => (true, eku.value.server_auth, eku.value.client_auth),
            _ => (false, false, false),
        };
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        Ok(CertInfo {
            cn,
            dns_sans,
            operator,
            ip_sans,
            server_auth,
            client_auth,
            has_eku,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca,
            fingerprint: Fingerprint::of_der(der),
        })
    }
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn host_names() {
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), 253);
        for ok in [
            "worker-01",
            "a",
            "W.x_y-9",
            &label,
            &longest,
            "w1.eu-west.example",
        ] {
            assert!(HostName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a b",
            "a/b",
            "a@b",
            &"a".repeat(65),
            "master",
            "é",
            // Issue 10: a 64-character label passed here but is no DNS SAN.
            &"a".repeat(64),
            &format!("w.{}", "a".repeat(64)),
            &format!("{longest}b"),
            &format!("{}.{}", "a".repeat(63), "b".repeat(63)).repeat(3),
            "a..b",
            "a.",
            "a.b.",
        ] {
            assert!(HostName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_host_name_lands_in_its_certificates() {
        let ca = crate::Ca::generate().unwrap();
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        for name in [label.as_str(), longest.as_str(), "W.x_y-9", "a"] {
            let host = HostName::new(name).unwrap();
            // Same rule as the SANs: `add_san` takes every host name.
            crate::LeafSpec::master().add_san(name).unwrap();
            for spec in [
                crate::LeafSpec::agent(&host, "10.0.0.1", &[]).unwrap(),
                crate::LeafSpec::updater(&host, "10.0.0.1", &[]).unwrap(),
            ] {
                let leaf = ca.issue(&spec).unwrap();
                let der =
                    rustls_pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes())
                        .unwrap();
                let info = CertInfo::parse(&der).unwrap();
                assert!(
                    info.dns_sans.contains(&name.to_ascii_lowercase()),
                    "{name}: {info:?}"
                );
                assert_eq!(Identity::from_cn(&info.cn).cn(), info.cn);
                assert!(
                    !matches!(Identity::from_cn(&info.cn), Identity::Other(_)),
                    "{name}"
                );
            }
            // A TLS client can ask for it by that name.
            assert!(
                rustls_pki_types::ServerName::try_from(name).is_ok(),
                "{name}"
            );
        }
        // What the name rule refuses the SAN rule refuses too.
        for bad in ["a".repeat(64), format!("{longest}b"), "a..b".into()] {
            assert!(HostName::new(&bad).is_err(), "{bad}");
            assert!(crate::LeafSpec::master().add_san(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_from_cn() {
        assert_eq!(Identity::from_cn("master"), Identity::Master);
        assert_eq!(
            Identity::from_cn("updater@w1"),
            Identity::Updater(HostName::new("w1").unwrap())
        );
        assert_eq!(
            Identity::from_cn("w1"),
            Identity::Agent(HostName::new("w1").unwrap())
        );
        assert!(matches!(Identity::from_cn("updater@"), Identity::Other(_)));
        assert!(matches!(Identity::from_cn("x y"), Identity::Other(_)));
    }

    #[test]
    fn fingerprint_round_trip() {
        let f = Fingerprint::of_der(b"abc");
        assert_eq!(f.to_string().parse::<Fingerprint>().unwrap(), f);
        assert!("zz".parse::<Fingerprint>().is_err());
    }
}
