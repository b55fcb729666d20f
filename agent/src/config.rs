//! The agent's configuration: a TOML file (kebab-case) whose every key can also be given as
//! a flag or a `STRAIT_*` environment variable (flags and variables win). Validated at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use strait_pki::identity::Label;
use strait_pki::vault::VaultSettings;
use strait_pki::Role;
use strait_proto::msg::{Endpoint, EndpointKind};

/// How the agent moves packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dataplane {
    /// Control plane only: no TUN, no routes, no root needed (tests, scale benchmarks).
    None,
    /// WireGuard in userspace (boringtun) on a TUN device, routes over netlink (root or
    /// CAP_NET_ADMIN).
    Userspace,
}

/// A gateway's standing among its site's gateways: peers spread flows over the reachable
/// active ones, and use standby ones only while no active one is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayPriority {
    Active,
    Standby,
}

impl GatewayPriority {
    /// The priority in maps (lower is preferred).
    pub fn value(self) -> u8 {
        match self {
            GatewayPriority::Active => 0,
            GatewayPriority::Standby => 1,
        }
    }
}

/// The file form: every key optional, so flags and variables can supply it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub mesh: Option<String>,
    pub site: Option<String>,
    pub node: Option<String>,
    pub role: Option<Role>,
    pub coordinators: Option<Vec<String>>,
    pub state_dir: Option<PathBuf>,
    pub join_token: Option<String>,
    pub join_token_file: Option<PathBuf>,
    pub dataplane: Option<Dataplane>,
    pub listen_port: Option<u16>,
    pub endpoints: Option<Vec<Endpoint>>,
    pub prefixes: Option<Vec<IpNetwork>>,
    pub heartbeat_interval: Option<String>,
    pub probe_interval: Option<String>,
    pub wg_key_rotation: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub tun_name: Option<String>,
    pub mtu: Option<u16>,
    pub persistent_keepalive: Option<u16>,
    pub fail_closed: Option<bool>,
    pub gateway_priority: Option<GatewayPriority>,
    /// BGP toward the site's routers, through a BIRD 2 daemon the agent configures.
    pub bgp: Option<crate::bgp::settings::BgpFile>,
    pub mss_clamp: Option<bool>,
    /// Get certificates from Vault's PKI engine instead of enrolling with a join token.
    pub vault: Option<VaultSettings>,
}

/// Flags and environment variables; each overrides the file key of the same name.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Mesh name (must match the certificate).
    #[arg(long, env = "STRAIT_MESH")]
    pub mesh: Option<String>,
    /// Site this node belongs to.
    #[arg(long, env = "STRAIT_SITE")]
    pub site: Option<String>,
    /// Node name (default: the host name).
    #[arg(long, env = "STRAIT_NODE")]
    pub node: Option<String>,
    /// gateway or member.
    #[arg(long, env = "STRAIT_ROLE")]
    pub role: Option<Role>,
    /// Coordinator address host:port (repeatable, or comma-separated).
    #[arg(
        long = "coordinator",
        env = "STRAIT_COORDINATORS",
        value_delimiter = ','
    )]
    pub coordinators: Vec<String>,
    /// Directory for certificates, the WireGuard key and the last map.
    #[arg(long, env = "STRAIT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Join token for the first enrollment (prefer --join-token-file).
    #[arg(long, env = "STRAIT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// File holding the join token.
    #[arg(long, env = "STRAIT_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Data plane: userspace (WireGuard on a TUN device) or none (control plane only).
    #[arg(long, env = "STRAIT_DATAPLANE", value_enum)]
    pub dataplane: Option<Dataplane>,
    /// Name of the TUN device.
    #[arg(long, env = "STRAIT_TUN_NAME")]
    pub tun_name: Option<String>,
    /// MTU of the TUN device (underlay MTU minus 80).
    #[arg(long, env = "STRAIT_MTU")]
    pub mtu: Option<u16>,
    /// Persistent keepalive toward peers in seconds (0 turns it off).
    #[arg(long, env = "STRAIT_PERSISTENT_KEEPALIVE")]
    pub persistent_keepalive: Option<u16>,
    /// Keep traffic for tunnel prefixes from leaving unencrypted if the agent dies: true
    /// (default) or false.
    #[arg(long, env = "STRAIT_FAIL_CLOSED")]
    pub fail_closed: Option<bool>,
    /// Gateways: active (default) or standby (used by peers only while no active gateway
    /// of the site is reachable).
    #[arg(long, env = "STRAIT_GATEWAY_PRIORITY", value_enum)]
    pub gateway_priority: Option<GatewayPriority>,
    /// On gateways, clamp the MSS of TCP forwarded to other sites to the path MTU: true
    /// (default) or false.
    #[arg(long, env = "STRAIT_MSS_CLAMP")]
    pub mss_clamp: Option<bool>,
    /// WireGuard UDP port.
    #[arg(long, env = "STRAIT_LISTEN_PORT")]
    pub listen_port: Option<u16>,
    /// An endpoint as kind=address:port, kind one of interconnect, private, public
    /// (repeatable, or comma-separated).
    #[arg(long = "endpoint", env = "STRAIT_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// A prefix this node carries traffic for (repeatable, or comma-separated).
    #[arg(long = "prefix", env = "STRAIT_PREFIXES", value_delimiter = ',')]
    pub prefixes: Vec<IpNetwork>,
    /// How often to send heartbeats, e.g. 5s.
    #[arg(long, env = "STRAIT_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// How often to probe every path to every peer, e.g. 1s (100ms to 60s).
    #[arg(long, env = "STRAIT_PROBE_INTERVAL")]
    pub probe_interval: Option<String>,
    /// How often to rotate the WireGuard key, e.g. 24h (10m or more; "off" never).
    #[arg(long, env = "STRAIT_WG_KEY_ROTATION")]
    pub wg_key_rotation: Option<String>,
    /// Address for /metrics, /healthz and /readyz over HTTP, e.g. 0.0.0.0:9464 (off if unset).
    #[arg(long, env = "STRAIT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub vault: VaultOverrides,
}

/// The `[vault]` keys as flags and variables (`--vault-address`, `STRAIT_VAULT_ADDRESS`...).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct VaultOverrides {
    /// Vault address; setting it makes the agent get its certificate from Vault.
    #[arg(long = "vault-address", env = "STRAIT_VAULT_ADDRESS")]
    pub vault_address: Option<String>,
    /// PKI mount (default pki).
    #[arg(long = "vault-mount", env = "STRAIT_VAULT_MOUNT")]
    pub vault_mount: Option<String>,
    /// PKI role (e.g. strait-gateway).
    #[arg(long = "vault-role", env = "STRAIT_VAULT_ROLE")]
    pub vault_role: Option<String>,
    /// token, approle, kubernetes, aws or gcp.
    #[arg(long = "vault-auth", env = "STRAIT_VAULT_AUTH")]
    pub vault_auth: Option<String>,
    #[arg(long = "vault-auth-mount", env = "STRAIT_VAULT_AUTH_MOUNT")]
    pub vault_auth_mount: Option<String>,
    #[arg(long = "vault-token-file", env = "STRAIT_VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,
    #[arg(long = "vault-role-id", env = "STRAIT_VAULT_ROLE_ID")]
    pub vault_role_id: Option<String>,
    #[arg(long = "vault-secret-id-file", env = "STRAIT_VAULT_SECRET_ID_FILE")]
    pub vault_secret_id_file: Option<PathBuf>,
    #[arg(long = "vault-kubernetes-role", env = "STRAIT_VAULT_KUBERNETES_ROLE")]
    pub vault_kubernetes_role: Option<String>,
    /// aws, gcp: the role of the cloud auth method to log in as.
    #[arg(long = "vault-auth-role", env = "STRAIT_VAULT_AUTH_ROLE")]
    pub vault_auth_role: Option<String>,
    #[arg(long = "vault-jwt-path", env = "STRAIT_VAULT_JWT_PATH")]
    pub vault_jwt_path: Option<PathBuf>,
    #[arg(long = "vault-ca-cert", env = "STRAIT_VAULT_CA_CERT")]
    pub vault_ca_cert: Option<PathBuf>,
    /// Certificate lifetime to request, e.g. 24h.
    #[arg(long = "vault-cert-ttl", env = "STRAIT_VAULT_CERT_TTL")]
    pub vault_cert_ttl: Option<String>,
}

impl VaultOverrides {
    fn is_empty(&self) -> bool {
        self.vault_address.is_none() && self.vault_role.is_none() && self.vault_auth.is_none()
    }

    /// Applies the flags over `base` (the file's `[vault]`), or builds settings from flags.
    pub fn apply(self, base: Option<VaultSettings>) -> Result<Option<VaultSettings>> {
        if self.is_empty() && base.is_none() {
            return Ok(None);
        }
        let need = |v: &Option<String>, key: &str| {
            v.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "key `vault.{key}` is required when Vault is configured (or --vault-{key})"
                )
            })
        };
        let mut s = match base {
            Some(b) => b,
            None => VaultSettings {
                address: need(&self.vault_address, "address")?,
                mount: "pki".into(),
                role: need(&self.vault_role, "role")?,
                auth: need(&self.vault_auth, "auth")?,
                auth_mount: None,
                token_file: None,
                role_id: None,
                secret_id_file: None,
                kubernetes_role: None,
                auth_role: None,
                jwt_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
                ca_cert: None,
                cert_ttl: "24h".into(),
            },
        };
        s.address = self.vault_address.unwrap_or(s.address);
        s.mount = self.vault_mount.unwrap_or(s.mount);
        s.role = self.vault_role.unwrap_or(s.role);
        s.auth = self.vault_auth.unwrap_or(s.auth);
        s.jwt_path = self.vault_jwt_path.unwrap_or(s.jwt_path);
        s.cert_ttl = self.vault_cert_ttl.unwrap_or(s.cert_ttl);
        s.auth_mount = self.vault_auth_mount.or(s.auth_mount);
        s.token_file = self.vault_token_file.or(s.token_file);
        s.role_id = self.vault_role_id.or(s.role_id);
        s.secret_id_file = self.vault_secret_id_file.or(s.secret_id_file);
        s.kubernetes_role = self.vault_kubernetes_role.or(s.kubernetes_role);
        s.auth_role = self.vault_auth_role.or(s.auth_role);
        s.ca_cert = self.vault_ca_cert.or(s.ca_cert);
        Ok(Some(s))
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mesh: String,
    pub site: String,
    pub node: String,
    pub role: Role,
    pub coordinators: Vec<String>,
    pub state_dir: PathBuf,
    pub join_token: Option<String>,
    pub dataplane: Dataplane,
    pub listen_port: u16,
    pub endpoints: Vec<Endpoint>,
    pub prefixes: Vec<IpNetwork>,
    pub heartbeat_interval: Duration,
    pub probe_interval: Duration,
    /// How often the WireGuard key is rotated; `None`: only on demand.
    pub wg_key_rotation: Option<Duration>,
    /// Where /metrics, /healthz and /readyz are served; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    pub tun_name: String,
    /// TUN MTU; `None`: the underlay's MTU minus 80, found at start.
    pub mtu: Option<u16>,
    pub persistent_keepalive: Option<u16>,
    /// Tunnel prefixes are backed by `unreachable` routes that outlive a dead agent.
    pub fail_closed: bool,
    /// Gateways: priority among the site's gateways (0 active, 1 standby).
    pub priority: u8,
    /// BGP to the site's routers (gateways only).
    pub bgp: Option<crate::bgp::settings::BgpSettings>,
    /// Gateways clamp the MSS of TCP forwarded into the tunnel to the path MTU.
    pub mss_clamp: bool,
    pub vault: Option<VaultSettings>,
}

pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// A 1500-byte underlay minus 80 bytes of WireGuard-over-IPv6 overhead.
/// An interval setting `key` (200ms to 60s), `default` when unset.
fn interval(key: &str, value: Option<String>, default: Duration) -> Result<Duration> {
    interval_from(key, value, default, Duration::from_millis(200))
}

/// An interval setting `key` (`min` to 60s), `default` when unset.
fn interval_from(
    key: &str,
    value: Option<String>,
    default: Duration,
    min: Duration,
) -> Result<Duration> {
    let d = match value {
        Some(s) => humantime::parse_duration(&s).map_err(|e| {
            anyhow::anyhow!("key `{key}`: {s:?} is not a duration ({e}); write e.g. \"5s\"")
        })?,
        None => default,
    };
    if d < min || d > Duration::from_secs(60) {
        bail!(
            "key `{key}`: must be between {} and 60s",
            humantime::format_duration(min)
        );
    }
    Ok(d)
}

/// The key-rotation period: `default` when unset, `None` for "off", at least 10 minutes.
fn rotation_period(value: Option<String>, default: Duration) -> Result<Option<Duration>> {
    const KEY: &str = "wg-key-rotation";
    let d = match value.as_deref() {
        None => default,
        Some("off") => return Ok(None),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            anyhow::anyhow!(
                "key `{KEY}`: {s:?} is not a duration ({e}); write e.g. \"24h\", or \"off\""
            )
        })?,
    };
    if d < Duration::from_secs(600) {
        bail!("key `{KEY}`: must be at least 10m (or \"off\"); rotate on demand with `straitctl rotate-key`");
    }
    Ok(Some(d))
}

/// TUN MTU when the underlay's cannot be found (a 1500-byte underlay minus 80).
pub const DEFAULT_MTU: u16 = 1420;

impl Config {
    /// Reads `file` (if given), applies `overrides`, and validates the result.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config> {
        let base = match file {
            Some(path) => {
                strait_pki::files::check_file(path, strait_pki::files::Sensitivity::Integrity)?;
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading agent config {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing agent config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        Config::merge(base, overrides).with_context(|| match file {
            Some(p) => format!("invalid agent configuration ({})", p.display()),
            None => "invalid agent configuration".to_string(),
        })
    }

    pub fn merge(f: FileConfig, o: Overrides) -> Result<Config> {
        let missing = |key: &str, flag: &str, env: &str| {
            anyhow::anyhow!(
                "key `{key}` is required: set it in the config file, with --{flag}, or with {env}"
            )
        };
        let mesh = o
            .mesh
            .or(f.mesh)
            .ok_or_else(|| missing("mesh", "mesh", "STRAIT_MESH"))?;
        Label::parse("mesh", &mesh).context("key `mesh`")?;
        let site = o
            .site
            .or(f.site)
            .ok_or_else(|| missing("site", "site", "STRAIT_SITE"))?;
        Label::parse("site", &site).context("key `site`")?;
        let node = match o.node.or(f.node) {
            Some(n) => n,
            None => hostname()
                .context("key `node` is not set and the host name is unusable; set --node")?,
        };
        Label::parse("node name", &node).context("key `node`")?;
        let role = o
            .role
            .or(f.role)
            .ok_or_else(|| missing("role", "role", "STRAIT_ROLE"))?;
        if !role.has_site() {
            bail!("key `role`: {role} is not a node role; use gateway or member");
        }
        let coordinators = if o.coordinators.is_empty() {
            f.coordinators.unwrap_or_default()
        } else {
            o.coordinators
        };
        if coordinators.is_empty() {
            return Err(missing(
                "coordinators",
                "coordinator",
                "STRAIT_COORDINATORS",
            ));
        }
        for c in &coordinators {
            if c.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                bail!("key `coordinators`: {c:?} is not host:port (e.g. 203.0.113.10:7443)");
            }
        }
        let state_dir = o
            .state_dir
            .or(f.state_dir)
            .ok_or_else(|| missing("state-dir", "state-dir", "STRAIT_STATE_DIR"))?;
        let token_file = o.join_token_file.or(f.join_token_file);
        let join_token = match (o.join_token.or(f.join_token), token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => match strait_pki::files::check_file(
                &path,
                strait_pki::files::Sensitivity::Integrity,
            )
            .map_err(std::io::Error::other)
            .and_then(|()| std::fs::read_to_string(&path))
            {
                Ok(t) => Some(t.trim().to_string()),
                // A join token is used once: after enrolling, its file may be gone (a
                // Kubernetes Secret's key deleted, a VM's secret removed).
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && state_dir.join("tls").join("cert.pem").exists() =>
                {
                    None
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("key `join-token-file`: reading {}", path.display())
                    })
                }
            },
            (None, None) => None,
        };
        let endpoints = if o.endpoints.is_empty() {
            f.endpoints.unwrap_or_default()
        } else {
            o.endpoints
                .iter()
                .map(|e| parse_endpoint(e))
                .collect::<Result<Vec<_>>>()?
        };
        let prefixes = if o.prefixes.is_empty() {
            f.prefixes.unwrap_or_default()
        } else {
            o.prefixes
        };
        let heartbeat_interval = interval(
            "heartbeat-interval",
            o.heartbeat_interval.or(f.heartbeat_interval),
            Duration::from_secs(5),
        )?;
        let probe_interval = interval_from(
            "probe-interval",
            o.probe_interval.or(f.probe_interval),
            Duration::from_secs(1),
            Duration::from_millis(100),
        )?;
        let wg_key_rotation = rotation_period(
            o.wg_key_rotation.or(f.wg_key_rotation),
            Duration::from_secs(24 * 3600),
        )?;
        let vault = o.vault.apply(f.vault)?;
        if let Some(v) = &vault {
            v.to_config().context("key `vault`")?;
        }
        let tun_name = o
            .tun_name
            .or(f.tun_name)
            .unwrap_or_else(|| "strait0".into());
        if tun_name.is_empty() || tun_name.len() > 15 || tun_name.contains(['/', ' ']) {
            bail!("key `tun-name`: {tun_name:?} is not a valid interface name (1-15 characters, no '/' or spaces)");
        }
        let mtu = o.mtu.or(f.mtu);
        if let Some(mtu) = mtu {
            if !(576..=9000).contains(&mtu) {
                bail!("key `mtu`: {mtu} is out of range; use 576-9000 (the underlay MTU minus 80)");
            }
        }
        let persistent_keepalive = match o.persistent_keepalive.or(f.persistent_keepalive) {
            Some(0) => None,
            Some(s) => Some(s),
            None => Some(25),
        };
        let priority = o
            .gateway_priority
            .or(f.gateway_priority)
            .unwrap_or(GatewayPriority::Active);
        if role != Role::Gateway && priority != GatewayPriority::Active {
            bail!("key `gateway-priority`: only gateways have a priority; remove it or set `role = \"gateway\"`");
        }
        let bgp = match f.bgp {
            Some(b) => {
                if role != Role::Gateway {
                    bail!("key `bgp`: only gateways speak BGP to the site's routers; remove `[bgp]` or set `role = \"gateway\"`");
                }
                Some(b.validate(priority).context("key `bgp`")?)
            }
            None => None,
        };
        Ok(Config {
            priority: priority.value(),
            bgp,
            tun_name,
            mtu,
            persistent_keepalive,
            fail_closed: o.fail_closed.or(f.fail_closed).unwrap_or(true),
            mss_clamp: o.mss_clamp.or(f.mss_clamp).unwrap_or(true),
            vault,
            mesh,
            site,
            node,
            role,
            coordinators,
            state_dir,
            join_token,
            dataplane: o.dataplane.or(f.dataplane).unwrap_or(Dataplane::Userspace),
            listen_port: o
                .listen_port
                .or(f.listen_port)
                .unwrap_or(DEFAULT_LISTEN_PORT),
            endpoints,
            prefixes,
            heartbeat_interval,
            probe_interval,
            wg_key_rotation,
            metrics_listen: o.metrics_listen.or(f.metrics_listen),
        })
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }
}

/// `kind=address:port`.
pub fn parse_endpoint(s: &str) -> Result<Endpoint> {
    let (kind, addr) = s.split_once('=').with_context(|| {
        format!("endpoint {s:?} must be kind=address:port, e.g. public=198.51.100.7:51820")
    })?;
    let kind = match kind {
        "interconnect" => EndpointKind::Interconnect,
        "private" => EndpointKind::Private,
        "public" => EndpointKind::Public,
        other => bail!("endpoint {s:?}: kind {other:?} must be interconnect, private or public"),
    };
    let address: SocketAddr = addr
        .parse()
        .with_context(|| format!("endpoint {s:?}: {addr:?} is not address:port"))?;
    Ok(Endpoint {
        address,
        kind,
        cost: None,
    })
}

fn hostname() -> Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let first = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides() -> Overrides {
        Overrides {
            mesh: Some("prod".into()),
            site: Some("aws-use1".into()),
            node: Some("gw1".into()),
            role: Some(Role::Gateway),
            coordinators: vec!["127.0.0.1:7443".into()],
            state_dir: Some("/tmp/x".into()),
            ..Overrides::default()
        }
    }

    #[test]
    fn ipv6_endpoints_are_accepted_in_brackets() {
        let e = parse_endpoint("public=[2001:db8::1]:51820").unwrap();
        assert_eq!(e.address, "[2001:db8::1]:51820".parse().unwrap());
        assert_eq!(e.kind, EndpointKind::Public);
        let err = parse_endpoint("public=2001:db8::1:51820").unwrap_err();
        assert!(format!("{err:#}").contains("not address:port"), "{err:#}");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            r#"
mesh = "staging"
site = "gcp-usc1"
role = "member"
coordinators = ["192.0.2.1:7443"]
state-dir = "/var/lib/strait"
endpoints = [{ address = "198.51.100.7:51820", kind = "public" }]
prefixes = ["10.20.0.0/16"]
heartbeat-interval = "2s"
"#,
        )
        .unwrap();
        let c = Config::merge(file, overrides()).unwrap();
        assert_eq!(
            (c.mesh.as_str(), c.site.as_str(), c.role),
            ("prod", "aws-use1", Role::Gateway)
        );
        assert_eq!(c.coordinators, vec!["127.0.0.1:7443".to_string()]);
        assert_eq!(c.endpoints[0].kind, EndpointKind::Public);
        assert_eq!(c.prefixes.len(), 1);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.listen_port, 51820);
        assert!(c.fail_closed, "routes fail closed unless turned off");
        let file: FileConfig = toml::from_str("fail-closed = false").unwrap();
        assert!(!Config::merge(file, overrides()).unwrap().fail_closed);
        let flag = Overrides {
            fail_closed: Some(true),
            ..overrides()
        };
        let file: FileConfig = toml::from_str("fail-closed = false").unwrap();
        assert!(Config::merge(file, flag).unwrap().fail_closed);
        assert!(c.mss_clamp, "MSS clamping is on unless turned off");
        let file: FileConfig = toml::from_str("mss-clamp = false").unwrap();
        assert!(!Config::merge(file, overrides()).unwrap().mss_clamp);
    }

    #[test]
    fn a_consumed_join_token_file_may_be_gone_once_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        let file = |p: &std::path::Path| FileConfig {
            join_token_file: Some(p.to_path_buf()),
            ..FileConfig::default()
        };
        let o = || Overrides {
            state_dir: Some(dir.path().to_path_buf()),
            ..overrides()
        };
        let token = dir.path().join("join-token");
        std::fs::write(&token, "tok\n").unwrap();
        let c = Config::merge(file(&token), o()).unwrap();
        assert_eq!(c.join_token.as_deref(), Some("tok"));
        std::fs::remove_file(&token).unwrap();
        // Not enrolled: a missing token file is an error naming the key.
        let err = format!("{:#}", Config::merge(file(&token), o()).unwrap_err());
        assert!(err.contains("join-token-file"), "{err}");
        // Enrolled: the token was used; its file may be removed.
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/cert.pem"), "").unwrap();
        assert!(Config::merge(file(&token), o())
            .unwrap()
            .join_token
            .is_none());
    }

    #[test]
    fn invalid_values_name_the_key_and_the_fix() {
        let cases: Vec<(Overrides, &str)> = vec![
            (
                Overrides {
                    mesh: None,
                    ..overrides()
                },
                "STRAIT_MESH",
            ),
            (
                Overrides {
                    site: Some("Bad Site".into()),
                    ..overrides()
                },
                "key `site`",
            ),
            (
                Overrides {
                    role: Some(Role::Operator),
                    ..overrides()
                },
                "gateway or member",
            ),
            (
                Overrides {
                    coordinators: vec!["nohost".into()],
                    ..overrides()
                },
                "host:port",
            ),
            (
                Overrides {
                    coordinators: vec![],
                    ..overrides()
                },
                "STRAIT_COORDINATORS",
            ),
            (
                Overrides {
                    heartbeat_interval: Some("often".into()),
                    ..overrides()
                },
                "heartbeat-interval",
            ),
            (
                Overrides {
                    endpoints: vec!["carrier-pigeon=1.2.3.4:5".into()],
                    ..overrides()
                },
                "interconnect, private or public",
            ),
            (
                Overrides {
                    endpoints: vec!["public=nowhere".into()],
                    ..overrides()
                },
                "address:port",
            ),
        ];
        for (o, needle) in cases {
            let err = format!("{:#}", Config::merge(FileConfig::default(), o).unwrap_err());
            assert!(err.contains(needle), "expected {needle:?} in {err}");
        }
        let err = toml::from_str::<FileConfig>("colour = \"blue\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }
}
