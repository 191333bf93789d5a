//! rustls configurations: the server side (client certificate mandatory, only
//! our CA) and the client side (our CA, our client certificate, and optional
//! pinning of the server's CN and certificate fingerprint).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::CertInfo;
use crate::{Bundle, Fingerprint, PkiError, provider};

fn roots(bundle: &Bundle) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(bundle.ca.clone())?;
    Ok(Arc::new(roots))
}

/// Server config: present our chain, demand a client certificate signed by
/// our CA (never optional), HTTP/1.1 over ALPN.
pub fn server_config(bundle: &Bundle) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(bundle)?, provider())
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(bundle.chain().to_vec(), bundle.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server certificate of a daemon, replaceable while it serves (issue
/// 15: a renewed updater presents its new certificate on the next
/// handshake; connections already open keep theirs). Put it into a
/// [`server_config`]'s `cert_resolver`.
#[derive(Debug)]
pub struct SwappableCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl SwappableCert {
    pub fn new(bundle: &Bundle) -> Result<SwappableCert, PkiError> {
        Ok(SwappableCert(std::sync::RwLock::new(certified_key(
            bundle,
        )?)))
    }

    /// Present `bundle`'s certificate from the next handshake on.
    pub fn replace(&self, bundle: &Bundle) -> Result<(), PkiError> {
        let key = certified_key(bundle)?;
        // A poisoned lock only means a panic elsewhere mid-swap of one Arc.
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for SwappableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// `bundle`'s chain and key, checked to belong together.
fn certified_key(bundle: &Bundle) -> Result<Arc<rustls::sign::CertifiedKey>, PkiError> {
    let key = rustls::sign::CertifiedKey::from_der(
        bundle.chain().to_vec(),
        bundle.key.clone_key(),
        &provider(),
    )?;
    Ok(Arc::new(key))
}

/// Whether `leaf` (DER) chains to `bundle`'s CA and is valid now, checked
/// the way a server checks a client certificate (so it needs clientAuth,
/// which every worker and master certificate has).
pub fn verify_leaf(bundle: &Bundle, leaf: &CertificateDer<'_>) -> Result<(), PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(bundle)?, provider())
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
    verifier
        .verify_client_cert(leaf, &[], UnixTime::now())
        .map(|_| ())
        .map_err(PkiError::Tls)
}

/// What a client demands of the server beyond a valid chain and name.
#[derive(Clone, Debug, Default)]
pub struct ServerExpectation {
    /// The CN the server's certificate must carry (e.g. `updater@worker-01`).
    pub cn: Option<String>,
    /// The exact certificate the server must present (recorded at enrollment).
    pub fingerprint: Option<Fingerprint>,
    /// Other certificates accepted besides `fingerprint` (a renewal's
    /// pending one until the updater has shown it, issue 15). Ignored
    /// without `fingerprint`.
    pub also: Vec<Fingerprint>,
}

impl ServerExpectation {
    pub fn cn(cn: impl Into<String>) -> Self {
        ServerExpectation {
            cn: Some(cn.into()),
            fingerprint: None,
            also: Vec::new(),
        }
    }
    pub fn pinned(cn: impl Into<String>, fingerprint: Fingerprint) -> Self {
        ServerExpectation {
            cn: Some(cn.into()),
            fingerprint: Some(fingerprint),
            also: Vec::new(),
        }
    }

    /// [`ServerExpectation::pinned`] also accepting each of `also`.
    pub fn pinned_any(
        cn: impl Into<String>,
        fingerprint: Fingerprint,
        also: Vec<Fingerprint>,
    ) -> Self {
        ServerExpectation {
            also,
            ..ServerExpectation::pinned(cn, fingerprint)
        }
    }
}

/// Full webpki verification (chain to our CA, validity, name), then the
/// CN and fingerprint pins on top. It never weakens the inner check.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect: ServerExpectation,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(want) = &self.expect.fingerprint {
            let got = Fingerprint::of_der(end_entity);
            if got != *want && !self.expect.also.contains(&got) {
                return Err(rustls::Error::General(format!(
                    "server certificate fingerprint {got} is not the enrolled {want}; \
                     re-enroll the host if its certificate was replaced"
                )));
            }
        }
        if let Some(want) = &self.expect.cn {
            let info =
                CertInfo::parse(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
            if info.cn != *want {
                return Err(rustls::Error::General(format!(
                    "server certificate CN {:?} is not the expected {want:?}",
                    info.cn
                )));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client config: trust only our CA, present our certificate, apply `expect`.
pub fn client_config(bundle: &Bundle, expect: ServerExpectation) -> Result<ClientConfig, PkiError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots(bundle)?, provider())
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let verifier = Arc::new(PinnedVerifier { inner, expect });
    // `dangerous()` only because the verifier is our own type; it runs the
    // full webpki verification first and only adds checks.
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(bundle.chain().to_vec(), bundle.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A reqwest client builder on [`client_config`], with proxies off (a swarm
/// connection never goes through an environment proxy). Callers add timeouts.
pub fn http_client(
    bundle: &Bundle,
    expect: ServerExpectation,
) -> Result<reqwest::ClientBuilder, PkiError> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(bundle, expect)?)
        .no_proxy()
        .http1_only())
}
