//! A real Vault-API server for tests: RustyVault (`cargo install rusty_vault`, binary
//! `rvault`), started on a loopback port in a temporary directory, initialised, unsealed,
//! with a PKI engine, PKI roles and AppRole auth. Dropping it kills the server and removes
//! its directory.
//!
//! RustyVault differences this harness works around (recorded while building it):
//! the config file must end in `.hcl`/`.json`; durations must be strings with a unit;
//! `ec`/256 means secp256k1 (so roles use `ec`/384); there are no ACL policies, so
//! AppRole tokens are not restricted; roles' `allowed_domains` and URI SANs are not
//! enforced or issued.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// PKI roles the harness creates, one per Strait role that gets certificates from Vault.
pub const ROLES: [&str; 4] = [
    "strait-gateway",
    "strait-member",
    "strait-coordinator",
    "strait-operator",
];

pub struct RustyVault {
    child: Child,
    dir: tempfile::TempDir,
    bin: PathBuf,
    unseal_key: String,
    pub addr: String,
    pub root_token: String,
    pub role_id: String,
    pub secret_id: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for RustyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustyVault")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Where the `rvault` binary is: `$STRAIT_RVAULT`, then `PATH`, then `~/.cargo/bin`.
pub fn rvault_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("STRAIT_RVAULT") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("rvault"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/rvault"));
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "rvault (RustyVault) not found: install it with `cargo install rusty_vault --locked` \
         (.ci/run does), or set STRAIT_RVAULT to its path",
    )
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn http() -> Result<reqwest::Client> {
    // Plain HTTP on loopback; a TLS backend must still be configured (with ring).
    let tls = rustls::ClientConfig::builder_with_provider(strait_pki::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .build()?)
}

impl RustyVault {
    /// Starts and configures a fresh server. Fails (never skips) if `rvault` is missing.
    pub async fn start() -> Result<RustyVault> {
        let bin = rvault_binary()?;
        let mut last_err = None;
        for _ in 0..3 {
            match Self::start_once(&bin).await {
                Ok(v) => return Ok(v),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("rvault did not start")))
    }

    async fn start_once(bin: &PathBuf) -> Result<RustyVault> {
        let dir = tempfile::Builder::new()
            .prefix("strait-rvault-")
            .tempdir()?;
        let port = free_port()?;
        let addr = format!("http://127.0.0.1:{port}");
        let root = dir.path().display().to_string();
        let config = dir.path().join("config.hcl");
        std::fs::write(
            &config,
            format!(
                "storage \"file\" {{\n  path = \"{root}/storage\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"{addr}\"\nwork_dir = \"{root}/work\"\nlog_level = \"warn\"\n"
            ),
        )?;
        std::fs::create_dir_all(dir.path().join("work"))?;
        let child = spawn_server(bin, dir.path())?;
        let mut vault = RustyVault {
            child,
            dir,
            bin: bin.clone(),
            unseal_key: String::new(),
            addr,
            root_token: String::new(),
            role_id: String::new(),
            secret_id: String::new(),
            ca_pem: String::new(),
        };
        vault.wait_ready().await?;
        vault.configure().await?;
        Ok(vault)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = http()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "rvault exited with {status} during startup: {}",
                    self.server_log()
                );
            }
            if client
                .get(format!("{}/v1/sys/init", self.addr))
                .send()
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("rvault did not answer within 15 s: {}", self.server_log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's log, for failure messages.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Calls the API with the root token; fails on HTTP errors with Vault's message.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        call(&self.addr, &self.root_token, method, path, body).await
    }

    async fn configure(&mut self) -> Result<()> {
        let init = self
            .api(
                "PUT",
                "sys/init",
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await?;
        let key = init["keys"][0]
            .as_str()
            .context("init: no key")?
            .to_string();
        self.unseal_key = key.clone();
        self.root_token = init["root_token"]
            .as_str()
            .context("init: no root_token")?
            .to_string();
        self.api("PUT", "sys/unseal", Some(json!({ "key": key })))
            .await?;
        self.api("POST", "sys/mounts/pki", Some(json!({"type": "pki"})))
            .await?;
        self.api(
            "POST",
            "pki/root/generate/internal",
            Some(json!({"common_name": "strait-test-vault-root", "key_type": "ec", "key_bits": 384, "ttl": "87600h"})),
        )
        .await?;
        let ca = self.api("GET", "pki/ca/pem", None).await?;
        self.ca_pem = ca["data"]["certificate"]
            .as_str()
            .context("pki/ca/pem: no data.certificate")?
            .to_string();
        for (role, group) in ROLES
            .iter()
            .zip(["gateways", "members", "coordinators", "operators"])
        {
            self.api(
                "POST",
                &format!("pki/roles/{role}"),
                Some(json!({
                    "allowed_domains": format!("{group}.prod.strait.internal"),
                    "allow_subdomains": true,
                    "allow_bare_domains": false,
                    "allow_localhost": false,
                    "allow_ip_sans": false,
                    "key_type": "ec",
                    "key_bits": 384,
                    "ttl": "1h",
                    "max_ttl": "24h",
                    "server_flag": true,
                    "client_flag": true,
                })),
            )
            .await?;
        }
        self.api("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
            .await?;
        self.api(
            "POST",
            "auth/approle/role/strait",
            Some(json!({"token_policies": ["strait-node"], "token_ttl": "20m", "token_max_ttl": "1h"})),
        )
        .await?;
        let rid = self
            .api("GET", "auth/approle/role/strait/role-id", None)
            .await?;
        self.role_id = rid["data"]["role_id"]
            .as_str()
            .context("role-id missing")?
            .to_string();
        let sid = self
            .api(
                "POST",
                "auth/approle/role/strait/secret-id",
                Some(json!({})),
            )
            .await?;
        self.secret_id = sid["data"]["secret_id"]
            .as_str()
            .context("secret-id missing")?
            .to_string();
        Ok(())
    }

    /// Stops the server (the directory stays until drop), e.g. to make Vault unreachable.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped server again on the same address and storage, and unseals it: the
    /// same PKI CA, roles and AppRole credentials.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = spawn_server(&self.bin, self.dir.path())?;
        self.wait_ready().await?;
        let unseal = json!({ "key": self.unseal_key });
        self.api("PUT", "sys/unseal", Some(unseal)).await?;
        Ok(())
    }
}

/// `rvault server` with the config in `dir`, logging to `dir/server.log` (appended).
fn spawn_server(bin: &PathBuf, dir: &std::path::Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    Command::new(bin)
        .arg("server")
        .arg("--config")
        .arg(dir.join("config.hcl"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// One API call against a Vault-API server.
pub async fn call(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let client = http()?;
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut req = client.request(method.clone(), format!("{addr}/v1/{path}"));
    if !token.is_empty() {
        req = req.header("X-Vault-Token", token);
    }
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&b)?);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{method} /v1/{path}: HTTP {status}: {text}");
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
}

impl Drop for RustyVault {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A coordinator (not started) on `vault`'s PKI for sites `aws-use1` (10.10.0.0/16) and
/// `gcp-usc1` (10.20.0.0/16), holding no CA key, with an operator certificate from Vault.
/// The AppRole secret id is written to `secret_file` (agents may read it too).
pub async fn vault_coordinator(
    vault: &RustyVault,
    secret_file: &std::path::Path,
) -> Result<crate::procs::Coordinator> {
    use strait_pki::vault::{VaultAuth, VaultConfig, VaultPki};
    use strait_pki::{Identity, Role};
    std::fs::write(secret_file, &vault.secret_id)?;
    let config = format!(
        r#"mesh = "prod"
listen = "{{listen}}"
state-dir = "{{state}}"
[pki]
mode = "vault"
[pki.vault]
address = "{addr}"
role = "strait-coordinator"
auth = "approle"
role-id = "{role_id}"
secret-id-file = "{secret}"
cert-ttl = "1h"
[[sites]]
name = "aws-use1"
prefixes = ["10.10.0.0/16"]
[[sites]]
name = "gcp-usc1"
prefixes = ["10.20.0.0/16"]
"#,
        addr = vault.addr,
        role_id = vault.role_id,
        secret = secret_file.display()
    );
    let c = crate::procs::Coordinator::from_config(&config)?;
    let op_pki = VaultPki::login(VaultConfig::new(
        &vault.addr,
        "strait-operator",
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: vault.role_id.clone(),
            secret_id: vault.secret_id.clone(),
        },
    ))
    .await?;
    let op = op_pki
        .issue(
            &Identity::service("prod", "admin", Role::Operator)?,
            Duration::from_secs(3600),
        )
        .await?;
    std::fs::create_dir_all(c.operator_dir())?;
    op.save(&c.operator_dir())?;
    Ok(c)
}
