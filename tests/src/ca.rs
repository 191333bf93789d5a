//! A fresh CA per test in a temp dir, issuing bundles with `pki` directly,
//! and the bundles of one worker, however they were issued (here, or by
//! `swarm enroll`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use pki::{Bundle, BundleKind, Ca, HostName, IssuedLeaf, LeafSpec};
use tempfile::TempDir;

/// A fresh CA in its own temp dir (`<tmp>/ca`).
pub struct TestPki {
    pub dir: TempDir,
    pub ca: Ca,
}

/// The bundles of one enrolled worker.
#[derive(Clone, Debug)]
pub struct WorkerBundles {
    pub host: HostName,
    pub agent_dir: PathBuf,
    pub updater_dir: PathBuf,
    pub agent: IssuedLeaf,
    pub updater: IssuedLeaf,
}

impl WorkerBundles {
    /// Read back the bundles `swarm enroll` wrote for `host`.
    pub fn load(host: &str, agent_dir: &Path, updater_dir: &Path) -> anyhow::Result<Self> {
        Ok(WorkerBundles {
            host: HostName::new(host)?,
            agent: load_leaf(agent_dir, "worker")?,
            updater: load_leaf(updater_dir, "updater")?,
            agent_dir: agent_dir.to_owned(),
            updater_dir: updater_dir.to_owned(),
        })
    }
}

fn load_leaf(dir: &Path, stem: &str) -> anyhow::Result<IssuedLeaf> {
    let bundle = Bundle::load(dir)?;
    let info = bundle.info()?;
    let read = |ext: &str| {
        let path = dir.join(format!("{stem}.{ext}"));
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(IssuedLeaf {
        cert_pem: read("crt")?,
        key_pem: read("key")?,
        fingerprint: bundle.fingerprint(),
        not_after: info.not_after,
    })
}

impl TestPki {
    /// A new CA in a new temp dir.
    pub fn create() -> anyhow::Result<TestPki> {
        let dir = tempfile::tempdir().context("creating a temp dir")?;
        let ca = Ca::generate()?;
        ca.save(&dir.path().join("ca"))?;
        Ok(TestPki { dir, ca })
    }

    /// [`TestPki::create`] for tests: panics on failure.
    pub fn new() -> TestPki {
        TestPki::create().unwrap_or_else(|e| panic!("a test CA: {e:#}"))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issue a leaf from `spec` into `<tmp>/<name>/` as a bundle of `kind`.
    pub fn try_issue(
        &self,
        name: &str,
        kind: BundleKind,
        spec: &LeafSpec,
    ) -> anyhow::Result<(PathBuf, IssuedLeaf)> {
        let dir = self.dir.path().join(name);
        let leaf = self.ca.issue(spec)?;
        Bundle::write(&dir, kind, self.ca.cert_pem(), &leaf)?;
        Ok((dir, leaf))
    }

    /// [`TestPki::try_issue`] for tests: panics on failure.
    pub fn issue(&self, name: &str, kind: BundleKind, spec: &LeafSpec) -> (PathBuf, IssuedLeaf) {
        self.try_issue(name, kind, spec)
            .unwrap_or_else(|e| panic!("issuing {name}: {e:#}"))
    }

    /// The master bundle at `<tmp>/master/`, issued on first use.
    pub fn try_master(&self) -> anyhow::Result<Bundle> {
        let dir = self.dir.path().join("master");
        if !dir.exists() {
            self.try_issue("master", BundleKind::Master, &LeafSpec::master())?;
        }
        Ok(Bundle::load(&dir)?)
    }

    /// [`TestPki::try_master`] for tests: panics on failure.
    pub fn master(&self) -> Bundle {
        self.try_master()
            .unwrap_or_else(|e| panic!("the master bundle: {e:#}"))
    }

    /// Enroll `host` at 127.0.0.1: agent bundle `<tmp>/<host>/agent`,
    /// updater bundle `<tmp>/<host>/updater`.
    pub fn try_worker(&self, host: &str) -> anyhow::Result<WorkerBundles> {
        let host = HostName::new(host)?;
        std::fs::create_dir_all(self.dir.path().join(host.as_str()))?;
        let (agent_dir, agent) = self.try_issue(
            &format!("{host}/agent"),
            BundleKind::Agent,
            &LeafSpec::agent(&host, "127.0.0.1", &[])?,
        )?;
        let (updater_dir, updater) = self.try_issue(
            &format!("{host}/updater"),
            BundleKind::Updater,
            &LeafSpec::updater(&host, "127.0.0.1", &[])?,
        )?;
        Ok(WorkerBundles {
            host,
            agent_dir,
            updater_dir,
            agent,
            updater,
        })
    }

    /// [`TestPki::try_worker`] for tests: panics on failure.
    pub fn worker(&self, host: &str) -> WorkerBundles {
        self.try_worker(host)
            .unwrap_or_else(|e| panic!("bundles for {host}: {e:#}"))
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
