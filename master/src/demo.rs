//! `swarm demo`: a throwaway three-worker fleet on loopback.

use crate::cli::DemoArgs;
use crate::error::{Error, Result};

pub(crate) fn run(_args: &DemoArgs) -> Result<u8> {
    Err(Error::Other("demo: not yet".into()))
}
