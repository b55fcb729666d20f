//! Certificate renewal: when to renew (pure) and a task that does it.
//!
//! A certificate is renewed at about two thirds of its lifetime, with a jitter of up to
//! ±5% of the lifetime so a fleet issued together does not renew together. If the CA or
//! Vault cannot be reached the task retries with capped exponential backoff and keeps the
//! current certificate until it expires, publishing its state on a `watch` channel and
//! counting renewals and failures in [`RenewalCounts`].
//!
//! Every failure is logged at WARN with what was tried (the source's error), until when the
//! current certificate stays valid and when the next attempt comes; the first failure after
//! expiry is logged at ERROR with the source's [`CertSource::expiry_advice`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::material::CertBundle;
use crate::tls::CertStore;

/// When to renew a certificate valid from `not_before` to `not_after`.
/// `jitter` is in `[0, 1)`; 0.5 means no jitter.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let jitter = jitter.clamp(0.0, 1.0);
    let base = lifetime.mul_f64(2.0 / 3.0);
    let spread = lifetime.mul_f64(0.05);
    let offset = if jitter >= 0.5 {
        base + spread.mul_f64((jitter - 0.5) * 2.0)
    } else {
        base - spread.mul_f64((0.5 - jitter) * 2.0)
    };
    not_before + offset
}

/// Delay before retry number `attempt` (0-based) after a failed renewal: 1 s doubling to a
/// 5 min cap, plus up to 25% jitter, but never past `not_after`, so the published state
/// turns to [`RenewalState::Expired`] promptly at expiry.
pub fn retry_delay(attempt: u32, jitter: f64, now: SystemTime, not_after: SystemTime) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.min(9))
        .min(Duration::from_secs(300));
    let delay = base + base.mul_f64(jitter.clamp(0.0, 1.0) * 0.25);
    match not_after.duration_since(now) {
        Ok(left) if left > Duration::ZERO => delay.min(left),
        _ => delay,
    }
}

/// What the renewal task is doing, for status pages and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewalState {
    /// The certificate is current; renewal is scheduled.
    Valid {
        serial: String,
        not_after: SystemTime,
        renew_at: SystemTime,
    },
    /// Renewal failed; the current certificate is still in use until `not_after`.
    Retrying {
        serial: String,
        not_after: SystemTime,
        attempts: u32,
        last_error: String,
    },
    /// The certificate expired and no new one could be obtained; peers will refuse it.
    Expired {
        serial: String,
        not_after: SystemTime,
        attempts: u32,
        last_error: String,
    },
}

impl RenewalState {
    /// A short name of the state for metrics labels: `valid`, `retrying` or `expired`.
    pub fn name(&self) -> &'static str {
        match self {
            RenewalState::Valid { .. } => "valid",
            RenewalState::Retrying { .. } => "retrying",
            RenewalState::Expired { .. } => "expired",
        }
    }
}

/// Something that issues a fresh certificate for this node (built-in CA, coordinator, Vault).
pub trait CertSource: Send + Sync + 'static {
    /// A fresh certificate, or what was tried and why it failed.
    fn fetch(&self) -> impl Future<Output = Result<CertBundle, String>> + Send;

    /// What an operator should do once the certificate expired without being renewed (logged
    /// with the expiry).
    fn expiry_advice(&self) -> String {
        "make the CA reachable; renewal is retried with backoff".into()
    }
}

/// Renewals and failed attempts since the task started, for metrics.
#[derive(Debug, Default)]
pub struct RenewalCounts {
    renewed: AtomicU64,
    failed: AtomicU64,
}

impl RenewalCounts {
    /// Certificates renewed and swapped in.
    pub fn renewed(&self) -> u64 {
        self.renewed.load(Ordering::Relaxed)
    }

    /// Renewal attempts that failed (each retry counts).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Runs renewal forever for the bundle in `store`, publishing state on the returned channel.
/// Dropping the returned handle's task (abort) stops renewal.
pub fn spawn<S: CertSource>(
    source: S,
    store: CertStore,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<RenewalState>) {
    let (task, rx, _) = spawn_counted(source, store);
    (task, rx)
}

/// Like [`spawn`], also returning the task's [`RenewalCounts`].
pub fn spawn_counted<S: CertSource>(
    source: S,
    store: CertStore,
) -> (
    tokio::task::JoinHandle<()>,
    watch::Receiver<RenewalState>,
    Arc<RenewalCounts>,
) {
    let current = store.bundle();
    let (tx, rx) = watch::channel(valid_state(&current, 0.5));
    let counts = Arc::new(RenewalCounts::default());
    let task = tokio::spawn(run(Arc::new(source), store, tx, counts.clone()));
    (task, rx, counts)
}

/// `t` as RFC 3339 (UTC, seconds), for logs.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn valid_state(b: &CertBundle, jitter: f64) -> RenewalState {
    RenewalState::Valid {
        serial: b.serial.clone(),
        not_after: b.not_after,
        renew_at: renew_at(b.not_before, b.not_after, jitter),
    }
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u16::from_le_bytes(b) as f64 / 65536.0
}

async fn sleep_until(t: SystemTime) {
    if let Ok(d) = t.duration_since(SystemTime::now()) {
        tokio::time::sleep(d).await;
    }
}

async fn run<S: CertSource>(
    source: Arc<S>,
    store: CertStore,
    tx: watch::Sender<RenewalState>,
    counts: Arc<RenewalCounts>,
) {
    loop {
        let current = store.bundle();
        let state = valid_state(&current, jitter());
        let RenewalState::Valid { renew_at, .. } = state else {
            unreachable!("valid_state builds Valid")
        };
        tracing::debug!(serial = %current.serial, renew_at = %rfc3339(renew_at), "certificate renewal scheduled");
        tx.send_replace(state);
        sleep_until(renew_at).await;

        let mut attempts = 0u32;
        loop {
            match source.fetch().await {
                Ok(fresh) => {
                    let (serial, not_after) = (fresh.serial.clone(), fresh.not_after);
                    if let Err(e) = store.replace(fresh) {
                        tracing::error!(error = %e, "renewed certificate is unusable; keeping the current one");
                    } else {
                        counts.renewed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            identity = %current.identity,
                            serial = %serial,
                            previous_serial = %current.serial,
                            valid_until = %rfc3339(not_after),
                            "certificate renewed"
                        );
                        break;
                    }
                }
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    let now = SystemTime::now();
                    let expired = now >= current.not_after;
                    let delay = retry_delay(attempts, jitter(), now, current.not_after);
                    let was_expired = matches!(*tx.borrow(), RenewalState::Expired { .. });
                    if expired && !was_expired {
                        tracing::error!(
                            error = %e,
                            serial = %current.serial,
                            expired_at = %rfc3339(current.not_after),
                            attempts = attempts + 1,
                            "certificate expired without being renewed; peers now refuse it: {}",
                            source.expiry_advice()
                        );
                    } else {
                        tracing::warn!(
                            error = %e,
                            serial = %current.serial,
                            valid_until = %rfc3339(current.not_after),
                            expired,
                            attempts = attempts + 1,
                            next_attempt_in = ?delay,
                            "certificate renewal failed; keeping the current certificate"
                        );
                    }
                    let serial = current.serial.clone();
                    let (not_after, last_error) = (current.not_after, e);
                    tx.send_replace(if expired {
                        RenewalState::Expired {
                            serial,
                            not_after,
                            attempts: attempts + 1,
                            last_error,
                        }
                    } else {
                        RenewalState::Retrying {
                            serial,
                            not_after,
                            attempts: attempts + 1,
                            last_error,
                        }
                    });
                    attempts = attempts.saturating_add(1);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            let delay = retry_delay(attempts, jitter(), SystemTime::now(), current.not_after);
            attempts = attempts.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renews_at_two_thirds_without_jitter() {
        assert_eq!(renew_at(at(0), at(3000), 0.5), at(2000));
        assert_eq!(renew_at(at(600), at(3600), 0.5), at(2600));
    }

    #[test]
    fn jitter_is_bounded_to_five_percent_of_lifetime() {
        let lo = renew_at(at(0), at(24 * 3600), 0.0);
        let hi = renew_at(at(0), at(24 * 3600), 0.999_999);
        assert_eq!(lo, at(16 * 3600 - 4320));
        assert!(hi <= at(16 * 3600 + 4320) && hi > at(16 * 3600 + 4319));
        for j in [0.0, 0.1, 0.3, 0.5, 0.7, 0.99] {
            let t = renew_at(at(100), at(160), j);
            assert!(t >= at(137) && t <= at(143), "{j}: {t:?}");
            assert!(t < at(160));
        }
    }

    #[test]
    fn degenerate_validity_renews_immediately() {
        assert_eq!(renew_at(at(100), at(100), 0.3), at(100));
        assert_eq!(renew_at(at(100), at(50), 0.9), at(100));
    }

    #[test]
    fn retry_backs_off_and_is_capped_by_expiry() {
        let far = at(1_000_000);
        assert_eq!(retry_delay(0, 0.0, at(0), far), Duration::from_secs(1));
        assert_eq!(retry_delay(3, 0.0, at(0), far), Duration::from_secs(8));
        assert_eq!(retry_delay(30, 0.0, at(0), far), Duration::from_secs(300));
        assert_eq!(retry_delay(30, 1.0, at(0), far), Duration::from_secs(375));
        assert_eq!(retry_delay(8, 0.0, at(0), at(10)), Duration::from_secs(10));
        // After expiry the normal backoff applies (the state already says Expired).
        assert_eq!(retry_delay(2, 0.0, at(20), at(10)), Duration::from_secs(4));
    }
}
