//! The master's uplink for the store fan-out (issue 16): a network
//! namespace of its own, joined to the root namespace by one veth pair whose
//! master side is shaped with `tc ... tbf` (egress), so every byte the
//! `swarm` CLI sends crosses one rate-limited link and is counted there.
//! Removed when dropped (also on Ctrl-C and errors: the bench drops its
//! guards then).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

/// How long one `ip`/`tc` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(30);
/// `tbf` bucket: at least one GSO super-packet (64 KiB) on a veth, else
/// tbf drops them.
const BURST: &str = "256kb";

/// A namespace `ns` with veth `inner` (shaped) whose peer `outer` lives in
/// the root namespace.
pub(crate) struct Uplink {
    pub(crate) ns: String,
    inner: String,
    outer: String,
    /// The root side's address: workers and the store listen on it.
    pub(crate) root_ip: IpAddr,
    /// The rate in Mbit/s, or why the link is not shaped.
    pub(crate) shaped: Result<u32, String>,
}

async fn run(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = tests::process::run_timed(&mut cmd, IP_TIMEOUT).await?;
    if !out.status.success() {
        bail!("{args:?}: {} {}", out.status, out.stderr.trim());
    }
    Ok(out.stdout)
}

impl Uplink {
    /// Create the namespace and link and shape it to `mbit` Mbit/s
    /// (0: unshaped). A kernel without `sch_tbf` leaves it unshaped and
    /// says so in [`Uplink::shaped`].
    pub(crate) async fn create(mbit: u32) -> anyhow::Result<Uplink> {
        let id = std::process::id() % 100_000;
        let net = (id % 250) as u8;
        let mut up = Uplink {
            ns: format!("swarm-bench-{id}-m"),
            inner: format!("sb{id}m"),
            outer: format!("sb{id}r"),
            root_ip: IpAddr::V4(Ipv4Addr::new(10, 214, net, 1)),
            shaped: Err("not set up".into()),
        };
        // Built up step by step: whatever exists when a step fails is
        // removed by the guard's drop.
        let inner_ip = format!("10.214.{net}.2/30");
        let outer_ip = format!("{}/30", up.root_ip);
        run(&["ip", "netns", "add", &up.ns]).await?;
        run(&[
            "ip", "link", "add", &up.outer, "type", "veth", "peer", "name", &up.inner,
        ])
        .await?;
        run(&["ip", "link", "set", &up.inner, "netns", &up.ns]).await?;
        run(&["ip", "addr", "add", &outer_ip, "dev", &up.outer]).await?;
        run(&["ip", "link", "set", &up.outer, "up"]).await?;
        let ns = up.ns.clone();
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", ns.as_str()];
            all.extend_from_slice(args);
            let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
            async move {
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                run(&all).await
            }
        };
        inside(&["ip", "addr", "add", &inner_ip, "dev", &up.inner]).await?;
        inside(&["ip", "link", "set", &up.inner, "up"]).await?;
        inside(&["ip", "link", "set", "lo", "up"]).await?;
        inside(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &up.root_ip.to_string(),
        ])
        .await?;
        up.shaped = if mbit == 0 {
            Err("--uplink-mbit 0".into())
        } else {
            let rate = format!("{mbit}mbit");
            inside(&[
                "tc", "qdisc", "add", "dev", &up.inner, "root", "tbf", "rate", &rate, "burst",
                BURST, "latency", "100ms",
            ])
            .await
            .map(|_| mbit)
            .map_err(|e| format!("{e:#}"))
        };
        Ok(up)
    }

    /// Bytes the master's side of the link has sent so far.
    pub(crate) async fn tx_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/tx_bytes", self.inner);
        let out = run(&["ip", "netns", "exec", &self.ns, "cat", &path]).await?;
        out.trim()
            .parse()
            .with_context(|| format!("{path} said {out:?}"))
    }
}

/// `cmd` run inside namespace `ns` (`ip netns exec`), with its environment.
pub(crate) fn in_netns(ns: &str, cmd: &std::process::Command) -> Command {
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c.arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(Path::new(d));
        }
        c
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it; the root
        // side is deleted too in case the move into it never happened.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.outer])
            .output();
    }
}
