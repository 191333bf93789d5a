//! The zero-downtime section (issue 14): a load of fresh connections at
//! about 200 requests a second against one worker's agent during 20 good
//! and 5 broken pushes, counting refused or failed requests, for today's
//! stop-first agent that binds its own port (the baseline), stop-first
//! with `[agent] listen`, and start-first — in the same run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pki::wire::OpResponse;
use tests::load::Load;
use tests::release::{ReleaseTree, release_form, sha256_hex};
use tests::worker::{Worker, WorkerOptions};
use tests::{Bins, TestPki};

use crate::report::{Report, Unit};

/// Good and broken pushes per mode.
const GOOD: usize = 20;
const BROKEN: usize = 5;
/// Load loops and their pause: 4 loops × 20 ms ≈ 200 requests/s.
const LOOPS: usize = 4;
const PAUSE: Duration = Duration::from_millis(20);

/// How a mode builds its releases.
#[derive(Clone, Copy)]
enum Mode {
    /// Today without `listen`: the agent binds its port itself.
    Baseline,
    /// `[agent] listen` with `restart = mode`.
    Listen(&'static str),
}

impl Mode {
    /// A release of the reference agent `agent` on `port` (or, `broken`,
    /// one whose agent exits at once).
    fn tree(self, agent: &std::path::Path, port: u16, tag: &str, broken: bool) -> Vec<u8> {
        let t = ReleaseTree::new().file("VERSION", tag.as_bytes());
        let cmd: Vec<String> = if broken {
            ["sh", "-c", "exit 3"].map(str::to_owned).to_vec()
        } else {
            vec![
                agent.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ]
        };
        match self {
            Mode::Baseline => t.agent_command(&cmd, port),
            Mode::Listen(m) => t.activated_command(&cmd, port, m),
        }
        .tarball()
    }
}

async fn push(
    w: &Worker,
    client: &reqwest::Client,
    tgz: &[u8],
) -> anyhow::Result<(u16, OpResponse)> {
    let resp = client
        .post(w.url("/update"))
        .multipart(release_form(tgz, &sha256_hex(tgz), &[]))
        .send()
        .await
        .context("POST /update")?;
    let code = resp.status().as_u16();
    let body = resp.json().await.context("the /update answer")?;
    Ok((code, body))
}

/// Run the section: one row per mode with the failed requests.
pub(crate) async fn zero_section(bins: &Bins, report: &mut Report) -> anyhow::Result<()> {
    let pki = TestPki::create()?;
    for (key, label, mode) in [
        (
            "zd-baseline",
            "failed requests, stop-first, agent binds itself (today)",
            Mode::Baseline,
        ),
        (
            "zd-stop-first",
            "failed requests, stop-first + [agent] listen",
            Mode::Listen("stop-first"),
        ),
        (
            "zd-start-first",
            "failed requests, start-first + [agent] listen",
            Mode::Listen("start-first"),
        ),
    ] {
        step!("{key}: {GOOD} pushes and {BROKEN} broken pushes under load");
        let w = Worker::try_start(
            pki.try_worker(key)?,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            WorkerOptions::as_shipped(bins.clone()),
        )?;
        let client = w.master_client(&pki);
        let port = w.agent_port;
        let (code, body) = push(&w, &client, &mode.tree(&bins.agent, port, "v0", false)).await?;
        ensure!(code == 200, "{key}: the first install failed: {body:?}");
        let bundle = pki::Bundle::load(&w.bundles.updater_dir)?;
        let load = Load::start(
            tests::load::client(&bundle, w.bundles.host.as_str())?,
            w.agent_url(),
            LOOPS,
            PAUSE,
        );
        let t0 = Instant::now();
        for i in 0..GOOD + BROKEN {
            let broken = i % 5 == 4;
            let (code, body) = push(
                &w,
                &client,
                &mode.tree(&bins.agent, port, &format!("v{}", i + 1), broken),
            )
            .await?;
            let want = if broken { 409 } else { 200 };
            ensure!(
                code == want,
                "{key}: push {i} answered {code}, not {want}: {body:?}"
            );
        }
        let elapsed = t0.elapsed();
        let tally = load.finish().await;
        let total = tally.ok + tally.failed;
        let row = report.row(key, label, Unit::Count);
        row.samples.push(tally.failed as f64);
        if key != "zd-baseline" {
            row.baselines = vec!["zd-baseline".into()];
        }
        report.notes.push(format!(
            "{key}: {} of {total} requests failed ({:.0} requests/s over {:.1} s){}",
            tally.failed,
            total as f64 / elapsed.as_secs_f64().max(0.001),
            elapsed.as_secs_f64(),
            tally
                .errors
                .first()
                .map(|e| format!("; first failure: {e}"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}
