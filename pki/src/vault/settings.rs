//! Vault settings: how a node authenticates ([`VaultAuth`]), where Vault is
//! ([`VaultConfig`]), and the config-file form both binaries read ([`VaultSettings`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{build_client, parse_address, VaultError};

/// How this node authenticates to Vault.
#[derive(Clone)]
pub enum VaultAuth {
    /// A Vault token (e.g. from `VAULT_TOKEN`).
    Token { token: String },
    /// AppRole, for VMs: `auth/<mount>/login` with a role id and secret id.
    AppRole {
        mount: String,
        role_id: String,
        secret_id: String,
    },
    /// Kubernetes, for DaemonSets: `auth/<mount>/login` with the pod's service-account
    /// JWT, read from `jwt_path` at every login (projected tokens rotate).
    Kubernetes {
        mount: String,
        role: String,
        jwt_path: PathBuf,
    },
    /// AWS IAM, for EC2 instances: `auth/<mount>/login` with an `sts:GetCallerIdentity`
    /// request signed with the instance role's credentials from IMDSv2 at `imds`.
    Aws {
        mount: String,
        role: String,
        imds: String,
    },
    /// GCP (gce), for Compute Engine instances: `auth/<mount>/login` with the identity
    /// token the metadata server at `metadata` signs for the instance's service account.
    Gcp {
        mount: String,
        role: String,
        metadata: String,
    },
}

impl std::fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultAuth::Token { .. } => f.write_str("Token([redacted])"),
            VaultAuth::AppRole { mount, role_id, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", role_id)
                .field("secret_id", &"[redacted]")
                .finish(),
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => f
                .debug_struct("Kubernetes")
                .field("mount", mount)
                .field("role", role)
                .field("jwt_path", jwt_path)
                .finish(),
            VaultAuth::Aws { mount, role, .. } => f
                .debug_struct("Aws")
                .field("mount", mount)
                .field("role", role)
                .finish(),
            VaultAuth::Gcp { mount, role, .. } => f
                .debug_struct("Gcp")
                .field("mount", mount)
                .field("role", role)
                .finish(),
        }
    }
}

/// Where Vault is and how to use it.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// e.g. `https://vault.example.com:8200`.
    pub address: String,
    /// Mount path of the PKI secrets engine (default `pki`).
    pub mount: String,
    /// PKI role used to issue this node's certificates.
    pub role: String,
    pub auth: VaultAuth,
    /// PEM CA bundle to verify Vault's own TLS certificate; the system roots otherwise.
    pub ca_cert: Option<PathBuf>,
    /// Vault Enterprise namespace.
    pub namespace: Option<String>,
    pub timeout: Duration,
}

impl VaultConfig {
    pub fn new(address: &str, role: &str, auth: VaultAuth) -> VaultConfig {
        VaultConfig {
            address: address.to_string(),
            mount: "pki".into(),
            role: role.to_string(),
            auth,
            ca_cert: None,
            namespace: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Vault settings as written in a config file (`[vault]` / `[pki.vault]`, kebab-case).
/// Secrets are read from files (or `VAULT_TOKEN`), never written in the config itself.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VaultSettings {
    /// e.g. `https://vault.example.com:8200`.
    pub address: String,
    /// PKI secrets engine mount (default `pki`).
    #[serde(default = "default_mount")]
    pub mount: String,
    /// PKI role for this process's certificates (e.g. `strait-gateway`).
    pub role: String,
    /// `token`, `approle`, `kubernetes`, `aws` (IAM) or `gcp` (gce).
    pub auth: String,
    /// Mount of the auth method (default: the method's name).
    #[serde(default)]
    pub auth_mount: Option<String>,
    /// token: file holding the token (default: the `VAULT_TOKEN` variable).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// approle: the role id.
    #[serde(default)]
    pub role_id: Option<String>,
    /// approle: file holding the secret id.
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    /// kubernetes: the Vault role to log in as.
    #[serde(default)]
    pub kubernetes_role: Option<String>,
    /// aws, gcp: the role of the auth method to log in as.
    #[serde(default)]
    pub auth_role: Option<String>,
    /// kubernetes: the projected service-account token.
    #[serde(default = "default_jwt_path")]
    pub jwt_path: PathBuf,
    /// PEM bundle to verify Vault's TLS certificate (default: system roots).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Lifetime requested for certificates, e.g. "24h".
    #[serde(default = "default_cert_ttl")]
    pub cert_ttl: String,
}

fn default_mount() -> String {
    "pki".into()
}
fn default_jwt_path() -> PathBuf {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}
fn default_cert_ttl() -> String {
    "24h".into()
}

impl VaultSettings {
    /// The certificate lifetime to request.
    pub fn cert_ttl(&self) -> Result<Duration, VaultError> {
        parse_duration(&self.cert_ttl).ok_or_else(|| {
            VaultError::Config(format!(
                "key `cert-ttl`: {:?} is not a duration; write e.g. \"24h\" or \"90m\"",
                self.cert_ttl
            ))
        })
    }

    /// Checks the settings without reading any file or reaching Vault (`check-config`):
    /// the address, the auth method and the keys it needs, the certificate lifetime.
    /// Returns the files the settings name (key, path), which `to_config` and the login read.
    pub fn check_offline(&self) -> Result<Vec<(&'static str, PathBuf)>, VaultError> {
        let need = |key: &str, set: bool| {
            if set {
                Ok(())
            } else {
                Err(VaultError::Config(format!(
                    "auth {:?} needs `{key}`",
                    self.auth
                )))
            }
        };
        let mut files = Vec::new();
        match self.auth.as_str() {
            "token" => {
                if let Some(p) = &self.token_file {
                    files.push(("token-file", p.clone()));
                }
            }
            "approle" => {
                need("role-id", self.role_id.is_some())?;
                need("secret-id-file", self.secret_id_file.is_some())?;
                files.extend(self.secret_id_file.clone().map(|p| ("secret-id-file", p)));
            }
            "kubernetes" => {
                need("kubernetes-role", self.kubernetes_role.is_some())?;
                files.push(("jwt-path", self.jwt_path.clone()));
            }
            "aws" | "gcp" => need("auth-role", self.auth_role.is_some())?,
            other => {
                return Err(VaultError::Config(format!(
                "key `auth`: unknown method {other:?}; use token, approle, kubernetes, aws or gcp"
            )))
            }
        }
        self.cert_ttl()?;
        parse_address(&self.address)?;
        if let Some(p) = &self.ca_cert {
            files.push(("ca-cert", p.clone()));
        }
        Ok(files)
    }

    /// Resolves secrets and checks the settings.
    pub fn to_config(&self) -> Result<VaultConfig, VaultError> {
        let read = |path: &PathBuf, key: &str| {
            crate::files::check_file(path, crate::files::Sensitivity::Integrity)
                .map_err(|e| VaultError::Config(format!("key `{key}`: {e}")))?;
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    VaultError::Config(format!("key `{key}`: cannot read {}: {e}", path.display()))
                })
        };
        let mount = |default: &str| {
            self.auth_mount
                .clone()
                .unwrap_or_else(|| default.to_string())
        };
        let auth =
            match self.auth.as_str() {
                "token" => VaultAuth::Token {
                    token: match &self.token_file {
                        Some(p) => read(p, "token-file")?,
                        None => std::env::var("VAULT_TOKEN").map_err(|_| {
                            VaultError::Config(
                                "auth \"token\" needs `token-file` or the VAULT_TOKEN variable"
                                    .into(),
                            )
                        })?,
                    },
                },
                "approle" => VaultAuth::AppRole {
                    mount: mount("approle"),
                    role_id: self.role_id.clone().ok_or_else(|| {
                        VaultError::Config("auth \"approle\" needs `role-id`".into())
                    })?,
                    secret_id: read(
                        self.secret_id_file.as_ref().ok_or_else(|| {
                            VaultError::Config("auth \"approle\" needs `secret-id-file`".into())
                        })?,
                        "secret-id-file",
                    )?,
                },
                "kubernetes" => VaultAuth::Kubernetes {
                    mount: mount("kubernetes"),
                    role: self.kubernetes_role.clone().ok_or_else(|| {
                        VaultError::Config("auth \"kubernetes\" needs `kubernetes-role`".into())
                    })?,
                    jwt_path: self.jwt_path.clone(),
                },
                "aws" => VaultAuth::Aws {
                    mount: mount("aws"),
                    role: self.auth_role.clone().ok_or_else(|| {
                        VaultError::Config("auth \"aws\" needs `auth-role`".into())
                    })?,
                    imds: "http://169.254.169.254".into(),
                },
                "gcp" => VaultAuth::Gcp {
                    mount: mount("gcp"),
                    role: self.auth_role.clone().ok_or_else(|| {
                        VaultError::Config("auth \"gcp\" needs `auth-role`".into())
                    })?,
                    metadata: "http://metadata.google.internal".into(),
                },
                other => {
                    return Err(VaultError::Config(format!(
                "key `auth`: unknown method {other:?}; use token, approle, kubernetes, aws or gcp"
            )))
                }
            };
        self.cert_ttl()?;
        let mut config = VaultConfig::new(&self.address, &self.role, auth);
        config.mount = self.mount.clone();
        config.ca_cert = self.ca_cert.clone();
        build_client(&config)?;
        Ok(config)
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    // Checked: a lifetime too long to count in seconds is no lifetime (found by fuzzing).
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => None,
    }?;
    (secs > 0).then(|| Duration::from_secs(secs))
}
