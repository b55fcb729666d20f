//! Vault's answers, parsed by our own tolerant types: RustyVault omits fields such as
//! `request_id` and returns `ca_chain` as a string, which vaultrs's typed responses refuse.

use rustls_pki_types::CertificateDer;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::VaultError;
use crate::material::parse_certs;

/// The response envelope. Every field is optional: RustyVault omits `request_id`,
/// `lease_id` and others; HashiCorp's docs show `warnings` both as a list and as "".
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<T> {
    #[serde(default = "none")]
    data: Option<T>,
    #[serde(default)]
    auth: Option<AuthData>,
}

pub(super) fn none<T>() -> Option<T> {
    None
}

#[derive(Debug, Deserialize)]
pub(super) struct AuthData {
    client_token: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct CertData {
    certificate: String,
}

/// The data of `<pki>/issue/<role>` and `<pki>/sign/<role>`.
#[derive(Debug, Deserialize)]
pub struct IssueData {
    pub certificate: String,
    #[serde(default)]
    pub issuing_ca: Option<String>,
    /// A list in HashiCorp Vault, a single string in RustyVault.
    #[serde(default, deserialize_with = "string_or_list")]
    pub ca_chain: Vec<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub private_key_type: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
}

impl IssueData {
    /// The CA certificates as PEM: the chain if given, else the issuing CA.
    pub(super) fn ca_pem(&self, path: &str) -> Result<String, VaultError> {
        let chain: String = self
            .ca_chain
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| format!("{}\n", c.trim_end()))
            .collect();
        if !chain.is_empty() {
            return Ok(chain);
        }
        match &self.issuing_ca {
            Some(ca) if !ca.trim().is_empty() => Ok(ca.clone()),
            _ => Err(VaultError::BadResponse {
                path: path.to_string(),
                reason: "neither ca_chain nor issuing_ca in the response".into(),
            }),
        }
    }
}

pub(super) fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    match OneOrMany::deserialize(d)
        .map_err(|_| de::Error::custom("ca_chain is neither a string nor a list of strings"))?
    {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) => Ok(v),
        OneOrMany::Null(()) => Ok(Vec::new()),
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    path: &str,
    raw: &[u8],
) -> Result<T, VaultError> {
    serde_json::from_slice(raw).map_err(|e| VaultError::BadResponse {
        path: path.to_string(),
        reason: format!("unexpected JSON ({e})"),
    })
}

/// Reads CA certificates from raw PEM (HashiCorp's `ca/pem`) or from a JSON envelope with
/// `data.certificate` (`cert/ca`, and RustyVault's `ca/pem`).
pub fn parse_ca(path: &str, raw: &[u8]) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    let text = String::from_utf8_lossy(raw);
    if text.trim_start().starts_with("-----BEGIN") {
        return Ok(parse_certs(&format!("CA from {path}"), &text)?);
    }
    let env: Envelope<CertData> = parse_json(path, raw)?;
    let data = env.data.ok_or_else(|| VaultError::BadResponse {
        path: path.to_string(),
        reason: "no data in the response".into(),
    })?;
    Ok(parse_certs(&format!("CA from {path}"), &data.certificate)?)
}

/// Reads the client token from a login response.
pub fn parse_login(path: &str, raw: &[u8]) -> Result<String, VaultError> {
    let env: Envelope<serde_json::Value> = parse_json(path, raw)?;
    env.auth
        .map(|a| a.client_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| VaultError::BadResponse {
            path: path.to_string(),
            reason: "no auth.client_token in the login response".into(),
        })
}

/// Reads the certificate data from an issue or sign response.
pub fn parse_issue(path: &str, raw: &[u8]) -> Result<IssueData, VaultError> {
    let env: Envelope<IssueData> = parse_json(path, raw)?;
    env.data.ok_or_else(|| VaultError::BadResponse {
        path: path.to_string(),
        reason: "no data in the response".into(),
    })
}
