//! Receiving a release: [`upload`] reads the multipart body and streams the
//! `tarball` through SHA-256 into [`extract`], which validates every entry
//! and writes the tree into staging; `guard` bounds what tar-rs buffers,
//! [`form`] what multer buffers (and drains a refused body).
//! [`delta`] completes a delta push's staging from the live release;
//! [`want`] resolves the index it must end up with.
//! Nothing is written outside staging, and nothing before it is validated.

pub(crate) mod decode;
pub mod delta;
pub mod extract;
pub mod form;
mod guard;
pub mod upload;
pub mod want;

pub use extract::{Caps, Extracted};
pub use form::Form;
pub use upload::{DeltaFields, IndexSent, Received, receive};
