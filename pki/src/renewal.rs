//! Certificate renewal: when to renew (pure) and a task that does it.
//!
//! A certificate is renewed at about two thirds of its lifetime, with a jitter of up to
//! ±5% of the lifetime so a fleet issued together does not renew together. If the CA or
//! Vault cannot be reached the task retries with capped exponential backoff and keeps the
//! current certificate until it expires, publishing its state on a `watch` channel.

use std::future::Future;
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

/// Something that issues a fresh certificate for this node (built-in CA, coordinator, Vault).
pub trait CertSource: Send + Sync + 'static {
    fn fetch(&self) -> impl Future<Output = Result<CertBundle, String>> + Send;
}

/// Runs renewal forever for the bundle in `store`, publishing state on the returned channel.
/// Dropping the returned handle's task (abort) stops renewal.
pub fn spawn<S: CertSource>(
    source: S,
    store: CertStore,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<RenewalState>) {
    let current = store.bundle();
    let (tx, rx) = watch::channel(valid_state(&current, 0.5));
    let task = tokio::spawn(run(Arc::new(source), store, tx));
    (task, rx)
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

async fn run<S: CertSource>(source: Arc<S>, store: CertStore, tx: watch::Sender<RenewalState>) {
    loop {
        let current = store.bundle();
        let state = valid_state(&current, jitter());
        let RenewalState::Valid { renew_at, .. } = state else {
            unreachable!("valid_state builds Valid")
        };
        tx.send_replace(state);
        sleep_until(renew_at).await;

        let mut attempts = 0u32;
        loop {
            match source.fetch().await {
                Ok(fresh) => {
                    tracing::info!(
                        identity = %fresh.identity,
                        serial = %fresh.serial,
                        "certificate renewed"
                    );
                    if let Err(e) = store.replace(fresh) {
                        tracing::error!(error = %e, "renewed certificate is unusable; keeping the current one");
                    } else {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempts, "certificate renewal failed; keeping the current certificate");
                    let now = SystemTime::now();
                    let expired = now >= current.not_after;
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
