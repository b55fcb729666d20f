//! The coordinator's configuration (`coordinator.toml`, kebab-case), validated at start.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use strait_pki::identity::Label;
use strait_pki::vault::VaultSettings;

pub mod access;
mod store;
pub use store::{parse_url, StoreConfig, StoreKind, MAX_STORE_POLL, MIN_STORE_POLL};

/// Default overlay CIDR: the CGNAT range (RFC 6598), unlikely to collide with VPC ranges.
pub const DEFAULT_OVERLAY_CIDR: &str = "100.64.0.0/10";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The mesh name (an RFC 1123 label); it appears in every certificate.
    pub mesh: String,
    /// This coordinator's name in its certificate.
    #[serde(default = "default_name")]
    pub name: String,
    /// UDP address the QUIC listener binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for the store, the CA and this coordinator's certificate.
    pub state_dir: PathBuf,
    /// CIDR from which overlay addresses are allocated.
    #[serde(default = "default_overlay")]
    pub overlay_cidr: IpNetwork,
    /// A free range from which sites whose address space overlaps another site's get
    /// global prefixes, unless they declare `global-prefixes` (see [`crate::globals`]).
    #[serde(default)]
    pub global_cidr: Option<IpNetwork>,
    /// A node with no heartbeat for this long is marked offline (it stays in maps).
    #[serde(default = "default_heartbeat_timeout", with = "duration")]
    pub heartbeat_timeout: Duration,
    #[serde(default)]
    pub pki: PkiConfig,
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    /// Plain WireGuard devices without an agent; gateways of other sites peer with them.
    #[serde(default)]
    pub external_peers: Vec<ExternalPeerConfig>,
    /// Scheduled throughput probes between tunnel peers; off unless configured (transfers
    /// cost egress).
    #[serde(default)]
    pub throughput_probes: Option<ThroughputProbes>,
    /// Where /metrics, /healthz and /readyz are served over HTTP (off if unset).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the registry is kept: SQLite in `state-dir` (default), or PostgreSQL, which
    /// several coordinators can share.
    #[serde(default)]
    pub store: StoreConfig,
    /// How many connections the coordinator holds at once, and for how long without a
    /// certificate, so that a flood of connections cannot exhaust it.
    #[serde(default)]
    pub limits: Limits,
    /// Which sites or prefixes may open traffic to which (default: every site reaches every
    /// site); enforced by the receiving gateways. See [`crate::access`].
    #[serde(default)]
    pub policy: access::PolicyConfig,
}

/// `[limits]`: connection limits. A connection counts from its first packet (handshakes
/// included) until it closes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Connections at once, from everyone.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections at once from one IPv4 address or one IPv6 /64. Agents behind one NAT
    /// (a Kubernetes cluster's egress address) share one.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: u32,
    /// How long a connection without a client certificate (it may only enroll) stays open.
    #[serde(default = "default_anonymous_lifetime", with = "duration")]
    pub anonymous_lifetime: Duration,
}

/// Default of `limits.max-connections`: twice the 5,000 agents the benchmarks run, about
/// 550 MiB of sessions at the measured ~55 KiB each.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default of `limits.max-connections-per-address`: room for a thousand agents behind one
/// NAT address, while one flooding host holds at most a tenth of the total.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: u32 = 1_000;
/// Bounds of `limits.anonymous-lifetime`.
pub const MIN_ANONYMOUS_LIFETIME: Duration = Duration::from_secs(1);
pub const MAX_ANONYMOUS_LIFETIME: Duration = Duration::from_secs(60);

fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_connections_per_address() -> u32 {
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
}
fn default_anonymous_lifetime() -> Duration {
    Duration::from_secs(10)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            anonymous_lifetime: default_anonymous_lifetime(),
        }
    }
}

impl Limits {
    /// Checks the limits' ranges.
    pub fn validate(&self) -> Result<()> {
        if self.max_connections == 0 {
            bail!("key `limits.max-connections`: must be at least 1 (the default is {DEFAULT_MAX_CONNECTIONS})");
        }
        if self.max_connections_per_address == 0
            || self.max_connections_per_address > self.max_connections
        {
            bail!(
                "key `limits.max-connections-per-address`: use 1 to `limits.max-connections` ({}); agents behind one NAT address share it",
                self.max_connections
            );
        }
        if self.anonymous_lifetime < MIN_ANONYMOUS_LIFETIME
            || self.anonymous_lifetime > MAX_ANONYMOUS_LIFETIME
        {
            bail!(
                "key `limits.anonymous-lifetime`: use {} to {} (an enrollment takes one request)",
                humantime::format_duration(MIN_ANONYMOUS_LIFETIME),
                humantime::format_duration(MAX_ANONYMOUS_LIFETIME)
            );
        }
        Ok(())
    }
}

/// The site part of external peers' ids (`external/<name>`): no site may have this name.
pub const EXTERNAL_SITE: &str = "external";

/// Shortest interval between scheduled throughput probes.
pub const MIN_THROUGHPUT_PROBE_INTERVAL: Duration = Duration::from_secs(600);

/// Scheduled throughput probes: one pair of tunnel peers per `interval`, in turn.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ThroughputProbes {
    /// Time between two probes (at least 10 minutes).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Length of each transfer (1 to 30 s).
    #[serde(default = "default_probe_duration", with = "duration")]
    pub duration: Duration,
}

fn default_probe_duration() -> Duration {
    Duration::from_secs(5)
}

/// A plain WireGuard device (an on-prem router, a legacy concentrator).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExternalPeerConfig {
    pub name: String,
    /// The site the device serves (declared in `[[sites]]`).
    pub site: String,
    /// Its WireGuard public key (base64); its private key is never known to Strait.
    pub public_key: String,
    /// Where gateways reach it; without one, it must connect first (keepalive).
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// Prefixes behind it, inside its site's prefixes.
    pub prefixes: Vec<IpNetwork>,
    /// Its overlay address (inside `overlay-cidr`), if it has one.
    #[serde(default)]
    pub overlay_ip: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PkiConfig {
    /// `builtin` (the mesh CA in the state directory) or `vault`.
    #[serde(default = "default_pki_mode")]
    pub mode: String,
    /// Lifetime of agent certificates issued by the built-in CA.
    #[serde(default = "default_agent_lifetime", with = "duration")]
    pub agent_cert_lifetime: Duration,
    /// Lifetime of the coordinator's own certificate from the built-in CA (renewed at about
    /// two thirds of it; one valid for longer is replaced at start).
    #[serde(default = "default_coordinator_lifetime", with = "duration")]
    pub coordinator_cert_lifetime: Duration,
    /// With `mode = "vault"`: where this coordinator gets its certificate and which CA it
    /// trusts (the PKI engine's). Agents then get theirs from Vault too.
    #[serde(default)]
    pub vault: Option<VaultSettings>,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            mode: default_pki_mode(),
            agent_cert_lifetime: default_agent_lifetime(),
            coordinator_cert_lifetime: default_coordinator_lifetime(),
            vault: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    #[serde(default)]
    pub cloud: String,
    #[serde(default)]
    pub region: String,
    /// Prefixes nodes of this site may advertise (e.g. the VPC CIDR).
    #[serde(default)]
    pub prefixes: Vec<IpNetwork>,
    /// Peer every node of this site with every remote node (not only gateways).
    #[serde(default)]
    pub full_mesh: bool,
    /// The addresses the rest of the mesh reaches this site by, one per prefix in
    /// `prefixes` (same order, family and size); its tunnel nodes translate 1:1. Empty: the
    /// site's own addresses (or, when it overlaps another site, some from `global-cidr`).
    #[serde(default)]
    pub global_prefixes: Vec<IpNetwork>,
}

fn default_name() -> String {
    "primary".into()
}
fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("constant address")
}
fn default_overlay() -> IpNetwork {
    DEFAULT_OVERLAY_CIDR.parse().expect("constant CIDR")
}
fn default_heartbeat_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_pki_mode() -> String {
    "builtin".into()
}
fn default_agent_lifetime() -> Duration {
    strait_pki::ca::DEFAULT_AGENT_LIFETIME
}
fn default_coordinator_lifetime() -> Duration {
    strait_pki::ca::DEFAULT_SERVICE_LIFETIME
}

/// `"15s"`, `"24h"`, `"1h 30m"` as durations.
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"15s\", \"10m\" or \"24h\""
            ))
        })
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading coordinator config {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("parsing coordinator config {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("invalid coordinator config {}", path.display()))?;
        Ok(config)
    }

    /// Checks everything that can be checked before serving.
    pub fn validate(&self) -> Result<()> {
        Label::parse("mesh", &self.mesh).context("key `mesh`")?;
        Label::parse("coordinator name", &self.name).context("key `name`")?;
        match (self.pki.mode.as_str(), &self.pki.vault) {
            ("builtin", None) => {}
            ("builtin", Some(_)) => bail!(
                "key `pki.vault` is set but `pki.mode` is \"builtin\"; set mode = \"vault\" or remove [pki.vault]"
            ),
            ("vault", Some(v)) => {
                v.to_config().context("key `pki.vault`")?;
            }
            ("vault", None) => bail!("key `pki.mode` is \"vault\" but there is no [pki.vault] section"),
            (other, _) => bail!("key `pki.mode`: unknown mode {other:?}; use \"builtin\" or \"vault\""),
        }
        let IpNetwork::V4(overlay) = self.overlay_cidr else {
            bail!(
                "key `overlay-cidr`: {} is IPv6; the overlay is IPv4 (e.g. {DEFAULT_OVERLAY_CIDR})",
                self.overlay_cidr
            );
        };
        if overlay.prefix() > 30 {
            bail!(
                "key `overlay-cidr`: {} is too small; use a /30 or larger",
                self.overlay_cidr
            );
        }
        self.store.validate()?;
        self.limits.validate()?;
        if self.heartbeat_timeout < Duration::from_secs(2) {
            bail!("key `heartbeat-timeout`: must be at least 2s");
        }
        if let Some(t) = &self.throughput_probes {
            if t.interval < MIN_THROUGHPUT_PROBE_INTERVAL {
                bail!(
                    "key `throughput-probes.interval`: {} is too often; scheduled transfers cost egress, so the minimum is 10m",
                    humantime::format_duration(t.interval)
                );
            }
            let max = u64::from(strait_proto::probe::MAX_THROUGHPUT_SECS);
            if t.duration < Duration::from_secs(1) || t.duration > Duration::from_secs(max) {
                bail!("key `throughput-probes.duration`: use 1s to {max}s");
            }
        }
        if self.pki.agent_cert_lifetime < Duration::from_secs(60) {
            bail!("key `pki.agent-cert-lifetime`: must be at least 60s");
        }
        if self.pki.coordinator_cert_lifetime < Duration::from_secs(60) {
            bail!("key `pki.coordinator-cert-lifetime`: must be at least 60s");
        }
        let mut names = BTreeSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            Label::parse("site name", &site.name)
                .with_context(|| format!("key `sites[{i}].name`"))?;
            if site.name == EXTERNAL_SITE {
                bail!(
                    "key `sites[{i}].name`: {EXTERNAL_SITE:?} is reserved (external peers are named {EXTERNAL_SITE}/<name>, which a node of such a site would clash with); choose another name"
                );
            }
            if !names.insert(site.name.as_str()) {
                bail!(
                    "key `sites[{i}].name`: site {:?} is declared twice",
                    site.name
                );
            }
            for p in &site.prefixes {
                if p.prefix() == 0 {
                    bail!("key `sites[{i}].prefixes`: {p} covers the default route; list the site's real ranges");
                }
                if p.network() != p.ip() {
                    bail!(
                        "key `sites[{i}].prefixes`: {p} has host bits set; write {}/{}",
                        p.network(),
                        p.prefix()
                    );
                }
                if crate::prefix::overlaps(*p, self.overlay_cidr) {
                    bail!("key `sites[{i}].prefixes`: {p} overlaps the overlay CIDR {}; change one of them", self.overlay_cidr);
                }
            }
        }
        // Overlapping sites need global addresses; those declared or allocated are valid.
        crate::globals::assign(self)?;
        let mut peer_names = BTreeSet::new();
        // Two peers of one map cannot share a destination: no prefix or overlay address is
        // given to two external peers.
        let mut carried: BTreeMap<IpNetwork, &str> = BTreeMap::new();
        let mut addresses: BTreeMap<std::net::Ipv4Addr, &str> = BTreeMap::new();
        // A WireGuard key names one peer: the agents' engines key peers by it.
        let mut keys: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, p) in self.external_peers.iter().enumerate() {
            let key = |k: &str| format!("key `external-peers[{i}].{k}`");
            Label::parse("external peer name", &p.name).with_context(|| key("name"))?;
            if !peer_names.insert(p.name.as_str()) {
                bail!(
                    "{}: external peer {:?} is declared twice",
                    key("name"),
                    p.name
                );
            }
            let Some(site) = self.site(&p.site) else {
                bail!(
                    "{}: site {:?} is not declared in [[sites]]",
                    key("site"),
                    p.site
                );
            };
            {
                use base64::Engine;
                let ok = base64::engine::general_purpose::STANDARD
                    .decode(&p.public_key)
                    .is_ok_and(|k| k.len() == 32);
                if !ok {
                    bail!(
                        "{}: not a base64 WireGuard public key (run `wg pubkey` on the device)",
                        key("public-key")
                    );
                }
            }
            for prefix in &p.prefixes {
                if !site
                    .prefixes
                    .iter()
                    .any(|own| crate::prefix::contains(*own, *prefix))
                {
                    bail!(
                        "{}: {prefix} is outside site {}'s prefixes",
                        key("prefixes"),
                        site.name
                    );
                }
                let network = IpNetwork::new(prefix.network(), prefix.prefix()).unwrap_or(*prefix);
                if let Some(other) = carried.insert(network, &p.name) {
                    bail!(
                        "{}: {prefix} is also external peer {other}'s; give each prefix to one peer",
                        key("prefixes")
                    );
                }
            }
            if let Some(ip) = p.overlay_ip {
                if !self.overlay_cidr.contains(std::net::IpAddr::V4(ip)) {
                    bail!(
                        "{}: {ip} is outside overlay-cidr {}",
                        key("overlay-ip"),
                        self.overlay_cidr
                    );
                }
                if let Some(other) = addresses.insert(ip, &p.name) {
                    bail!(
                        "{}: {ip} is also external peer {other}'s",
                        key("overlay-ip")
                    );
                }
            }
            if let Some(other) = keys.insert(&p.public_key, &p.name) {
                bail!(
                    "{}: the key is also external peer {other}'s; each device needs its own key pair",
                    key("public-key")
                );
            }
        }
        access::Policy::build(self)?;
        Ok(())
    }

    pub fn site(&self, name: &str) -> Option<&SiteConfig> {
        self.sites.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        let c: Config = toml::from_str(s)?;
        c.validate()?;
        Ok(c)
    }

    const GOOD: &str = r#"
mesh = "prod"
state-dir = "/tmp/x"
[[sites]]
name = "aws-use1"
cloud = "aws"
region = "us-east-1"
prefixes = ["10.10.0.0/16"]
[[sites]]
name = "gcp-usc1"
prefixes = ["10.20.0.0/16"]
full-mesh = true
"#;

    const EXT: &str = r#"
[[external-peers]]
name = "dc1"
site = "aws-use1"
public-key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
endpoint = "198.18.0.10:51820"
prefixes = ["10.10.9.0/24"]
overlay-ip = "100.64.255.1"
"#;

    #[test]
    fn external_peers_parse() {
        let c = parse(&format!("{GOOD}\n{EXT}")).unwrap();
        assert_eq!(c.external_peers[0].name, "dc1");
    }

    #[test]
    fn good_config_has_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.overlay_cidr.to_string(), "100.64.0.0/10");
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(15));
        assert_eq!(
            c.pki.coordinator_cert_lifetime,
            strait_pki::ca::DEFAULT_SERVICE_LIFETIME
        );
        assert!(c.site("gcp-usc1").unwrap().full_mesh);
        assert_eq!(c.limits, Limits::default());
        let c = parse(&format!(
            "{GOOD}\n[limits]\nmax-connections = 50\nmax-connections-per-address = 5\nanonymous-lifetime = \"3s\""
        ))
        .unwrap();
        assert_eq!(
            (
                c.limits.max_connections,
                c.limits.max_connections_per_address
            ),
            (50, 5)
        );
        assert_eq!(c.limits.anonymous_lifetime, Duration::from_secs(3));
    }

    #[test]
    fn postgres_store_config_parses() {
        let c = parse(&format!(
            "{GOOD}\n[store]\nkind = \"postgres\"\nurl-file = \"/etc/strait/db-url\"\npoll-interval = \"250ms\""
        ))
        .unwrap();
        assert_eq!(c.store.kind, StoreKind::Postgres);
        assert_eq!(c.store.poll_interval, Duration::from_millis(250));
        let c = parse(GOOD).unwrap();
        assert_eq!(c.store, StoreConfig::default());
        let c = parse(&format!(
            "{GOOD}\n[store]\nkind = \"postgres\"\nurl = \"postgres://strait@db.example:26257/strait?sslmode=require\""
        ))
        .unwrap();
        assert!(c.store.url.is_some());
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (GOOD.replace("\"prod\"", "\"Prod\""), "mesh"),
            (
                GOOD.replace("10.20.0.0/16", "10.10.128.0/17"),
                "overlaps site gcp-usc1",
            ),
            (GOOD.replace("10.20.0.0/16", "0.0.0.0/0"), "default route"),
            (GOOD.replace("10.20.0.0/16", "10.20.0.1/16"), "host bits"),
            (GOOD.replace("10.20.0.0/16", "100.64.1.0/24"), "overlay"),
            (GOOD.replace("gcp-usc1", "aws-use1"), "declared twice"),
            (format!("{GOOD}\nbogus = 1"), "bogus"),
            (
                GOOD.replace(
                    "mesh = \"prod\"",
                    "mesh = \"prod\"\nheartbeat-timeout = \"soon\"",
                ),
                "duration",
            ),
            (format!("{GOOD}\n[pki]\nmode = \"magic\""), "pki.mode"),
            (
                format!("{GOOD}\n[pki]\ncoordinator-cert-lifetime = \"30s\""),
                "pki.coordinator-cert-lifetime`: must be at least 60s",
            ),
            (
                format!("{GOOD}\n[throughput-probes]\ninterval = \"1m\""),
                "throughput-probes.interval",
            ),
            (
                format!("{GOOD}\n[throughput-probes]\ninterval = \"1h\"\nduration = \"2m\""),
                "throughput-probes.duration",
            ),
            (
                format!("{GOOD}\n{EXT}").replace("aws-use1\"\npublic", "nowhere\"\npublic"),
                "not declared",
            ),
            (format!("{GOOD}\n{EXT}").replace("AAAA", "AA"), "public-key"),
            (
                format!("{GOOD}\n{EXT}").replace("10.10.9.0/24", "10.99.0.0/24"),
                "outside site aws-use1",
            ),
            (
                format!("{GOOD}\n{EXT}").replace("100.64.255.1", "10.0.0.1"),
                "overlay-ip",
            ),
            (format!("{GOOD}\n[store]\nkind = \"mysql\""), "mysql"),
            (
                format!("{GOOD}\n[store]\nkind = \"postgres\""),
                "neither `store.url` nor `store.url-file`",
            ),
            (
                format!("{GOOD}\n[store]\nurl = \"postgres://db/strait\""),
                "store.url` is set but `store.kind` is \"sqlite\"",
            ),
            (
                format!("{GOOD}\n[store]\nkind = \"postgres\"\nurl = \"postgres://u:secret@db/strait\""),
                "url-file",
            ),
            (
                format!("{GOOD}\n[store]\nkind = \"postgres\"\nurl = \"postgres://db/strait?sslmode=sometimes\""),
                "store.url",
            ),
            (
                format!("{GOOD}\n[store]\nkind = \"postgres\"\nurl = \"postgres://db/s\"\nurl-file = \"/x\""),
                "both set",
            ),
            (
                format!("{GOOD}\n[store]\nkind = \"postgres\"\nurl = \"postgres://db/s\"\nclient-cert-file = \"/x\""),
                "go together",
            ),
            (
                format!("{GOOD}\n[store]\nkind = \"postgres\"\nurl = \"postgres://db/s\"\npoll-interval = \"1ms\""),
                "store.poll-interval",
            ),
            // Found by the fuzz harness's checks: a site named external (its node gw and an
            // external peer gw would both be external/gw), and two external peers with one
            // prefix or overlay address (two peers of one map with one destination).
            (
                GOOD.replace("gcp-usc1", "external"),
                "\"external\" is reserved",
            ),
            (
                format!(
                    "{GOOD}\n{EXT}\n{}",
                    EXT.replace("dc1", "dc2")
                        .replace("100.64.255.1", "100.64.255.2")
                ),
                "also external peer dc1's",
            ),
            (
                format!(
                    "{GOOD}\n{EXT}\n{}",
                    EXT.replace("dc1", "dc2")
                        .replace("10.10.9.0/24", "10.10.8.0/24")
                ),
                "100.64.255.1 is also external peer dc1's",
            ),
            (
                format!(
                    "{GOOD}\n{EXT}\n{}",
                    EXT.replace("dc1", "dc2")
                        .replace("10.10.9.0/24", "10.10.8.0/24")
                        .replace("100.64.255.1", "100.64.255.2")
                ),
                "external-peers[1].public-key`: the key is also external peer dc1's",
            ),
            (
                format!("{GOOD}\n[limits]\nmax-connections = 0"),
                "limits.max-connections`: must be at least 1",
            ),
            (
                format!("{GOOD}\n[limits]\nmax-connections = 10\nmax-connections-per-address = 11"),
                "limits.max-connections-per-address`: use 1 to",
            ),
            (
                format!("{GOOD}\n[limits]\nanonymous-lifetime = \"5m\""),
                "limits.anonymous-lifetime",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(needle), "expected {needle:?} in: {err}");
        }
    }
}
