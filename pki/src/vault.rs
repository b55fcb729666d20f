//! Node certificates from a Vault PKI secrets engine (HashiCorp Vault or RustyVault).
//!
//! vaultrs's client carries the requests (its `VaultClient` with our own reqwest client, so
//! rustls uses ring and no second crypto provider is compiled in). Responses are parsed with
//! our own tolerant types: RustyVault omits fields such as `request_id` and returns
//! `ca_chain` as a string, which vaultrs's typed responses refuse.
//!
//! API paths used: `auth/<mount>/login` (AppRole, Kubernetes), `<pki>/issue/<role>`,
//! `<pki>/sign/<role>` (HashiCorp Vault only), `<pki>/ca/pem` and `<pki>/cert/ca`.

use std::sync::Arc;
use std::time::Duration;

use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use tokio::sync::RwLock;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use crate::identity::Identity;
use crate::material::{parse_certs, CertBundle, MaterialError, SecretPem};
use crate::renewal::CertSource;

pub mod cloudauth;
mod responses;
mod settings;

pub use responses::{parse_ca, parse_issue, parse_login, IssueData};
pub use settings::{VaultAuth, VaultConfig, VaultSettings};

/// Why a Vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Vault configuration: {0}")]
    Config(String),
    #[error("could not reach Vault at {address} for {path}: {reason}; check the address, the network and that Vault is running")]
    Unreachable {
        address: String,
        path: String,
        reason: String,
    },
    #[error("Vault refused {path} with HTTP {status}: {message}{hint}")]
    Refused {
        path: String,
        status: u16,
        message: String,
        hint: &'static str,
    },
    #[error("Vault's answer to {path} could not be used: {reason}")]
    BadResponse { path: String, reason: String },
    #[error("could not read {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate from Vault: {0}")]
    Material(#[from] MaterialError),
}

/// A node's session with a Vault PKI engine.
pub struct VaultPki {
    config: VaultConfig,
    client: RwLock<VaultClient>,
}

impl std::fmt::Debug for VaultPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultPki")
            .field("address", &self.config.address)
            .field("mount", &self.config.mount)
            .field("role", &self.config.role)
            .finish_non_exhaustive()
    }
}

impl VaultPki {
    /// Builds the client and logs in.
    pub async fn login(config: VaultConfig) -> Result<VaultPki, VaultError> {
        let client = build_client(&config)?;
        let pki = VaultPki {
            config,
            client: RwLock::new(client),
        };
        pki.relogin().await?;
        Ok(pki)
    }

    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    async fn relogin(&self) -> Result<(), VaultError> {
        let token = match &self.config.auth {
            VaultAuth::Token { token } => token.clone(),
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let path = format!("auth/{mount}/login");
                let body = serde_json::json!({ "role_id": role_id, "secret_id": secret_id });
                parse_login(
                    &path,
                    &self
                        .call_with(RequestMethod::POST, &path, Some(body), "")
                        .await?,
                )?
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                crate::files::check_file(jwt_path, crate::files::Sensitivity::Integrity)
                    .map_err(|e| VaultError::Config(format!("key `jwt-path`: {e}")))?;
                let jwt =
                    std::fs::read_to_string(jwt_path).map_err(|source| VaultError::ReadFile {
                        path: jwt_path.display().to_string(),
                        source,
                    })?;
                let path = format!("auth/{mount}/login");
                let body = serde_json::json!({ "role": role, "jwt": jwt.trim() });
                parse_login(
                    &path,
                    &self
                        .call_with(RequestMethod::POST, &path, Some(body), "")
                        .await?,
                )?
            }
            VaultAuth::Aws { mount, role, imds } => {
                let http = cloudauth::metadata_client()?;
                let creds = cloudauth::aws_credentials(&http, imds).await?;
                let body = cloudauth::aws_login_body(role, &creds, &cloudauth::amz_date_now());
                let path = format!("auth/{mount}/login");
                parse_login(
                    &path,
                    &self
                        .call_with(RequestMethod::POST, &path, Some(body), "")
                        .await?,
                )?
            }
            VaultAuth::Gcp {
                mount,
                role,
                metadata,
            } => {
                let http = cloudauth::metadata_client()?;
                let jwt = cloudauth::gce_identity_token(&http, metadata, role).await?;
                let path = format!("auth/{mount}/login");
                let body = serde_json::json!({ "role": role, "jwt": jwt });
                parse_login(
                    &path,
                    &self
                        .call_with(RequestMethod::POST, &path, Some(body), "")
                        .await?,
                )?
            }
        };
        use vaultrs::client::Client;
        self.client.write().await.set_token(&token);
        Ok(())
    }

    /// Issues a certificate and key for `identity` through `<pki>/issue/<role>`. Vault
    /// generates the key; use [`VaultPki::sign_csr`] where the server supports it so the
    /// key never leaves the node.
    pub async fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<CertBundle, VaultError> {
        let path = format!("{}/issue/{}", self.config.mount, self.config.role);
        let body = serde_json::json!({
            "common_name": identity.dns_name(),
            "uri_sans": identity.spiffe_id(),
            "ttl": format!("{}s", ttl.as_secs().max(1)),
            "format": "pem",
            "private_key_format": "pkcs8",
            "exclude_cn_from_sans": false,
        });
        let raw = self
            .call_authenticated(RequestMethod::POST, &path, Some(body))
            .await?;
        let data = parse_issue(&path, &raw)?;
        let key = data
            .private_key
            .clone()
            .ok_or_else(|| VaultError::BadResponse {
                path: path.clone(),
                reason: "no private_key in the response".into(),
            })?;
        let ca = data.ca_pem(&path)?;
        let bundle = CertBundle::from_pem(&data.certificate, SecretPem::new(key), &ca)?;
        check_identity(&path, identity, &bundle)?;
        Ok(bundle)
    }

    /// Signs a CSR for `identity` through `<pki>/sign/<role>` (HashiCorp Vault; RustyVault
    /// has no such endpoint). Returns the leaf and the CA chain as PEM.
    pub async fn sign_csr(
        &self,
        identity: &Identity,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<(CertificateDer<'static>, String), VaultError> {
        let path = format!("{}/sign/{}", self.config.mount, self.config.role);
        let body = serde_json::json!({
            "csr": csr_pem,
            "common_name": identity.dns_name(),
            "uri_sans": identity.spiffe_id(),
            "ttl": format!("{}s", ttl.as_secs().max(1)),
            "format": "pem",
        });
        let raw = self
            .call_authenticated(RequestMethod::POST, &path, Some(body))
            .await?;
        let data = parse_issue(&path, &raw)?;
        let leaf = parse_certs("signed certificate", &data.certificate)?.remove(0);
        let leaf_identity = Identity::from_certificate(&leaf).map_err(MaterialError::from)?;
        if &leaf_identity != identity {
            return Err(identity_mismatch(&path, identity, &leaf_identity));
        }
        Ok((leaf, data.ca_pem(&path)?))
    }

    /// The PKI engine's CA certificate(s): `<pki>/ca/pem`, falling back to `<pki>/cert/ca`.
    pub async fn ca_certificates(&self) -> Result<Vec<CertificateDer<'static>>, VaultError> {
        let pem_path = format!("{}/ca/pem", self.config.mount);
        let first = match self
            .call_authenticated(RequestMethod::GET, &pem_path, None)
            .await
        {
            Ok(raw) => match parse_ca(&pem_path, &raw) {
                Ok(certs) => return Ok(certs),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let json_path = format!("{}/cert/ca", self.config.mount);
        match self
            .call_authenticated(RequestMethod::GET, &json_path, None)
            .await
        {
            Ok(raw) => parse_ca(&json_path, &raw),
            Err(_) => Err(first),
        }
    }

    async fn call_authenticated(
        &self,
        method: RequestMethod,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Vec<u8>, VaultError> {
        let token = self.client.read().await.middle.token.clone();
        match self
            .call_with(method.clone(), path, body.clone(), &token)
            .await
        {
            // An expired or revoked login token: log in again once and retry.
            Err(VaultError::Refused { status: 403, .. })
                if !matches!(self.config.auth, VaultAuth::Token { .. }) =>
            {
                tracing::info!(path, "Vault refused the token; logging in again");
                self.relogin().await?;
                let token = self.client.read().await.middle.token.clone();
                self.call_with(method, path, body, &token).await
            }
            other => other,
        }
    }

    async fn call_with(
        &self,
        method: RequestMethod,
        path: &str,
        body: Option<serde_json::Value>,
        token: &str,
    ) -> Result<Vec<u8>, VaultError> {
        let client = self.client.read().await;
        let mut middle = client.middle.clone();
        middle.token = token.to_string();
        let call = Call {
            method,
            path: path.to_string(),
            body,
        };
        match call.with_middleware(&middle).exec(&client.http).await {
            Ok(result) => Ok(result.raw()),
            Err(rustify::errors::ClientError::ServerResponseError { code, content }) => {
                Err(refused(path, code, content.as_deref().unwrap_or("")))
            }
            Err(e) => Err(VaultError::Unreachable {
                address: self.config.address.clone(),
                path: path.to_string(),
                reason: error_chain(&e),
            }),
        }
    }
}

/// A [`CertSource`] that issues this node's certificate from Vault.
#[derive(Clone, Debug)]
pub struct VaultCertSource {
    pub pki: Arc<VaultPki>,
    pub identity: Identity,
    pub ttl: Duration,
}

impl CertSource for VaultCertSource {
    async fn fetch(&self) -> Result<CertBundle, String> {
        self.pki
            .issue(&self.identity, self.ttl)
            .await
            .map_err(|e| e.to_string())
    }

    fn expiry_advice(&self) -> String {
        format!(
            "make Vault reachable at {} (role {}); renewal is retried with backoff and needs no valid certificate, so the node recovers by itself once Vault answers",
            self.pki.config.address, self.pki.config.role
        )
    }
}

fn check_identity(path: &str, want: &Identity, bundle: &CertBundle) -> Result<(), VaultError> {
    if &bundle.identity != want {
        return Err(identity_mismatch(path, want, &bundle.identity));
    }
    Ok(())
}

fn identity_mismatch(path: &str, want: &Identity, got: &Identity) -> VaultError {
    VaultError::BadResponse {
        path: path.to_string(),
        reason: format!("asked for {want} but the certificate names {got}"),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn refused(path: &str, status: u16, body: &str) -> VaultError {
    // HashiCorp Vault answers {"errors": [..]}, RustyVault {"error": ".."}.
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
        #[serde(default)]
        error: Option<String>,
    }
    let message = serde_json::from_str::<Errors>(body)
        .ok()
        .map(|e| {
            e.errors
                .into_iter()
                .chain(e.error)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| body.chars().take(200).collect());
    let hint = match status {
        400 => "; check that the PKI role allows this name (allowed_domains, allow_subdomains, allowed_uri_sans) and TTL",
        401 | 403 => "; check the credentials and that the policy grants this path",
        404 => "; check the mount path and role name",
        503 => "; Vault is sealed or not ready",
        _ => "",
    };
    VaultError::Refused {
        path: path.to_string(),
        status,
        message,
        hint,
    }
}

/// Vault's address as a URL: https, or http (warned about off loopback).
fn parse_address(address: &str) -> Result<url::Url, VaultError> {
    let url = url::Url::parse(address).map_err(|e| {
        VaultError::Config(format!(
            "address {address:?} is not a URL ({e}); use e.g. https://vault.example.com:8200"
        ))
    })?;
    match url.scheme() {
        "https" | "http" => Ok(url),
        other => Err(VaultError::Config(format!(
            "address {address:?} has scheme {other:?}; use https:// (or http:// for a local test server)"
        ))),
    }
}

fn build_client(config: &VaultConfig) -> Result<VaultClient, VaultError> {
    let url = parse_address(&config.address)?;
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if loopback {
                tracing::info!(address = %config.address, "Vault reached over plain HTTP on loopback");
            } else {
                tracing::warn!(
                    address = %config.address,
                    "INSECURE: Vault is reached over plain HTTP; tokens and private keys cross the network in clear text. Use https:// outside tests."
                );
            }
        }
        other => {
            return Err(VaultError::Config(format!(
            "address {:?} has scheme {other:?}; use https:// (or http:// for a local test server)",
            config.address
        )))
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_cert {
        Some(path) => {
            crate::files::check_file(path, crate::files::Sensitivity::Integrity)
                .map_err(|e| VaultError::Config(format!("key `ca-cert`: {e}")))?;
            let pem = std::fs::read_to_string(path).map_err(|source| VaultError::ReadFile {
                path: path.display().to_string(),
                source,
            })?;
            for cert in parse_certs(&format!("Vault CA bundle {}", path.display()), &pem)? {
                roots.add(cert).map_err(|e| {
                    VaultError::Config(format!("Vault CA bundle {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(config.timeout)
        .build()
        .map_err(|e| VaultError::Config(format!("HTTP client: {}", error_chain(&e))))?;
    let mut settings = VaultClientSettingsBuilder::default();
    settings.address(config.address.as_str()).token("");
    if let Some(ns) = &config.namespace {
        settings.set_namespace(ns.clone());
    }
    let settings = settings
        .build()
        .map_err(|e| VaultError::Config(e.to_string()))?;
    // Assembled by hand rather than with `VaultClient::new`, which would build a second
    // reqwest client needing a process-wide default crypto provider.
    Ok(VaultClient {
        http: rustify::clients::reqwest::Client::new(url.as_str(), http),
        middle: vaultrs::api::EndpointMiddleware {
            token: String::new(),
            version: format!("v{}", settings.version),
            wrap: None,
            namespace: settings.namespace.clone(),
        },
        settings,
    })
}

/// One Vault API call; the body is JSON, the answer is read raw and parsed by the caller.
struct Call {
    method: RequestMethod,
    path: String,
    body: Option<serde_json::Value>,
}

impl Endpoint for Call {
    type Response = serde_json::Value;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        self.method.clone()
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self
            .body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes from HashiCorp Vault's API documentation (PKI "Generate certificate and key",
    // AppRole and Kubernetes login), with the elided PEM bodies left as "...".
    const HASHICORP_ISSUE: &str = r#"{
      "lease_id": "pki/issue/test/7ad6cfa5-f04f-c62a-d477-f33210475d05",
      "renewable": false,
      "lease_duration": 21600,
      "data": {
        "certificate": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----",
        "issuing_ca": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----",
        "ca_chain": ["-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----"],
        "private_key": "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
        "private_key_type": "rsa",
        "serial_number": "39:dd:2e:90:b7:23:1f:8d:d3:7d:31:c5:1b:da:84:d0:5b:65:31:58"
      },
      "warnings": "",
      "auth": null
    }"#;

    const HASHICORP_APPROLE_LOGIN: &str = r#"{
      "auth": {
        "renewable": true,
        "lease_duration": 1200,
        "metadata": null,
        "token_policies": ["default"],
        "accessor": "fd6c9a00-d2dc-3b11-0be5-af7ae0e1d374",
        "client_token": "5b1a0318-679c-9c45-e5c6-d1b9a9035d49"
      },
      "warnings": null,
      "wrap_info": null,
      "data": null,
      "lease_duration": 0,
      "renewable": false,
      "lease_id": ""
    }"#;

    const HASHICORP_KUBERNETES_LOGIN: &str = r#"{
      "auth": {
        "client_token": "62b858f9-529c-6b26-e0b8-0457b6aacdb4",
        "accessor": "afa306d0-be3d-c8d2-b0d7-2c34d1a6d8ea",
        "policies": ["default"],
        "metadata": {
          "role": "test",
          "service_account_name": "vault-auth",
          "service_account_namespace": "default",
          "service_account_secret_name": "vault-auth-token-pd21c",
          "service_account_uid": "aa9aa8ff-98d0-11e7-9bb7-0800276d99bf"
        },
        "lease_duration": 2764800,
        "renewable": true
      }
    }"#;

    #[test]
    fn parses_hashicorp_issue_response() {
        let d = parse_issue("pki/issue/test", HASHICORP_ISSUE.as_bytes()).unwrap();
        assert!(d.certificate.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(d.ca_chain.len(), 1);
        assert_eq!(d.private_key_type.as_deref(), Some("rsa"));
        assert!(d
            .ca_pem("p")
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn parses_rustyvault_style_issue_response() {
        // RustyVault: no request_id/lease fields, ca_chain as one string.
        let body = r#"{"data":{"certificate":"C","issuing_ca":"I","ca_chain":"CHAIN","private_key":"K","private_key_type":"ec","serial_number":"01","expiration":1}}"#;
        let d = parse_issue("pki/issue/r", body.as_bytes()).unwrap();
        assert_eq!(d.ca_chain, vec!["CHAIN".to_string()]);
        assert_eq!(d.ca_pem("p").unwrap(), "CHAIN\n");
        let body = r#"{"data":{"certificate":"C","issuing_ca":"I","ca_chain":null}}"#;
        assert_eq!(
            parse_issue("p", body.as_bytes())
                .unwrap()
                .ca_pem("p")
                .unwrap(),
            "I"
        );
    }

    #[test]
    fn parses_recorded_rustyvault_responses() {
        let issue = include_str!("../tests/fixtures/rustyvault-issue.json");
        let d = parse_issue("pki/issue/strait-gateway", issue.as_bytes()).unwrap();
        assert_eq!(d.ca_chain.len(), 1);
        assert_eq!(d.private_key_type.as_deref(), Some("ec"));
        let ca = d.ca_pem("p").unwrap();
        assert_eq!(parse_certs("ca", &ca).unwrap().len(), 1);
        let leaf = parse_certs("leaf", &d.certificate).unwrap();
        // This recorded certificate was issued with an extra alt name under the mesh
        // domain: two identity names, so it must be refused as ambiguous.
        assert!(matches!(
            Identity::from_certificate(&leaf[0]),
            Err(crate::IdentityError::Ambiguous(_))
        ));
        let login = include_str!("../tests/fixtures/rustyvault-approle-login.json");
        assert!(!parse_login("auth/approle/login", login.as_bytes())
            .unwrap()
            .is_empty());
        let ca_json = format!(
            r#"{{"data":{{"certificate":{}}}}}"#,
            serde_json::to_string(&ca).unwrap()
        );
        assert_eq!(parse_ca("pki/ca/pem", ca_json.as_bytes()).unwrap().len(), 1);
        assert_eq!(parse_ca("pki/ca/pem", ca.as_bytes()).unwrap().len(), 1);
        assert!(parse_ca("pki/ca/pem", b"{}").is_err());
    }

    #[test]
    fn parses_logins() {
        assert_eq!(
            parse_login("auth/approle/login", HASHICORP_APPROLE_LOGIN.as_bytes()).unwrap(),
            "5b1a0318-679c-9c45-e5c6-d1b9a9035d49"
        );
        assert_eq!(
            parse_login(
                "auth/kubernetes/login",
                HASHICORP_KUBERNETES_LOGIN.as_bytes()
            )
            .unwrap(),
            "62b858f9-529c-6b26-e0b8-0457b6aacdb4"
        );
    }

    #[test]
    fn bad_responses_name_the_path() {
        let err = parse_issue("pki/issue/x", b"<html>").unwrap_err();
        assert!(err.to_string().contains("pki/issue/x"), "{err}");
        let err = parse_issue("pki/issue/x", b"{\"data\":null}").unwrap_err();
        assert!(err.to_string().contains("no data"), "{err}");
        let err = parse_login("auth/approle/login", b"{\"auth\":null}").unwrap_err();
        assert!(err.to_string().contains("client_token"), "{err}");
        let err = parse_issue("p", br#"{"data":{"certificate":"C","ca_chain":5}}"#).unwrap_err();
        assert!(err.to_string().contains("ca_chain"), "{err}");
    }

    #[test]
    fn refusals_carry_vault_errors_and_a_hint() {
        let e = refused("pki/issue/r", 403, r#"{"errors":["permission denied"]}"#);
        let s = e.to_string();
        assert!(
            s.contains("permission denied") && s.contains("policy"),
            "{s}"
        );
        let e = refused("pki/issue/r", 403, r#"{"error":"Permission denied."}"#);
        assert!(e.to_string().contains("Permission denied."), "{e}");
        let e = refused("pki/issue/r", 400, "not json");
        assert!(e.to_string().contains("allowed_domains"), "{e}");
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let a = VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: "rid".into(),
            secret_id: "s3cr3t".into(),
        };
        assert!(!format!("{a:?}").contains("s3cr3t"));
        let t = VaultAuth::Token {
            token: "hvs.x".into(),
        };
        assert!(!format!("{t:?}").contains("hvs"));
    }

    #[test]
    fn settings_resolve_secrets_from_files_and_name_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let sid = dir.path().join("secret-id");
        std::fs::write(&sid, "s3cr3t\n").unwrap();
        let text = format!(
            "address = \"http://127.0.0.1:8200\"\nrole = \"strait-gateway\"\nauth = \"approle\"\nrole-id = \"rid\"\nsecret-id-file = {:?}\ncert-ttl = \"2h\"\n",
            sid.display().to_string()
        );
        let settings: VaultSettings = toml_like(&text);
        let config = settings.to_config().unwrap();
        assert!(
            matches!(config.auth, VaultAuth::AppRole { ref secret_id, .. } if secret_id == "s3cr3t")
        );
        assert_eq!(settings.cert_ttl().unwrap(), Duration::from_secs(7200));
        let mut bad = settings.clone();
        bad.role_id = None;
        assert!(bad.to_config().unwrap_err().to_string().contains("role-id"));
        bad = settings.clone();
        bad.auth = "ldap".into();
        assert!(bad
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("token, approle, kubernetes, aws or gcp"));
        bad = settings.clone();
        bad.cert_ttl = "forever".into();
        assert!(bad
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("cert-ttl"));
        // Overflowed (a panic with overflow checks) before; found by the `configs` fuzzer.
        bad.cert_ttl = "4584946418820579308m".into();
        assert!(bad.cert_ttl().unwrap_err().to_string().contains("cert-ttl"));
        bad.cert_ttl = format!("{}s", u64::MAX);
        assert_eq!(bad.cert_ttl().unwrap(), Duration::from_secs(u64::MAX));
    }

    /// The test parses the TOML subset by hand (pki has no TOML dependency).
    fn toml_like(text: &str) -> VaultSettings {
        let mut map = serde_json::Map::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once(" = ").unwrap();
            map.insert(k.to_string(), serde_json::from_str(v).unwrap());
        }
        serde_json::from_value(serde_json::Value::Object(map)).unwrap()
    }

    #[test]
    fn bad_addresses_are_refused_at_start() {
        let cfg = VaultConfig::new("vault:8200", "r", VaultAuth::Token { token: "t".into() });
        assert!(matches!(build_client(&cfg), Err(VaultError::Config(_))));
        let cfg = VaultConfig::new("ftp://vault", "r", VaultAuth::Token { token: "t".into() });
        let Err(err) = build_client(&cfg) else {
            panic!("ftp:// accepted")
        };
        assert!(err.to_string().contains("https://"), "{err}");
    }
}
