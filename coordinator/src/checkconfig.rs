//! `strait-coordinator check-config`: `coordinator.toml` validated completely (types,
//! values, cross-field rules) without serving, logging in to Vault or opening the store.
//! Files the config names (Vault secrets, the store's URL file) often exist only where the
//! coordinator runs; those absent here are reported as not checked.

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{Config, StoreKind};

/// A checked configuration and what could not be checked here.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub notes: Vec<String>,
}

impl Checked {
    pub fn summary(&self, path: &Path) -> String {
        let c = &self.config;
        let store = match c.store.kind {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        };
        format!(
            "coordinator config {} is valid: mesh={} name={} sites={} pki={} store={store}",
            path.display(),
            c.mesh,
            c.name,
            c.sites.len(),
            c.pki.mode
        )
    }
}

/// Checks `path`: everything `Config::load` checks, with `[pki.vault]` checked offline.
pub fn check(path: &Path) -> Result<Checked> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading coordinator config {}", path.display()))?;
    let config: Config = toml::from_str(&text).with_context(|| {
        format!(
            "coordinator config {}: wrong type or unknown key",
            path.display()
        )
    })?;
    let invalid = || format!("invalid coordinator config {}", path.display());
    let mut notes = Vec::new();
    let mut absent = |key: &str, p: &Path| {
        if !p.exists() {
            notes.push(format!(
                "key `{key}`: {} is not here, so its content is not checked (it must exist where the coordinator runs)",
                p.display()
            ));
        }
    };
    // `validate` reads Vault's secret files: check the rest with the built-in CA in its
    // place, and the Vault settings without reading anything.
    let mut rest = config.clone();
    if rest.pki.mode == "vault" {
        if let Some(v) = rest.pki.vault.take() {
            rest.pki.mode = "builtin".into();
            for (key, p) in v
                .check_offline()
                .context("key `pki.vault`")
                .with_context(invalid)?
            {
                absent(&format!("pki.vault.{key}"), &p);
            }
        }
    }
    rest.validate().with_context(invalid)?;
    for (key, p) in [
        ("store.url-file", &config.store.url_file),
        ("store.ca-file", &config.store.ca_file),
        ("store.client-cert-file", &config.store.client_cert_file),
        ("store.client-key-file", &config.store.client_key_file),
    ] {
        if let Some(p) = p {
            absent(key, p);
        }
    }
    if config.sites.is_empty() {
        notes.push("no [[sites]]: no agent can join until sites are declared".into());
    }
    // Global addresses, declared or allocated: what the rest of the mesh (and the private
    // DNS zone) uses for each translated site.
    let globals = crate::globals::Globals::of(&config);
    for site in &config.sites {
        let pairs = globals.pairs(&site.name);
        if !pairs.is_empty() {
            let listed: Vec<String> = pairs
                .iter()
                .map(|t| format!("{} => {}", t.local, t.global))
                .collect();
            let how = if site.global_prefixes.is_empty() {
                "allocated from `global-cidr`"
            } else {
                "declared"
            };
            notes.push(format!(
                "site {} is reached by global addresses ({how}): {}",
                site.name,
                listed.join(", ")
            ));
        }
    }
    Ok(Checked { config, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<Checked> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        check(&path)
    }

    const VAULT: &str = r#"
mesh = "prod"
state-dir = "/var/lib/strait"
[pki]
mode = "vault"
[pki.vault]
address = "https://vault.example.net:8200"
role = "strait-coordinator"
auth = "kubernetes"
kubernetes-role = "strait-coordinator"
jwt-path = "/var/run/secrets/vault/token"
[[sites]]
name = "aws-use1"
prefixes = ["10.10.0.0/16"]
"#;

    #[test]
    fn vault_settings_are_checked_without_their_files() {
        let c = check_text(VAULT).unwrap();
        assert_eq!(c.config.pki.mode, "vault");
        assert!(c.summary(Path::new("c.toml")).contains("pki=vault"));
        assert!(
            c.notes.iter().any(|n| n.contains("jwt-path")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn global_addresses_are_shown_and_overlaps_without_them_refused() {
        let overlapping = VAULT.replace(
            "10.10.0.0/16",
            "10.10.0.0/16\"]\n[[sites]]\nname = \"b\"\nprefixes = [\"10.10.0.0/16",
        );
        let err = format!("{:#}", check_text(&overlapping).unwrap_err());
        assert!(err.contains("add `global-prefixes`"), "{err}");
        let c = check_text(&format!("global-cidr = \"10.128.0.0/12\"\n{overlapping}")).unwrap();
        for note in [
            "site aws-use1 is reached by global addresses (allocated from `global-cidr`): 10.10.0.0/16 => 10.128.0.0/16",
            "site b is reached by global addresses (allocated from `global-cidr`): 10.10.0.0/16 => 10.129.0.0/16",
        ] {
            assert!(c.notes.iter().any(|n| n == note), "{note:?} not in {:?}", c.notes);
        }
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let cases = [
            (VAULT.replace("https://vault", "ftp://vault"), "ftp://vault"),
            (
                VAULT.replace("kubernetes-role = \"strait-coordinator\"\n", ""),
                "kubernetes-role",
            ),
            (
                VAULT.replace("10.10.0.0/16", "100.64.0.0/16"),
                "sites[0].prefixes",
            ),
            (
                format!("heartbeat-timeout = 15\n{VAULT}"),
                "heartbeat-timeout",
            ),
            (
                VAULT.replace("mode = \"vault\"", "mode = \"valut\""),
                "valut",
            ),
            (
                format!("{VAULT}[store]\nkind = \"postgres\"\n"),
                "store.url-file",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", check_text(&text).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }
}
