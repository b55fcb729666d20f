//! Recent flows and what the policy made of them, so that the packets of a flow after its
//! first skip the rules and the flow table: a direct-mapped array indexed by a keyed hash of
//! the flow. A collision only evicts; a miss takes the full path. So whoever chooses flows
//! (a remote site choosing its packets' ports) can at most make its own packets take the
//! full path, never let one through that the full path would refuse.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use super::flows::FlowKey;

/// Slots (a power of two): 4,096 flows, about 230 KiB.
pub const SLOTS: usize = 4096;

/// What is known of a flow (keyed as the flow table keys it: from this node's side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// The rules allow the flow's inbound packets (the cache is cleared when they change).
    pub allowed: bool,
    /// Inbound packets answer a flow this node sent until then (seconds), as the flow table
    /// had it.
    pub reply_until: u32,
    /// The second (plus one; 0: never) this node last refreshed the flow in the flow table.
    pub refreshed: u32,
}

#[derive(Debug)]
pub struct Cache {
    slots: Vec<Option<(FlowKey, Entry)>>,
    seed: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            // Allocated at the first entry: a node without a policy never makes one.
            slots: Vec::new(),
            // A per-process random key (std's hasher keys come from the OS).
            seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        }
    }
}

fn fold(a: IpAddr) -> u64 {
    match a {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let a = u128::from(a);
            (a as u64) ^ ((a >> 64) as u64).rotate_left(17)
        }
    }
}

impl Cache {
    fn index(&self, k: &FlowKey) -> usize {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let ports =
            u64::from(k.proto) << 32 | u64::from(k.local_port) << 16 | u64::from(k.remote_port);
        let mut h = self.seed;
        for x in [ports, fold(k.local), fold(k.remote)] {
            h = (h ^ x).wrapping_mul(K).rotate_left(29);
        }
        (h >> 20) as usize & (SLOTS - 1)
    }

    pub fn get(&self, k: &FlowKey) -> Option<Entry> {
        match self.slots.get(self.index(k))? {
            Some((key, e)) if key == k => Some(*e),
            _ => None,
        }
    }

    /// The entry of `k`, made (evicting whatever held the slot) if there is none.
    pub fn entry(&mut self, k: FlowKey) -> &mut Entry {
        if self.slots.is_empty() {
            self.slots = vec![None; SLOTS];
        }
        let i = self.index(&k);
        let slot = &mut self.slots[i];
        if !matches!(slot, Some((key, _)) if *key == k) {
            *slot = Some((k, Entry::default()));
        }
        match slot {
            Some((_, e)) => e,
            None => unreachable!("the slot was just filled"),
        }
    }

    pub fn clear(&mut self) {
        self.slots.fill(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            proto: 6,
            local: "10.2.0.9".parse().unwrap(),
            remote: "fd00:1::5".parse().unwrap(),
            local_port: port,
            remote_port: 443,
        }
    }

    #[test]
    fn entries_are_found_by_their_whole_key_and_slots_are_shared() {
        let mut c = Cache::default();
        assert_eq!(c.get(&flow(1)), None);
        c.entry(flow(1)).allowed = true;
        assert_eq!(c.get(&flow(1)).map(|e| e.allowed), Some(true));
        // Fill every slot many times over: only keys that are there answer, and with their
        // own entry.
        for p in 2..20_000 {
            c.entry(flow(p)).reply_until = u32::from(p);
        }
        for p in 2..20_000 {
            if let Some(e) = c.get(&flow(p)) {
                assert_eq!(e.reply_until, u32::from(p));
                assert!(!e.allowed);
            }
        }
        c.clear();
        assert!((1..20_000).all(|p| c.get(&flow(p)).is_none()));
    }
}
