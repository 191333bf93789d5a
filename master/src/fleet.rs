//! Fleet operations over pinned mTLS: `swarm update`, `rollback`, `status`
//! and `history`.
//!
//! Invariants: every connection presents the master identity, trusts only
//! our CA and pins the updater's CN (`updater@<host>`) and the fingerprint
//! recorded at enrollment; a release is packed once and streamed from its
//! temp file to every host; one host's failure or silence never stalls the
//! others (connect timeout, bounded concurrency); every push and rollback
//! lands in the inventory's audit trail.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pki::wire::{
    AgentHealth, Manifest, OpResponse, OpStatus, Probe, Releases, Timings, UpdaterHealth,
};
use pki::{Bundle, HostName, ServerExpectation};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::cli::{HistoryArgs, OptionalTargets, RollbackArgs, StatusArgs, Targets, UpdateArgs};
use crate::enroll::days_left;
use crate::error::{EXIT_FAILED, Error, Result};
use crate::home::Home;
use crate::inventory::{self, HostRecord, HostStatus, Inventory, PushRecord};
use crate::pack::{self, PackOptions, Release, ReleaseInfo};
use crate::table::{Cell, Color, Table, stdout_color};

/// How long to wait for a TCP+TLS connection before calling a host down.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request limit for `/rollback` (restart plus probes).
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(180);
/// Whole-request limit for `status` calls.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How many hex digits of a sha256 tables show.
const SHORT: usize = 12;

/// The upload limit: a base for the restart and probes, the install hook's
/// own timeout, the release's own probe deadline twice (its probe, and the
/// rollback's if it fails), and the upload itself at a pessimistic 256 KiB/s.
fn upload_timeout(info: &ReleaseInfo) -> Duration {
    Duration::from_secs(
        120 + info.install_timeout_secs.unwrap_or(300)
            + 2 * info.probe_deadline_secs.unwrap_or(0).min(3600)
            + info.size_bytes / (256 * 1024),
    )
}

fn short(sha: &str) -> &str {
    sha.get(..SHORT).unwrap_or(sha)
}

/// Which operation a result belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Op {
    Update,
    Rollback,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Update => "update",
            Op::Rollback => "rollback",
        }
    }
}

/// What happened to a host's agent release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Outcome {
    Updated,
    RolledBack,
    Error,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Updated => "updated",
            Outcome::RolledBack => "rolled-back",
            Outcome::Error => "error",
        }
    }
}

/// What happened to the updater itself (`--include-self`): `ok` once its
/// `/health` reports the pushed release, `failed` when it refused or never
/// did, `skipped` without `--include-self` or when the agent did not update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SelfOutcome {
    Skipped,
    Ok,
    Failed,
}

impl SelfOutcome {
    fn as_str(self) -> &'static str {
        match self {
            SelfOutcome::Skipped => "skipped",
            SelfOutcome::Ok => "ok",
            SelfOutcome::Failed => "failed",
        }
    }

    fn color(self) -> Color {
        match self {
            SelfOutcome::Skipped => Color::Dim,
            SelfOutcome::Ok => Color::Green,
            SelfOutcome::Failed => Color::Red,
        }
    }
}

/// One host's row of an update or rollback.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HostResult {
    pub(crate) host: String,
    /// `address:port` of the updater.
    pub(crate) address: String,
    pub(crate) agent: Outcome,
    #[serde(rename = "self")]
    pub(crate) self_update: SelfOutcome,
    pub(crate) detail: String,
    /// What happened to the updater, when it was updated or failed to be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) self_detail: Option<String>,
    pub(crate) http_status: Option<u16>,
    /// The release now active on the host, when the updater said.
    pub(crate) release: Option<Manifest>,
    pub(crate) probes: Vec<Probe>,
    pub(crate) elapsed_ms: u64,
    /// The updater's own per-phase timings, when it sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timings: Option<Timings>,
}

impl HostResult {
    fn error(rec: &HostRecord, detail: impl Into<String>, started: Instant) -> HostResult {
        HostResult {
            host: rec.host.to_string(),
            address: updater_addr(rec),
            agent: Outcome::Error,
            self_update: SelfOutcome::Skipped,
            detail: detail.into(),
            self_detail: None,
            http_status: None,
            release: None,
            probes: Vec::new(),
            elapsed_ms: elapsed_ms(started),
            timings: None,
        }
    }

    /// Whether this row counts as success for `op`.
    pub(crate) fn ok(&self, op: Op) -> bool {
        match op {
            Op::Update => self.agent == Outcome::Updated && self.self_update != SelfOutcome::Failed,
            Op::Rollback => self.agent == Outcome::RolledBack,
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn updater_addr(rec: &HostRecord) -> String {
    rec.updater_url("")
        .trim_start_matches("https://")
        .to_owned()
}

/// The whole answer of `update`/`rollback`, as `--json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct FleetReport {
    pub(crate) operation: Op,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) release: Option<ReleaseInfo>,
    /// How long packing and compressing the release took (update only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pack_ms: Option<u64>,
    pub(crate) ok: bool,
    pub(crate) hosts: Vec<HostResult>,
}

impl FleetReport {
    pub(crate) fn exit_code(&self) -> u8 {
        if self.ok { 0 } else { EXIT_FAILED }
    }

    pub(crate) fn table(&self) -> Table {
        let mut t = Table::new(vec!["HOST", "ADDRESS", "AGENT", "SELF", "DETAIL"]);
        for r in &self.hosts {
            let color = match (r.agent, self.operation) {
                (Outcome::Error, _) => Color::Red,
                (Outcome::RolledBack, Op::Update) => Color::Yellow,
                _ => Color::Green,
            };
            t.row(vec![
                r.host.clone().into(),
                r.address.clone().into(),
                Cell::colored(r.agent.as_str(), color),
                Cell::colored(r.self_update.as_str(), r.self_update.color()),
                match &r.self_detail {
                    Some(d) => format!("{}; self: {d}", r.detail).into(),
                    None => r.detail.clone().into(),
                },
            ]);
        }
        t
    }
}

/// Resolve `--host …`/`--all` to active inventory rows (usage errors: 2).
fn resolve(inv: &Inventory, hosts: &[String], all: bool) -> Result<Vec<HostRecord>> {
    if all || hosts.is_empty() {
        return inv.active_hosts();
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for h in hosts {
        let host = HostName::new(h.trim())?;
        if !seen.insert(host.clone()) {
            continue;
        }
        match inv.find(&host)? {
            None => {
                return Err(Error::usage(format!(
                    "unknown host {host}: see `swarm list` for enrolled hosts"
                )));
            }
            Some(rec) if rec.status == HostStatus::Decommissioned => {
                return Err(Error::usage(format!(
                    "host {host} is decommissioned and is never targeted; enroll it again to use it"
                )));
            }
            Some(rec) => out.push(rec),
        }
    }
    Ok(out)
}

fn resolve_required(inv: &Inventory, targets: &Targets) -> Result<Vec<HostRecord>> {
    let hosts = resolve(inv, &targets.hosts, targets.all)?;
    if hosts.is_empty() {
        return Err(Error::usage(
            "no active hosts to target: enroll one with `swarm enroll` (see `swarm list`)",
        ));
    }
    Ok(hosts)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the async runtime: {e}")))
}

/// A client for `rec`'s updater, pinned to its CN and recorded fingerprint.
fn updater_client(
    master: &Bundle,
    rec: &HostRecord,
    timeout: Duration,
) -> std::result::Result<reqwest::Client, String> {
    let fp = rec.updater_fingerprint.ok_or_else(|| {
        format!(
            "no updater certificate enrolled: run `swarm enroll --host {} --updater-only --out-dir DIR`",
            rec.host
        )
    })?;
    pki::http_client(master, ServerExpectation::pinned(rec.host.updater_cn(), fp))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()
        .map_err(|e| format!("HTTP client: {}", pki::error_chain(&e)))
}

/// A client for `rec`'s agent, pinned to its CN and recorded fingerprint.
fn agent_client(master: &Bundle, rec: &HostRecord) -> std::result::Result<reqwest::Client, String> {
    pki::http_client(
        master,
        ServerExpectation::pinned(rec.host.to_string(), rec.agent_fingerprint),
    )
    .map_err(|e| e.to_string())?
    .connect_timeout(CONNECT_TIMEOUT)
    .timeout(STATUS_TIMEOUT)
    .build()
    .map_err(|e| format!("HTTP client: {}", pki::error_chain(&e)))
}

/// A reqwest failure in words an operator can act on.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    let cause = std::error::Error::source(e)
        .map(pki::error_chain)
        .unwrap_or_default();
    if e.is_timeout() {
        if e.is_connect() {
            return format!("connect timed out after {}s", CONNECT_TIMEOUT.as_secs());
        }
        return format!("timed out after {}s", timeout.as_secs());
    }
    if e.is_connect() {
        return format!("cannot connect: {cause}");
    }
    if cause.is_empty() {
        e.to_string()
    } else {
        cause
    }
}

/// Turn an updater's answer into a row.
fn interpret(
    op: Op,
    rec: &HostRecord,
    status: reqwest::StatusCode,
    body: &[u8],
    expect_sha: Option<&str>,
    started: Instant,
) -> HostResult {
    let parsed: Option<OpResponse> = serde_json::from_slice(body).ok();
    let Some(resp) = parsed else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let text: String = text.chars().take(200).collect();
        let mut r = HostResult::error(rec, format!("HTTP {status}: {text}"), started);
        r.http_status = Some(status.as_u16());
        return r;
    };
    let probe_error = resp
        .probes
        .iter()
        .find_map(|p| p.error.clone())
        .unwrap_or_default();
    let message = resp.error.clone().unwrap_or(probe_error);
    let (agent, detail) = match (op, resp.status, status.is_success()) {
        (Op::Update, OpStatus::Updated, true) => match (&resp.release, expect_sha) {
            (Some(m), Some(want)) if m.sha256 != want => (
                Outcome::Error,
                format!(
                    "updater reports release {} but {} was pushed",
                    short(&m.sha256),
                    short(want)
                ),
            ),
            (Some(m), _) => (Outcome::Updated, short(&m.sha256).to_owned()),
            (None, _) => (
                Outcome::Updated,
                expect_sha.map(short).unwrap_or("").to_owned(),
            ),
        },
        (Op::Update, OpStatus::RolledBack, _) => (
            Outcome::RolledBack,
            if message.is_empty() {
                "new release failed its health probe; previous release restored".to_owned()
            } else {
                message
            },
        ),
        (Op::Rollback, OpStatus::RolledBack, true) => (
            Outcome::RolledBack,
            match &resp.release {
                Some(m) => format!("now {}", short(&m.sha256)),
                None => "rolled back".to_owned(),
            },
        ),
        (_, OpStatus::Busy, _) => (
            Outcome::Error,
            format!(
                "busy: {}",
                if message.is_empty() {
                    "another operation is running"
                } else {
                    &message
                }
            ),
        ),
        (_, _, _) => {
            let mut m = if message.is_empty() {
                format!("HTTP {status}")
            } else {
                message
            };
            if let Some(stderr) = resp
                .stderr
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let tail: String = stderr
                    .lines()
                    .last()
                    .unwrap_or(stderr)
                    .chars()
                    .take(200)
                    .collect();
                m = format!("{m} (stderr: {tail})");
            }
            (Outcome::Error, m)
        }
    };
    HostResult {
        host: rec.host.to_string(),
        address: updater_addr(rec),
        agent,
        self_update: SelfOutcome::Skipped,
        detail,
        self_detail: None,
        http_status: Some(status.as_u16()),
        release: resp.release,
        probes: resp.probes,
        elapsed_ms: elapsed_ms(started),
        timings: resp.timings,
    }
}

/// Push the release file to one host's `/update`, streaming it; then, with
/// `self_wait` (`--include-self`) and only if the agent updated, to its
/// `/update-self`.
async fn push_one(
    master: Arc<Bundle>,
    rec: HostRecord,
    release: Arc<(std::path::PathBuf, ReleaseInfo)>,
    bar: ProgressBar,
    self_wait: Option<Duration>,
) -> HostResult {
    let started = Instant::now();
    let timeout = upload_timeout(&release.1);
    let client = match updater_client(&master, &rec, timeout) {
        Ok(c) => c,
        Err(e) => return HostResult::error(&rec, e, started),
    };
    let mut r = push_agent(&client, &rec, &release, &bar, timeout, started).await;
    if let Some(wait) = self_wait
        && r.agent == Outcome::Updated
    {
        bar.reset();
        let (outcome, detail) = push_self(&client, &rec, &release, &bar, timeout, wait).await;
        r.self_update = outcome;
        r.self_detail = Some(detail);
        r.elapsed_ms = elapsed_ms(started);
    }
    r
}

/// The multipart body of a push: the digest, the commit, `extra` text
/// fields, and the release file streamed (counted on `bar`).
async fn release_form(
    release: &(std::path::PathBuf, ReleaseInfo),
    bar: &ProgressBar,
    extra: &[(&'static str, &'static str)],
) -> std::result::Result<reqwest::multipart::Form, String> {
    let (path, info) = (&release.0, &release.1);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let counter = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.inc(c.len() as u64);
        }
        chunk
    });
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(stream),
        info.size_bytes,
    )
    .file_name("release.tar.gz")
    .mime_str("application/gzip")
    .map_err(|e| e.to_string())?;
    let mut form = reqwest::multipart::Form::new().text("sha256", info.sha256.clone());
    if let Some(commit) = &info.git_commit {
        form = form.text("git_commit", commit.clone());
    }
    for (k, v) in extra {
        form = form.text(*k, *v);
    }
    Ok(form.part("tarball", part))
}

/// `POST /update-self`, then wait for the updater's `/health` to report
/// the pushed release. A connection that drops before the answer is
/// expected (the updater replaces itself right after answering): it means
/// "maybe", and `/health` decides.
async fn push_self(
    client: &reqwest::Client,
    rec: &HostRecord,
    release: &(std::path::PathBuf, ReleaseInfo),
    bar: &ProgressBar,
    timeout: Duration,
    wait: Duration,
) -> (SelfOutcome, String) {
    let info = &release.1;
    bar.set_message("uploading the updater");
    let form = match release_form(release, bar, &[("confirm_self", "true")]).await {
        Ok(f) => f,
        Err(e) => return (SelfOutcome::Failed, e),
    };
    let sent = client
        .post(rec.updater_url("/update-self"))
        .multipart(form)
        .send()
        .await;
    bar.set_message("switching the updater");
    let answered = match sent {
        Ok(resp) => {
            let status = resp.status();
            resp.bytes().await.ok().map(|b| (status, b))
        }
        // Nothing reached the updater: nothing happened.
        Err(e) if e.is_connect() => return (SelfOutcome::Failed, describe(&e, timeout)),
        Err(_) => None,
    };
    if let Some((status, body)) = answered
        && !status.is_success()
    {
        let r = interpret(Op::Update, rec, status, &body, None, Instant::now());
        return (SelfOutcome::Failed, r.detail);
    }
    let deadline = Instant::now() + wait;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match client
            .get(rec.updater_url("/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => match resp.json::<UpdaterHealth>().await {
                // Until it execs, the old updater answers with `busy`.
                Ok(h) if h.busy.as_deref() == Some("update-self") => {
                    last = "it is still switching".to_owned();
                }
                Ok(h) => match h.release.map(|m| m.sha256) {
                    Some(sha) if sha == info.sha256 => {
                        return (SelfOutcome::Ok, format!("updater {}", short(&sha)));
                    }
                    Some(sha) => last = format!("it reports release {}", short(&sha)),
                    None => last = "it reports no release of its own".to_owned(),
                },
                Err(e) => last = format!("unreadable /health: {}", pki::error_chain(&e)),
            },
            Ok(resp) => last = format!("/health answered HTTP {}", resp.status()),
            Err(e) => last = describe(&e, Duration::from_secs(2)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (
        SelfOutcome::Failed,
        format!(
            "the updater did not report release {} within {}s ({last}); it reverts to its previous binary by itself (see updater/watchdog.log on the host)",
            short(&info.sha256),
            wait.as_secs()
        ),
    )
}

/// `POST /update` with the release file.
async fn push_agent(
    client: &reqwest::Client,
    rec: &HostRecord,
    release: &(std::path::PathBuf, ReleaseInfo),
    bar: &ProgressBar,
    timeout: Duration,
    started: Instant,
) -> HostResult {
    let info = &release.1;
    bar.set_message("uploading");
    let form = match release_form(release, bar, &[]).await {
        Ok(f) => f,
        Err(e) => return HostResult::error(rec, e, started),
    };
    let sent = client
        .post(rec.updater_url("/update"))
        .multipart(form)
        .send()
        .await;
    bar.set_message("installing and probing");
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return HostResult::error(rec, describe(&e, timeout), started),
    };
    let status = resp.status();
    match resp.bytes().await {
        Ok(body) => interpret(Op::Update, rec, status, &body, Some(&info.sha256), started),
        Err(e) => HostResult::error(rec, describe(&e, timeout), started),
    }
}

/// Ask one host's updater to roll back.
async fn rollback_one(master: Arc<Bundle>, rec: HostRecord) -> HostResult {
    let started = Instant::now();
    let client = match updater_client(&master, &rec, ROLLBACK_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return HostResult::error(&rec, e, started),
    };
    let resp = match client.post(rec.updater_url("/rollback")).send().await {
        Ok(r) => r,
        Err(e) => return HostResult::error(&rec, describe(&e, ROLLBACK_TIMEOUT), started),
    };
    let status = resp.status();
    match resp.bytes().await {
        Ok(body) => interpret(Op::Rollback, &rec, status, &body, None, started),
        Err(e) => HostResult::error(&rec, describe(&e, ROLLBACK_TIMEOUT), started),
    }
}

/// Run `task` for every host, at most `parallel` at once, recording each
/// result in the audit trail as it arrives. Results come back in target order.
async fn run_all<F, Fut>(
    inv: &Inventory,
    op: Op,
    hosts: Vec<HostRecord>,
    parallel: usize,
    release: Option<&ReleaseInfo>,
    mut task: F,
) -> Result<Vec<HostResult>>
where
    F: FnMut(HostRecord) -> Fut,
    Fut: std::future::Future<Output = HostResult> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut running = FuturesUnordered::new();
    for (i, rec) in hosts.iter().enumerate() {
        let fut = task(rec.clone());
        let sem = sem.clone();
        let rec = rec.clone();
        let handle = tokio::spawn(async move {
            // The semaphore is never closed, so acquire only fails if it were.
            let _permit = sem.acquire_owned().await;
            fut.await
        });
        running.push(async move {
            let started = Instant::now();
            let result = match handle.await {
                Ok(r) => r,
                Err(e) => HostResult::error(&rec, format!("internal error: {e}"), started),
            };
            (i, result)
        });
    }
    let mut results: Vec<Option<HostResult>> = vec![None; hosts.len()];
    let mut record_err = None;
    while let Some((i, r)) = running.next().await {
        let rec = PushRecord {
            at: inventory::now(),
            operation: op.as_str().to_owned(),
            host: r.host.clone(),
            release_sha256: match op {
                Op::Update => release.map(|i| i.sha256.clone()),
                Op::Rollback => r.release.as_ref().map(|m| m.sha256.clone()),
            },
            git_commit: match op {
                Op::Update => release.and_then(|i| i.git_commit.clone()),
                Op::Rollback => r.release.as_ref().and_then(|m| m.git_commit.clone()),
            },
            outcome: r.agent.as_str().to_owned(),
            // The updater's own outcome rides along in the detail.
            detail: match &r.self_detail {
                Some(d) => format!("{}; self: {} ({d})", r.detail, r.self_update.as_str()),
                None => r.detail.clone(),
            },
        };
        if let Err(e) = inv.record_push(&rec) {
            record_err.get_or_insert(e);
        }
        results[i] = Some(r);
    }
    if let Some(e) = record_err {
        eprintln!("warning: could not record the audit trail: {e:#}");
    }
    Ok(results.into_iter().flatten().collect())
}

fn print_report(report: &FleetReport, json: bool) -> Result<()> {
    if json {
        let doc = serde_json::to_string_pretty(report).map_err(|e| Error::Other(e.to_string()))?;
        println!("{doc}");
    } else {
        print!("{}", report.table().render(stdout_color()));
    }
    Ok(())
}

fn print_release(info: &ReleaseInfo) {
    println!(
        "release {}  {} files  {}  git {}",
        short(&info.sha256),
        info.files,
        pack::human_bytes(info.size_bytes),
        info.git_commit.as_deref().map(short).unwrap_or("-")
    );
    if !info.skipped_secrets.is_empty() {
        println!(
            "left out {} secret(s): {} (list them in swarm.toml [release] include to ship them; .env.local never ships)",
            info.skipped_secrets.len(),
            info.skipped_secrets.join(", ")
        );
    }
}

/// `swarm update`.
pub(crate) fn update(home: &Home, args: &UpdateArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let hosts = resolve_required(&inv, &args.targets)?;
    let packing = Instant::now();
    let spinner = packing_spinner(show_progress(args.json), &args.root);
    let report = |files: u64, bytes: u64| {
        spinner.set_message(format!("{files} files, {}", pack::human_bytes(bytes)));
    };
    let packed = pack::pack_reporting(
        &PackOptions {
            root: args.root.clone(),
            excludes: args.exclude.clone(),
        },
        &pack::PackProgress::new(&report),
    );
    spinner.finish_and_clear();
    let release = packed?;
    let pack_ms = elapsed_ms(packing);
    if args.include_self && !release.info.ships_updater {
        return Err(Error::usage(format!(
            "--include-self: the tree at {} does not ship an executable updater at {} (set [updater] binary in swarm.toml, or put the worker-updater build there and make sure .gitignore/.swarmignore/--exclude do not leave it out); nothing was pushed",
            release.info.root.display(),
            release.info.updater_binary
        )));
    }
    if args.dry_run {
        return dry_run(&release, &hosts, args.json);
    }
    let master = Arc::new(home.master_bundle()?);
    let self_wait = args
        .include_self
        .then(|| Duration::from_secs(args.self_timeout));
    let mut report = push(
        &inv,
        master,
        hosts,
        &release,
        usize::from(args.parallel),
        args.json,
        self_wait,
    )?;
    report.pack_ms = Some(pack_ms);
    if !args.json {
        print_release(&release.info);
    }
    print_report(&report, args.json)?;
    Ok(report.exit_code())
}

/// Whether to draw progress (the packing spinner, the per-host bars): on a
/// terminal, and never with `--json`.
fn show_progress(json: bool) -> bool {
    !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A spinner on stderr while the tree at `root` is packed (hidden when
/// `show` is false): packing a big tree takes seconds before any host is
/// contacted.
fn packing_spinner(show: bool, root: &std::path::Path) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner} packing {prefix}: {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
        .with_prefix(root.display().to_string())
        .with_message("0 files");
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

/// Push a packed release to `hosts`; with `self_wait`, each host's updater
/// too, after its agent updated.
pub(crate) fn push(
    inv: &Inventory,
    master: Arc<Bundle>,
    hosts: Vec<HostRecord>,
    release: &Release,
    parallel: usize,
    json: bool,
    self_wait: Option<Duration>,
) -> Result<FleetReport> {
    let show_bars = show_progress(json);
    let multi = MultiProgress::with_draw_target(if show_bars {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{prefix:<16} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let width = hosts
        .iter()
        .map(|h| h.host.as_str().len())
        .max()
        .unwrap_or(0);
    let shared = Arc::new((release.path().to_owned(), release.info.clone()));
    let rt = runtime()?;
    let results = rt.block_on(async {
        run_all(
            inv,
            Op::Update,
            hosts,
            parallel,
            Some(&release.info),
            |rec| {
                let bar = multi.add(
                    ProgressBar::new(release.info.size_bytes)
                        .with_style(style.clone())
                        .with_prefix(format!("{:<width$}", rec.host.as_str()))
                        .with_message("waiting"),
                );
                let master = master.clone();
                let shared = shared.clone();
                async move {
                    let r = push_one(master, rec, shared, bar.clone(), self_wait).await;
                    bar.finish_and_clear();
                    r
                }
            },
        )
        .await
    })?;
    let _ = multi.clear();
    let ok = results.iter().all(|r| r.ok(Op::Update));
    Ok(FleetReport {
        operation: Op::Update,
        release: Some(release.info.clone()),
        pack_ms: None,
        ok,
        hosts: results,
    })
}

#[derive(Serialize)]
struct DryRun<'a> {
    dry_run: bool,
    release: &'a ReleaseInfo,
    targets: Vec<DryTarget>,
}

#[derive(Serialize)]
struct DryTarget {
    host: String,
    address: String,
}

fn dry_run(release: &Release, hosts: &[HostRecord], json: bool) -> Result<u8> {
    let targets: Vec<DryTarget> = hosts
        .iter()
        .map(|h| DryTarget {
            host: h.host.to_string(),
            address: updater_addr(h),
        })
        .collect();
    if json {
        let doc = serde_json::to_string_pretty(&DryRun {
            dry_run: true,
            release: &release.info,
            targets,
        })
        .map_err(|e| Error::Other(e.to_string()))?;
        println!("{doc}");
        return Ok(0);
    }
    let info = &release.info;
    println!("dry run: nothing was sent");
    println!("root     {}", info.root.display());
    println!("files    {}", info.files);
    println!(
        "size     {} ({} bytes)",
        pack::human_bytes(info.size_bytes),
        info.size_bytes
    );
    println!("sha256   {}", info.sha256);
    println!("git      {}", info.git_commit.as_deref().unwrap_or("-"));
    if !info.skipped_secrets.is_empty() {
        println!("secrets left out: {}", info.skipped_secrets.join(", "));
    }
    println!("targets  {}", targets.len());
    for t in &targets {
        println!("  {}  {}", t.host, t.address);
    }
    Ok(0)
}

/// `swarm rollback`.
pub(crate) fn rollback(home: &Home, args: &RollbackArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let hosts = resolve_required(&inv, &args.targets)?;
    let master = Arc::new(home.master_bundle()?);
    let report = rollback_hosts(&inv, master, hosts, usize::from(args.parallel))?;
    print_report(&report, args.json)?;
    Ok(report.exit_code())
}

/// Roll `hosts` back (used by `rollback` and the demo).
pub(crate) fn rollback_hosts(
    inv: &Inventory,
    master: Arc<Bundle>,
    hosts: Vec<HostRecord>,
    parallel: usize,
) -> Result<FleetReport> {
    let rt = runtime()?;
    let results = rt.block_on(run_all(inv, Op::Rollback, hosts, parallel, None, |rec| {
        rollback_one(master.clone(), rec)
    }))?;
    let ok = results.iter().all(|r| r.ok(Op::Rollback));
    Ok(FleetReport {
        operation: Op::Rollback,
        release: None,
        pack_ms: None,
        ok,
        hosts: results,
    })
}

/// A release as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ReleaseBrief {
    sha256: String,
    pushed_at: String,
    git_commit: Option<String>,
}

/// An RFC 3339 time to whole seconds (as the tables show it).
fn to_seconds(t: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(t, &Rfc3339) {
        Ok(t) => inventory::rfc3339(
            t.to_offset(time::UtcOffset::UTC)
                .replace_nanosecond(0)
                .unwrap_or(t),
        ),
        Err(_) => t.to_owned(),
    }
}

impl From<&Manifest> for ReleaseBrief {
    fn from(m: &Manifest) -> Self {
        ReleaseBrief {
            sha256: m.sha256.clone(),
            pushed_at: to_seconds(&m.pushed_at),
            git_commit: m.git_commit.clone(),
        }
    }
}

/// One host's row of `swarm status`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HostStatusRow {
    host: String,
    address: String,
    updater_reachable: bool,
    updater_version: Option<String>,
    updater_error: Option<String>,
    agent_healthy: bool,
    agent_error: Option<String>,
    active: Option<ReleaseBrief>,
    prev: Option<ReleaseBrief>,
    failed: usize,
    cert_days_left: i64,
}

impl HostStatusRow {
    fn ok(&self) -> bool {
        self.updater_reachable && self.agent_healthy
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: String,
) -> std::result::Result<T, String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| describe(&e, STATUS_TIMEOUT))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| describe(&e, STATUS_TIMEOUT))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        return Err(format!("HTTP {status}: {msg}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
}

async fn status_one(master: Arc<Bundle>, rec: HostRecord) -> HostStatusRow {
    let mut row = HostStatusRow {
        host: rec.host.to_string(),
        address: updater_addr(&rec),
        updater_reachable: false,
        updater_version: None,
        updater_error: None,
        agent_healthy: false,
        agent_error: None,
        active: None,
        prev: None,
        failed: 0,
        cert_days_left: days_left(rec.cert_not_after()),
    };
    let agent = async {
        let client = agent_client(&master, &rec)?;
        let health: AgentHealth = get_json(&client, rec.agent_url("/health")).await?;
        if health.status == "ok" {
            Ok(())
        } else {
            Err(format!("agent reports {}", health.status))
        }
    };
    let updater = async {
        let client = updater_client(&master, &rec, STATUS_TIMEOUT)?;
        let health: UpdaterHealth = get_json(&client, rec.updater_url("/health")).await?;
        let releases: std::result::Result<Releases, String> =
            get_json(&client, rec.updater_url("/releases")).await;
        Ok::<_, String>((health, releases))
    };
    let (agent, updater) = tokio::join!(agent, updater);
    match agent {
        Ok(()) => row.agent_healthy = true,
        Err(e) => row.agent_error = Some(e),
    }
    match updater {
        Ok((health, releases)) => {
            row.updater_reachable = true;
            row.updater_version = Some(health.version);
            match releases {
                Ok(r) => {
                    row.active = r.active.as_ref().map(ReleaseBrief::from);
                    row.prev = r.prev.as_ref().map(ReleaseBrief::from);
                    row.failed = r.failed.len();
                }
                Err(e) => row.updater_error = Some(format!("releases: {e}")),
            }
        }
        Err(e) => row.updater_error = Some(e),
    }
    row
}

fn brief(r: &Option<ReleaseBrief>) -> String {
    match r {
        Some(r) => format!("{} {}", short(&r.sha256), r.pushed_at),
        None => "-".to_owned(),
    }
}

/// `swarm status`.
pub(crate) fn status(home: &Home, args: &StatusArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let OptionalTargets { hosts, all } = &args.targets;
    let hosts = resolve(&inv, hosts, *all)?;
    let master = Arc::new(home.master_bundle()?);
    let rows = status_rows(master, hosts)?;
    print_status(&rows, args.json)?;
    Ok(if rows.iter().all(HostStatusRow::ok) {
        0
    } else {
        EXIT_FAILED
    })
}

/// Query every host's status concurrently (used by `status` and the demo).
pub(crate) fn status_rows(
    master: Arc<Bundle>,
    hosts: Vec<HostRecord>,
) -> Result<Vec<HostStatusRow>> {
    let rt = runtime()?;
    Ok(rt.block_on(async {
        let handles: Vec<_> = hosts
            .into_iter()
            .map(|rec| tokio::spawn(status_one(master.clone(), rec)))
            .collect();
        let mut rows = Vec::new();
        for h in handles {
            if let Ok(row) = h.await {
                rows.push(row);
            }
        }
        rows
    }))
}

#[derive(Serialize)]
struct StatusDoc<'a> {
    ok: bool,
    hosts: &'a [HostStatusRow],
}

pub(crate) fn print_status(rows: &[HostStatusRow], json: bool) -> Result<()> {
    if json {
        let doc = serde_json::to_string_pretty(&StatusDoc {
            ok: rows.iter().all(HostStatusRow::ok),
            hosts: rows,
        })
        .map_err(|e| Error::Other(e.to_string()))?;
        println!("{doc}");
        return Ok(());
    }
    if rows.is_empty() {
        println!("no active hosts: enroll one with `swarm enroll`");
        return Ok(());
    }
    let mut t = Table::new(vec![
        "HOST",
        "UPDATER",
        "AGENT",
        "ACTIVE",
        "PREV",
        "FAILED",
        "CERT DAYS",
        "DETAIL",
    ]);
    for r in rows {
        let updater = if r.updater_reachable {
            Cell::colored(
                format!("ok {}", r.updater_version.as_deref().unwrap_or("")),
                Color::Green,
            )
        } else {
            Cell::colored("unreachable", Color::Red)
        };
        let agent = if r.agent_healthy {
            Cell::colored("healthy", Color::Green)
        } else {
            Cell::colored("unhealthy", Color::Red)
        };
        let detail = [r.updater_error.as_deref(), r.agent_error.as_deref()]
            .iter()
            .flatten()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        t.row(vec![
            r.host.clone().into(),
            updater,
            agent,
            brief(&r.active).into(),
            brief(&r.prev).into(),
            r.failed.to_string().into(),
            r.cert_days_left.to_string().into(),
            detail.into(),
        ]);
    }
    print!("{}", t.render(stdout_color()));
    Ok(())
}

#[derive(Serialize)]
struct HistoryDoc<'a> {
    history: &'a [PushRecord],
}

/// `swarm history`.
pub(crate) fn history(home: &Home, args: &HistoryArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let host = args.host.as_deref().map(HostName::new).transpose()?;
    let records = inv.history(host.as_ref(), args.limit)?;
    if args.json {
        let doc = serde_json::to_string_pretty(&HistoryDoc { history: &records })
            .map_err(|e| Error::Other(e.to_string()))?;
        println!("{doc}");
        return Ok(0);
    }
    if records.is_empty() {
        println!("no pushes recorded yet");
        return Ok(0);
    }
    let mut t = Table::new(vec!["AT", "HOST", "OP", "RELEASE", "OUTCOME", "DETAIL"]);
    for r in &records {
        let color = match r.outcome.as_str() {
            "updated" => Color::Green,
            "rolled-back" if r.operation == "rollback" => Color::Green,
            "rolled-back" => Color::Yellow,
            _ => Color::Red,
        };
        t.row(vec![
            inventory::rfc3339(r.at).into(),
            r.host.clone().into(),
            r.operation.clone().into(),
            r.release_sha256
                .as_deref()
                .map(short)
                .unwrap_or("-")
                .to_owned()
                .into(),
            Cell::colored(r.outcome.clone(), color),
            r.detail.clone().into(),
        ]);
    }
    print!("{}", t.render(stdout_color()));
    Ok(0)
}
