//! A real single-node Garage (S3-compatible object store) on 127.0.0.1 for
//! the store tests (issue 16): its own temp data and metadata dirs, sqlite,
//! replication factor 1, a layout assigned and applied, one bucket and an
//! access key that may read and write it. Stopped (SIGKILL) when dropped.
//!
//! The binary is `$GARAGE_BIN`, else `garage` on `PATH`, else
//! `~/.cargo/bin/garage` (`.ci/run` installs it with `cargo install
//! garage@2.5.0 --locked`). [`Garage::require`] fails the test when it is
//! absent: a store test never skips.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tempfile::TempDir;

use crate::ports::Port;
use crate::process::Daemon;

/// The region the test store answers to.
pub const REGION: &str = "garage";
/// How long a presigned URL the harness makes stays valid.
const SIGN_FOR: Duration = Duration::from_secs(300);
/// How long Garage may take to boot and accept the layout.
const BOOT: Duration = Duration::from_secs(60);

/// One running Garage node with a bucket and a key.
#[derive(Debug)]
pub struct Garage {
    bin: PathBuf,
    dir: TempDir,
    /// The address its S3 API listens on.
    ip: IpAddr,
    s3_port: Port,
    _rpc_port: Port,
    daemon: Option<Daemon>,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// The Garage binary, or a failed test that says how to install it.
    pub fn require() -> PathBuf {
        Garage::find().unwrap_or_else(|| {
            panic!(
                "the store tests need Garage 2.5.0 and it is not installed: run `cargo install garage@2.5.0 --locked` (or set GARAGE_BIN); .ci/run does this"
            )
        })
    }

    fn find() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("GARAGE_BIN") {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("garage"))
                .find(|p| p.is_file())
        });
        on_path.or_else(|| {
            let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/garage");
            p.is_file().then_some(p)
        })
    }

    /// Start a node with bucket `bucket` (panics on failure: for tests).
    pub fn start(bucket: &str) -> Garage {
        Garage::try_start(bucket).unwrap_or_else(|e| panic!("starting Garage: {e:#}"))
    }

    /// [`Garage::start`], its errors returned.
    pub fn try_start(bucket: &str) -> anyhow::Result<Garage> {
        Garage::try_start_at(bucket, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// [`Garage::try_start`] with its S3 API on `ip` (an address of this
    /// namespace; the bench's shaped uplink). Its RPC stays on loopback.
    pub fn try_start_at(bucket: &str, ip: IpAddr) -> anyhow::Result<Garage> {
        let bin = Garage::require();
        let dir = tempfile::Builder::new().prefix("swarm-garage").tempdir()?;
        let (s3_port, rpc_port) = (Port::reserve()?, Port::reserve()?);
        let secret: [u8; 32] = rand_bytes();
        let config = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{s3_addr}"
root_domain = ".s3.garage.localhost"
"#,
            root = dir.path().display(),
            rpc = rpc_port.get(),
            s3_addr = std::net::SocketAddr::new(ip, s3_port.get()),
            secret = hex::encode(secret),
        );
        std::fs::write(dir.path().join("garage.toml"), config)?;
        let mut g = Garage {
            bin,
            dir,
            ip,
            s3_port,
            _rpc_port: rpc_port,
            daemon: None,
            bucket: bucket.to_owned(),
            key_id: String::new(),
            secret: String::new(),
        };
        g.spawn()?;
        g.setup()?;
        Ok(g)
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>` (or its `ip`).
    pub fn endpoint(&self) -> String {
        format!(
            "http://{}",
            std::net::SocketAddr::new(self.ip, self.s3_port.get())
        )
    }

    /// The node's directory (config, data, metadata, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill the node (the store is down until [`Garage::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Start the node again on the same dirs and ports, and wait until it
    /// serves the bucket.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_s3()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.command();
        cmd.arg("server").env("RUST_LOG", "garage=info");
        self.daemon = Some(Daemon::spawn_logged(
            "garage",
            &mut cmd,
            &self.dir.path().join("garage.log"),
        )?);
        Ok(())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(self.dir.path().join("garage.toml"));
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Run a `garage` CLI command against the node (its stdout).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(args);
        let out = crate::block_on(crate::process::run_timed(&mut cmd, Duration::from_secs(60)))?;
        if !out.status.success() {
            bail!(
                "garage {args:?}: {}\n{}{}",
                out.status,
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    fn setup(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + BOOT;
        let id = loop {
            match self.cli(&["node", "id", "-q"]) {
                Ok(out) => break out.trim().to_owned(),
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(e.context(format!("Garage did not boot within {BOOT:?}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let node = id.split('@').next().unwrap_or_default().to_owned();
        // A node just booted may refuse a step for a moment: each is
        // retried until the deadline (a step that already took effect on a
        // refused-looking try is recognised by its message).
        self.cli_until(
            &["layout", "assign", "-z", "dc1", "-c", "1G", &node],
            None,
            deadline,
        )?;
        self.cli_until(
            &["layout", "apply", "--version", "1"],
            Some("version"),
            deadline,
        )?;
        let bucket = self.bucket.clone();
        self.cli_until(&["bucket", "create", &bucket], Some("already"), deadline)?;
        let out = self.cli_until(
            &["json-api", "CreateKey", r#"{"name":"swarm-test"}"#],
            None,
            deadline,
        )?;
        let key: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("CreateKey said {out}"))?;
        self.key_id = key["accessKeyId"].as_str().unwrap_or_default().to_owned();
        self.secret = key["secretAccessKey"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if self.key_id.is_empty() || self.secret.is_empty() {
            bail!("CreateKey gave no key: {key}");
        }
        let key_id = self.key_id.clone();
        self.cli_until(
            &[
                "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key_id,
            ],
            None,
            deadline,
        )?;
        self.wait_s3()
    }

    /// [`Garage::cli`], retried every 200 ms until `deadline`; a failure
    /// whose message holds `done` means the step had taken effect.
    fn cli_until(
        &self,
        args: &[&str],
        done: Option<&str>,
        deadline: std::time::Instant,
    ) -> anyhow::Result<String> {
        loop {
            match self.cli(args) {
                Ok(out) => return Ok(out),
                Err(e) if done.is_some_and(|d| format!("{e:#}").contains(d)) => {
                    return Ok(String::new());
                }
                Err(e) if std::time::Instant::now() > deadline => {
                    let log = std::fs::read_to_string(self.dir.path().join("garage.log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    return Err(e.context(format!(
                        "Garage log, last lines first:\n{}",
                        tail.join("\n")
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Wait until an authenticated HEAD of the bucket answers 200.
    fn wait_s3(&self) -> anyhow::Result<()> {
        let url = self
            .s3_bucket()
            .head_bucket(Some(&self.credentials()))
            .sign(SIGN_FOR);
        let deadline = std::time::Instant::now() + BOOT;
        let client = reqwest::Client::new();
        loop {
            let status = crate::block_on(async {
                client
                    .head(url.clone())
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .map(|r| r.status())
            });
            match status {
                Ok(s) if s.is_success() => return Ok(()),
                _ if std::time::Instant::now() > deadline => {
                    bail!(
                        "Garage did not serve bucket {} within {BOOT:?}: {status:?}",
                        self.bucket
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Write the key as an AWS-style credentials file (`[default]`) at
    /// `path`, for `swarm store set --credentials-file`.
    pub fn write_credentials(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.key_id, self.secret
            ),
        )
    }

    /// The key's credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.key_id.clone(), self.secret.clone())
    }

    /// The bucket, path-style.
    pub fn s3_bucket(&self) -> Bucket {
        let endpoint = self.endpoint().parse().expect("a valid URL: we built it");
        Bucket::new(endpoint, UrlStyle::Path, self.bucket.clone(), REGION)
            .expect("http URL with a host: we built it")
    }

    /// Every key in the bucket under `prefix`, with its size.
    pub fn list(&self, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let (bucket, creds) = (self.s3_bucket(), self.credentials());
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = bucket.list_objects_v2(Some(&creds));
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGN_FOR);
            let text = crate::block_on(async {
                let r = client.get(url).send().await?.error_for_status()?;
                r.text().await
            })?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| anyhow::anyhow!("list: {e}: {text}"))?;
            out.extend(page.contents.into_iter().map(|c| (c.key, c.size)));
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// Overwrite (or create) `key` with `body`, as anyone holding the key
    /// could.
    pub fn put(&self, key: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let url = self
            .s3_bucket()
            .put_object(Some(&self.credentials()), key)
            .sign(SIGN_FOR);
        crate::block_on(async {
            reqwest::Client::new()
                .put(url)
                .body(body)
                .send()
                .await?
                .error_for_status()
                .map(|_| ())
        })?;
        Ok(())
    }

    /// The bytes of `key`.
    pub fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let url = self
            .s3_bucket()
            .get_object(Some(&self.credentials()), key)
            .sign(SIGN_FOR);
        let bytes = crate::block_on(async {
            let r = reqwest::Client::new()
                .get(url)
                .send()
                .await?
                .error_for_status()?;
            r.bytes().await
        })?;
        Ok(bytes.to_vec())
    }
}

fn rand_bytes() -> [u8; 32] {
    // The rpc secret only keeps other nodes out of a loopback test node.
    let mut out = [0u8; 32];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        ^ u128::from(std::process::id());
    let digest = <sha2::Sha256 as sha2::Digest>::digest(seed.to_le_bytes());
    out.copy_from_slice(&digest);
    out
}
