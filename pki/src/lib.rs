//! swarm's trust core: the CA, certificate bundles, typed identities, the one
//! authorization policy, the mTLS plumbing (server accept loop, pinned client)
//! and the JSON wire types shared by the master and both worker daemons.
//!
//! Invariants:
//! - Every TLS config here trusts exactly one CA (the bundle's `ca.crt`) and
//!   uses the aws-lc-rs provider explicitly; nothing turns verification off.
//! - A peer is turned into an [`Identity`] right after the handshake and the
//!   [`policy`] decides what it may call; daemons never look at CNs themselves.
//! - `pki` opens no connections on its own: it serves listeners handed to it
//!   and builds clients that callers use.

pub mod bundle;
pub mod ca;
mod error;
pub mod identity;
pub mod policy;
pub mod serve;
pub mod tls;
pub mod wire;

pub use bundle::{Bundle, BundleKind};
pub use ca::{Ca, IssuedLeaf, LeafSpec};
pub use error::PkiError;
pub use identity::{Fingerprint, HostName, Identity};
pub use policy::Endpoint;
pub use serve::{Peer, serve};
pub use tls::{ServerExpectation, client_config, http_client, server_config};

/// The one crypto provider used by every TLS config in swarm.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
