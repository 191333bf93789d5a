//! Receiving a release: [`upload`] reads the multipart body and streams the
//! `tarball` through SHA-256 into [`extract`], which validates every entry
//! and writes the tree into staging; `guard` bounds what tar-rs buffers,
//! [`form`] what multer buffers (and drains a refused body).
//! [`delta`] completes a delta push's staging from the content store (the
//! index it must end up with is `ops::materialize::delta_index`'s).
//! Nothing is written outside staging, and nothing before it is validated.

pub(crate) mod decode;
pub mod delta;
pub mod extract;
pub mod form;
mod guard;
pub mod upload;

pub use extract::{Caps, Extracted};
pub use form::Form;
pub use upload::{DeltaFields, IndexSent, Received, receive};
