//! The node's first certificate: a key pair and CSR made here, a join token, and the
//! coordinator's answer, verified against the CA fingerprint the token carries.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strait_pki::ca::{bundle_from_signed, generate_csr};
use strait_pki::material::parse_certs;
use strait_pki::tls::{enrollment_client_config, quic_client_config};
use strait_pki::token::JoinToken;
use strait_pki::vault::VaultPki;
use strait_pki::{CertBundle, Identity};
use strait_proto::client;
use strait_proto::msg::{EnrollRequest, Request, Response};
use strait_proto::ALPN;

use crate::config::Config;

/// Loads this node's certificate, enrolling first if there is none.
pub async fn ensure_certificate(config: &Config) -> Result<CertBundle> {
    let dir = config.tls_dir();
    let want = Identity::node(&config.mesh, &config.site, &config.node, config.role)?;
    if dir.exists() {
        create_private_dir(&dir)?;
    }
    if dir.join("cert.pem").exists() {
        let bundle = CertBundle::load(&dir)
            .with_context(|| format!("loading this node's certificate from {}", dir.display()))?;
        if bundle.identity != want {
            bail!(
                "the certificate in {} names {}, but the configuration says {}; fix the configuration or remove {} to enroll again",
                dir.display(),
                bundle.identity,
                want,
                dir.display()
            );
        }
        return Ok(bundle);
    }
    if let Some(settings) = &config.vault {
        let vault = VaultPki::login(settings.to_config()?)
            .await
            .context("logging in to Vault (key `vault`)")?;
        let bundle = vault
            .issue(&want, settings.cert_ttl()?)
            .await
            .context("issuing this node's certificate from Vault")?;
        create_private_dir(&dir)?;
        bundle.save(&dir)?;
        tracing::info!(identity = %bundle.identity, "certificate issued by Vault; saved");
        return Ok(bundle);
    }
    let Some(token) = &config.join_token else {
        bail!(
            "no certificate in {} and no join token: create one with `straitctl token create --site {} --role {}` and pass it with --join-token-file",
            dir.display(),
            config.site,
            config.role
        );
    };
    let token: JoinToken = token.parse().context("the join token")?;
    let mut backoff = Duration::from_millis(500);
    loop {
        match enroll_once(config, &token).await {
            Ok(bundle) => {
                create_private_dir(&dir)?;
                bundle.save(&dir)?;
                tracing::info!(identity = %bundle.identity, "enrolled; certificate saved");
                return Ok(bundle);
            }
            Err(EnrollError::Refused(msg)) => bail!("enrollment refused: {msg}"),
            Err(EnrollError::Unreachable(msg)) => {
                tracing::warn!(error = %msg, retry_in = ?backoff, "cannot reach a coordinator to enroll");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    strait_pki::files::private_dir(dir)?;
    Ok(())
}

enum EnrollError {
    /// The coordinator answered no: retrying will not help.
    Refused(String),
    /// No coordinator answered.
    Unreachable(String),
}

async fn enroll_once(config: &Config, token: &JoinToken) -> Result<CertBundle, EnrollError> {
    let identity = Identity::node(&config.mesh, &config.site, &config.node, config.role)
        .map_err(|e| EnrollError::Refused(e.to_string()))?;
    let node_key =
        generate_csr(&identity.dns_name()).map_err(|e| EnrollError::Refused(e.to_string()))?;
    let tls = enrollment_client_config(token.ca_fingerprint(), &config.mesh, ALPN)
        .and_then(quic_client_config)
        .map_err(|e| EnrollError::Refused(e.to_string()))?;
    let request = Request::Enroll(EnrollRequest {
        token: token.to_string(),
        site: config.site.clone(),
        node: config.node.clone(),
        role: config.role,
        csr_pem: node_key.csr_pem.clone(),
    });
    let mut last = String::from("no coordinator configured");
    for addr in &config.coordinators {
        let target = match resolve(addr).await {
            Ok(a) => a,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let endpoint = match quinn::Endpoint::client(crate::control::wildcard(target)) {
            Ok(e) => e,
            Err(e) => return Err(EnrollError::Unreachable(e.to_string())),
        };
        let conn =
            match client::connect(&endpoint, target, tls.clone(), Duration::from_secs(5)).await {
                Ok(c) => c,
                Err(e) => {
                    // A pinning failure is final: the token names another CA.
                    let text = e.to_string();
                    if text.contains("fingerprint") {
                        return Err(EnrollError::Refused(text));
                    }
                    last = text;
                    continue;
                }
            };
        let response = client::call(&conn, &request, Duration::from_secs(10)).await;
        conn.close(0u32.into(), b"enrolled");
        match response {
            Ok(Response::Enrolled { cert_pem, ca_pem }) => {
                let leaf = parse_certs("enrolled certificate", &cert_pem)
                    .map_err(|e| EnrollError::Refused(e.to_string()))?
                    .remove(0);
                let bundle = bundle_from_signed(&leaf, node_key.key, &ca_pem)
                    .map_err(|e| EnrollError::Refused(e.to_string()))?;
                if bundle.identity != identity {
                    return Err(EnrollError::Refused(format!(
                        "the coordinator issued a certificate for {} instead of {identity}",
                        bundle.identity
                    )));
                }
                return Ok(bundle);
            }
            Ok(Response::Error(e)) => return Err(EnrollError::Refused(e.to_string())),
            Ok(other) => return Err(EnrollError::Refused(format!("unexpected answer {other:?}"))),
            Err(e) => last = e.to_string(),
        }
    }
    Err(EnrollError::Unreachable(last))
}

/// Resolves `host:port`.
pub async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}
