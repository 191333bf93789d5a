//! End-to-end tests of `worker-updater`: the real binaries (updater and
//! reference agent), real mTLS on loopback, temp install dirs, tarballs built
//! in the test (byte by byte for the unsafe ones).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pki::wire::OpStatus;
use tests::process::{alive, wait_dead};
use tests::release::{ReleaseTree, raw, sha256_hex};
use tests::worker::{Worker, WorkerOptions};
use tests::{Daemon, TestPki, bin, eventually_async};

/// A good release: the fixture's default agent (no swarm.toml), one file
/// that makes each tree's digest distinct.
fn good(tag: &str) -> Vec<u8> {
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .tarball()
}

fn start(pki: &TestPki) -> Worker {
    Worker::start(pki, "w1", WorkerOptions::default())
}

/// Push a good release and assert it went live.
async fn push_good(w: &Worker, client: &reqwest::Client, tag: &str) -> String {
    let tgz = good(tag);
    let (code, body) = w.push(client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert_eq!(body.status, OpStatus::Updated);
    let sha = sha256_hex(&tgz);
    assert_eq!(
        body.release.as_ref().map(|m| m.sha256.as_str()),
        Some(sha.as_str())
    );
    sha
}

/// No staging or in-flight leftovers in `releases/`.
fn assert_at_rest(w: &Worker) {
    let r = w.install_dir.join("releases");
    for leftover in ["active.new", "active.old", ".incoming.json"] {
        assert!(!r.join(leftover).exists(), "{leftover} left behind");
    }
}

fn failed_count(w: &Worker) -> usize {
    std::fs::read_dir(w.install_dir.join("releases/failed"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn good_push_flips_current_and_keeps_prev() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    assert_eq!(w.current_target(), Some(PathBuf::from("releases/active")));
    let health = w.wait_agent_release(&a).await;
    let release = health.release.expect("agent reports its release");
    assert_eq!(release.pushed_by, "master");
    assert_eq!(release.files, 2);
    // The exec bits the tarball gave it, and no write bit: the content
    // store shares the inode between releases (issue 12).
    assert_eq!(
        std::fs::metadata(w.install_dir.join("current/bin/run.sh"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .ok(),
        Some(0o555)
    );
    let b = push_good(&w, &client, "b").await;
    w.wait_agent_release(&b).await;
    assert_eq!(w.slot_sha("active").as_deref(), Some(b.as_str()));
    assert_eq!(w.slot_sha("prev").as_deref(), Some(a.as_str()));
    let releases = w.releases(&client).await;
    assert_eq!(releases.active.map(|m| m.sha256), Some(b.clone()));
    assert_eq!(releases.prev.map(|m| m.sha256), Some(a));
    assert!(releases.failed.is_empty());
    assert_at_rest(&w);
    // The pidfile names the agent that answers.
    let pid = w.agent_pid().expect("agent.pid");
    assert!(alive(pid));
    // A third push drops `a`: it answers first, and deletes `a` after.
    let c = push_good(&w, &client, "c").await;
    assert_eq!(w.slot_sha("prev").as_deref(), Some(b.as_str()));
    let releases_dir = w.install_dir.join("releases");
    tests::eventually(
        Duration::from_secs(20),
        "the dropped release deleted",
        || {
            let names: Vec<String> = std::fs::read_dir(&releases_dir)
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            (!names.iter().any(|n| n.starts_with(".trash-"))).then_some(())
        },
    );
    w.wait_agent_release(&c).await;
}

#[tokio::test]
async fn broken_releases_roll_back_to_the_last_good() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    let b = push_good(&w, &client, "b").await;
    w.wait_agent_release(&b).await;
    let port = w.agent_port;
    let broken = [
        (
            "exits at once",
            ReleaseTree::new().agent_command(&["sh".into(), "-c".into(), "exit 3".into()], port),
        ),
        (
            "answers 503",
            ReleaseTree::new().reference_agent(port, &["--health-cmd", "false"]),
        ),
        (
            "never listens",
            ReleaseTree::new().agent_command(&["sleep".into(), "60".into()], port),
        ),
    ];
    for (i, (what, tree)) in broken.into_iter().enumerate() {
        let tgz = tree.file("what", what.as_bytes()).tarball();
        let (code, body) = w.push(&client, &tgz).await;
        assert_eq!(code, 409, "{what}: {body:?}");
        assert_eq!(body.status, OpStatus::RolledBack, "{what}");
        assert!(body.rolled_back, "{what}");
        assert_eq!(
            body.probes.len(),
            2,
            "{what}: forward and rollback transcripts"
        );
        assert!(!body.probes[0].healthy, "{what}");
        assert!(body.probes[1].healthy, "{what}: {:?}", body.probes[1]);
        assert!(
            body.error
                .as_deref()
                .is_some_and(|e| e.contains("failed its health probe")),
            "{what}"
        );
        // The old agent serves again, the layout is back, the failed tree kept.
        w.wait_agent_release(&b).await;
        assert_eq!(w.slot_sha("active").as_deref(), Some(b.as_str()), "{what}");
        assert_eq!(
            w.slot_sha("prev").as_deref(),
            Some(a.as_str()),
            "{what}: prev still the last good"
        );
        assert_eq!(failed_count(&w), i + 1, "{what}");
        assert_at_rest(&w);
    }
    let releases = w.releases(&client).await;
    assert_eq!(releases.failed.len(), 3);
    // No stray agents of the broken releases are left.
    let pid = w.agent_pid().expect("pidfile");
    let health = w.agent_health().await.expect("agent answers");
    assert_eq!(health.pid as i32, pid);
}

#[tokio::test]
async fn first_install_that_fails_leaves_a_clean_layout() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    let tgz = ReleaseTree::new()
        .agent_command(&["sh".into(), "-c".into(), "exit 1".into()], w.agent_port)
        .tarball();
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 409, "{body:?}");
    assert!(!body.rolled_back);
    assert!(
        body.error
            .as_deref()
            .is_some_and(|e| e.contains("first install")),
        "{body:?}"
    );
    assert!(w.current_target().is_none(), "no current without a release");
    assert!(!w.install_dir.join("releases/active").exists());
    assert_eq!(failed_count(&w), 1);
    assert_at_rest(&w);
    let a = push_good(&w, &client, "a").await;
    w.wait_agent_release(&a).await;
}

#[tokio::test]
async fn failing_install_hook_is_500_with_stderr_and_changes_nothing() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    let agent_before = w.wait_agent_release(&a).await.pid;
    let tgz = ReleaseTree::new()
        .file(
            "swarm.toml",
            b"[install]\ncommand = [\"sh\", \"install.sh\"]\ntimeout_secs = 20\n",
        )
        .file(
            "install.sh",
            b"echo preparing\necho 'boom: missing libfoo' >&2\nexit 7\n",
        )
        .tarball();
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 500, "{body:?}");
    assert_eq!(body.status, OpStatus::Error);
    assert!(
        body.stderr
            .as_deref()
            .is_some_and(|s| s.contains("boom: missing libfoo")),
        "{body:?}"
    );
    assert_eq!(w.slot_sha("active").as_deref(), Some(a.as_str()));
    assert!(w.slot_sha("prev").is_none());
    assert_at_rest(&w);
    let health = w.agent_health().await.expect("agent untouched");
    assert_eq!(health.pid, agent_before, "the agent was not restarted");
}

#[tokio::test]
async fn rollback_runs_the_previous_release_and_404s_on_fresh_install() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    let (code, body) = w.rollback(&client).await;
    assert_eq!(code, 404, "{body:?}");
    assert_eq!(body.error.as_deref(), Some("no previous release"));
    let a = push_good(&w, &client, "a").await;
    let (code, _) = w.rollback(&client).await;
    assert_eq!(code, 404, "one release only: still no prev");
    let b = push_good(&w, &client, "b").await;
    w.wait_agent_release(&b).await;
    let (code, body) = w.rollback(&client).await;
    assert_eq!(code, 200, "{body:?}");
    assert_eq!(body.status, OpStatus::RolledBack);
    assert_eq!(body.release.map(|m| m.sha256).as_deref(), Some(a.as_str()));
    w.wait_agent_release(&a).await;
    assert_eq!(w.slot_sha("active").as_deref(), Some(a.as_str()));
    assert_eq!(w.slot_sha("prev").as_deref(), Some(b.as_str()));
}

/// A release whose agent needs longer than the updater's probe deadline:
/// its `/health` answers 503 until it has been asked `polls` times (the
/// count kept in `counter`), which the probe schedule cannot reach within
/// the worker's 1 s deadline (at most 9 tries at 20, 40, … 200 ms pauses).
fn slow_starter(w: &Worker, counter: &Path, polls: u32, deadline_secs: Option<u64>) -> Vec<u8> {
    let c = counter.display();
    let health = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; test $n -ge {polls}"
    );
    let command = [
        bin("worker-agent").display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{}", w.agent_port),
        "--health-cmd".to_owned(),
        health,
    ];
    let mut toml = format!(
        "[agent]\ncommand = {}\nhealth_url = \"{}\"\n",
        tests::release::toml_array(&command),
        w.agent_url()
    );
    if let Some(secs) = deadline_secs {
        toml.push_str(&format!("probe_deadline_secs = {secs}\n"));
    }
    ReleaseTree::new()
        .file("swarm.toml", toml.as_bytes())
        .tarball()
}

#[tokio::test]
async fn a_release_can_give_a_slow_agent_a_longer_probe_deadline() {
    let pki = TestPki::new();
    let w = Worker::start(
        &pki,
        "w1",
        WorkerOptions {
            probe_deadline_ms: Some(1000),
            // Pauses of 100 ms (then 200, 250…): fewer than 12 tries fit
            // in 1 s, all 12 in 30 s.
            probe_backoff_ms: Some(100),
            ..WorkerOptions::default()
        },
    );
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    // Within the updater's deadline: rolled back.
    let tgz = slow_starter(&w, &w.dir().join("count-1"), 12, None);
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 409, "{body:?}");
    assert!(body.rolled_back, "{body:?}");
    let why = body.probes[0].error.as_deref().unwrap_or_default();
    assert!(
        why.contains("HTTP 503") && why.contains("probe deadline 1s"),
        "{why}"
    );
    w.wait_agent_release(&a).await;
    // The same agent, with `[agent] probe_deadline_secs = 30`: it passes.
    let tgz = slow_starter(&w, &w.dir().join("count-2"), 12, Some(30));
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert!(
        body.probes[0].healthy && body.probes[0].attempts >= 12,
        "{body:?}"
    );
    w.wait_agent_release(&sha256_hex(&tgz)).await;
    assert_eq!(w.slot_sha("prev").as_deref(), Some(a.as_str()));
}

#[tokio::test]
async fn rollback_to_an_unhealthy_prev_goes_back() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    // prev: an agent whose health depends on a file we remove later.
    let gate = w.dir().join("gate");
    std::fs::write(&gate, "").unwrap();
    let test_cmd = format!("test -e {}", gate.display());
    let tgz = ReleaseTree::new()
        .reference_agent(w.agent_port, &["--health-cmd", &test_cmd])
        .tarball();
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}");
    let b = push_good(&w, &client, "b").await;
    std::fs::remove_file(&gate).unwrap();
    let (code, body) = w.rollback(&client).await;
    assert_eq!(code, 409, "{body:?}");
    assert_eq!(body.release.map(|m| m.sha256).as_deref(), Some(b.as_str()));
    assert_eq!(body.probes.len(), 2);
    assert!(
        !body.probes[0].healthy && body.probes[1].healthy,
        "{:?}",
        body.probes
    );
    w.wait_agent_release(&b).await;
    assert_eq!(w.slot_sha("active").as_deref(), Some(b.as_str()));
}

#[tokio::test]
async fn one_operation_at_a_time_and_health_answers_meanwhile() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    push_good(&w, &client, "a").await;
    let gate = w.dir().join("install-gate");
    let hook = format!(
        "[install]\ncommand = [\"sh\", \"-c\", \"while [ ! -e '{}' ]; do sleep 0.02; done\"]\n",
        gate.display()
    );
    let slow = ReleaseTree::new()
        .file("swarm.toml", hook.as_bytes())
        .tarball();
    let first = w.push(&client, &slow);
    let meanwhile = async {
        eventually_async(Duration::from_secs(15), "update in progress", || async {
            (w.health(&client).await.busy.as_deref() == Some("update")).then_some(())
        })
        .await;
        let (code, body) = w.push(&client, &good("other")).await;
        assert_eq!(code, 409, "{body:?}");
        assert_eq!(body.status, OpStatus::Busy);
        let (code, body) = w.rollback(&client).await;
        assert_eq!((code, body.status), (409, OpStatus::Busy));
        // Health keeps answering while the hook blocks.
        for _ in 0..3 {
            assert_eq!(w.health(&client).await.status, "ok");
        }
        std::fs::write(&gate, "").unwrap();
    };
    let ((code, body), ()) = tokio::join!(first, meanwhile);
    assert_eq!(code, 200, "{body:?}");
    assert!(w.health(&client).await.busy.is_none());
}

#[tokio::test]
async fn operator_commands_work_with_real_curl() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    let m = pki.path().join("master");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--cert"])
            .arg(m.join("master.crt"))
            .arg("--key")
            .arg(m.join("master.key"))
            .arg("--cacert")
            .arg(m.join("ca.crt"))
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("curl output");
        (code.to_owned(), body.to_owned())
    };
    let a = push_good(&w, &client, "a").await;
    let tgz = good("b");
    let b = sha256_hex(&tgz);
    let tree = w.dir().join("tree.tgz");
    std::fs::write(&tree, &tgz).unwrap();
    let (code, body) = curl(&[
        "-F",
        &format!("sha256={b}"),
        "-F",
        &format!("tarball=@{}", tree.display()),
        &w.url("/update"),
    ]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"updated\""), "{body}");
    w.wait_agent_release(&b).await;
    let (code, body) = curl(&["-X", "POST", &w.url("/rollback")]);
    assert_eq!(code, "200", "{body}");
    w.wait_agent_release(&a).await;
}

#[tokio::test]
async fn agent_started_by_hand_is_replaced_and_a_stranger_is_spared() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    // By hand: same bundle, same port, no pidfile.
    let mut by_hand = Daemon::start(
        Command::new(bin("worker-agent"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", w.agent_port))
            .arg("--agent-dir")
            .arg(&w.bundles.agent_dir)
            .stdout(std::process::Stdio::null()),
    );
    eventually_async(Duration::from_secs(10), "hand-started agent", || {
        w.agent_health()
    })
    .await;
    // A stale pidfile naming an unrelated process.
    let mut stranger = Daemon::start(Command::new("sleep").arg("120"));
    std::fs::write(
        w.install_dir.join("agent.pid"),
        format!("{}\n", stranger.pid()),
    )
    .unwrap();
    let a = push_good(&w, &client, "a").await;
    w.wait_agent_release(&a).await;
    let status = by_hand.try_wait();
    assert!(status.is_some(), "the hand-started agent was stopped");
    assert!(stranger.try_wait().is_none(), "the stranger lives");
    assert!(alive(stranger.pid() as i32));
}

/// A release whose agent is a shebang script that runs the reference agent
/// (under a name no `/proc` scan knows) as its child and waits for it.
fn script_agent(w: &Worker, service: &Path, tag: &str) -> Vec<u8> {
    let script = format!(
        "#!/bin/sh\n{} --listen 127.0.0.1:{}\necho \"agent exited: $?\"\n",
        service.display(),
        w.agent_port
    );
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/run.sh", script.as_bytes(), 0o755)
        .agent_command(&["bin/run.sh".to_owned()], w.agent_port)
        .tarball()
}

#[tokio::test]
async fn an_agent_run_by_a_shebang_script_is_replaced_by_the_next_push() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    // The reference agent under another name, outside the install dir.
    let service = w.dir().join("my-service");
    if std::fs::hard_link(bin("worker-agent"), &service).is_err() {
        std::fs::copy(bin("worker-agent"), &service).unwrap();
    }
    let tgz = script_agent(&w, &service, "a");
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    let first = w.wait_agent_release(&sha256_hex(&tgz)).await;
    let script_pid = w.agent_pid().expect("pidfile");
    assert_ne!(
        script_pid, first.pid as i32,
        "the script runs the service as a child"
    );
    let tgz = script_agent(&w, &service, "b");
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    let second = w.wait_agent_release(&sha256_hex(&tgz)).await;
    assert_ne!(second.pid, first.pid);
    wait_dead(script_pid, "the first agent's script");
    wait_dead(first.pid as i32, "the first agent's service");
}

#[tokio::test]
async fn a_2xx_from_another_process_while_the_new_agent_is_dead_is_not_healthy() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    w.wait_agent_release(&a).await;
    // Something else on the health port: the reference agent with this
    // host's certificate, reporting no release, started where no scan finds
    // it, and slow to answer (so the release's agent has surely exited).
    let bundle = w.dir().join("impostor-bundle");
    std::fs::create_dir(&bundle).unwrap();
    for f in ["ca.crt", "worker.crt", "worker.key"] {
        std::fs::copy(w.bundles.agent_dir.join(f), bundle.join(f)).unwrap();
    }
    let reserved = tests::free_port();
    let port = reserved.get();
    let _impostor = Daemon::start(
        Command::new(bin("worker-agent"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--agent-dir")
            .arg(&bundle)
            .args(["--health-cmd", "sleep 0.3"])
            .env_remove("SWARM_RELEASE_DIR")
            .env_remove("SWARM_INSTALL_DIR")
            .env_remove("SWARM_AGENT_DIR")
            .stdout(std::process::Stdio::null()),
    );
    let impostor_url = format!("https://127.0.0.1:{port}/health");
    let probe_client = w.agent_probe_client();
    eventually_async(
        Duration::from_secs(10),
        "the impostor answering",
        || async {
            let r = probe_client.get(&impostor_url).send().await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    // A release whose agent exits at once, probed on the impostor's port.
    let tgz = ReleaseTree::new()
        .file("VERSION", b"dies")
        .agent_command(&["true".to_owned()], port)
        .tarball();
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 409, "{body:?}\n{}", w.log());
    assert_eq!(body.status, OpStatus::RolledBack);
    assert!(body.rolled_back);
    let why = body.probes[0].error.as_deref().unwrap_or_default();
    assert!(
        why.contains("exited") || why.contains("no longer running"),
        "{why}"
    );
    w.wait_agent_release(&a).await;
    assert_eq!(w.slot_sha("active").as_deref(), Some(a.as_str()));
}

#[tokio::test]
async fn a_huge_gnu_long_name_is_refused_from_its_header() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    let tgz = raw::tgz(&[
        raw::entry(b"././@LongLink", b'L', &vec![b'n'; 10 << 20], 0o644, b""),
        raw::file(b"f", b"x"),
    ]);
    assert_rejected(
        &w,
        &client,
        "10 MB GNU long name",
        &tgz,
        "GNU long name of 10485760 bytes; extension headers are limited to 65536 bytes",
        &a,
    )
    .await;
    // The worker is fine afterwards.
    push_good(&w, &client, "b").await;
}

#[tokio::test]
async fn sigterm_right_after_listening_is_a_graceful_stop() {
    let pki = TestPki::new();
    let mut w = start(&pki);
    // At once, while it may still be setting up behind the announcement.
    let status = w.terminate_updater();
    assert!(status.success(), "{status:?}\n{}", w.log());
    assert!(w.log().contains("SIGTERM: draining"), "{}", w.log());
}

/// Push `tgz` and assert a 400 that names `path`, with nothing changed.
async fn assert_rejected(
    w: &Worker,
    client: &reqwest::Client,
    what: &str,
    tgz: &[u8],
    path: &str,
    live: &str,
) {
    let (code, body) = w.push(client, tgz).await;
    assert_eq!(code, 400, "{what}: {body:?}");
    assert_eq!(body.status, OpStatus::Error);
    let error = body.error.unwrap_or_default();
    assert!(
        error.contains(path),
        "{what}: error {error:?} should name {path:?}"
    );
    assert_eq!(w.slot_sha("active").as_deref(), Some(live), "{what}");
    assert_at_rest(w);
}

#[tokio::test]
async fn unsafe_tarballs_are_rejected_and_touch_nothing() {
    let pki = TestPki::new();
    let w = Worker::start(
        &pki,
        "w1",
        WorkerOptions {
            extra_args: vec!["--max-entries".into(), "50".into()],
            ..WorkerOptions::default()
        },
    );
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    let agent = w.wait_agent_release(&a).await.pid;
    // The install dir is <tmp>/install; staging is <tmp>/install/releases/active.new.
    let sentinel = w.dir().join("sentinel");
    std::fs::write(&sentinel, "keep").unwrap();
    let abs = sentinel.display().to_string();
    let up = "../../../sentinel";
    let mut sparse = raw::header(b"sparse", b'S', 0, 0o644, b"");
    sparse[257..265].copy_from_slice(b"ustar  \0");
    sparse[483..495].copy_from_slice(b"00000000000\0");
    sparse[148..156].copy_from_slice(b"        ");
    let sum: u32 = sparse.iter().map(|b| u32::from(*b)).sum();
    sparse[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let many: Vec<Vec<u8>> = (0..60)
        .map(|i| raw::file(format!("f{i}").as_bytes(), b"x"))
        .collect();
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        ("dot-dot", vec![raw::file(up.as_bytes(), b"pwned")], up),
        ("absolute", vec![raw::file(abs.as_bytes(), b"pwned")], &abs),
        (
            "escaping symlink",
            vec![raw::entry(b"esc", b'2', b"", 0o777, up.as_bytes())],
            "esc",
        ),
        (
            "absolute symlink",
            vec![raw::entry(b"abs", b'2', b"", 0o777, abs.as_bytes())],
            "abs",
        ),
        (
            "write through a symlink",
            vec![
                raw::entry(b"d/", b'5', b"", 0o755, b""),
                raw::entry(b"l", b'2', b"", 0o777, b"d"),
                raw::file(b"l/x", b"x"),
            ],
            "l/x",
        ),
        (
            "hardlink",
            vec![raw::entry(b"hard", b'1', b"", 0o644, abs.as_bytes())],
            "hard",
        ),
        (
            "char device",
            vec![raw::entry(b"null", b'3', b"", 0o666, b"")],
            "null",
        ),
        (
            "block device",
            vec![raw::entry(b"sda", b'4', b"", 0o666, b"")],
            "sda",
        ),
        (
            "fifo",
            vec![raw::entry(b"pipe", b'6', b"", 0o644, b"")],
            "pipe",
        ),
        (
            "duplicate",
            vec![raw::file(b"twice", b"1"), raw::file(b"twice", b"2")],
            "twice",
        ),
        ("gnu sparse", vec![sparse.to_vec()], "sparse"),
        ("too many entries", many, "--max-entries"),
        (
            "manifest forged",
            vec![raw::file(b".swarm-release.json", b"{}")],
            ".swarm-release.json",
        ),
    ];
    for (what, entries, path) in cases {
        assert_rejected(&w, &client, what, &raw::tgz(&entries), path, &a).await;
        assert_eq!(
            std::fs::read_to_string(&sentinel).unwrap(),
            "keep",
            "{what}"
        );
        assert_eq!(
            std::fs::read_dir(w.dir()).unwrap().count(),
            3,
            "{what}: nothing new next to install/"
        );
    }
    // Digest mismatch and junk.
    let tgz = good("x");
    let (code, body) = w
        .push_with_digest(&client, &tgz, &sha256_hex(b"other"))
        .await;
    assert_eq!(code, 400, "{body:?}");
    assert!(
        body.error
            .as_deref()
            .is_some_and(|e| e.contains("sha256 mismatch"))
    );
    assert_at_rest(&w);
    let (code, _) = w.push(&client, b"not a tarball at all").await;
    assert_eq!(code, 400);
    assert_at_rest(&w);
    assert_eq!(
        w.agent_health().await.map(|h| h.pid),
        Some(agent),
        "agent untouched"
    );
}

#[tokio::test]
async fn sigkill_right_after_the_flip_is_repaired_at_start_up() {
    let pki = TestPki::new();
    let mut w = start(&pki);
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    w.wait_agent_release(&a).await;
    // B's agent stays unhealthy, so the updater sits in its probe after the flip.
    let gate = w.dir().join("never");
    let test_cmd = format!("test -e {}", gate.display());
    let tgz = ReleaseTree::new()
        .reference_agent(w.agent_port, &["--health-cmd", &test_cmd])
        .tarball();
    let b = sha256_hex(&tgz);
    let push = w.push(&client, &tgz);
    let kill = async {
        eventually_async(Duration::from_secs(15), "the flip to B", || async {
            (w.slot_sha("active").as_deref() == Some(b.as_str())).then_some(())
        })
        .await;
    };
    tokio::select! {
        r = push => panic!("the push finished before the flip was seen: {r:?}"),
        () = kill => {}
    }
    let old_pid = w.updater_pid() as i32;
    w.restart();
    wait_dead(old_pid, "the killed updater");
    let client = w.master_client(&pki);
    // Start-up repair: current on a whole release, nothing half-done; the
    // unconfirmed B is probed again, fails, and A comes back.
    eventually_async(Duration::from_secs(20), "start-up reconcile", || async {
        (w.health(&client).await.busy.is_none()).then_some(())
    })
    .await;
    let log = w.log();
    assert!(
        log.contains("an update crashed after its flip"),
        "repair ran:\n{log}"
    );
    assert!(
        log.contains("unconfirmed release went to failed"),
        "B reverted:\n{log}"
    );
    assert_eq!(failed_count(&w), 1);
    let live = std::fs::read_to_string(w.install_dir.join("current/.swarm-release.json"));
    assert!(live.is_ok(), "current resolves to a whole release");
    assert_at_rest(&w);
    assert_eq!(
        w.slot_sha("active").as_deref(),
        Some(a.as_str()),
        "{}",
        w.log()
    );
    w.wait_agent_release(&a).await;
    let c = push_good(&w, &client, "c").await;
    w.wait_agent_release(&c).await;
    assert_eq!(w.slot_sha("prev").as_deref(), Some(a.as_str()));
}

#[tokio::test]
async fn env_local_and_swarm_toml_expansion() {
    let pki = TestPki::new();
    let w = start(&pki);
    let client = w.master_client(&pki);
    std::fs::write(
        w.install_dir.join(".env.local"),
        format!("# per host\nAGENT_PORT={}\n", w.agent_port),
    )
    .unwrap();
    let toml = format!(
        "[agent]\ncommand = [\"{}\", \"--listen\", \"127.0.0.1:${{AGENT_PORT}}\"]\nhealth_url = \"https://127.0.0.1:${{AGENT_PORT}}/health\"\n",
        bin("worker-agent").display()
    );
    let tgz = ReleaseTree::new()
        .file("swarm.toml", toml.as_bytes())
        .tarball();
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}");
    let status: pki::wire::AgentStatus = w
        .agent_probe_client()
        .get(format!("https://127.0.0.1:{}/status", w.agent_port))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let release_dir = status.release_dir.expect("SWARM_RELEASE_DIR given");
    assert!(
        Path::new(&release_dir).ends_with("releases/active"),
        "{release_dir}"
    );
    // An unknown variable is the client's mistake: 400 before any rotation.
    let bad = ReleaseTree::new()
        .file(
            "swarm.toml",
            b"[agent]\ncommand = [\"x\", \"${NOT_SET_ANYWHERE_42}\"]\n",
        )
        .tarball();
    let (code, body) = w.push(&client, &bad).await;
    assert_eq!(code, 400, "{body:?}");
    assert_at_rest(&w);
}

#[tokio::test]
async fn master_only_routes_refuse_other_identities() {
    let pki = TestPki::new();
    let w = start(&pki);
    let updater_bundle = pki::Bundle::load(&w.bundles.updater_dir).unwrap();
    let as_updater = tests::worker::client_for(&updater_bundle, &w.bundles.host.updater_cn());
    let as_agent = w.agent_identity_client();
    let foreign = TestPki::new();
    let as_foreign = tests::worker::client_for(&foreign.master(), &w.bundles.host.updater_cn());
    for (who, client) in [("agent", &as_agent), ("updater", &as_updater)] {
        for (method, path) in [
            ("POST", "/update"),
            ("POST", "/rollback"),
            ("POST", "/update-self"),
            ("GET", "/releases"),
        ] {
            let req = match method {
                "POST" => client.post(w.url(path)),
                _ => client.get(w.url(path)),
            };
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 403, "{who} {method} {path}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(body["error"].is_string(), "{who} {path}: {body}");
        }
        assert_eq!(
            client.get(w.url("/health")).send().await.unwrap().status(),
            200,
            "{who} /health"
        );
    }
    for path in ["/update", "/rollback", "/releases", "/health"] {
        assert!(
            as_foreign.post(w.url(path)).send().await.is_err(),
            "foreign CA refused on {path}"
        );
    }
    assert_at_rest(&w);
    assert!(w.current_target().is_none());
}

#[tokio::test]
async fn updater_starts_the_agent_at_start_up_when_none_runs() {
    let pki = TestPki::new();
    let mut w = start(&pki);
    let client = w.master_client(&pki);
    let a = push_good(&w, &client, "a").await;
    w.wait_agent_release(&a).await;
    // As after a reboot: the agent is gone, the updater comes back.
    w.kill_updater();
    let pid = w.agent_pid().expect("pidfile");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_dead(pid, "the old agent");
    w.restart();
    let health = w.wait_agent_release(&a).await;
    assert_ne!(health.pid as i32, pid, "a new agent");
    assert_eq!(w.agent_pid(), Some(health.pid as i32));
    assert!(
        !w.log().contains("start-up repair"),
        "nothing to repair: {}",
        w.log()
    );
}
