//! What the identity commands report: one document per command, printed
//! as lines for a person or, with `--json`, as one JSON document (issue
//! 17: every command that reports something has `--json`).

use std::path::PathBuf;

use serde::Serialize;

use crate::clock;
use crate::error::Result;
use crate::output::{self, outln};

/// `swarm ca init`.
#[derive(Debug, Serialize)]
pub(super) struct CaInitDoc {
    pub(super) ca_dir: PathBuf,
    /// SHA-256 of the CA certificate.
    pub(super) ca_fingerprint: String,
    pub(super) master_dir: PathBuf,
    pub(super) master_cn: &'static str,
    pub(super) inventory: PathBuf,
    /// Hosts decommissioned because `--force` replaced their CA.
    pub(super) decommissioned: Vec<String>,
    /// The release-signing key made with it (issue 15).
    pub(super) release_key: crate::signing::KeyDoc,
}

/// One bundle `swarm enroll` wrote.
#[derive(Debug, Serialize)]
pub(super) struct BundleDoc {
    pub(super) dir: PathBuf,
    pub(super) cn: String,
    pub(super) fingerprint: String,
}

/// `swarm enroll` (also `--updater-only`, which has no `agent` and no
/// `address`).
#[derive(Debug, Serialize)]
pub(super) struct EnrollDoc {
    pub(super) host: String,
    pub(super) address: Option<String>,
    pub(super) agent_port: Option<u16>,
    pub(super) updater_port: Option<u16>,
    pub(super) agent: Option<BundleDoc>,
    pub(super) updater: Option<BundleDoc>,
    /// The host's tags (`--tag`).
    pub(super) tags: Vec<String>,
    /// RFC 3339: when the certificates issued now expire.
    pub(super) not_after: String,
}

/// `swarm decommission`.
#[derive(Debug, Serialize)]
pub(super) struct DecommissionDoc {
    pub(super) host: String,
    pub(super) decommissioned: bool,
    /// RFC 3339: its certificates stay valid until then (but denied).
    pub(super) certificates_valid_until: String,
    /// The fingerprints now on the deny list (issue 15).
    pub(super) denied: Vec<String>,
    #[serde(flatten)]
    pub(super) delivery: super::DenyDelivery,
}

impl CaInitDoc {
    pub(super) fn print(&self, json: bool) -> Result<()> {
        if json {
            return output::json(self);
        }
        outln!(
            "CA created in {} (sha256 {})",
            self.ca_dir.display(),
            self.ca_fingerprint
        )?;
        outln!(
            "master identity in {} (CN {})",
            self.master_dir.display(),
            self.master_cn
        )?;
        outln!("inventory {}", self.inventory.display())?;
        self.release_key.print_lines()?;
        if !self.decommissioned.is_empty() {
            outln!(
                "decommissioned {} host(s) enrolled under the old CA: {}; enroll them again",
                self.decommissioned.len(),
                self.decommissioned.join(", ")
            )?;
        }
        outln!(
            "next: swarm enroll --host worker-01 --address 192.0.2.10 --updater --out-dir ./worker-01"
        )
    }
}

impl EnrollDoc {
    pub(super) fn print(&self, json: bool) -> Result<()> {
        if json {
            return output::json(self);
        }
        let host = &self.host;
        let Some(agent) = &self.agent else {
            // --updater-only
            if let Some(u) = &self.updater {
                outln!(
                    "issued the updater bundle for {host}: {}  CN {}  sha256 {}",
                    u.dir.display(),
                    u.cn,
                    u.fingerprint
                )?;
            }
            return Ok(());
        };
        outln!(
            "enrolled {host} at {} (agent port {}, updater port {})",
            self.address.as_deref().unwrap_or("-"),
            self.agent_port.unwrap_or(0),
            self.updater_port.unwrap_or(0)
        )?;
        if !self.tags.is_empty() {
            outln!("  tags            {}", self.tags.join(", "))?;
        }
        outln!(
            "  agent bundle    {}  CN {}  sha256 {}",
            agent.dir.display(),
            agent.cn,
            agent.fingerprint
        )?;
        match &self.updater {
            Some(u) => outln!(
                "  updater bundle  {}  CN {}  sha256 {}",
                u.dir.display(),
                u.cn,
                u.fingerprint
            )?,
            None => outln!(
                "  no updater bundle: add one later with `swarm enroll --host {host} --updater-only --out-dir {}`",
                agent.dir.display()
            )?,
        }
        outln!(
            "certificates expire {}; copy each bundle to the worker (worker-agent --agent-dir, worker-updater --updater-dir)",
            self.not_after
        )
    }
}

impl DecommissionDoc {
    pub(super) fn print(&self, json: bool) -> Result<()> {
        if json {
            return output::json(self);
        }
        outln!(
            "decommissioned {}: it is no longer targeted by update, rollback or status",
            self.host
        )?;
        outln!(
            "its certificates ({}) are denied fleet-wide; they would otherwise stay valid until {}",
            self.denied.join(", "),
            self.certificates_valid_until
        )?;
        self.delivery.print_lines()
    }
}

/// A time as the reports show it.
pub(super) fn at(t: time::OffsetDateTime) -> String {
    clock::rfc3339(t)
}
