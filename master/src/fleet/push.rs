//! `swarm update`: scan the tree once, then pack it straight into every
//! target's `/update` (a delta where the host's release allows; with
//! `--include-self`, the whole release to its `/update-self` too), or
//! show what would be pushed (`--dry-run`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar};
use pki::wire::{Releases, UpdaterHealth};
use serde::Serialize;

use super::client::{Master, STATUS_TIMEOUT};
use super::delta::Deltas;
use super::history::Recorder;
use super::progress::{Bars, packing_spinner, show_progress};
use super::report::RolloutDoc;
use super::report::{FleetReport, HostResult, SelfOutcome, interpret};
use super::rollout;
use super::said::{self, HEALTH_CAP, RELEASES_CAP};
use super::upload::{Payload, Upload, send, upload};
use super::via_store::{Fetched, ViaStore};
use super::{elapsed_ms, fan_out, resolve_required, runtime, short};
use crate::cli::UpdateArgs;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::{HostRecord, Op, Outcome};
use crate::output::{self, outln};
use crate::pack::{self, PackOptions, ReleaseInfo, Tree};

/// The upload limit: a base for the restart and probes, the install hook's
/// own timeout, the release's own probe deadline twice (its probe, and the
/// rollback's if it fails), and the upload itself at a pessimistic 256 KiB/s.
fn upload_timeout(info: &ReleaseInfo) -> Duration {
    Duration::from_secs(
        120 + info.install_timeout_secs.unwrap_or(300)
            + 2 * info.probe_deadline_secs.unwrap_or(0).min(3600)
            + info.tree_bytes / (256 * 1024),
    )
}

/// `swarm update`.
pub(crate) fn update(home: &Home, args: &UpdateArgs) -> Result<u8> {
    // Seeded while the tree is scanned, not in the first handshake.
    pki::warm_random();
    let mut inv = home.inventory()?;
    let hosts = resolve_required(&inv, &args.targets)?;
    let packing = Instant::now();
    let spinner = packing_spinner(show_progress(args.json), &args.root);
    let report = |files: u64, bytes: u64| {
        spinner.set_message(format!("{files} files, {}", HumanBytes(bytes)));
    };
    let scanned = pack::scan(
        &PackOptions {
            root: args.root.clone(),
            excludes: args.exclude.clone(),
            cache_dir: Some(home.root().join("cache")),
        },
        &pack::PackProgress::new(&report),
    );
    spinner.finish_and_clear();
    let release = Arc::new(scanned?);
    let pack_ms = elapsed_ms(packing);
    if args.include_self && !release.info.ships_updater {
        return Err(Error::usage(format!(
            "--include-self: the tree at {} does not ship an executable updater at {} (set [updater] binary in swarm.toml, or put the worker-updater build there and make sure .gitignore/.swarmignore/--exclude do not leave it out); nothing was pushed",
            release.info.root.display(),
            release.info.updater_binary
        )));
    }
    let plan = rollout::plan(
        &args.rollout,
        &release.info.rollout,
        hosts,
        rollout::interaction(),
    )?;
    if args.dry_run {
        return dry_run(&release, &plan, args.json);
    }
    // One signature (one seq) for every host of this run (issue 15).
    let signature =
        crate::signing::sign_release(home, &mut inv, &release.info.release_id, &args.signing)?;
    // Published before any worker is contacted (issue 16): a store that
    // fails stops the command here.
    let via_store =
        super::via_store::prepare(home, &release, args.direct, args.fallback_direct)?.map(Arc::new);
    let master = Arc::new(Master::for_home(home)?.with_signature(signature));
    let self_wait = args
        .include_self
        .then(|| Duration::from_secs(args.self_timeout));
    let deltas = Arc::new(Deltas::new(home, release.clone(), !args.full));
    let rollout_id = plan.staged.then(rollout::new_id);
    let mut recorder = Recorder::new(inv, Op::Update, Some(release.info.clone()));
    if let Some(id) = &rollout_id {
        recorder = recorder.with_rollout(id);
    }
    let pusher = Pusher {
        master,
        release: release.clone(),
        recorder: Arc::new(recorder),
        parallel: usize::from(args.parallel),
        json: args.json,
        self_wait,
        stop: Arc::new(AtomicBool::new(false)),
        deltas,
        via_store: via_store.clone(),
    };
    let (mut report, interrupted) = match &rollout_id {
        Some(id) => staged(&pusher, plan, id)?,
        None => {
            let hosts = plan.waves.into_iter().flatten().collect::<Vec<_>>();
            let waves = vec![hosts.iter().map(|h| h.host.to_string()).collect()];
            let mut report = push(&pusher, hosts)?;
            for r in &mut report.hosts {
                r.wave = Some(1);
            }
            report.rollout = Some(RolloutDoc::single(waves, &report.hosts));
            (report, false)
        }
    };
    report.pack_ms = Some(pack_ms);
    report.release = Some(release.info_now());
    report.store = via_store
        .as_ref()
        .and_then(|v| serde_json::to_value(&v.published).ok());
    if !args.json {
        print_release(&release.info_now())?;
    }
    report.print(args.json)?;
    if interrupted {
        return Ok(rollout::EXIT_INTERRUPTED);
    }
    Ok(report.exit_code())
}

/// A staged rollout by `plan` (rollout `id`): its report, and whether
/// Ctrl-C stopped it.
fn staged(pusher: &Pusher, plan: rollout::Plan, id: &str) -> Result<(FleetReport, bool)> {
    let (rows, doc) = runtime()?.block_on(rollout::run(pusher, &plan, id));
    pusher.recorder.finish();
    let mut report = FleetReport::new(Op::Update, Some(pusher.release.info.clone()), rows);
    let interrupted = doc.interrupted;
    report.rollout = Some(doc);
    Ok((report, interrupted))
}

/// Push the release to `hosts`, recording each host's outcome as it
/// arrives; with `self_wait`, each host's updater too, after its agent
/// updated.
fn push(pusher: &Pusher, hosts: Vec<HostRecord>) -> Result<FleetReport> {
    let results = runtime()?.block_on(pusher.wave(hosts, None));
    pusher.recorder.finish();
    Ok(FleetReport::new(
        Op::Update,
        Some(pusher.release.info.clone()),
        results,
    ))
}

/// Everything one push needs, once per run; a staged rollout
/// (`super::rollout`) calls [`Pusher::wave`] once per wave.
pub(super) struct Pusher {
    pub(super) master: Arc<Master>,
    pub(super) release: Arc<Tree>,
    pub(super) recorder: Arc<Recorder>,
    pub(super) parallel: usize,
    pub(super) json: bool,
    pub(super) self_wait: Option<Duration>,
    /// Set on Ctrl-C during a rollout: pushes not yet started are skipped.
    pub(super) stop: Arc<AtomicBool>,
    /// The deltas of this release, one per base (issue 12).
    pub(super) deltas: Arc<Deltas>,
    /// The release as published to the store, when it goes that way (issue 16).
    pub(super) via_store: Option<Arc<ViaStore>>,
}

impl Pusher {
    /// Push to `hosts` (at most `parallel` at once), recording each host's
    /// outcome, tagged with `wave`, as it arrives; one result per host, in
    /// target order.
    pub(super) async fn wave(&self, hosts: Vec<HostRecord>, wave: Option<u32>) -> Vec<HostResult> {
        let width = hosts
            .iter()
            .map(|h| h.host.as_str().len())
            .max()
            .unwrap_or(0);
        let bars = Bars::new(
            show_progress(self.json),
            width,
            self.release.info.tree_bytes,
        );
        let started = Instant::now();
        let recorder = &self.recorder;
        let results = fan_out(
            hosts,
            self.parallel,
            |rec| {
                let bar = bars.add(rec.host.as_str());
                push_one(
                    self.master.clone(),
                    rec,
                    self.release.clone(),
                    bar,
                    self.self_wait,
                    self.recorder.clone(),
                    (
                        wave,
                        self.stop.clone(),
                        self.deltas.clone(),
                        self.via_store.clone(),
                    ),
                )
            },
            |rec, why| {
                let mut r = HostResult::error(rec, why, started);
                r.wave = wave;
                r
            },
            // A task that died before it could record its host.
            |r| {
                if r.recorded.is_none() {
                    recorder.record(r);
                }
            },
        )
        .await;
        bars.clear();
        results
    }
}

/// Push the release file to one host's `/update`, streaming it; then, with
/// `self_wait` (`--include-self`) and only if the agent updated, to its
/// `/update-self`. Tagged with its wave (a delta when `deltas` has one for
/// its base); skipped when `stop` is set
/// before it starts.
async fn push_one(
    master: Arc<Master>,
    rec: HostRecord,
    release: Arc<Tree>,
    bar: ProgressBar,
    self_wait: Option<Duration>,
    recorder: Arc<Recorder>,
    (wave, stop, deltas, via_store): (
        Option<u32>,
        Arc<AtomicBool>,
        Arc<Deltas>,
        Option<Arc<ViaStore>>,
    ),
) -> HostResult {
    let started = Instant::now();
    if stop.load(Ordering::SeqCst) {
        bar.finish_and_clear();
        let mut r = HostResult::skipped(&rec, "interrupted (Ctrl-C) before its push started");
        r.wave = wave;
        recorder.record(&mut r);
        return r;
    }
    let timeout = upload_timeout(&release.info);
    let client = master.ready_client(&rec, timeout).await;
    let r = match client {
        Ok(client) => {
            let mut r = push_agent(
                &master,
                &client,
                &rec,
                &release,
                (&deltas, via_store.as_deref()),
                &bar,
                timeout,
                started,
            )
            .await;
            r.wave = wave;
            // The agent's outcome is history now, whatever happens next.
            recorder.record(&mut r);
            if let Some(wait) = self_wait
                && matches!(r.agent, Outcome::Updated | Outcome::Unchanged)
            {
                bar.reset();
                let (outcome, detail) =
                    push_self(&master, &client, &rec, &release, &bar, timeout, wait).await;
                r.self_update = outcome;
                r.self_detail = Some(detail);
                r.elapsed_ms = elapsed_ms(started);
                recorder.record(&mut r);
            }
            r
        }
        Err(e) => {
            let mut r = HostResult::error(&rec, e, started);
            r.wave = wave;
            recorder.record(&mut r);
            r
        }
    };
    bar.finish_and_clear();
    r
}

/// `POST /update-self`, then wait for the updater's `/health` to report
/// the pushed release. A connection that drops before the answer is
/// expected (the updater replaces itself right after answering): it means
/// "maybe", and `/health` decides.
async fn push_self(
    master: &Master,
    client: &reqwest::Client,
    rec: &HostRecord,
    release: &Arc<Tree>,
    bar: &ProgressBar,
    timeout: Duration,
    wait: Duration,
) -> (SelfOutcome, String) {
    let info = &release.info;
    bar.set_message("uploading the updater");
    bar.set_length(info.tree_bytes);
    let up = Upload {
        path: "/update-self",
        payload: Payload::Whole,
        fields: vec![("confirm_self", "true".to_owned())],
        bar,
    };
    // A connection that drops before the answer means "maybe": `/health`
    // decides; one that never reached the updater changed nothing.
    let answered = match send(master, client, rec, release, up, timeout).await {
        Ok(answer) => Some(answer),
        Err(e) if !e.reached => return (SelfOutcome::Failed, e.why),
        Err(_) => None,
    };
    bar.set_message("switching the updater");
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
            Ok(resp) if resp.status().is_success() => {
                match said::read_json::<UpdaterHealth>(resp, HEALTH_CAP).await {
                    // Until it execs, the old updater answers with `busy`.
                    Ok(h) if h.busy.as_deref() == Some("update-self") => {
                        last = "it is still switching".to_owned();
                    }
                    Ok(h) => match h.release.map(|m| m.id().to_owned()) {
                        Some(sha) if sha == info.release_id => {
                            return (SelfOutcome::Ok, format!("updater {}", short(&sha)));
                        }
                        Some(sha) => last = format!("it reports release {}", short(&sha)),
                        None => last = "it reports no release of its own".to_owned(),
                    },
                    Err(e) => last = format!("unreadable /health: {e}"),
                }
            }
            Ok(resp) => last = format!("/health answered HTTP {}", resp.status()),
            Err(e) => last = master.describe(&e, Duration::from_secs(2)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (
        SelfOutcome::Failed,
        format!(
            "the updater did not report release {} within {}s ({last}); it reverts to its previous binary by itself (see updater/watchdog.log on the host)",
            short(&info.release_id),
            wait.as_secs()
        ),
    )
}

/// `POST /update` with the release: only a delta when the host's live
/// release is one the master kept the index of (issue 12), the whole
/// release otherwise or when the host refuses the delta's base (412).
#[allow(clippy::too_many_arguments)]
async fn push_agent(
    master: &Master,
    client: &reqwest::Client,
    rec: &HostRecord,
    release: &Arc<Tree>,
    (deltas, via_store): (&Deltas, Option<&ViaStore>),
    bar: &ProgressBar,
    timeout: Duration,
    started: Instant,
) -> HostResult {
    let info = &release.info;
    bar.set_message("checking");
    let releases = live_releases(client, rec).await;
    if let Some(active) = releases
        .as_ref()
        .and_then(|r| r.active.clone())
        .filter(|m| m.release_id.as_deref() == Some(&info.release_id))
    {
        return HostResult::unchanged(rec, active, started);
    }
    let mut fallback = None;
    if let Some(vs) = via_store {
        bar.set_message("fetching from the store");
        let base = releases
            .as_ref()
            .and_then(|r| r.active.as_ref())
            .and_then(|m| m.release_id.clone())
            .and_then(|id| Some((id.clone(), deltas.kept_index(&id)?)));
        match vs.push(master, client, rec, base, timeout, started).await {
            Fetched::Done(r) => return *r,
            Fetched::Direct(why) => fallback = Some(why),
        }
    }
    let mut r = push_agent_direct(
        master, client, rec, release, deltas, releases, bar, timeout, started,
    )
    .await;
    if let Some(why) = fallback {
        r.detail = format!("{} (pushed directly: {why})", r.detail);
    }
    r
}

/// [`push_agent`] over mTLS: a delta or the whole release.
#[allow(clippy::too_many_arguments)]
async fn push_agent_direct(
    master: &Master,
    client: &reqwest::Client,
    rec: &HostRecord,
    release: &Arc<Tree>,
    deltas: &Deltas,
    releases: Option<Releases>,
    bar: &ProgressBar,
    timeout: Duration,
    started: Instant,
) -> HostResult {
    let info = &release.info;
    // What the host keeps, newest first (an older updater lists only its
    // active and prev releases).
    let kept: Vec<String> = match &releases {
        Some(r) if !r.kept.is_empty() => {
            r.kept.iter().filter_map(|m| m.release_id.clone()).collect()
        }
        Some(r) => r
            .active
            .iter()
            .chain(&r.prev)
            .filter_map(|m| m.release_id.clone())
            .collect(),
        None => Vec::new(),
    };
    let mut refused = None;
    if let Some((base, d)) = deltas.for_host(&kept).await {
        bar.set_message("uploading a delta");
        bar.set_length(d.bytes);
        let up = Upload {
            path: "/update",
            payload: d.payload.clone(),
            fields: vec![
                ("base", base),
                ("index_patch", d.index_patch.clone()),
                ("release_id", info.release_id.clone()),
            ],
            bar,
        };
        let mut r = upload(master, client, rec, release, up, timeout, started).await;
        if r.http_status != Some(412) {
            r.delta = true;
            return r;
        }
        refused = Some(r.detail);
        bar.reset();
        bar.set_length(info.tree_bytes);
    }
    let payload = deltas.whole();
    let up = Upload {
        path: "/update",
        payload,
        fields: Vec::new(),
        bar,
    };
    let mut r = upload(master, client, rec, release, up, timeout, started).await;
    if let Some(why) = refused {
        r.detail = format!("{} (sent whole: the delta was refused: {why})", r.detail);
    }
    r
}

/// The host's releases, asked on `/releases`: when its active one already
/// is the one being pushed (the same tree: `release_id`), nothing is
/// uploaded and nothing restarts; else what it keeps decides the delta.
/// `None` when the host could not say: the push goes ahead whole, and an
/// updater that has it answers `unchanged` itself.
async fn live_releases(client: &reqwest::Client, rec: &HostRecord) -> Option<Releases> {
    let resp = client
        .get(rec.updater_url("/releases"))
        .timeout(STATUS_TIMEOUT)
        .send()
        .await
        .ok()?;
    said::read_json(resp, RELEASES_CAP).await.ok()
}

#[derive(Serialize)]
struct DryRun<'a> {
    dry_run: bool,
    release: &'a ReleaseInfo,
    targets: Vec<DryTarget>,
    rollout: rollout::PlanDoc,
}

#[derive(Serialize)]
struct DryTarget {
    host: String,
    address: String,
}

fn dry_run(release: &Tree, plan: &rollout::Plan, json: bool) -> Result<u8> {
    // Packed for its size and digest only: nothing is kept or sent.
    release.pack_counted().map_err(|e| Error::Pack {
        root: release.info.root.clone(),
        message: e.to_string(),
    })?;
    let info = &release.info_now();
    let targets: Vec<DryTarget> = plan
        .waves
        .iter()
        .flatten()
        .map(|h| DryTarget {
            host: h.host.to_string(),
            address: h.updater_addr(),
        })
        .collect();
    if json {
        output::json(&DryRun {
            dry_run: true,
            release: info,
            targets,
            rollout: plan.doc(),
        })?;
        return Ok(0);
    }
    outln!("dry run: nothing was sent")?;
    outln!("root     {}", info.root.display())?;
    outln!("files    {}", info.files)?;
    let size = info.size_bytes.unwrap_or(0);
    outln!("size     {} ({} bytes)", HumanBytes(size), size)?;
    outln!("release  {}", info.release_id)?;
    outln!("sha256   {}", info.sha256.as_deref().unwrap_or("-"))?;
    outln!("git      {}", git_label(info, info.git_commit.as_deref()))?;
    if !info.skipped_secrets.is_empty() {
        outln!("secrets left out: {}", info.skipped_secrets.join(", "))?;
    }
    outln!("targets  {}", targets.len())?;
    for t in &targets {
        outln!("  {}  {}", t.host, t.address)?;
    }
    if plan.staged {
        plan.print()?;
    }
    Ok(0)
}

/// The commit as shown, `+dirty` when the tree had uncommitted changes.
fn git_label(info: &ReleaseInfo, commit: Option<&str>) -> String {
    match (commit, info.git_dirty) {
        (Some(c), Some(true)) => format!("{c}+dirty"),
        (Some(c), _) => c.to_owned(),
        (None, _) => "-".to_owned(),
    }
}

fn print_release(info: &ReleaseInfo) -> Result<()> {
    outln!(
        "release {}  {} files  {}  git {}",
        short(&info.release_id),
        info.files,
        HumanBytes(info.tree_bytes),
        git_label(info, info.git_commit.as_deref().map(short))
    )?;
    if !info.skipped_secrets.is_empty() {
        outln!(
            "left out {} secret(s): {} (list them in swarm.toml [release] include to ship them; .env.local never ships)",
            info.skipped_secrets.len(),
            info.skipped_secrets.join(", ")
        )?;
    }
    Ok(())
}
