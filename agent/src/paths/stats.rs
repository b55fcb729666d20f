//! Figures of one path from its probe outcomes: smoothed RTT, jitter, loss and RTT
//! percentiles over a window of recent probes. Pure: fed outcomes, reads no clock.

use std::collections::VecDeque;
use std::time::Duration;

/// Probes remembered for loss and percentiles.
pub const WINDOW: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct PathStats {
    /// Smoothed RTT (EWMA, gain 1/8, as TCP's SRTT).
    srtt: Option<Duration>,
    /// Mean deviation between consecutive RTTs (RFC 3550 interarrival jitter, gain 1/16).
    jitter: Duration,
    last_rtt: Option<Duration>,
    /// Recent outcomes, newest last: the RTT, or `None` for a lost probe.
    window: VecDeque<Option<Duration>>,
}

impl PathStats {
    pub fn record_reply(&mut self, rtt: Duration) {
        self.record_rtt(rtt);
        self.push(Some(rtt));
    }

    /// An RTT outside the window (a probe that is not a sample of the path's loss): the
    /// smoothed RTT and jitter only.
    pub fn record_rtt(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        if let Some(last) = self.last_rtt {
            let d = rtt.abs_diff(last);
            // J += (|D| - J) / 16, in signed arithmetic on nanoseconds.
            let j = self.jitter.as_nanos() as i128;
            let next = j + (d.as_nanos() as i128 - j) / 16;
            self.jitter = Duration::from_nanos(next.max(0) as u64);
        }
        self.last_rtt = Some(rtt);
    }

    pub fn record_loss(&mut self) {
        self.push(None);
    }

    fn push(&mut self, outcome: Option<Duration>) {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(outcome);
    }

    /// Forgets the window's outcomes (loss and percentiles start afresh).
    pub fn clear_window(&mut self) {
        self.window.clear();
    }

    /// Probes in the window.
    pub fn samples(&self) -> usize {
        self.window.len()
    }

    /// Answered probes in the window.
    pub fn answered(&self) -> usize {
        self.window.iter().filter(|o| o.is_some()).count()
    }

    /// Lost probes in the window.
    pub fn lost(&self) -> usize {
        self.window.iter().filter(|o| o.is_none()).count()
    }

    /// Fraction of the window's probes that were lost (0 with no samples).
    pub fn loss(&self) -> f64 {
        if self.window.is_empty() {
            return 0.0;
        }
        let lost = self.window.iter().filter(|o| o.is_none()).count();
        lost as f64 / self.window.len() as f64
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// The median RTT of the last `n` answered probes in the window (`None`: none).
    pub fn recent_median(&self, n: usize) -> Option<Duration> {
        let mut rtts: Vec<Duration> = self
            .window
            .iter()
            .rev()
            .flatten()
            .take(n)
            .copied()
            .collect();
        if rtts.is_empty() {
            return None;
        }
        rtts.sort();
        Some(rtts[(rtts.len() - 1) / 2])
    }

    /// The `p`-th percentile (0-100, nearest rank) of the window's answered probes.
    pub fn rtt_percentile(&self, p: u8) -> Option<Duration> {
        let mut rtts: Vec<Duration> = self.window.iter().flatten().copied().collect();
        if rtts.is_empty() {
            return None;
        }
        rtts.sort();
        let rank = (usize::from(p.min(100)) * rtts.len()).div_ceil(100).max(1);
        Some(rtts[rank - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn smoothed_rtt_jitter_loss_and_percentiles() {
        let mut s = PathStats::default();
        assert_eq!(s.loss(), 0.0);
        assert_eq!(s.rtt_percentile(50), None);
        s.record_reply(ms(10));
        assert_eq!(s.srtt(), Some(ms(10)));
        assert_eq!(s.jitter(), Duration::ZERO);
        s.record_reply(ms(18));
        assert_eq!(s.srtt(), Some(ms(11)), "10 + (18 - 10) / 8");
        assert_eq!(s.jitter(), ms(8) / 16);
        s.record_loss();
        s.record_reply(ms(12));
        assert!((s.loss() - 0.25).abs() < 1e-9);
        assert_eq!(s.rtt_percentile(50), Some(ms(12)));
        assert_eq!(s.rtt_percentile(95), Some(ms(18)));
        assert_eq!(s.rtt_percentile(0), Some(ms(10)));
    }

    #[test]
    fn the_window_forgets_old_outcomes() {
        let mut s = PathStats::default();
        for _ in 0..WINDOW {
            s.record_loss();
        }
        assert_eq!(s.loss(), 1.0);
        for _ in 0..WINDOW {
            s.record_reply(ms(5));
        }
        assert_eq!(s.loss(), 0.0);
        assert_eq!(s.samples(), WINDOW);
    }
}
