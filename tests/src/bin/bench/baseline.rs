//! The baselines swarm is measured against: what users do today (`rsync -a`
//! over ssh to a loopback sshd the harness starts with throwaway keys, then
//! a restart of the same agent and a wait for its `/health`), and the floor
//! (`tar -c | gzip -1 | gzip -d | tar -x` into a new directory plus `sync`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tests::process::{run_ok, run_timed};
use tests::worker::{health_client, wait_health};
use tests::{Daemon, Port, TestPki};
use tokio::process::Command;

use crate::tree::Tree;

/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the agent's `/health` is polled while it starts.
const POLL: Duration = Duration::from_millis(5);

/// How long one baseline step may take before the run is abandoned.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// Make sure `/usr/sbin/sshd` and `rsync` are installed, installing
/// Debian's `openssh-server` and `rsync` with apt-get if not. Services are
/// kept from starting during the install (`policy-rc.d`), so no sshd
/// listens on port 22 because of us.
pub(crate) async fn ensure_tools(may_install: bool) -> anyhow::Result<()> {
    let missing = !Path::new("/usr/sbin/sshd").exists() || on_path("rsync").is_none();
    if !missing {
        return Ok(());
    }
    if !may_install {
        bail!(
            "sshd or rsync is missing and --no-install was given: apt-get install openssh-server rsync"
        );
    }
    eprintln!("bench: installing openssh-server and rsync with apt-get");
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let made_policy = if policy.exists() {
        false
    } else {
        std::fs::write(
            policy,
            "#!/bin/sh\n# swarm bench: no service starts during install\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        set_mode(policy, 0o755)?;
        true
    };
    let result = async {
        let install = || {
            let mut c = Command::new("apt-get");
            c.args([
                "install",
                "-y",
                "--no-install-recommends",
                "openssh-server",
                "rsync",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        if run_ok(&mut install(), STEP_TIMEOUT).await.is_err() {
            run_ok(Command::new("apt-get").arg("update"), STEP_TIMEOUT).await?;
            run_ok(&mut install(), STEP_TIMEOUT).await?;
        }
        anyhow::Ok(())
    }
    .await;
    if made_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// A loopback sshd with a throwaway host key that lets root in with a
/// throwaway client key, and nothing else.
pub(crate) struct Sshd {
    pub(crate) port: u16,
    key: PathBuf,
    _daemon: Daemon,
    /// `port`, reserved as long as sshd runs.
    _port: Port,
}

impl Sshd {
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Sshd> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(dir, 0o700)?;
        // Debian's sshd refuses to start without its privilege separation dir.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let host_key = dir.join("host_ed25519");
        let key = dir.join("client_ed25519");
        for k in [&host_key, &key] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "swarm-bench", "-f"])
                    .arg(k),
                STEP_TIMEOUT,
            )
            .await?;
        }
        let pubkey = std::fs::read_to_string(key.with_extension("pub"))
            .context("reading the client public key")?;
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, pubkey).context("writing authorized_keys")?;
        set_mode(&authorized, 0o600)?;
        let reserved = Port::reserve()?;
        let port = reserved.get();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PrintMotd no\nLogLevel ERROR\n",
                host_key.display(),
                dir.join("sshd.pid").display(),
                authorized.display(),
            ),
        )
        .context("writing sshd_config")?;
        let daemon = Daemon::spawn_logged(
            "sshd",
            std::process::Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config),
            &dir.join("sshd.log"),
        )?
        .graceful(STOP_GRACE);
        let sshd = Sshd {
            port,
            key,
            _daemon: daemon,
            _port: reserved,
        };
        // Ready when a login works.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = run_timed(sshd.ssh().arg("true"), Duration::from_secs(10)).await?;
            if t.status.success() {
                return Ok(sshd);
            }
            if Instant::now() > deadline {
                bail!(
                    "sshd on 127.0.0.1:{port} did not let us in: {}; see {}",
                    t.stderr.trim(),
                    dir.join("sshd.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `-e` argument rsync gets, i.e. what a user would type.
    fn ssh_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.port.to_string(),
            "-i".into(),
            self.key.display().to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.ssh_args()).arg("root@127.0.0.1");
        c
    }

    /// `rsync -a -e "ssh …" TREE/ root@127.0.0.1:DEST/`, timed.
    pub(crate) async fn rsync(&self, tree: &Path, dest: &Path) -> anyhow::Result<Duration> {
        let mut src = tree.as_os_str().to_owned();
        src.push("/");
        let t = run_ok(
            Command::new("rsync")
                .arg("-a")
                .arg("-e")
                .arg(format!("ssh {}", self.ssh_args().join(" ")))
                .arg(src)
                .arg(format!("root@127.0.0.1:{}/", dest.display())),
            STEP_TIMEOUT,
        )
        .await?;
        Ok(t.elapsed)
    }
}

/// `tar -c | gzip -1 | gzip -d | tar -x` of `tree` into `dest` (created)
/// plus one `sync`, timed.
pub(crate) async fn tar_floor(tree: &Path, dest: &Path) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let t = run_ok(
        Command::new("bash")
            .args([
                "-o",
                "pipefail",
                "-c",
                r#"tar -c -C "$1" . | gzip -1 | gzip -d | tar -x -C "$2" && sync"#,
                "floor",
            ])
            .arg(tree)
            .arg(dest),
        STEP_TIMEOUT,
    )
    .await?;
    Ok(t.elapsed)
}

/// A CA, a master identity and one agent identity (the harness's
/// [`TestPki`]), for the agent the rsync baseline restarts.
pub(crate) struct BaselineAgent {
    pub(crate) agent_dir: PathBuf,
    pub(crate) port: Port,
    /// The agent binary outside the trees; `None` when each tree carries
    /// its own `bin/worker-agent`.
    pub(crate) binary: Option<PathBuf>,
    pub(crate) log: PathBuf,
    client: reqwest::Client,
    running: Option<Daemon>,
    _pki: TestPki,
}

impl BaselineAgent {
    pub(crate) fn new(dir: &Path, binary: Option<PathBuf>) -> anyhow::Result<BaselineAgent> {
        let host = "rsync-baseline";
        let pki = TestPki::create()?;
        let agent_dir = pki.try_worker(host)?.agent_dir;
        let client = health_client(&pki.try_master()?, host)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(BaselineAgent {
            agent_dir,
            port: Port::reserve()?,
            binary,
            log: dir.join("agent.log"),
            client,
            running: None,
            _pki: pki,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}/health", self.port)
    }

    /// Stop the running agent (if any), start one from `release`, and wait
    /// for its `/health`. Returns the time from the SIGTERM to the answer.
    pub(crate) async fn restart(&mut self, release: &Path) -> anyhow::Result<Duration> {
        let start = Instant::now();
        if let Some(mut old) = self.running.take() {
            old.stop(STOP_GRACE);
        }
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => release.join("bin/worker-agent"),
        };
        let mut cmd = std::process::Command::new(&binary);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--agent-dir")
            .arg(&self.agent_dir)
            .arg("--release-dir")
            .arg(release)
            .current_dir(release)
            .env("RUST_LOG", "warn");
        self.running =
            Some(Daemon::spawn_logged("baseline agent", &mut cmd, &self.log)?.graceful(STOP_GRACE));
        let url = self.url();
        let (_, at) = wait_health(&self.client, &url, None, Duration::from_secs(30), POLL).await?;
        Ok(at - start)
    }

    /// Stop the agent, if running.
    pub(crate) fn stop(&mut self) {
        if let Some(mut d) = self.running.take() {
            d.stop(STOP_GRACE);
        }
    }
}

/// One rsync-then-restart sample.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RsyncSample {
    pub(crate) rsync: Duration,
    pub(crate) restart: Duration,
}

impl RsyncSample {
    pub(crate) fn total(&self) -> Duration {
        self.rsync + self.restart
    }
}

/// rsync `tree` into a new directory `dest`, then restart the agent on it.
pub(crate) async fn rsync_and_restart(
    sshd: &Sshd,
    agent: &mut BaselineAgent,
    tree: &Tree,
    dest: &Path,
) -> anyhow::Result<RsyncSample> {
    let rsync = sshd.rsync(&tree.root, dest).await?;
    let restart = agent.restart(dest).await?;
    Ok(RsyncSample { rsync, restart })
}
