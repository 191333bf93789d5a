//! Worker fixture for end-to-end tests: a real `worker-updater` on
//! `127.0.0.1:0` with a temp install dir, the master-authenticated client to
//! drive it, and helpers to build release tarballs and push them.
//!
//! ```no_run
//! # async fn demo() {
//! use tests::{TestPki, worker::{Worker, WorkerOptions, ReleaseTree}};
//! let pki = TestPki::new();
//! let w = Worker::start(&pki, "w1", WorkerOptions::default());
//! let client = w.master_client(&pki);
//! let tree = ReleaseTree::new().file("hello.txt", b"hi");
//! let (code, body) = w.push(&client, &tree.tarball()).await;
//! assert_eq!(code, 200, "{body:?}");
//! # }
//! ```
//!
//! Every worker gets a loopback port for its agent in advance; the updater's
//! default agent command is the built `worker-agent` listening there, so a
//! tree without `swarm.toml` runs the reference agent. The updater's stderr
//! goes to `<tmp>/updater.log` (see [`Worker::log`]) for post-mortems.
//! Dropping a [`Worker`] kills the updater and the agent it spawned.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pki::wire::{AgentHealth, OpResponse, Releases, UpdaterHealth};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::{ChildGuard, Port, TestPki, WorkerBundles, bin, eventually, free_port};

/// How long an updater may take to print `listening on …`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Knobs for [`Worker::start`]. The defaults keep probes short so broken
/// releases fail fast in tests, with a deadline a little above the
/// updater's default (2.5 s) so that agents starting on a host loaded by
/// the whole suite still pass.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Port for the agent; `None` picks a free loopback port.
    pub agent_port: Option<u16>,
    /// `--agent-cmd`; `None` means `<worker-agent> --listen 127.0.0.1:<agent_port>`.
    pub agent_cmd: Option<String>,
    /// Probe deadline, ms (`--probe-deadline-ms`).
    pub probe_deadline_ms: u64,
    /// Most probe attempts, 0 for no limit (`--probe-attempts`).
    pub probe_attempts: u32,
    /// First backoff between probe attempts, ms (`--probe-backoff-ms`).
    pub probe_backoff_ms: u64,
    /// Largest backoff between probe attempts, ms (`--probe-max-backoff-ms`).
    pub probe_max_backoff_ms: u64,
    /// Timeout of one probe request, ms (`--probe-timeout-ms`).
    pub probe_timeout_ms: u64,
    /// Grace between SIGTERM and SIGKILL for the agent, ms (`--stop-grace-ms`).
    pub stop_grace_ms: u64,
    /// Extra command-line arguments for the updater.
    pub extra_args: Vec<String>,
    /// Extra environment variables for the updater.
    pub env: Vec<(String, String)>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            agent_port: None,
            agent_cmd: None,
            probe_deadline_ms: 4000,
            probe_attempts: 0,
            probe_backoff_ms: 20,
            probe_max_backoff_ms: 200,
            probe_timeout_ms: 1000,
            stop_grace_ms: 3000,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A running `worker-updater` with its own install dir and bundles.
pub struct Worker {
    /// The worker's enrolled bundles (agent and updater).
    pub bundles: WorkerBundles,
    /// Holds `install/` and `updater.log`.
    pub tmp: TempDir,
    /// `--install-dir`.
    pub install_dir: PathBuf,
    /// The updater's bound address.
    pub addr: SocketAddr,
    /// The agent's loopback port.
    pub agent_port: u16,
    /// The options it was started with (reused by [`Worker::restart`]).
    pub options: WorkerOptions,
    /// `--listen` (port 0 unless started with [`Worker::start_with`]).
    listen: SocketAddr,
    updater: Option<ChildGuard>,
    /// Ports reserved for this worker, held as long as it lives.
    ports: Vec<Port>,
}

impl Worker {
    /// Enroll `host` in `pki` and start its updater.
    pub fn start(pki: &TestPki, host: &str, options: WorkerOptions) -> Worker {
        Worker::start_with(
            pki.worker(host),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            options,
        )
    }

    /// Start an updater holding `bundles` issued elsewhere (e.g. by `swarm
    /// enroll`), listening on `listen` (port 0 picks one).
    pub fn start_with(
        bundles: WorkerBundles,
        listen: SocketAddr,
        options: WorkerOptions,
    ) -> Worker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let install_dir = tmp.path().join("install");
        std::fs::create_dir_all(&install_dir).expect("mkdir install");
        let mut ports = Vec::new();
        let agent_port = options.agent_port.unwrap_or_else(|| {
            let p = free_port();
            let n = p.get();
            ports.push(p);
            n
        });
        let mut w = Worker {
            bundles,
            tmp,
            install_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent_port,
            options,
            listen,
            updater: None,
            ports,
        };
        w.spawn_updater();
        w
    }

    /// Keep `port` reserved as long as this worker lives.
    pub fn hold(&mut self, port: Port) {
        self.ports.push(port);
    }

    /// The default agent command: the built reference agent on our port.
    pub fn default_agent_cmd(&self) -> String {
        format!(
            "{} --listen 127.0.0.1:{}",
            bin("worker-agent").display(),
            self.agent_port
        )
    }

    /// The agent's health URL.
    pub fn agent_url(&self) -> String {
        format!("https://127.0.0.1:{}/health", self.agent_port)
    }

    /// The updater command line this worker runs with.
    pub fn updater_command(&self) -> Command {
        let o = &self.options;
        let mut cmd = Command::new(bin("worker-updater"));
        cmd.arg("--listen")
            .arg(self.listen.to_string())
            .arg("--updater-dir")
            .arg(&self.bundles.updater_dir)
            .arg("--agent-dir")
            .arg(&self.bundles.agent_dir)
            .arg("--install-dir")
            .arg(&self.install_dir)
            .arg("--agent-cmd")
            .arg(
                o.agent_cmd
                    .clone()
                    .unwrap_or_else(|| self.default_agent_cmd()),
            )
            .arg("--agent-url")
            .arg(self.agent_url())
            .arg("--probe-deadline-ms")
            .arg(o.probe_deadline_ms.to_string())
            .arg("--probe-attempts")
            .arg(o.probe_attempts.to_string())
            .arg("--probe-backoff-ms")
            .arg(o.probe_backoff_ms.to_string())
            .arg("--probe-max-backoff-ms")
            .arg(o.probe_max_backoff_ms.to_string())
            .arg("--probe-timeout-ms")
            .arg(o.probe_timeout_ms.to_string())
            .arg("--stop-grace-ms")
            .arg(o.stop_grace_ms.to_string())
            .args(&o.extra_args)
            .env("RUST_LOG", "info,worker_updater=debug");
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn_updater(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("updater.log"))
            .expect("open updater.log");
        let mut cmd = self.updater_command();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut guard = ChildGuard::spawn(&mut cmd);
        let stdout = guard.0.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!(
                "worker-updater did not announce its address ({e}); log:\n{}",
                self.log()
            ),
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log:\n{}", self.log()));
        self.addr = addr;
        self.updater = Some(guard);
    }

    /// The updater's pid.
    pub fn updater_pid(&self) -> u32 {
        self.updater
            .as_ref()
            .map(ChildGuard::pid)
            .expect("updater running")
    }

    /// Kill the updater with SIGKILL (the agent it spawned keeps running).
    pub fn kill_updater(&mut self) {
        drop(self.updater.take());
    }

    /// SIGTERM the updater and wait for it to exit; its exit status.
    pub fn terminate_updater(&mut self) -> std::process::ExitStatus {
        let mut guard = self.updater.take().expect("updater running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(guard.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM the updater");
        eventually(Duration::from_secs(30), "the updater to exit", || {
            guard.0.try_wait().expect("try_wait")
        })
    }

    /// Start the updater again on the same install dir (new port).
    pub fn restart(&mut self) {
        self.kill_updater();
        self.spawn_updater();
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A client with the master identity, pinned to this updater's CN.
    pub fn master_client(&self, pki: &TestPki) -> reqwest::Client {
        client_for(&pki.master(), &self.bundles.host.updater_cn())
    }

    /// A client with the agent's identity (for 403 tests), pinned to the updater.
    pub fn agent_identity_client(&self) -> reqwest::Client {
        let b = pki::Bundle::load(&self.bundles.agent_dir).expect("agent bundle");
        client_for(&b, &self.bundles.host.updater_cn())
    }

    /// A client with the updater's own identity, pinned to the agent's CN
    /// (what the updater itself uses to probe).
    pub fn agent_probe_client(&self) -> reqwest::Client {
        let b = pki::Bundle::load(&self.bundles.updater_dir).expect("updater bundle");
        client_for(&b, self.bundles.host.as_str())
    }

    /// Push `tgz` with its correct digest.
    pub async fn push(&self, client: &reqwest::Client, tgz: &[u8]) -> (u16, OpResponse) {
        self.push_with_digest(client, tgz, &sha256_hex(tgz)).await
    }

    /// Push `tgz` claiming digest `sha256`.
    pub async fn push_with_digest(
        &self,
        client: &reqwest::Client,
        tgz: &[u8],
        sha256: &str,
    ) -> (u16, OpResponse) {
        let resp = client
            .post(self.url("/update"))
            .multipart(release_form(tgz, sha256, &[]))
            .send()
            .await
            .expect("POST /update");
        op_response(resp).await
    }

    /// `POST /rollback`.
    pub async fn rollback(&self, client: &reqwest::Client) -> (u16, OpResponse) {
        let resp = client
            .post(self.url("/rollback"))
            .send()
            .await
            .expect("POST /rollback");
        op_response(resp).await
    }

    /// `GET /releases`.
    pub async fn releases(&self, client: &reqwest::Client) -> Releases {
        let resp = client
            .get(self.url("/releases"))
            .send()
            .await
            .expect("GET /releases");
        assert_eq!(resp.status(), 200, "GET /releases");
        resp.json().await.expect("releases body")
    }

    /// `GET /health` on the updater.
    pub async fn health(&self, client: &reqwest::Client) -> UpdaterHealth {
        let resp = client
            .get(self.url("/health"))
            .send()
            .await
            .expect("GET /health");
        assert_eq!(resp.status(), 200, "GET /health");
        resp.json().await.expect("health body")
    }

    /// The agent's `/health`, or `None` when it does not answer 200.
    pub async fn agent_health(&self) -> Option<AgentHealth> {
        let resp = self
            .agent_probe_client()
            .get(self.agent_url())
            .send()
            .await
            .ok()?;
        if resp.status() != 200 {
            return None;
        }
        resp.json().await.ok()
    }

    /// Wait until the agent reports the release with `sha256`.
    pub async fn wait_agent_release(&self, sha256: &str) -> AgentHealth {
        crate::eventually_async(
            Duration::from_secs(15),
            "agent reporting release",
            || async {
                self.agent_health()
                    .await
                    .filter(|h| h.release.as_ref().is_some_and(|m| m.sha256 == sha256))
            },
        )
        .await
    }

    /// Where `current` points, relative, or `None` when it is missing.
    pub fn current_target(&self) -> Option<PathBuf> {
        std::fs::read_link(self.install_dir.join("current")).ok()
    }

    /// The sha256 in the manifest of `releases/<slot>`, if any.
    pub fn slot_sha(&self, slot: &str) -> Option<String> {
        let text = std::fs::read_to_string(
            self.install_dir
                .join("releases")
                .join(slot)
                .join(pki::wire::MANIFEST_FILE),
        )
        .ok()?;
        let m: pki::wire::Manifest = serde_json::from_str(&text).ok()?;
        Some(m.sha256)
    }

    /// The pid in `agent.pid`, if it names one.
    pub fn agent_pid(&self) -> Option<i32> {
        read_pidfile(&self.install_dir.join("agent.pid"))
    }

    /// The updater's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("updater.log")).unwrap_or_default()
    }

    /// The agent's spawn log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.install_dir.join("agent.spawn.log")).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill_updater();
        // The agent runs in its own process group and outlives the updater
        // by design; kill it so tests leave nothing behind. One the updater
        // spawned (pidfile start time matches) goes with its whole group,
        // so a wrapper script's children do too.
        if let Some(pgid) = spawned_agent_group(&self.install_dir.join("agent.pid")) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        } else if let Some(pid) = self.agent_pid()
            && is_agent_process(pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The process group of the agent the updater's JSON pidfile names, when
/// that process is still the one it recorded (pid and start time) and leads
/// its own group.
fn spawned_agent_group(pidfile: &Path) -> Option<i32> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pidfile).ok()?).ok()?;
    let pid = i32::try_from(v.get("pid")?.as_i64()?).ok()?;
    let recorded = v.get("start_time")?.as_u64()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let pgrp: i32 = fields.get(5 - 3)?.parse().ok()?;
    let start: u64 = fields.get(22 - 3)?.parse().ok()?;
    (start == recorded && pgrp == pid).then_some(pid)
}

/// Whether `pid` runs the reference agent (so cleanup never kills a stranger).
fn is_agent_process(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|a0| a0.ends_with(b"worker-agent"))
        })
        .unwrap_or(false)
}

/// The pid in a pidfile: the updater's JSON (`{"pid":…}`) or a bare number.
pub fn read_pidfile(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(pid) = v.get("pid").and_then(serde_json::Value::as_i64)
    {
        return i32::try_from(pid).ok();
    }
    text.trim().parse().ok()
}

/// A reqwest client presenting `bundle`, expecting a server with CN `cn`.
pub fn client_for(bundle: &pki::Bundle, cn: &str) -> reqwest::Client {
    pki::http_client(bundle, pki::ServerExpectation::cn(cn))
        .expect("client config")
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

async fn op_response(resp: reqwest::Response) -> (u16, OpResponse) {
    let code = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {code}: body {text:?} is not an OpResponse: {e}"));
    (code, body)
}

/// The multipart body of `/update` and `/update-self`: `sha256`, the
/// `extra` text fields, then the `tarball`, as `curl -F` would send them.
pub fn release_form(tgz: &[u8], sha256: &str, extra: &[(&str, &str)]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text("sha256", sha256.to_owned());
    for (k, v) in extra {
        form = form.text(k.to_string(), v.to_string());
    }
    form.part(
        "tarball",
        reqwest::multipart::Part::bytes(tgz.to_vec())
            .file_name("tree.tgz")
            .mime_str("application/gzip")
            .expect("mime"),
    )
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A release tree built in memory, turned into a gzip tarball.
#[derive(Clone, Debug, Default)]
pub struct ReleaseTree {
    files: Vec<(String, Vec<u8>, u32)>,
}

impl ReleaseTree {
    pub fn new() -> ReleaseTree {
        ReleaseTree::default()
    }

    /// Add a regular file (mode 0644).
    pub fn file(self, path: &str, contents: &[u8]) -> ReleaseTree {
        self.file_mode(path, contents, 0o644)
    }

    /// Add a regular file with `mode`.
    pub fn file_mode(mut self, path: &str, contents: &[u8], mode: u32) -> ReleaseTree {
        self.files.push((path.to_owned(), contents.to_vec(), mode));
        self
    }

    /// Add a `swarm.toml` whose agent is the reference agent on `port`
    /// with extra arguments (e.g. `["--health-cmd", "false"]`).
    pub fn reference_agent(self, port: u16, extra: &[&str]) -> ReleaseTree {
        let mut cmd = vec![
            bin("worker-agent").display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        cmd.extend(extra.iter().map(|s| (*s).to_owned()));
        self.agent_command(&cmd, port)
    }

    /// Add a `swarm.toml` running `command` as the agent, probed on `port`.
    pub fn agent_command(self, command: &[String], port: u16) -> ReleaseTree {
        let toml = format!(
            "[agent]\ncommand = {}\nhealth_url = \"https://127.0.0.1:{port}/health\"\n",
            toml_array(command)
        );
        self.file("swarm.toml", toml.as_bytes())
    }

    /// The gzip tarball (regular files, with their parent directories implied).
    pub fn tarball(&self) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, contents, mode) in &self.files {
            let mut h = tar::Header::new_gnu();
            h.set_size(contents.len() as u64);
            h.set_mode(*mode);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, contents.as_slice())
                .expect("append to tarball");
        }
        let gz = tar.into_inner().expect("finish tar");
        gz.finish().expect("finish gzip")
    }
}

/// A TOML array of strings.
pub fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// Raw tar building, byte by byte, for tarballs `tar::Builder` refuses to
/// write (`..`, absolute paths, escaping links, devices, …).
pub mod raw {
    use super::Write;

    /// One 512-byte ustar header block with a correct checksum.
    pub fn header(name: &[u8], typeflag: u8, size: u64, mode: u32, linkname: &[u8]) -> [u8; 512] {
        let mut h = [0u8; 512];
        assert!(
            name.len() <= 100 && linkname.len() <= 100,
            "use pax for long names"
        );
        h[..name.len()].copy_from_slice(name);
        put_octal(&mut h[100..108], u64::from(mode));
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        put_octal(&mut h[124..136], size);
        put_octal(&mut h[136..148], 0);
        h[156] = typeflag;
        h[157..157 + linkname.len()].copy_from_slice(linkname);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }

    fn put_octal(field: &mut [u8], v: u64) {
        let s = format!("{v:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }

    /// An entry: header plus data padded to 512 bytes.
    pub fn entry(name: &[u8], typeflag: u8, data: &[u8], mode: u32, linkname: &[u8]) -> Vec<u8> {
        let mut out = header(name, typeflag, data.len() as u64, mode, linkname).to_vec();
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
        out
    }

    /// A regular file entry.
    pub fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
        entry(name, b'0', data, 0o644, b"")
    }

    /// Concatenate entries, add the end-of-archive blocks, gzip it.
    pub fn tgz(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut tar: Vec<u8> = entries.concat();
        tar.extend(std::iter::repeat_n(0u8, 1024));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        gz.finish().expect("gzip finish")
    }
}

/// The built `worker-updater`, debug info stripped when `strip` is there
/// (a debug build is ~150 MB, too slow to ship in every self-update test),
/// for release trees that ship an updater.
pub fn shippable_updater() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("worker-updater");
        std::fs::copy(bin("worker-updater"), &copy).expect("copy worker-updater");
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&copy)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::fs::read(&copy).expect("read the updater copy")
    })
}

/// Wait until `pid` is gone (or a zombie).
pub fn wait_dead(pid: i32, what: &str) {
    eventually(Duration::from_secs(15), what, || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        match stat {
            None => Some(()),
            Some(s) => s
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .filter(|c| *c == 'Z' || *c == 'X')
                .map(|_| ()),
        }
    });
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|c| c != 'Z' && c != 'X')
}
