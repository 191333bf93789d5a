//! swarm's trust core: the CA, certificate bundles, typed identities, the one
//! authorization policy, the mTLS plumbing (server accept loop, pinned client)
//! and the JSON wire types shared by the master and both worker daemons.
//!
//! The server side ([`serve`](mod@serve), [`daemon`]: axum, hyper, the accept loop and
//! its [`ServeLimits`]) is the `server` feature, which only the daemons
//! enable; the `swarm` CLI builds the rest.
//!
//! Invariants:
//! - Every TLS config here trusts exactly one CA (the bundle's `ca.crt`) and
//!   uses the aws-lc-rs provider explicitly; nothing turns verification off.
//! - A peer is turned into an [`Identity`] right after the handshake and the
//!   [`policy`] decides what it may call; daemons never look at CNs themselves.
//! - `pki` opens no connections on its own: it serves listeners handed to it
//!   and builds clients that callers use.

pub mod body;
pub mod bundle;
pub mod ca;
#[cfg(feature = "server")]
pub mod daemon;
pub mod deny;
mod error;
pub mod identity;
pub mod index;
pub mod policy;
pub mod release;
pub mod renew;
pub mod rollout;
#[cfg(feature = "server")]
pub mod serve;
pub mod sign;
pub mod store;
pub mod swarm_toml;
pub mod text;
pub mod tls;
pub mod wire;

pub use bundle::{Bundle, BundleKind};
pub use ca::{Ca, IssuedLeaf, LeafSpec};
pub use deny::{DenyBody, DenyList};
pub use error::PkiError;
pub use identity::{Fingerprint, HostName, Identity, OperatorName};
pub use policy::Endpoint;
#[cfg(feature = "server")]
pub use serve::{Peer, PeerCert, ServeArgs, ServeLimits, serve, serve_denying, serve_with};
pub use tls::{ServerExpectation, SwappableCert, client_config, http_client, server_config};

/// An error and its causes on one line (`a: b: c`), leaving out a cause
/// whose message an earlier one already contains (many errors repeat their
/// source's message in their own).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let msg = err.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The one crypto provider used by every TLS config in swarm.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Seed this process's random generator on a thread of its own, now.
/// aws-lc seeds it once per process, on first use. This workspace builds
/// aws-lc without CPU-jitter entropy (`.cargo/config.toml`), so that is a
/// `getrandom` and this call costs one short thread; a build that keeps
/// the jitter collector (one outside this workspace's config, or with
/// `AWS_LC_SYS_NO_JITTER_ENTROPY=0`) spends ~35 ms of CPU there, and a
/// command that starts this before its local work (the CLI's scan, the
/// agent's set-up) does not wait for it in its first TLS handshake.
/// Nothing is weakened: the same seeding runs, only earlier.
pub fn warm_random() {
    let _ = std::thread::Builder::new()
        .name("seed-random".into())
        .spawn(|| {
            let mut byte = [0u8; 1];
            let _ = rustls::crypto::aws_lc_rs::default_provider()
                .secure_random
                .fill(&mut byte);
        });
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chain_joins_causes_without_repeats() {
        let e = E(
            "request failed: connection refused",
            Some(Box::new(E(
                "connection refused",
                Some(Box::new(E("os error 111", None))),
            ))),
        );
        assert_eq!(
            super::error_chain(&e),
            "request failed: connection refused: os error 111"
        );
        assert_eq!(super::error_chain(&E("alone", None)), "alone");
    }
}
