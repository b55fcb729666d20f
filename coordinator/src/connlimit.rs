//! Connection admission (pure): how many connections the coordinator holds from each source
//! and in total (`[limits]` in the config). A connection is admitted when its first packet
//! arrives, before any handshake work, and released when it closes, so handshakes that never
//! finish count too. The server refuses an attempt over a limit at once (a QUIC
//! `CONNECTION_REFUSED`, no TLS work done).
//!
//! Sources are IPv4 addresses and IPv6 /64 networks: one IPv6 host usually holds a whole
//! /64, so counting its addresses one by one would limit nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

/// The source a connection from `ip` counts against: the IPv4 address (also when written
/// as an IPv4-mapped IPv6 address), or the IPv6 /64.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Over {
    #[error("{limit} connections are open, the coordinator's limit (`limits.max-connections`)")]
    Total { limit: u32 },
    #[error("{limit} connections are open from {from}, the limit per address (`limits.max-connections-per-address`)")]
    Source { from: IpAddr, limit: u32 },
}

/// Open connections by source and in total.
#[derive(Debug)]
pub struct Connections {
    max_total: u32,
    max_per_source: u32,
    total: u32,
    by_source: HashMap<IpAddr, u32>,
}

impl Connections {
    pub fn new(max_total: u32, max_per_source: u32) -> Connections {
        Connections {
            max_total,
            max_per_source,
            total: 0,
            by_source: HashMap::new(),
        }
    }

    /// Counts a new connection from `ip`, unless that would pass a limit. Every admitted
    /// connection must be [`released`](Connections::release) once.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Over> {
        let source = source(ip);
        let from_source = self.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(Over::Source {
                from: source,
                limit: self.max_per_source,
            });
        }
        if self.total >= self.max_total {
            return Err(Over::Total {
                limit: self.max_total,
            });
        }
        self.total += 1;
        self.by_source.insert(source, from_source + 1);
        Ok(())
    }

    /// A connection from `ip` admitted earlier has closed.
    pub fn release(&mut self, ip: IpAddr) {
        let source = source(ip);
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
            self.total -= 1;
        }
    }

    /// Connections open now.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Sources with connections open now (memory is bounded by `max_total`).
    pub fn sources(&self) -> usize {
        self.by_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_hold_per_source_and_in_total() {
        let mut c = Connections::new(5, 3);
        for _ in 0..3 {
            c.admit(ip("192.0.2.1")).unwrap();
        }
        let over = c.admit(ip("192.0.2.1")).unwrap_err();
        assert_eq!(
            over,
            Over::Source {
                from: ip("192.0.2.1"),
                limit: 3
            }
        );
        assert!(over.to_string().contains("from 192.0.2.1"), "{over}");
        c.admit(ip("192.0.2.2")).unwrap();
        c.admit(ip("192.0.2.3")).unwrap();
        assert_eq!(
            c.admit(ip("192.0.2.4")),
            Err(Over::Total { limit: 5 }),
            "the total limit holds for a new source"
        );
        assert_eq!((c.total(), c.sources()), (5, 3));
        c.release(ip("192.0.2.1"));
        c.admit(ip("192.0.2.4")).unwrap();
        for a in [
            "192.0.2.1",
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "192.0.2.4",
        ] {
            c.release(ip(a));
        }
        assert_eq!((c.total(), c.sources()), (0, 0), "nothing left behind");
        // Releasing what was never admitted changes nothing.
        c.release(ip("192.0.2.9"));
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut c = Connections::new(100, 2);
        c.admit(ip("2001:db8:1:2::1")).unwrap();
        c.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(
            c.admit(ip("2001:db8:1:2:abcd::1")).is_err(),
            "one /64 is one source"
        );
        c.admit(ip("2001:db8:1:3::1")).unwrap();
        c.admit(ip("::ffff:192.0.2.1")).unwrap();
        c.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            c.admit(ip("192.0.2.1")),
            Err(Over::Source {
                from: ip("192.0.2.1"),
                limit: 2
            })
        );
    }
}
