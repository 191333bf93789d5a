//! Admission control for the accept loop: a bounded set of TLS handshakes in
//! progress (the oldest is dropped when full) and connection budgets per
//! verified identity, in total, and reserved for CN `master`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::Identity;

/// The counters behind every slot and permit of one `serve` call.
#[derive(Debug)]
pub(crate) struct Gate {
    max_handshakes: usize,
    max_connections: usize,
    max_per_peer: usize,
    master_connections: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Pending handshakes, oldest first; dropping a sender evicts its task.
    handshakes: BTreeMap<u64, oneshot::Sender<()>>,
    per_peer: HashMap<Identity, usize>,
    others: usize,
    masters: usize,
    /// Refusals since the last one that was logged, and when that was.
    refused_unlogged: u64,
    last_refusal_log: Option<tokio::time::Instant>,
}

/// Why an established connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Master(usize),
    Total(usize),
    PerPeer(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Master(n) => write!(f, "all {n} master connections are in use"),
            Refusal::Total(n) => write!(f, "all {n} peer connections are in use"),
            Refusal::PerPeer(n) => write!(f, "this peer already holds {n} connections"),
        }
    }
}

/// A handshake in progress; it frees its place when dropped.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    gate: Arc<Gate>,
    id: u64,
    /// Resolves (with an error) when a newer connection evicted this one.
    pub(crate) evicted: oneshot::Receiver<()>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.gate.lock().handshakes.remove(&self.id);
    }
}

/// An admitted connection; it gives its budget back when dropped.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    gate: Arc<Gate>,
    who: Option<Identity>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        match self.who.take() {
            None => st.masters = st.masters.saturating_sub(1),
            Some(who) => {
                st.others = st.others.saturating_sub(1);
                if let Some(n) = st.per_peer.get_mut(&who) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        st.per_peer.remove(&who);
                    }
                }
            }
        }
    }
}

impl Gate {
    pub(crate) fn new(limits: &super::ServeLimits) -> Arc<Gate> {
        Arc::new(Gate {
            max_handshakes: limits.max_handshakes.max(1),
            max_connections: limits.max_connections,
            max_per_peer: limits.max_connections_per_peer,
            master_connections: limits.master_connections,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only counters behind;
        // they stay usable, so recover the guard instead of poisoning
        // every later connection.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more handshake. When all are taken the oldest pending
    /// handshake is evicted; returns whether that happened.
    pub(crate) fn begin_handshake(self: &Arc<Self>) -> (HandshakeSlot, bool) {
        let mut st = self.lock();
        let mut evicted = false;
        while st.handshakes.len() >= self.max_handshakes {
            // Dropping the sender wakes the evicted task's receiver.
            st.handshakes.pop_first();
            evicted = true;
        }
        let id = st.next_id;
        st.next_id += 1;
        let (tx, rx) = oneshot::channel();
        st.handshakes.insert(id, tx);
        drop(st);
        let slot = HandshakeSlot {
            gate: Arc::clone(self),
            id,
            evicted: rx,
        };
        (slot, evicted)
    }

    /// Count a refusal; `Some(n)` when it should be logged now (at most once
    /// per `every`), `n` being the refusals left unlogged before it, so a
    /// flood of connections cannot flood the log.
    pub(crate) fn note_refusal(&self, every: std::time::Duration) -> Option<u64> {
        let mut st = self.lock();
        let now = tokio::time::Instant::now();
        if st
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= every)
        {
            st.last_refusal_log = Some(now);
            Some(std::mem::take(&mut st.refused_unlogged))
        } else {
            st.refused_unlogged += 1;
            None
        }
    }

    /// Admit an established connection from `who`, or say which budget is spent.
    pub(crate) fn admit(self: &Arc<Self>, who: &Identity) -> Result<ConnPermit, Refusal> {
        let mut st = self.lock();
        if *who == Identity::Master {
            if st.masters >= self.master_connections {
                return Err(Refusal::Master(self.master_connections));
            }
            st.masters += 1;
            return Ok(ConnPermit {
                gate: Arc::clone(self),
                who: None,
            });
        }
        if st.others >= self.max_connections {
            return Err(Refusal::Total(self.max_connections));
        }
        let mine = st.per_peer.get(who).copied().unwrap_or(0);
        if mine >= self.max_per_peer {
            return Err(Refusal::PerPeer(self.max_per_peer));
        }
        st.others += 1;
        st.per_peer.insert(who.clone(), mine + 1);
        Ok(ConnPermit {
            gate: Arc::clone(self),
            who: Some(who.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HostName, serve::ServeLimits};

    fn gate(handshakes: usize, total: usize, per_peer: usize, master: usize) -> Arc<Gate> {
        Gate::new(&ServeLimits {
            max_handshakes: handshakes,
            max_connections: total,
            max_connections_per_peer: per_peer,
            master_connections: master,
            ..ServeLimits::default()
        })
    }

    fn agent(h: &str) -> Identity {
        Identity::Agent(HostName::new(h).expect("valid test host name"))
    }

    #[test]
    fn a_full_handshake_table_evicts_the_oldest_and_frees_on_drop() {
        let g = gate(2, 10, 10, 10);
        let (mut a, ev) = g.begin_handshake();
        assert!(!ev);
        let (b, _) = g.begin_handshake();
        let (c, ev) = g.begin_handshake();
        assert!(ev, "the third handshake had to evict one");
        use tokio::sync::oneshot::error::TryRecvError;
        assert_eq!(
            a.evicted.try_recv(),
            Err(TryRecvError::Closed),
            "the oldest was evicted"
        );
        let (mut b, c) = (b, c);
        assert_eq!(
            b.evicted.try_recv(),
            Err(TryRecvError::Empty),
            "the newer one stays"
        );
        assert_eq!(g.lock().handshakes.len(), 2);
        drop((b, c));
        assert_eq!(g.lock().handshakes.len(), 0);
        drop(a);
    }

    #[test]
    fn budgets_per_peer_in_total_and_for_master_are_separate() {
        let g = gate(4, 3, 2, 1);
        let a1 = g.admit(&agent("w1")).expect("first");
        let _a2 = g.admit(&agent("w1")).expect("second");
        assert_eq!(g.admit(&agent("w1")).unwrap_err(), Refusal::PerPeer(2));
        let _b1 = g.admit(&agent("w2")).expect("another peer");
        assert_eq!(g.admit(&agent("w3")).unwrap_err(), Refusal::Total(3));
        // Others are full, yet the master gets its own reserve.
        let m = g.admit(&Identity::Master).expect("master reserve");
        assert_eq!(g.admit(&Identity::Master).unwrap_err(), Refusal::Master(1));
        drop(m);
        let _m = g
            .admit(&Identity::Master)
            .expect("master again after release");
        drop(a1);
        let _a3 = g.admit(&agent("w1")).expect("w1 again after release");
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_period_with_a_count() {
        let g = gate(1, 1, 1, 1);
        let every = std::time::Duration::from_secs(3600);
        assert_eq!(g.note_refusal(every), Some(0));
        assert_eq!(g.note_refusal(every), None);
        assert_eq!(g.note_refusal(every), None);
        assert_eq!(g.lock().refused_unlogged, 2);
    }
}
