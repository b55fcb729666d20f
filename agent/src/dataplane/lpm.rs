//! Longest-prefix match from destination addresses to peers (WireGuard's cryptokey routing:
//! a peer's allowed IPs decide both where a packet goes and which inner sources it may use).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// A table of prefixes to values, looked up by longest match.
#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    /// Buckets by prefix length (0..=32 for IPv4, 0..=128 for IPv6), keyed by the masked
    /// address; `v4_lengths`/`v6_lengths` list the lengths in use, longest first.
    v4: HashMap<(u8, u32), T>,
    v6: HashMap<(u8, u128), T>,
    v4_lengths: Vec<u8>,
    v6_lengths: Vec<u8>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable {
            v4: HashMap::new(),
            v6: HashMap::new(),
            v4_lengths: Vec::new(),
            v6_lengths: Vec::new(),
        }
    }
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len as u32))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - len as u32))
    }
}

impl<T> PrefixTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `prefix`, returning the value it replaces.
    pub fn insert(&mut self, prefix: IpNetwork, value: T) -> Option<T> {
        let len = prefix.prefix();
        match prefix.network() {
            IpAddr::V4(a) => {
                if !self.v4_lengths.contains(&len) {
                    self.v4_lengths.push(len);
                    self.v4_lengths.sort_unstable_by(|a, b| b.cmp(a));
                }
                self.v4.insert((len, mask4(u32::from(a), len)), value)
            }
            IpAddr::V6(a) => {
                if !self.v6_lengths.contains(&len) {
                    self.v6_lengths.push(len);
                    self.v6_lengths.sort_unstable_by(|a, b| b.cmp(a));
                }
                self.v6.insert((len, mask6(u128::from(a), len)), value)
            }
        }
    }

    /// Removes `prefix`, returning its value.
    pub fn remove(&mut self, prefix: IpNetwork) -> Option<T> {
        let len = prefix.prefix();
        match prefix.network() {
            IpAddr::V4(a) => {
                let v = self.v4.remove(&(len, mask4(u32::from(a), len)));
                if !self.v4.keys().any(|(l, _)| *l == len) {
                    self.v4_lengths.retain(|l| *l != len);
                }
                v
            }
            IpAddr::V6(a) => {
                let v = self.v6.remove(&(len, mask6(u128::from(a), len)));
                if !self.v6.keys().any(|(l, _)| *l == len) {
                    self.v6_lengths.retain(|l| *l != len);
                }
                v
            }
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4_lengths
                    .iter()
                    .find_map(|&len| self.v4.get(&(len, mask4(a, len))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6_lengths
                    .iter()
                    .find_map(|&len| self.v6.get(&(len, mask6(a, len))))
            }
        }
    }

    /// The value stored for exactly `prefix`.
    pub fn get_mut(&mut self, prefix: IpNetwork) -> Option<&mut T> {
        let len = prefix.prefix();
        match prefix.network() {
            IpAddr::V4(a) => self.v4.get_mut(&(len, mask4(u32::from(a), len))),
            IpAddr::V6(a) => self.v6.get_mut(&(len, mask6(u128::from(a), len))),
        }
    }

    /// Runs `f` on every value.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut T)) {
        self.v4.values_mut().for_each(&mut f);
        self.v6.values_mut().for_each(&mut f);
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix whose value matches `f`.
    pub fn retain(&mut self, mut f: impl FnMut(&T) -> bool) {
        self.v4.retain(|_, v| f(v));
        self.v6.retain(|_, v| f(v));
        let v4: Vec<u8> = self.v4.keys().map(|(l, _)| *l).collect();
        self.v4_lengths.retain(|l| v4.contains(l));
        let v6: Vec<u8> = self.v6.keys().map(|(l, _)| *l).collect();
        self.v6_lengths.retain(|l| v6.contains(l));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::new();
        t.insert(net("10.0.0.0/8"), "wide");
        t.insert(net("10.20.0.0/16"), "site-b");
        t.insert(net("100.64.0.7/32"), "peer");
        t.insert(net("0.0.0.0/0"), "default");
        assert_eq!(t.lookup(ip("10.20.3.4")), Some(&"site-b"));
        assert_eq!(t.lookup(ip("10.21.3.4")), Some(&"wide"));
        assert_eq!(t.lookup(ip("100.64.0.7")), Some(&"peer"));
        assert_eq!(t.lookup(ip("100.64.0.8")), Some(&"default"));
        assert_eq!(t.lookup(ip("fd00::1")), None, "families are separate");
    }

    #[test]
    fn remove_and_retain_keep_lookups_consistent() {
        let mut t = PrefixTable::new();
        t.insert(net("10.20.0.0/16"), 1);
        t.insert(net("10.20.5.0/24"), 2);
        t.insert(net("fd00:1::/64"), 3);
        assert_eq!(t.lookup(ip("fd00:1::9")), Some(&3));
        assert_eq!(t.remove(net("10.20.5.0/24")), Some(2));
        assert_eq!(t.lookup(ip("10.20.5.1")), Some(&1));
        t.retain(|v| *v != 1);
        assert_eq!(t.lookup(ip("10.20.5.1")), None);
        assert_eq!(t.len(), 1);
        // A prefix with host bits set is stored by its network.
        t.insert(net("10.30.1.7/16"), 4);
        assert_eq!(t.lookup(ip("10.30.200.1")), Some(&4));
    }
}
