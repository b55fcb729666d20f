//! `[store]`: where the registry is kept, as written and checked (no file or network is
//! read here; [`crate::store`] opens what it names).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Which store backend holds the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `<state-dir>/strait.db`: one coordinator.
    #[default]
    Sqlite,
    /// A PostgreSQL (or CockroachDB) database that several coordinators share.
    Postgres,
}

/// `[store]`: where the registry is kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub kind: StoreKind,
    /// `postgres://user@host:port/db?sslmode=require`, without a password (a URL with one
    /// belongs in `url-file`).
    #[serde(default)]
    pub url: Option<String>,
    /// A file (mode 0600) holding the URL, password included.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for the database's TLS certificate (default: the
    /// system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for databases that authenticate clients by
    /// certificate (CockroachDB's usual setup).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// How often to look for changes other coordinators made.
    #[serde(default = "default_store_poll", with = "super::duration")]
    pub poll_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            url: None,
            url_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            poll_interval: default_store_poll(),
        }
    }
}

fn default_store_poll() -> Duration {
    Duration::from_millis(200)
}

/// Bounds of `store.poll-interval`.
pub const MIN_STORE_POLL: Duration = Duration::from_millis(50);
pub const MAX_STORE_POLL: Duration = Duration::from_secs(5);

impl StoreConfig {
    /// Checks the keys that can be checked without reading files or the network.
    pub fn validate(&self) -> Result<()> {
        match self.kind {
            StoreKind::Sqlite => {
                let set = [
                    ("url", self.url.is_some()),
                    ("url-file", self.url_file.is_some()),
                    ("ca-file", self.ca_file.is_some()),
                    ("client-cert-file", self.client_cert_file.is_some()),
                    ("client-key-file", self.client_key_file.is_some()),
                ];
                if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                    bail!("key `store.{key}` is set but `store.kind` is \"sqlite\"; set kind = \"postgres\" or remove it");
                }
            }
            StoreKind::Postgres => {
                match (&self.url, &self.url_file) {
                    (Some(_), Some(_)) => bail!("keys `store.url` and `store.url-file` are both set; keep one"),
                    (None, None) => bail!("key `store.kind` is \"postgres\" but neither `store.url` nor `store.url-file` is set"),
                    (Some(url), None) => {
                        let parsed = parse_url(url).context("key `store.url`")?;
                        if parsed.get_password().is_some() {
                            bail!("key `store.url` holds a password; put the URL in a file of mode 0600 and name it in `store.url-file`");
                        }
                    }
                    (None, Some(_)) => {}
                }
                if self.client_cert_file.is_some() != self.client_key_file.is_some() {
                    bail!("keys `store.client-cert-file` and `store.client-key-file` go together; set both or neither");
                }
            }
        }
        if self.poll_interval < MIN_STORE_POLL || self.poll_interval > MAX_STORE_POLL {
            bail!(
                "key `store.poll-interval`: use {} to {}",
                humantime::format_duration(MIN_STORE_POLL),
                humantime::format_duration(MAX_STORE_POLL)
            );
        }
        Ok(())
    }
}

/// Parses a `postgres://` URL (or a `key=value` connection string).
pub fn parse_url(url: &str) -> Result<::postgres::Config> {
    ::postgres::Config::from_str(url.trim()).map_err(|e| {
        anyhow::anyhow!(
            "not a PostgreSQL URL ({e}); write e.g. postgres://strait@db.example:5432/strait?sslmode=require"
        )
    })
}
