//! Failed-attempt limits per client address (join-token guessing): a token bucket per
//! address, fed with time by the caller (pure). Only failures take from the bucket, so a
//! site enrolling many nodes through one NAT address is not slowed down; an address whose
//! bucket is empty is refused until it refills. Memory is bounded: past `max_keys`
//! addresses, full buckets are forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Failed attempts allowed per address: `burst` at once, then one per `every`.
#[derive(Debug)]
pub struct FailureLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    burst: f64,
    every: Duration,
    max_keys: usize,
}

impl FailureLimiter {
    pub fn new(burst: u32, every: Duration, max_keys: usize) -> FailureLimiter {
        FailureLimiter {
            buckets: HashMap::new(),
            burst: f64::from(burst.max(1)),
            every: every.max(Duration::from_millis(1)),
            max_keys: max_keys.max(1),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(b.at).as_secs_f64() / self.every.as_secs_f64();
        (b.tokens + gained).min(self.burst)
    }

    /// `Ok` if `addr` may try now; otherwise how long until it may.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.buckets.get(&addr) {
            Some(b) => {
                let tokens = self.refilled(*b, now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(self.every.mul_f64(1.0 - tokens))
                }
            }
            None => Ok(()),
        }
    }

    /// A failed attempt from `addr`.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= self.max_keys {
            self.prune(now);
        }
        let tokens = match self.buckets.get(&addr) {
            Some(b) => self.refilled(*b, now),
            None => self.burst,
        };
        self.buckets.insert(
            addr,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }

    /// Forgets addresses whose bucket has refilled; if none has, the fullest half.
    fn prune(&mut self, now: Instant) {
        let burst = self.burst;
        let full: Vec<IpAddr> = self
            .buckets
            .iter()
            .filter(|(_, b)| self.refilled(**b, now) >= burst)
            .map(|(k, _)| *k)
            .collect();
        if !full.is_empty() {
            for k in full {
                self.buckets.remove(&k);
            }
            return;
        }
        let mut by_tokens: Vec<(IpAddr, f64)> = self
            .buckets
            .iter()
            .map(|(k, b)| (*k, self.refilled(*b, now)))
            .collect();
        by_tokens.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (k, _) in by_tokens.into_iter().take(self.buckets.len() / 2 + 1) {
            self.buckets.remove(&k);
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_burst_of_failures_then_one_per_interval() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3, Duration::from_secs(6), 100);
        for _ in 0..3 {
            assert!(l.check(ip(1), t0).is_ok());
            l.failed(ip(1), t0);
        }
        let wait = l.check(ip(1), t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        assert!(
            l.check(ip(2), t0).is_ok(),
            "other addresses are not affected"
        );
        assert!(l.check(ip(1), t0 + Duration::from_secs(3)).is_err());
        assert!(l.check(ip(1), t0 + Duration::from_secs(6)).is_ok());
        l.failed(ip(1), t0 + Duration::from_secs(6));
        assert!(l.check(ip(1), t0 + Duration::from_secs(7)).is_err());
        // A long quiet time refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            l.failed(ip(1), later);
        }
        assert!(l.check(ip(1), later).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(2, Duration::from_secs(60), 64);
        for i in 0..10_000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            l.failed(a, t0);
            l.failed(a, t0);
            assert!(l.tracked() <= 64);
        }
        // The latest offender is still held back.
        assert!(l.check(IpAddr::from(9_999u32.to_be_bytes()), t0).is_err());
    }
}
