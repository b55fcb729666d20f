//! The flows a node sent into its tunnels, so the replies to them pass its access policy:
//! a bounded table keyed by the 5-tuple (for ICMP echo, the identifier), each entry
//! expiring after a protocol's idle time. Time is seconds from the caller.

use std::collections::HashMap;
use std::net::IpAddr;

/// Most flows kept at once (about 3.5 MiB). A new flow past it is not tracked, so its
/// replies are judged by the rules alone (and counted as untracked).
pub const MAX_FLOWS: usize = 65_536;
/// Idle time after which a flow is forgotten, by protocol: TCP 2 h (long-lived connections
/// with sparse traffic), UDP 3 min, ICMP echo 30 s. Every packet the node sends refreshes it.
pub const TCP_IDLE: u32 = 2 * 60 * 60;
pub const UDP_IDLE: u32 = 3 * 60;
pub const ICMP_IDLE: u32 = 30;
/// Shortest time between two sweeps of expired flows (a sweep walks the whole table).
const SWEEP_EVERY: u32 = 1;

/// One flow, from this side: the local host sent to the remote one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub proto: u8,
    pub local: IpAddr,
    pub remote: IpAddr,
    /// For ICMP echo: the identifier, and 0.
    pub local_port: u16,
    pub remote_port: u16,
}

/// Entries expiring after an idle time, at most `max` of them (flows, by default).
impl std::hash::Hash for FlowKey {
    /// One write of the packed key: a keyed hash costs about half of what it does field by
    /// field (measured in `bench/src/bin/access.rs`), and every packet the node sends pays it.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let octets = |a: IpAddr| match a {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let mut b = [0u8; 38];
        b[0] = self.proto;
        b[1] = u8::from(self.local.is_ipv4());
        b[2..18].copy_from_slice(&octets(self.local));
        b[18..34].copy_from_slice(&octets(self.remote));
        b[34..36].copy_from_slice(&self.local_port.to_be_bytes());
        b[36..38].copy_from_slice(&self.remote_port.to_be_bytes());
        state.write(&b);
    }
}

#[derive(Debug)]
pub struct Flows<K = FlowKey> {
    /// Entry -> when it expires (seconds).
    table: HashMap<K, u32>,
    max: usize,
    last_sweep: Option<u32>,
    /// Flows not tracked because the table was full.
    pub untracked: u64,
}

impl Default for Flows {
    fn default() -> Self {
        Flows::with_capacity(MAX_FLOWS)
    }
}

impl<K: std::hash::Hash + Eq> Flows<K> {
    pub fn with_capacity(max: usize) -> Flows<K> {
        Flows {
            table: HashMap::new(),
            max,
            last_sweep: None,
            untracked: 0,
        }
    }

    /// The node sent a packet of `flow` at `now`: it lives for `idle` more seconds. Returns
    /// until when, or `None` if the table is full.
    pub fn sent(&mut self, flow: K, now: u32, idle: u32) -> Option<u32> {
        let until = now.saturating_add(idle);
        if let Some(e) = self.table.get_mut(&flow) {
            *e = until;
            return Some(until);
        }
        if self.table.len() >= self.max {
            self.sweep(now);
            if self.table.len() >= self.max {
                self.untracked += 1;
                return None;
            }
        }
        self.table.insert(flow, until);
        Some(until)
    }

    /// Until when `flow` lives, if it does at `now`.
    pub fn until(&self, flow: &K, now: u32) -> Option<u32> {
        self.table.get(flow).copied().filter(|until| *until > now)
    }

    /// Whether `flow` was sent and has not expired at `now`.
    pub fn has(&self, flow: &K, now: u32) -> bool {
        self.until(flow, now).is_some()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Forgets expired flows, at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: u32) {
        if self
            .last_sweep
            .is_some_and(|at| now.saturating_sub(at) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.table.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            proto: 6,
            local: "10.1.0.5".parse().unwrap(),
            remote: "10.2.0.9".parse().unwrap(),
            local_port: port,
            remote_port: 443,
        }
    }

    #[test]
    fn flows_expire_when_idle_and_refresh_when_used() {
        let mut f = Flows::default();
        f.sent(flow(1), 100, 30);
        assert!(f.has(&flow(1), 129));
        assert!(!f.has(&flow(1), 130));
        assert!(!f.has(&flow(2), 100));
        f.sent(flow(1), 129, 30);
        assert!(f.has(&flow(1), 158));
    }

    #[test]
    fn a_full_table_sweeps_expired_flows_then_refuses_new_ones() {
        let mut f = Flows::with_capacity(2);
        f.sent(flow(1), 0, 10);
        f.sent(flow(2), 0, 100);
        f.sent(flow(3), 5, 10);
        assert_eq!((f.len(), f.untracked), (2, 1), "nothing expired yet");
        // Flow 1 expired: the sweep makes room.
        f.sent(flow(3), 10, 10);
        assert!(f.has(&flow(3), 11) && !f.has(&flow(1), 11));
        assert_eq!(f.untracked, 1);
        // A known flow is refreshed even when the table is full.
        f.sent(flow(2), 11, 100);
        assert!(f.has(&flow(2), 110));
        // Sweeps are rate-limited: within the same second, a new flow is refused at once.
        f.sent(flow(4), 11, 10);
        f.sent(flow(5), 11, 10);
        assert_eq!(f.untracked, 3);
    }
}
