//! `POST /renew` (issue 15): the master sends a host new agent and updater
//! certificates with their new keys, over the mTLS channel it already has;
//! the updater checks they are this host's, from our CA, and whole
//! ([`RenewBody::check`]) before it writes anything.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::CertInfo;
use crate::{Bundle, Fingerprint, HostName, IssuedLeaf, PkiError};

/// The body of `POST /renew`.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct RenewBody {
    pub agent_cert_pem: String,
    pub agent_key_pem: String,
    pub updater_cert_pem: String,
    pub updater_key_pem: String,
    /// The master's release-signing public key (SPKI PEM), for the
    /// updater's bundle: from then on it takes only signed releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_pub: Option<String>,
    /// The previous release key's endorsement of `release_pub` (hex,
    /// [`crate::sign::ReleaseKey::endorse`]): an updater that holds another
    /// key takes the new one only with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_pub_endorsement: Option<String>,
}

impl std::fmt::Debug for RenewBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewBody").finish_non_exhaustive()
    }
}

/// The answer of a renewal that was written.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RenewAnswer {
    /// `renewed`.
    pub status: String,
    pub agent_fingerprint: String,
    pub updater_fingerprint: String,
    /// Whether the agent answered its probe after its restart.
    pub agent_healthy: bool,
    /// What the restart said, one line.
    pub detail: String,
}

impl RenewBody {
    pub fn new(agent: &IssuedLeaf, updater: &IssuedLeaf) -> RenewBody {
        RenewBody {
            agent_cert_pem: agent.cert_pem.clone(),
            agent_key_pem: agent.key_pem.clone(),
            updater_cert_pem: updater.cert_pem.clone(),
            updater_key_pem: updater.key_pem.clone(),
            release_pub: None,
            release_pub_endorsement: None,
        }
    }

    /// The same body, delivering `release_pub` too.
    pub fn with_release_pub(
        mut self,
        release_pub: &crate::sign::ReleasePub,
        endorsement: Option<String>,
    ) -> Result<RenewBody, PkiError> {
        self.release_pub = Some(release_pub.to_pem()?);
        self.release_pub_endorsement = endorsement;
        Ok(self)
    }

    /// Check both certificates: signed by `ours`' CA and valid now, CN
    /// `host` and `updater@host`, serverAuth+clientAuth, each with its
    /// key. Returns the two leaves (agent, updater) ready to write.
    pub fn check(
        &self,
        ours: &Bundle,
        host: &HostName,
    ) -> Result<(IssuedLeaf, IssuedLeaf), PkiError> {
        let agent = leaf(
            ours,
            &self.agent_cert_pem,
            &self.agent_key_pem,
            host.as_str(),
        )?;
        let updater = leaf(
            ours,
            &self.updater_cert_pem,
            &self.updater_key_pem,
            &host.updater_cn(),
        )?;
        Ok((agent, updater))
    }
}

fn bad(what: impl Into<String>) -> PkiError {
    PkiError::Parse(what.into())
}

fn leaf(ours: &Bundle, cert_pem: &str, key_pem: &str, cn: &str) -> Result<IssuedLeaf, PkiError> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad(format!("certificate for {cn}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad(format!("key for {cn}: {e}")))?;
    let info = CertInfo::parse(&cert)?;
    if info.cn != cn {
        return Err(bad(format!(
            "the new certificate is for {:?}, not this host's {cn:?}",
            crate::text::sanitize_cow(&info.cn, 100)
        )));
    }
    if !(info.server_auth && info.client_auth) {
        return Err(bad(format!(
            "the new certificate for {cn} lacks serverAuth+clientAuth"
        )));
    }
    crate::tls::verify_leaf(ours, &cert).map_err(|e| {
        bad(format!(
            "the new certificate for {cn} is not valid under our CA: {e}"
        ))
    })?;
    rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key, &crate::provider()).map_err(
        |e| {
            bad(format!(
                "the new key for {cn} does not fit its certificate: {e}"
            ))
        },
    )?;
    Ok(IssuedLeaf {
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
        fingerprint: Fingerprint::of_der(&cert),
        not_after: info.not_after,
    })
}
