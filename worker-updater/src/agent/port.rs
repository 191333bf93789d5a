//! Who listens on a TCP port: `/proc/net/tcp{,6}` gives the socket inode of
//! a listener, `/proc/<pid>/fd/` the process holding it. Used to say in a
//! 409 when a stray old process, not the agent just started, holds the
//! agent's port.

use super::proc;

/// TCP state LISTEN in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// The socket inodes listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    listening_inodes_where(port, |_| true)
}

/// The socket inodes listening on `port` whose local address, as
/// `/proc/net/tcp{,6}` writes it (hex), passes `addr_ok`.
fn listening_inodes_where(port: u16, addr_ok: impl Fn(&str) -> bool) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if p == Some(port)
                && local.rsplit_once(':').is_some_and(|(a, _)| addr_ok(a))
                && *state == LISTEN
                && let Ok(inode) = inode.parse::<u64>()
                && inode != 0
            {
                out.push(inode);
            }
        }
    }
    out
}

/// The processes holding a socket that listens on `port` (blocking: reads
/// every process's fd table).
pub fn holders(port: u16) -> Vec<i32> {
    holding(&listening_inodes(port))
}

/// The processes holding a listening socket that a bind of `addr` would
/// collide with: same port, and the same IPv4 address or a wildcard on
/// either side (an IPv6 `addr` matches on the port alone).
pub fn holders_of(addr: std::net::SocketAddr) -> Vec<i32> {
    let want = match addr.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => {
            Some(format!("{:08X}", u32::from_le_bytes(ip.octets())))
        }
        _ => None,
    };
    let inodes = listening_inodes_where(addr.port(), |a| match &want {
        Some(w) => a == w || a == "00000000" || a.chars().all(|c| c == '0'),
        None => true,
    });
    holding(&inodes)
}

/// The processes holding any of the socket `inodes`.
fn holding(inodes: &[u64]) -> Vec<i32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let names: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    proc::pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
                rd.filter_map(|e| e.ok()).any(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| names.iter().any(|n| l.as_os_str() == n.as_str()))
                })
            })
        })
        .collect()
}

/// A note for the 409 when something other than `agent` (or its
/// descendants) holds `port`: who, by pid and command line (the first
/// three, each capped).
pub fn stray_note(port: u16, agent: Option<i32>) -> Option<String> {
    let strays: Vec<i32> = holders(port)
        .into_iter()
        .filter(|&p| agent.is_none_or(|a| p != a && !proc::descends_from(p, a)))
        .collect();
    if strays.is_empty() {
        return None;
    }
    let who: Vec<String> = strays
        .iter()
        .take(3)
        .map(|&pid| {
            let cmd: String = proc::cmdline(pid)
                .unwrap_or_default()
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .filter(|c| !c.is_control())
                .take(120)
                .collect();
            format!("pid {pid} ({cmd})")
        })
        .collect();
    Some(format!(
        "port {port} is still held by {}, not by the agent just started: a stray old process answers there",
        who.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_process_listening_on_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        assert!(holders(port).contains(&me));
        assert!(stray_note(port, Some(me)).is_none());
        let on = |ip: [u8; 4]| holders_of(std::net::SocketAddr::from((ip, port)));
        assert!(on([127, 0, 0, 1]).contains(&me));
        assert!(on([0, 0, 0, 0]).contains(&me), "a wildcard collides");
        assert!(
            !on([127, 0, 0, 2]).contains(&me),
            "another address does not"
        );
        let note = stray_note(port, None).unwrap();
        assert!(note.contains(&format!("pid {me}")), "{note}");
    }
}
