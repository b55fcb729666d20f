//! Where this node's certificate comes from when it renews: the coordinator (built-in CA,
//! authenticated by the current certificate) or Vault; every renewed certificate is kept in
//! the state directory.

use std::path::PathBuf;
use std::time::Duration;

use strait_pki::ca::{bundle_from_signed, generate_csr};
use strait_pki::material::parse_certs;
use strait_pki::renewal::CertSource;
use strait_pki::tls::CertStore;
use strait_pki::CertBundle;
use strait_proto::client;
use strait_proto::msg::{Request, Response};

use super::connect;
use crate::config::Config;

/// Renews this node's certificate through the coordinator (built-in CA): a fresh key and
/// CSR made here, sent over a connection authenticated by the current certificate.
pub(super) struct CoordinatorRenewal {
    pub(super) config: Config,
    pub(super) certs: CertStore,
}

impl CertSource for CoordinatorRenewal {
    async fn fetch(&self) -> Result<CertBundle, String> {
        let identity = self.certs.identity();
        let node_key = generate_csr(&identity.dns_name()).map_err(|e| e.to_string())?;
        let mut tried = Vec::new();
        for addr in &self.config.coordinators {
            let conn = match connect(&self.config, &self.certs, addr).await {
                Ok(c) => c,
                Err(e) => {
                    tried.push(format!("{addr}: {e:#}"));
                    continue;
                }
            };
            let request = Request::Renew {
                csr_pem: node_key.csr_pem.clone(),
            };
            let answer = client::call(&conn, &request, Duration::from_secs(10)).await;
            conn.close(0u32.into(), b"renewed");
            match answer {
                Ok(Response::Renewed { cert_pem, ca_pem }) => {
                    let leaf = parse_certs("renewed certificate", &cert_pem)
                        .map_err(|e| e.to_string())?
                        .remove(0);
                    let bundle = bundle_from_signed(&leaf, node_key.key.clone(), &ca_pem)
                        .map_err(|e| e.to_string())?;
                    if bundle.identity != identity {
                        return Err(format!(
                            "renewed certificate names {} instead of {identity}",
                            bundle.identity
                        ));
                    }
                    bundle
                        .save(&self.config.tls_dir())
                        .map_err(|e| e.to_string())?;
                    return Ok(bundle);
                }
                Ok(Response::Error(e)) => return Err(format!("coordinator refused renewal: {e}")),
                Ok(other) => return Err(format!("unexpected answer to renewal: {other:?}")),
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        Err(format!(
            "renewal through the coordinator failed: {}",
            tried.join("; ")
        ))
    }

    fn expiry_advice(&self) -> String {
        let dir = self.config.tls_dir();
        format!(
            "with the built-in CA a node renews through the coordinator, authenticated by its current certificate, which an expired one cannot do: \
             enroll this node again: stop the agent, remove {} and start it with a new join token (`straitctl token create --site {} --role {}`)",
            dir.display(),
            self.config.site,
            self.config.role
        )
    }
}

/// Saves every renewed certificate in the state directory.
pub(super) struct SavingSource<S> {
    pub(super) inner: S,
    pub(super) dir: PathBuf,
}

impl<S: CertSource> CertSource for SavingSource<S> {
    async fn fetch(&self) -> Result<CertBundle, String> {
        let bundle = self.inner.fetch().await?;
        bundle.save(&self.dir).map_err(|e| e.to_string())?;
        Ok(bundle)
    }

    fn expiry_advice(&self) -> String {
        self.inner.expiry_advice()
    }
}

/// Says at start what to do when this node's certificate has already expired.
pub(super) fn report_expired(config: &Config, bundle: &CertBundle) {
    if bundle.not_after > std::time::SystemTime::now() {
        return;
    }
    let expired_at = humantime::format_rfc3339_seconds(bundle.not_after);
    if config.vault.is_some() {
        tracing::warn!(%expired_at, "this node's certificate expired; asking Vault for a new one");
    } else {
        tracing::error!(
            %expired_at,
            "this node's certificate expired and cannot renew through the coordinator; enroll again: stop the agent, remove {} and start it with a new join token (`straitctl token create --site {} --role {}`)",
            config.tls_dir().display(),
            config.site,
            config.role
        );
    }
}
