//! Renewal of the coordinator's own certificate from the built-in CA.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use strait_pki::ca::{BuiltinCa, Validity};
use strait_pki::renewal::{self, CertSource, RenewalCounts, RenewalState};
use strait_pki::tls::CertStore;
use strait_pki::CertBundle;
use tokio::sync::watch;

use crate::init::Layout;

struct LocalCa {
    ca: Arc<BuiltinCa>,
    identity: strait_pki::Identity,
    dir: PathBuf,
    lifetime: Duration,
}

impl CertSource for LocalCa {
    async fn fetch(&self) -> Result<CertBundle, String> {
        let bundle = self
            .ca
            .issue(&self.identity, Validity::for_lifetime(self.lifetime))
            .map_err(|e| e.to_string())?;
        bundle.save(&self.dir).map_err(|e| e.to_string())?;
        Ok(bundle)
    }

    fn expiry_advice(&self) -> String {
        format!(
            "check that the CA key and {} are readable and writable by the coordinator",
            self.dir.display()
        )
    }
}

/// Whether a certificate valid until `not_after` outlives `lifetime` from `now` (by more
/// than a minute of slack): then it is replaced at start, so a shortened
/// `pki.coordinator-cert-lifetime` takes effect at once.
pub fn outlives(not_after: SystemTime, now: SystemTime, lifetime: Duration) -> bool {
    not_after > now + lifetime + Duration::from_secs(60)
}

/// Starts renewing the certificate in `certs` (saving each new one in `<state>/tls`) with
/// certificates valid for `lifetime`; one valid for longer is replaced first. Returns the
/// task, its state and its counts.
pub async fn spawn(
    layout: &Layout,
    mesh: &str,
    certs: CertStore,
    lifetime: Duration,
) -> Result<(
    tokio::task::JoinHandle<()>,
    watch::Receiver<RenewalState>,
    Arc<RenewalCounts>,
)> {
    let ca = Arc::new(BuiltinCa::load(&layout.root, mesh)?);
    let source = LocalCa {
        ca,
        identity: certs.identity(),
        dir: layout.tls(),
        lifetime,
    };
    let current = certs.bundle();
    if outlives(current.not_after, SystemTime::now(), lifetime) {
        let fresh = source.fetch().await.map_err(anyhow::Error::msg).context(
            "replacing the coordinator certificate (longer than `pki.coordinator-cert-lifetime`)",
        )?;
        tracing::info!(
            previous_serial = %current.serial,
            serial = %fresh.serial,
            lifetime = %humantime::format_duration(lifetime),
            "coordinator certificate replaced: it was valid for longer than pki.coordinator-cert-lifetime"
        );
        certs.replace(fresh)?;
    }
    Ok(renewal::spawn_counted(source, certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_certificate_longer_than_the_lifetime_is_replaced() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        assert!(outlives(now + 30 * day, now, day));
        assert!(!outlives(now + day, now, day));
        assert!(!outlives(now + day + Duration::from_secs(60), now, day));
        assert!(!outlives(now + Duration::from_secs(10), now, day));
    }
}
