//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` (`configs`,
//! `messages`) and by the corpus replay test (`coordinator/tests/fuzz_corpus.rs`), which
//! runs in plain `cargo test`.
//!
//! Not part of the crate's API. Every function here must return normally for any input; a
//! panic means a real bug. They are deterministic: time is an input, and no file named by
//! an input is ever opened.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use strait_pki::fuzzing::sandbox_vault;
use strait_pki::{Identity, Role};
use strait_proto::msg::{Endpoint, EndpointKind, PathFigures, PeerLink, Refusal, Registration};

use crate::access::{Names, PolicyConfig, RuleConfig};
use crate::config::{Config, ExternalPeerConfig, PkiConfig, SiteConfig};
use crate::mesh::NodeKey;
use strait_proto::access::Action;

mod checks;
mod harness;
use harness::Harness;

// ---- configs ----

/// `data` as a `coordinator.toml` (UTF-8; other inputs are skipped, as reading the file
/// would fail): deserialized and validated, as [`Config::load`] does. Errors must have
/// messages. A config that validates must make a working [`Mesh`](crate::mesh::Mesh): one gateway registers in
/// each of its first 8 sites, advertising the site's prefixes, and every check of
/// [`messages`] holds after each registration.
///
/// The files `[pki.vault]` names are moved out of reach first
/// ([`sandbox_vault`](strait_pki::fuzzing::sandbox_vault)).
pub fn coordinator_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().trim().is_empty(), "an empty TOML error");
            return;
        }
    };
    if let Some(v) = &mut config.pki.vault {
        sandbox_vault(v);
    }
    if let Err(e) = config.validate() {
        for cause in e.chain() {
            assert!(
                !cause.to_string().trim().is_empty(),
                "an empty message in the error {e:#}"
            );
        }
        return;
    }
    assert!(
        config.pki.vault.is_none(),
        "Vault settings accepted without their files"
    );
    let mut h = Harness::new(Arc::new(config));
    let sites: Vec<SiteConfig> = h.config.sites.iter().take(8).cloned().collect();
    for (i, site) in sites.iter().enumerate() {
        let id = Identity::node(&h.config.mesh, &site.name, "gw", Role::Gateway)
            .expect("a validated site name is a label");
        let mut prefixes = site.prefixes.clone();
        for ext in h
            .config
            .external_peers
            .iter()
            .filter(|e| e.site == site.name)
        {
            prefixes.extend(ext.prefixes.iter().copied());
        }
        let reg = Registration {
            wg_public_key: wg_key(i as u8),
            endpoints: vec![Endpoint {
                address: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8)), 51820),
                kind: EndpointKind::Private,
                cost: None,
            }],
            prefixes,
            agent_version: "fuzz".into(),
            have_version: None,
            priority: 0,
        };
        h.register(&id, &reg, "01", 1_000);
        h.check();
    }
}

// ---- messages ----

/// Most operations one input runs.
pub const MAX_STEPS: usize = 128;

/// Sites a node may name: `c` is declared only with flag 2, `external` never (the name is
/// reserved for external peers' ids).
pub const SITES: [&str; 4] = ["a", "b", "c", "external"];
/// Node names.
pub const NAMES: [&str; 4] = ["gw", "gw2", "m1", "dc1"];
/// Certificate serials.
pub const SERIALS: [&str; 4] = ["01", "02", "aa", ""];

/// Message handling: a sequence of operations on the coordinator's core ([`Mesh`](crate::mesh::Mesh)), as its
/// server applies them for registrations, heartbeats, link and conflict reports, operators'
/// commands (revoke, tokens, probes) and its timer; with the store ops persisted as a store
/// would, and every registered node followed by a session as the server runs it (a snapshot,
/// then the delta between its view and each new one).
///
/// `data[0]` picks the config (see [`config`]); then each operation is one byte and its
/// arguments (bytes past the end read as 0). After each operation:
///
/// - the map version never decreases, and the views are at the mesh's version;
/// - overlay addresses are distinct (external peers' included) and inside the overlay;
/// - every accepted prefix is normalized and inside its site's prefixes, and prefixes of
///   different sites never overlap;
/// - every node's view builds, equals `map_for`, lists peers by strictly increasing id
///   (the delta merge relies on it), none of its own site; a tunnel node has no routes, and
///   no prefix is routed to two peers of one map;
/// - each session's delta applies to the map it holds and gives the new map exactly (an
///   empty delta: equal but for the version);
/// - a coordinator restarted from the store has the same version, nodes and maps;
/// - operators' views build, every tunnel pair can be probed, every external peer's config
///   is printed, and errors have messages.
pub fn messages(data: &[u8]) {
    let mut r = Reader(data);
    let config = config(r.u8());
    if let Err(e) = config.validate() {
        panic!("the harness's config is invalid: {e:#}");
    }
    let mut h = Harness::new(Arc::new(config));
    h.check();
    for _ in 0..MAX_STEPS {
        if r.0.is_empty() {
            break;
        }
        h.step(&mut r);
        h.check();
    }
}

/// The config [`messages`] runs with, from flags. Sites `a` (10.1.0.0/16) and `b`
/// (10.2.0.0/16); 1: `b` is full-mesh; 2: a site `c` (10.3.0.0/16), full-mesh with 64;
/// 4: overlay 100.64.0.0/29 (6 addresses) instead of /10; 8: an external peer in site `a`
/// (10.1.9.0/24, overlay 100.64.0.1), named `gw` with 32, else `dc1`; 16: site `a` also has
/// fd00:1::/48; 128: an external peer `dc2` in site `b` (10.2.9.0/24, no endpoint, no
/// overlay address). With site `c`, an access policy: default deny, `a` may open tcp/443 to
/// `b`, 10.3.1.0/24 may not send DNS to `a`'s 10.1.5.0/24. 64 without 2: a site `c` that
/// overlaps `a` (10.1.0.0/16) with global prefix 10.3.0.0/16; with 32 too, and neither 8
/// nor 16, `global-cidr` 10.0.0.0/16 gives `a` global addresses as well (10.0.0.0/16).
pub fn config(flags: u8) -> Config {
    let site = |name: &str, prefixes: &[&str], full_mesh: bool| SiteConfig {
        name: name.into(),
        cloud: "cloud".into(),
        region: "region".into(),
        prefixes: prefixes.iter().map(|p| net(p)).collect(),
        full_mesh,
        global_prefixes: vec![],
    };
    let mut a = vec!["10.1.0.0/16"];
    if flags & 16 != 0 {
        a.push("fd00:1::/48");
    }
    let mut sites = vec![
        site("a", &a, false),
        site("b", &["10.2.0.0/16"], flags & 1 != 0),
    ];
    if flags & 2 != 0 {
        sites.push(site("c", &["10.3.0.0/16"], flags & 64 != 0));
    }
    let overlapping = flags & 64 != 0 && flags & 2 == 0;
    if overlapping {
        let mut c = site("c", &["10.1.0.0/16"], false);
        c.global_prefixes = vec![net("10.3.0.0/16")];
        sites.push(c);
    }
    let both_translated = overlapping && flags & 32 != 0 && flags & (8 | 16) == 0;
    let mut external_peers = Vec::new();
    if flags & 8 != 0 {
        external_peers.push(ExternalPeerConfig {
            name: if flags & 32 != 0 { "gw" } else { "dc1" }.into(),
            site: "a".into(),
            public_key: wg_key(200),
            endpoint: Some("198.18.0.10:51820".parse().expect("constant address")),
            prefixes: vec![net("10.1.9.0/24")],
            overlay_ip: Some(Ipv4Addr::new(100, 64, 0, 1)),
        });
    }
    if flags & 128 != 0 {
        external_peers.push(ExternalPeerConfig {
            name: "dc2".into(),
            site: "b".into(),
            public_key: wg_key(201),
            endpoint: None,
            prefixes: vec![net("10.2.9.0/24")],
            overlay_ip: None,
        });
    }
    let policy = if flags & 2 != 0 {
        let rule = |name: &str, action, from: &str, to: &str, ports: &str| RuleConfig {
            name: Some(name.into()),
            action,
            from: Names(vec![from.into()]),
            to: Names(vec![to.into()]),
            ports: Names(vec![ports.into()]),
        };
        PolicyConfig {
            default: Action::Deny,
            rules: vec![
                rule("web", Action::Allow, "a", "b", "tcp/443"),
                rule(
                    "no-dns",
                    Action::Deny,
                    "10.3.1.0/24",
                    "10.1.5.0/24",
                    "udp/53",
                ),
            ],
        }
    } else {
        PolicyConfig::default()
    };
    Config {
        mesh: "prod".into(),
        name: "primary".into(),
        listen: "127.0.0.1:0".parse().expect("constant address"),
        state_dir: "/nonexistent/strait-fuzz".into(),
        overlay_cidr: net(if flags & 4 != 0 {
            "100.64.0.0/29"
        } else {
            "100.64.0.0/10"
        }),
        global_cidr: both_translated.then(|| net("10.0.0.0/16")),
        heartbeat_timeout: Duration::from_secs(10),
        pki: PkiConfig::default(),
        sites,
        external_peers,
        throughput_probes: None,
        metrics_listen: None,
        limits: Default::default(),
        policy,
        store: Default::default(),
    }
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("constant prefix")
}

/// A valid WireGuard public key, distinct for each `n`.
fn wg_key(n: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

/// Bytes as arguments; zeros past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_be_bytes(b)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.u8()) % from.len()]
    }

    fn key(&mut self) -> NodeKey {
        (self.pick(&SITES).to_string(), self.pick(&NAMES).to_string())
    }

    /// A node as an operator names it: `site/name`, a bare name, or nobody.
    fn node_name(&mut self) -> String {
        match self.u8() % 4 {
            0 | 1 => {
                let (site, name) = self.key();
                format!("{site}/{name}")
            }
            2 => self.pick(&NAMES).to_string(),
            _ => "nobody".to_string(),
        }
    }

    fn prefix(&mut self) -> IpNetwork {
        let b = self.u8();
        let len = self.u8();
        let p = if b & 0x80 != 0 {
            let ip = Ipv6Addr::new(
                0xfd00,
                u16::from(b & 3),
                u16::from(self.u8()),
                0,
                0,
                0,
                0,
                0,
            );
            IpNetwork::new(IpAddr::V6(ip), len % 129)
        } else {
            let first = [10, 10, 100, 0][usize::from(b & 3)];
            let ip = Ipv4Addr::new(first, (b >> 2) & 3, self.u8(), (b >> 4) & 7);
            IpNetwork::new(IpAddr::V4(ip), len % 33)
        };
        p.expect("a prefix length in range")
    }

    fn endpoint(&mut self) -> Endpoint {
        let kind = self.pick(&[
            EndpointKind::Private,
            EndpointKind::Public,
            EndpointKind::Interconnect,
        ]);
        let b = self.u8();
        let ip = if b & 1 != 0 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(b)))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, (b >> 1) & 3, 0, b))
        };
        Endpoint {
            address: SocketAddr::new(ip, 51820),
            kind,
            cost: (b & 2 != 0).then(|| u32::from(self.u8())),
        }
    }

    fn registration(&mut self) -> Registration {
        let k = self.u8() % 8;
        Registration {
            wg_public_key: if k == 7 { "short".into() } else { wg_key(k) },
            endpoints: (0..self.u8() % 4).map(|_| self.endpoint()).collect(),
            prefixes: (0..self.u8() % 5).map(|_| self.prefix()).collect(),
            agent_version: "fuzz".into(),
            have_version: (self.u8() & 1 != 0).then(|| self.u64()),
            priority: 0,
        }
    }

    fn refusal(&mut self) -> Refusal {
        let prefix = self.prefix().to_string();
        Refusal {
            prefix,
            reason: self.pick(&["route exists", "", "device busy"]).into(),
        }
    }

    fn link(&mut self) -> PeerLink {
        let (site, name) = self.key();
        PeerLink {
            peer: format!("{site}/{name}"),
            endpoint: (self.u8() & 1 != 0).then(|| self.endpoint().address),
            handshake_age_secs: (self.u8() & 1 != 0).then(|| self.u64()),
            tx_bytes: self.u64(),
            rx_bytes: self.u64(),
            paths: (0..self.u8() % 3)
                .map(|_| {
                    let e = self.endpoint();
                    PathFigures {
                        address: e.address,
                        kind: e.kind,
                        health: self.pick(&["unknown", "up", "degraded", "down"]).into(),
                        active: self.u8() & 1 != 0,
                        rtt_us: (self.u8() & 1 != 0).then(|| self.u64()),
                        p50_us: None,
                        p95_us: None,
                        jitter_us: self.u64(),
                        loss: f64::from_bits(self.u64()),
                        mtu: None,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_cases() {
        messages(b"");
        // Two gateways and a member register; time passes; a tick; a revocation.
        messages(&[
            0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 16, 0, // a/gw
            0, 1, 0, 0, 2, 1, 1, 1, 2, 1, 16, 0, // b/gw
            0, 0, 2, 1, 3, 0, 0, 0, // a/m1
            11, 50, 5, 4, 0, 1, 0,
        ]);
        coordinator_config(b"");
        coordinator_config(b"mesh = \"prod\"\nstate-dir = \"/x\"\n[[sites]]\nname = \"a\"\n");
        coordinator_config(b"\xff");
    }
}
