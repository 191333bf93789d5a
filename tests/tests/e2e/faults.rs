//! Faults around the crash sweep (issue 10): a full install filesystem
//! (a small tmpfs mounted by the test), an agent that daemonizes out of
//! its process group, and a forged pidfile naming a stranger.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::process::{alive, stat, wait_dead};
use tests::release::{ReleaseTree, sha256_hex};
use tests::worker::{Worker, WorkerOptions};
use tests::{TestPki, eventually_async};

fn good(tag: &str) -> Vec<u8> {
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .tarball()
}

async fn push_ok(w: &Worker, client: &reqwest::Client, tgz: &[u8]) -> String {
    let (code, body) = w.push(client, tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    let sha = sha256_hex(tgz);
    w.wait_agent_release(&sha).await;
    sha
}

/// A tmpfs with `options` mounted on `dir`; unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the filesystem of `dir` up to the last byte with `dir/filler`, and
/// its last inode with empty files in `dir/inodes/` (a directory needs
/// no data block on tmpfs, but an inode).
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
            break;
        }
    }
    let mut byte = [0u8; 1];
    while f.write_all(&byte).is_ok() {
        byte[0] = 1;
    }
    let inodes = dir.join("inodes");
    std::fs::create_dir(&inodes).unwrap();
    for n in 0.. {
        if let Err(e) = std::fs::File::create(inodes.join(n.to_string())) {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
            break;
        }
    }
}

/// A worker whose install dir is a tmpfs of 16 MiB and 2048 inodes, with the guard to
/// drop after it (declared first: dropped last).
fn small_worker(pki: &TestPki, tmp: &Path) -> (Tmpfs, Worker) {
    let fs = Tmpfs::mount(&tmp.join("install"), "size=16m,nr_inodes=2048");
    let options = WorkerOptions {
        dir: Some(tmp.to_owned()),
        ..WorkerOptions::default()
    };
    let w = Worker::start(pki, "w1", options);
    (fs, w)
}

#[tokio::test]
async fn on_a_full_disk_an_error_answer_means_nothing_rotated() {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let (_fs, w) = small_worker(&pki, tmp.path());
    let client = w.master_client(&pki);
    let mut live = push_ok(&w, &client, &good("a")).await;
    // The hook leaves `keep` bytes free, so the disk runs out at each step
    // after it in turn: the journal, the flip, the pidfile, the agent's log,
    // a revert.
    for keep in [0u32, 512, 4096, 8192, 12288, 16384, 32768, 65536] {
        let hook = format!(
            "avail=$(( $(stat -f -c '%a * %S' \"$SWARM_INSTALL_DIR\") ))\n\
             n=$(( avail - {keep} ))\n\
             [ $n -gt 0 ] && head -c $n /dev/zero > \"$SWARM_INSTALL_DIR/filler\" 2>/dev/null\n\
             exit 0\n"
        );
        let tgz = ReleaseTree::new()
            .file("VERSION", format!("keep {keep}").as_bytes())
            .file(
                "swarm.toml",
                b"[install]\ncommand = [\"sh\", \"fill.sh\"]\ntimeout_secs = 30\n",
            )
            .file("fill.sh", hook.as_bytes())
            .tarball();
        let sha = sha256_hex(&tgz);
        let (code, body) = w.push(&client, &tgz).await;
        let active = w.slot_sha("active");
        if code == 200 {
            assert_eq!(
                active.as_deref(),
                Some(sha.as_str()),
                "keep {keep}: {body:?}"
            );
            live = sha;
        } else {
            assert_eq!(
                active.as_deref(),
                Some(live.as_str()),
                "keep {keep}: answered {code} {body:?} but current changed\n{}",
                w.log()
            );
        }
        let _ = std::fs::remove_file(w.install_dir.join("filler"));
        eventually_async(Duration::from_secs(20), "the worker at rest", || async {
            (w.health(&client).await.busy.is_none()).then_some(())
        })
        .await;
        let current = tests::worker::manifest_sha(&w.install_dir.join("current"));
        assert_eq!(current.as_deref(), Some(live.as_str()), "keep {keep}");
        w.wait_agent_release(&live).await;
    }
    push_ok(&w, &client, &good("after")).await;
}

#[tokio::test]
async fn an_updater_restarted_on_a_full_disk_starts_and_runs_the_agent() {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let (_fs, mut w) = small_worker(&pki, tmp.path());
    let client = w.master_client(&pki);
    let a = push_ok(&w, &client, &good("a")).await;
    let agent = w.wait_agent_release(&a).await.pid as i32;
    w.kill_updater();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_dead(agent, "the agent");
    fill(&w.install_dir);
    // It must start (not exit 64 on its RENAME_EXCHANGE check) and start
    // the agent of the current release.
    w.restart();
    let health = w.wait_agent_release(&a).await;
    assert_ne!(health.pid as i32, agent);
    let client = w.master_client(&pki);
    assert_eq!(w.health(&client).await.status, "ok");
    std::fs::remove_file(w.install_dir.join("filler")).unwrap();
    std::fs::remove_dir_all(w.install_dir.join("inodes")).unwrap();
    push_ok(&w, &client, &good("b")).await;
}

/// Kill every pid listed in a file on drop (what a test's agents leave).
struct KillListed(PathBuf);

impl Drop for KillListed {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The zombies whose parent is `parent`.
fn zombie_children(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let f: Vec<&str> = s
                    .rsplit_once(')')
                    .map(|(_, r)| r.split_whitespace().collect())
                    .unwrap_or_default();
                f.first() == Some(&"Z") && f.get(1) == Some(&parent.to_string().as_str())
            })
        })
        .collect()
}

#[tokio::test]
async fn an_agent_that_daemonizes_is_stopped_whole_by_the_next_push() {
    let pki = TestPki::new();
    let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let pids = w.dir().join("daemon.pids");
    let _cleanup = KillListed(pids.clone());
    // A shell agent that double-forks the real listener into a session of
    // its own (it is reparented away from the shell), and a helper that
    // exits at once (an orphan the updater, a subreaper, must reap), then
    // waits.
    let agent = format!(
        "( setsid '{bin}' --listen 127.0.0.1:{port} & echo $! >> '{pids}' ) ; ( setsid true & ) ; exec sleep 600",
        bin = tests::bin("worker-agent").display(),
        port = w.agent_port,
        pids = pids.display()
    );
    let tgz = ReleaseTree::new()
        .file("VERSION", b"daemon")
        .agent_command(&["sh".into(), "-c".into(), agent], w.agent_port)
        .tarball();
    let daemon = push_ok(&w, &client, &tgz).await;
    let listener = w.wait_agent_release(&daemon).await.pid as i32;
    // The next push stops the listener too, so its agent gets the port.
    let b = push_ok(&w, &client, &good("b")).await;
    assert!(
        !alive(listener),
        "the daemonized listener outlived the stop"
    );
    let updater = w.updater_pid() as i32;
    eventually_async(
        Duration::from_secs(10),
        "no zombie under the updater",
        || async { (zombie_children(updater).is_empty()).then_some(()) },
    )
    .await;
    // Again across an updater restart: the stray is no child of the new updater.
    let again = push_ok(&w, &client, &tgz).await;
    let listener = w.wait_agent_release(&again).await.pid as i32;
    w.restart();
    let client = w.master_client(&pki);
    push_ok(&w, &client, &good("c")).await;
    assert!(!alive(listener), "the stray of an earlier updater survived");
    let _ = b;
}

#[tokio::test]
async fn a_forged_pidfile_naming_a_stranger_with_its_real_start_time_is_not_signalled() {
    let pki = TestPki::new();
    let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    push_ok(&w, &client, &good("a")).await;
    let mut stranger = Command::new("sleep").arg("300").spawn().unwrap();
    let pid = stranger.id() as i32;
    let start_time = stat(pid).unwrap().start_time;
    w.kill_updater();
    let forged = serde_json::json!({
        "pid": pid,
        "start_time": start_time,
        "argv": ["sleep", "300"],
    });
    std::fs::write(w.install_dir.join("agent.pid"), forged.to_string()).unwrap();
    w.restart();
    let client = w.master_client(&pki);
    push_ok(&w, &client, &good("b")).await;
    assert!(
        alive(pid),
        "the stranger named by a forged pidfile was signalled"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
}

#[tokio::test]
async fn a_409_names_a_stray_process_that_still_holds_the_agent_port() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    // Not ours (no mark, not our child, another bundle dir): it keeps the port.
    let bundle = w.dir().join("stray-bundle");
    std::fs::create_dir(&bundle).unwrap();
    for f in ["ca.crt", "worker.crt", "worker.key"] {
        std::fs::copy(w.bundles.agent_dir.join(f), bundle.join(f)).unwrap();
    }
    // It answers for an old release, as a stray old agent does.
    let old = w.dir().join("old-release");
    std::fs::create_dir(&old).unwrap();
    let manifest = serde_json::json!({
        "sha256": "0ld0ld0ld0ld", "size_bytes": 1, "files": 1, "git_commit": null,
        "pushed_at": "2026-01-01T00:00:00Z", "pushed_by": "master",
    });
    std::fs::write(old.join(pki::wire::MANIFEST_FILE), manifest.to_string()).unwrap();
    let mut stray = tests::Daemon::start(
        Command::new(tests::bin("worker-agent"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", w.agent_port))
            .arg("--agent-dir")
            .arg(&bundle)
            .env("SWARM_RELEASE_DIR", &old)
            .env_remove("SWARM_INSTALL_DIR")
            .stdout(std::process::Stdio::null()),
    );
    let probe = w.agent_probe_client();
    let url = w.agent_url();
    eventually_async(Duration::from_secs(10), "the stray answering", || async {
        probe.get(&url).send().await.ok().map(|_| ())
    })
    .await;
    let (code, body) = w.push(&client, &good("a")).await;
    assert_eq!(code, 409, "{body:?}");
    let error = body.error.unwrap_or_default();
    let said = format!("pid {} (", stray.pid());
    assert!(
        error.contains("is still held by") && error.contains(&said),
        "{error}"
    );
    stray.kill();
}
