//! `strait-agent check-config`: the configuration a `run` would use (the file, flags and
//! `STRAIT_*` variables) validated completely, types, values and cross-field rules, without
//! starting anything: no enrollment, no network, no TUN device.
//!
//! Files the configuration names (join token, Vault secrets, CA bundle) often exist only
//! where the agent runs (`/run/credentials/...`, a projected token); those that are absent
//! here are reported as not checked, and everything else about them is.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::{Config, FileConfig, Overrides};

/// A checked configuration and what could not be checked here.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub notes: Vec<String>,
}

impl Checked {
    /// One line: `agent config <path>: mesh=.. site=.. node=.. role=..`.
    pub fn summary(&self, path: &Path) -> String {
        let c = &self.config;
        let enrollment = match (&c.vault, &c.join_token) {
            (Some(v), _) => format!("vault auth={}", v.auth),
            (None, Some(_)) => "join-token".to_string(),
            (None, None) => "existing certificate".to_string(),
        };
        format!(
            "agent config {} is valid: mesh={} site={} node={} role={} enrollment={enrollment}",
            path.display(),
            c.mesh,
            c.site,
            c.node,
            c.role
        )
    }
}

/// Variables named `STRAIT_*` that no flag reads: a typo there is otherwise ignored.
pub fn unknown_variables(
    vars: impl IntoIterator<Item = (String, String)>,
    known: &BTreeSet<String>,
) -> Vec<String> {
    vars.into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("STRAIT_") && !known.contains(k))
        .collect()
}

/// Checks `path` with `overrides` (flags and variables, as `run` would merge them).
pub fn check(path: &Path, mut overrides: Overrides) -> Result<Checked> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading agent config {}", path.display()))?;
    let mut file: FileConfig = toml::from_str(&text)
        .with_context(|| format!("agent config {}: wrong type or unknown key", path.display()))?;
    let mut notes = Vec::new();
    let mut absent = |key: &str, p: &Path| {
        if !p.exists() {
            notes.push(format!(
                "key `{key}`: {} is not here, so its content is not checked (it must exist where the agent runs)",
                p.display()
            ));
        }
    };

    // The Vault settings, merged as `run` merges them, checked without reading files.
    let vault = std::mem::take(&mut overrides.vault)
        .apply(file.vault.take())
        .with_context(|| format!("invalid agent configuration ({})", path.display()))?;
    if let Some(v) = &vault {
        let files = v
            .check_offline()
            .context("key `vault`")
            .with_context(|| format!("invalid agent configuration ({})", path.display()))?;
        for (key, p) in files {
            absent(&format!("vault.{key}"), &p);
        }
    }
    // BGP password files that are not here are noted, and the rest of `[bgp]` checked.
    if let Some(bgp) = file.bgp.as_mut() {
        for (i, n) in bgp.neighbors.iter_mut().enumerate() {
            if let Some(p) = n.password_file.as_ref().filter(|p| !p.exists()) {
                absent(&format!("bgp.neighbors[{i}].password-file"), p);
                n.password_file = None;
            }
        }
    }
    // A join-token file that is not here stands in as a token, so the rest is checked.
    let token_file: Option<PathBuf> = overrides
        .join_token_file
        .take()
        .or(file.join_token_file.take());
    let placeholder = match &token_file {
        Some(p) if !p.exists() => {
            absent("join-token-file", p);
            true
        }
        _ => false,
    };
    if placeholder {
        overrides.join_token = overrides.join_token.or(Some("not-read".into()));
    } else {
        overrides.join_token_file = token_file;
    }
    let mut config = Config::merge(file, overrides)
        .with_context(|| format!("invalid agent configuration ({})", path.display()))?;
    config.vault = vault;

    if config.vault.is_some() && config.join_token.is_some() {
        notes.push("both [vault] and a join token are set: the agent enrolls with Vault and ignores the token".into());
    }
    if config.vault.is_none() && config.join_token.is_none() {
        notes.push(format!(
            "neither [vault] nor a join token: the agent starts only if {} already holds its certificate",
            config.tls_dir().display()
        ));
    }
    if config.role == strait_pki::Role::Gateway && config.prefixes.is_empty() {
        bail!(
            "invalid agent configuration ({}): key `prefixes` is empty but role is gateway; list the site's prefixes the gateway carries (or STRAIT_PREFIXES)",
            path.display()
        );
    }
    if config.role == strait_pki::Role::Member && !config.prefixes.is_empty() {
        notes.push("key `prefixes` is set on a member: a site's traffic normally goes through its gateways".into());
    }
    if let Some(bgp) = &config.bgp {
        if config.probe_interval > std::time::Duration::from_millis(300) {
            notes.push(format!(
                "key `probe-interval` is {}: with [bgp], a gateway withdraws a site's prefixes about 3-4 probe intervals after its path fails; 100ms-200ms keeps that under 1 s",
                humantime::format_duration(config.probe_interval)
            ));
        }
        if !bgp.bird_config.is_absolute() || !bgp.bird_socket.is_absolute() {
            bail!(
                "invalid agent configuration ({}): keys `bgp.bird-config` and `bgp.bird-socket` must be absolute paths",
                path.display()
            );
        }
    }
    if let Some(mtu) = config.mtu {
        notes.push(format!(
            "key `mtu` = {mtu}: the TUN MTU is fixed and per-path MTUs are off (paths are still probed and their MTUs reported); leave it unset to use each path's discovered MTU"
        ));
    }
    if config.endpoints.is_empty() {
        notes.push("no `endpoints`: other nodes cannot reach this one (fine only when it always connects out)".into());
    }
    Ok(Checked { config, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<Checked> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        check(&path, Overrides::default())
    }

    const GATEWAY: &str = r#"
mesh = "prod"
site = "aws-use1"
node = "gw-1"
role = "gateway"
coordinators = ["192.0.2.1:7443"]
state-dir = "/var/lib/strait"
endpoints = [{ address = "198.51.100.7:51820", kind = "public" }]
prefixes = ["10.10.0.0/16"]
join-token-file = "/run/credentials/strait-agent.service/secret_join-token"
"#;

    #[test]
    fn a_valid_file_passes_and_absent_secret_files_are_noted() {
        let c = check_text(GATEWAY).unwrap();
        assert_eq!(c.config.role, strait_pki::Role::Gateway);
        assert!(
            c.notes.iter().any(|n| n.contains("secret_join-token")),
            "{:?}",
            c.notes
        );
        assert!(c
            .summary(Path::new("a.toml"))
            .contains("role=gateway enrollment=join-token"));
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let cases = [
            ("listen-port = \"fifty\"\n", "listen-port"),
            ("listen-prot = 51820\n", "listen-prot"),
            ("mtu = 100\n", "key `mtu`: 100"),
            ("probe-interval = \"1ms\"\n", "probe-interval"),
            ("mss-clamp = \"yes\"\n", "mss-clamp"),
        ];
        for (line, needle) in cases {
            let text = format!("{line}{GATEWAY}");
            let err = format!("{:#}", check_text(&text).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
        let bare = GATEWAY.replace("prefixes = [\"10.10.0.0/16\"]", "");
        let err = format!("{:#}", check_text(&bare).unwrap_err());
        assert!(err.contains("key `prefixes`"), "{err}");
        let vault = format!("{GATEWAY}[vault]\naddress = \"ftp://v\"\nrole = \"r\"\nauth = \"approle\"\nrole-id = \"x\"\nsecret-id-file = \"/s\"\n");
        let err = format!("{:#}", check_text(&vault).unwrap_err());
        assert!(err.contains("key `vault`") && err.contains("ftp"), "{err}");
        let vault = format!(
            "{GATEWAY}[vault]\naddress = \"https://v\"\nrole = \"r\"\nauth = \"kubernetes\"\n"
        );
        let err = format!("{:#}", check_text(&vault).unwrap_err());
        assert!(err.contains("kubernetes-role"), "{err}");
        // Cloud IAM auth: the auth method's role is needed, and no secret file.
        for method in ["aws", "gcp"] {
            let vault = format!(
                "{GATEWAY}[vault]\naddress = \"https://v\"\nrole = \"r\"\nauth = \"{method}\"\n"
            );
            let err = format!("{:#}", check_text(&vault).unwrap_err());
            assert!(err.contains("auth-role"), "{err}");
            let ok = check_text(&format!("{vault}auth-role = \"strait-gateway\"\n")).unwrap();
            assert!(ok
                .summary(Path::new("a"))
                .contains(&format!("auth={method}")));
        }
    }

    #[test]
    fn unknown_strait_variables_are_named() {
        let known: BTreeSet<String> = ["STRAIT_MESH".to_string()].into();
        let vars = [
            ("STRAIT_MESH".to_string(), "prod".to_string()),
            ("STRAIT_VAULT_ROEL".to_string(), "x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        assert_eq!(unknown_variables(vars, &known), vec!["STRAIT_VAULT_ROEL"]);
    }

    #[test]
    fn bgp_is_checked_with_absent_password_files_noted() {
        let bgp = format!(
            "{GATEWAY}probe-interval = \"200ms\"\n[bgp]\nlocal-as = 65001\nrouter-id = \"10.10.0.10\"\nbfd = true\n\
             [[bgp.neighbors]]\naddress = \"10.10.0.1\"\nremote-as = 65000\n\
             password-file = \"/run/credentials/strait-agent.service/secret_bgp-password\"\n"
        );
        let ok = check_text(&bgp).unwrap();
        assert!(ok.config.bgp.is_some());
        assert!(
            ok.notes
                .iter()
                .any(|n| n.contains("bgp.neighbors[0].password-file")),
            "{:?}",
            ok.notes
        );
        let err = format!(
            "{:#}",
            check_text(&bgp.replace("remote-as = 65000", "remote-as = 0")).unwrap_err()
        );
        assert!(err.contains("remote-as"), "{err}");
        let member = bgp
            .replace("role = \"gateway\"", "role = \"member\"")
            .replace("prefixes = [\"10.10.0.0/16\"]", "");
        let err = format!("{:#}", check_text(&member).unwrap_err());
        assert!(err.contains("only gateways speak BGP"), "{err}");
        let slow = check_text(&bgp.replace("probe-interval = \"200ms\"", "")).unwrap();
        assert!(
            slow.notes.iter().any(|n| n.contains("probe-interval")),
            "{:?}",
            slow.notes
        );
    }
}
