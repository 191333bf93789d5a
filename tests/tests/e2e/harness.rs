//! Tests of the harness itself: ports no two daemons can be handed.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};

use tests::ports::{Port, free_port};

/// Issue 9, bug 2: bind-and-release gave the same port twice within a few
/// hundred calls (the old `free_port` repeated one after 107).
#[test]
fn two_thousand_ports_in_a_row_are_distinct() {
    let mut seen = HashSet::new();
    for i in 0..2000 {
        // Dropped at once: a released claim is still never handed out again.
        let p = free_port().get();
        assert!(seen.insert(p), "allocation {i} handed out port {p} again");
    }
}

/// Threads of one binary (how cargo runs these tests) never share a port.
#[test]
fn concurrent_threads_get_distinct_ports() {
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..100).map(|_| free_port()).collect::<Vec<Port>>()))
        .collect();
    let mut seen = HashSet::new();
    for t in threads {
        for p in t.join().expect("allocating thread") {
            assert!(seen.insert(p.get()), "port {p} handed out twice");
        }
    }
}

/// What other processes see: while held, a port's claim on 127.0.0.2
/// cannot be taken, and the daemon can still bind 127.0.0.1; the kernel
/// never gives it to a `bind :0`, being below the ephemeral range.
#[test]
fn a_held_port_is_claimed_yet_bindable_by_its_daemon() {
    let (low, _) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .expect("ephemeral range");
    let p = free_port();
    assert!(p.get() < low, "{p} is in the ephemeral range from {low}");
    assert!(
        TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), p.get())).is_err(),
        "the claim on {p} is not held"
    );
    let daemon = TcpListener::bind((Ipv4Addr::LOCALHOST, p.get())).expect("daemon binds its port");
    drop(daemon);
    let port = p.get();
    drop(p);
    TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), port)).expect("claim released on drop");
}
