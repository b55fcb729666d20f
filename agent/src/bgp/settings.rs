//! `[bgp]` in the agent's configuration: the file form ([`BgpFile`]) and the validated
//! settings ([`BgpSettings`]). Errors name the key and the fix.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::config::GatewayPriority;

/// `[bgp]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BgpFile {
    pub local_as: Option<u32>,
    pub router_id: Option<Ipv4Addr>,
    pub bird_config: Option<PathBuf>,
    pub birdc: Option<PathBuf>,
    pub bird_socket: Option<PathBuf>,
    pub hold_time: Option<String>,
    pub bfd: Option<bool>,
    pub bfd_interval: Option<String>,
    pub bfd_multiplier: Option<u32>,
    pub standby_prepend: Option<u8>,
    pub standby_med: Option<u32>,
    #[serde(default)]
    pub neighbors: Vec<NeighborFile>,
}

/// `[[bgp.neighbors]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NeighborFile {
    pub address: IpAddr,
    pub remote_as: u32,
    pub password_file: Option<PathBuf>,
    pub bfd: Option<bool>,
    pub source_address: Option<IpAddr>,
}

/// One BGP neighbour (a router of the site: a cloud route server, the customer's router).
#[derive(Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub address: IpAddr,
    pub remote_as: u32,
    /// TCP MD5 password (RFC 2385), read from `password-file`.
    pub password: Option<String>,
    pub bfd: bool,
    pub source_address: Option<IpAddr>,
}

impl std::fmt::Debug for Neighbor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neighbor")
            .field("address", &self.address)
            .field("remote_as", &self.remote_as)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("bfd", &self.bfd)
            .field("source_address", &self.source_address)
            .finish()
    }
}

/// Validated `[bgp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSettings {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// The BIRD configuration file the agent writes (0600) and BIRD reads.
    pub bird_config: PathBuf,
    pub birdc: PathBuf,
    pub bird_socket: PathBuf,
    pub hold_time: Duration,
    pub bfd_interval: Duration,
    pub bfd_multiplier: u32,
    /// How many times this gateway prepends its AS to what it announces (standby: the
    /// routers prefer the active gateways).
    pub prepend: u8,
    /// MED on what this gateway announces (standby only).
    pub med: Option<u32>,
    pub neighbors: Vec<Neighbor>,
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            anyhow::anyhow!("key `bgp.{key}`: {s:?} is not a duration ({e}); write e.g. \"3s\"")
        }),
    }
}

impl BgpFile {
    /// Validates `[bgp]` for a gateway of `priority`, reading password files.
    pub fn validate(self, priority: GatewayPriority) -> Result<BgpSettings> {
        let local_as = self
            .local_as
            .context("key `bgp.local-as` is required: this gateway's AS number, e.g. 65001")?;
        if local_as == 0 || local_as == 23456 {
            bail!("key `bgp.local-as`: {local_as} is reserved; use a private ASN such as 64512-65534 or 4200000000-4294967294");
        }
        let router_id = self.router_id.context(
            "key `bgp.router-id` is required: an IPv4 address unique among the routers, e.g. this gateway's VPC address",
        )?;
        let hold_time = duration(
            "hold-time",
            self.hold_time.as_deref(),
            Duration::from_secs(3),
        )?;
        if hold_time.subsec_nanos() != 0 || !(3..=65535).contains(&hold_time.as_secs()) {
            bail!("key `bgp.hold-time`: must be whole seconds from 3s to 65535s (BGP's limits); use BFD for sub-second failure detection");
        }
        let bfd_interval = duration(
            "bfd-interval",
            self.bfd_interval.as_deref(),
            Duration::from_millis(100),
        )?;
        if bfd_interval < Duration::from_millis(10) || bfd_interval > Duration::from_secs(10) {
            bail!("key `bgp.bfd-interval`: must be between 10ms and 10s");
        }
        let bfd_multiplier = self.bfd_multiplier.unwrap_or(3);
        if !(1..=255).contains(&bfd_multiplier) {
            bail!("key `bgp.bfd-multiplier`: must be 1-255");
        }
        let standby = priority == GatewayPriority::Standby;
        let prepend = if standby {
            self.standby_prepend.unwrap_or(2)
        } else {
            0
        };
        if prepend > 8 {
            bail!("key `bgp.standby-prepend`: at most 8");
        }
        let med = if standby {
            Some(self.standby_med.unwrap_or(100))
        } else {
            None
        };
        if self.neighbors.is_empty() {
            bail!("key `bgp.neighbors`: at least one `[[bgp.neighbors]]` with `address` and `remote-as` is needed");
        }
        let bfd_default = self.bfd.unwrap_or(false);
        let mut neighbors = Vec::new();
        for (i, n) in self.neighbors.into_iter().enumerate() {
            if n.remote_as == 0 || n.remote_as == 23456 {
                bail!(
                    "key `bgp.neighbors[{i}].remote-as`: {} is reserved",
                    n.remote_as
                );
            }
            if neighbors.iter().any(|m: &Neighbor| m.address == n.address) {
                bail!(
                    "key `bgp.neighbors[{i}].address`: {} is listed twice",
                    n.address
                );
            }
            let password = match &n.password_file {
                None => None,
                Some(path) => {
                    strait_pki::files::check_file(path, strait_pki::files::Sensitivity::Secret)
                        .with_context(|| format!("key `bgp.neighbors[{i}].password-file`"))?;
                    let text = std::fs::read_to_string(path).with_context(|| {
                        format!(
                            "key `bgp.neighbors[{i}].password-file`: reading {}",
                            path.display()
                        )
                    })?;
                    let p = text.trim_end_matches(['\n', '\r']).to_string();
                    if p.is_empty()
                        || p.len() > 80
                        || p.contains(['"', '\\'])
                        || p.chars().any(char::is_control)
                    {
                        bail!("key `bgp.neighbors[{i}].password-file`: the password must be 1-80 characters without quotes, backslashes or control characters");
                    }
                    Some(p)
                }
            };
            neighbors.push(Neighbor {
                address: n.address,
                remote_as: n.remote_as,
                password,
                bfd: n.bfd.unwrap_or(bfd_default),
                source_address: n.source_address,
            });
        }
        Ok(BgpSettings {
            local_as,
            router_id,
            bird_config: self
                .bird_config
                .unwrap_or_else(|| "/run/strait/bird.conf".into()),
            birdc: self.birdc.unwrap_or_else(|| "birdc".into()),
            bird_socket: self
                .bird_socket
                .unwrap_or_else(|| "/run/strait/bird.ctl".into()),
            hold_time,
            bfd_interval,
            bfd_multiplier,
            prepend,
            med,
            neighbors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BgpFile {
        toml::from_str(text).unwrap()
    }

    const GOOD: &str = r#"
        local-as = 65001
        router-id = "10.10.0.11"
        bfd = true
        [[neighbors]]
        address = "10.10.0.1"
        remote-as = 65000
    "#;

    #[test]
    fn defaults_and_standby_preference() {
        let s = parse(GOOD).validate(GatewayPriority::Active).unwrap();
        assert_eq!(s.hold_time, Duration::from_secs(3));
        assert_eq!((s.prepend, s.med), (0, None));
        assert!(s.neighbors[0].bfd);
        let s = parse(GOOD).validate(GatewayPriority::Standby).unwrap();
        assert_eq!((s.prepend, s.med), (2, Some(100)));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (GOOD.replace("65001", "0"), "bgp.local-as"),
            (GOOD.replace("local-as = 65001", ""), "bgp.local-as"),
            (
                GOOD.replace("router-id = \"10.10.0.11\"", ""),
                "bgp.router-id",
            ),
            (format!("hold-time = \"1s\"\n{GOOD}"), "bgp.hold-time"),
            (format!("hold-time = \"3500ms\"\n{GOOD}"), "bgp.hold-time"),
            (
                format!("bfd-interval = \"1ms\"\n{GOOD}"),
                "bgp.bfd-interval",
            ),
            (
                GOOD.replace("remote-as = 65000", "remote-as = 23456"),
                "remote-as",
            ),
            (
                "local-as = 65001\nrouter-id = \"10.0.0.1\"".to_string(),
                "bgp.neighbors",
            ),
        ];
        for (text, key) in cases {
            let e = parse(&text).validate(GatewayPriority::Active).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
        }
        assert!(toml::from_str::<BgpFile>("local-asn = 1").is_err());
    }

    #[test]
    fn a_password_is_never_printed() {
        let dir = std::env::temp_dir().join(format!("strait-bgp-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!("{GOOD}\npassword-file = \"{}\"", file.display());
        let s = parse(&text).validate(GatewayPriority::Active).unwrap();
        assert_eq!(s.neighbors[0].password.as_deref(), Some("s3cret"));
        assert!(!format!("{s:?}").contains("s3cret"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(parse(&text).validate(GatewayPriority::Active).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
