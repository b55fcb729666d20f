//! Renewal of the coordinator's own certificate from the built-in CA.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use strait_pki::ca::{BuiltinCa, Validity, DEFAULT_SERVICE_LIFETIME};
use strait_pki::renewal::{self, CertSource};
use strait_pki::tls::CertStore;
use strait_pki::CertBundle;

use crate::init::Layout;

struct LocalCa {
    ca: Arc<BuiltinCa>,
    identity: strait_pki::Identity,
    dir: PathBuf,
}

impl CertSource for LocalCa {
    async fn fetch(&self) -> Result<CertBundle, String> {
        let bundle = self
            .ca
            .issue(
                &self.identity,
                Validity::for_lifetime(DEFAULT_SERVICE_LIFETIME),
            )
            .map_err(|e| e.to_string())?;
        bundle.save(&self.dir).map_err(|e| e.to_string())?;
        Ok(bundle)
    }
}

/// Starts renewing the certificate in `certs` (saving each new one in `<state>/tls`).
pub fn spawn(layout: &Layout, mesh: &str, certs: CertStore) -> Result<tokio::task::JoinHandle<()>> {
    let ca = Arc::new(BuiltinCa::load(&layout.root, mesh)?);
    let source = LocalCa {
        ca,
        identity: certs.identity(),
        dir: layout.tls(),
    };
    let (task, _state) = renewal::spawn(source, certs);
    Ok(task)
}
