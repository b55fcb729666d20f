//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` (`configs`,
//! `messages`) and by the corpus replay test (`coordinator/tests/fuzz_corpus.rs`), which
//! runs in plain `cargo test`.
//!
//! Not part of the crate's API. Every function here must return normally for any input; a
//! panic means a real bug. They are deterministic: time is an input, and no file named by
//! an input is ever opened.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use strait_pki::fuzzing::sandbox_vault;
use strait_pki::{Fingerprint, Identity, Role};
use strait_proto::map::NetworkMap;
use strait_proto::msg::{Endpoint, EndpointKind, PathFigures, PeerLink, Refusal, Registration};

use crate::access::{Names, PolicyConfig, RuleConfig};
use crate::config::{Config, ExternalPeerConfig, PkiConfig, SiteConfig};
use crate::mesh::{CoreError, IssuedCert, Mesh, NodeKey, NodeView, Persisted, StoreOp, Views};
use crate::policy;
use strait_proto::access::Action;

// ---- configs ----

/// `data` as a `coordinator.toml` (UTF-8; other inputs are skipped, as reading the file
/// would fail): deserialized and validated, as [`Config::load`] does. Errors must have
/// messages. A config that validates must make a working [`Mesh`]: one gateway registers in
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

/// Message handling: a sequence of operations on the coordinator's core ([`Mesh`]), as its
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
/// `b`, 10.3.1.0/24 may not send DNS to `a`'s 10.1.5.0/24.
pub fn config(flags: u8) -> Config {
    let site = |name: &str, prefixes: &[&str], full_mesh: bool| SiteConfig {
        name: name.into(),
        cloud: "cloud".into(),
        region: "region".into(),
        prefixes: prefixes.iter().map(|p| net(p)).collect(),
        full_mesh,
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
                    }
                })
                .collect(),
        }
    }
}

/// What a session holds for one node: the view it last sent from, and the agent's map.
struct Session {
    view: NodeView,
    map: NetworkMap,
}

struct Harness {
    config: Arc<Config>,
    mesh: Mesh,
    /// What the store ops wrote.
    store: Persisted,
    sessions: BTreeMap<NodeKey, Session>,
    version: u64,
    /// The views at the last check.
    views: Arc<Views>,
    now: u64,
}

impl Harness {
    fn new(config: Arc<Config>) -> Harness {
        Harness {
            mesh: Mesh::new(config.clone(), Persisted::default()),
            config,
            store: Persisted::default(),
            sessions: BTreeMap::new(),
            version: 0,
            views: Arc::new(Views::default()),
            now: 1_000,
        }
    }

    fn persist(&mut self, ops: &[StoreOp]) {
        let p = &mut self.store;
        for op in ops {
            match op {
                StoreOp::PutNode(n) => {
                    p.nodes.retain(|x| x.key() != n.key());
                    p.nodes.push(n.clone());
                }
                StoreOp::DeleteNode { site, name } => {
                    p.nodes.retain(|x| x.site != *site || x.name != *name)
                }
                StoreOp::PutToken(t) => {
                    p.tokens.retain(|x| x.id != t.id);
                    p.tokens.push(t.clone());
                }
                StoreOp::PutRevocation(r) => p.revocations.push(r.clone()),
                StoreOp::PutIssued(c) => p.issued.push(c.clone()),
                StoreOp::SetVersion(v) => p.version = *v,
            }
        }
    }

    /// A refusal leaves everything as it was.
    fn refused(&self, e: &CoreError, version: u64) {
        assert!(!e.to_string().trim().is_empty(), "an empty error message");
        let _ = e.code();
        assert_eq!(
            self.mesh.version(),
            version,
            "a refused operation moved the version"
        );
    }

    fn register(&mut self, id: &Identity, reg: &Registration, serial: &str, now: u64) {
        let version = self.mesh.version();
        match self
            .mesh
            .register(id, reg, serial, now.saturating_add(86_400), now)
        {
            Ok((registered, ops)) => {
                self.persist(&ops);
                let key = (
                    id.site().unwrap_or_default().to_string(),
                    id.name().to_string(),
                );
                let node = self.mesh.node(&key).expect("a registered node is missing");
                assert_eq!(node.role, id.role(), "a name changed hands between roles");
                assert_eq!(node.overlay_ip, registered.overlay_ip);
                assert_eq!(node.refused, registered.refused);
                assert!(node.online);
                assert!(
                    node.accepted.len() + node.refused.len() <= reg.prefixes.len(),
                    "more prefixes accepted and refused than advertised"
                );
            }
            Err(e) => self.refused(&e, version),
        }
    }

    fn step(&mut self, r: &mut Reader<'_>) {
        let version = self.mesh.version();
        match r.u8() % 13 {
            0 => {
                let (site, name) = r.key();
                let role = r.pick(&[Role::Gateway, Role::Member, Role::Gateway, Role::Operator]);
                let id = if role.has_site() {
                    Identity::node(&self.config.mesh, &site, &name, role)
                } else {
                    Identity::service(&self.config.mesh, &name, role)
                }
                .expect("constant labels");
                let reg = r.registration();
                let serial = r.pick(&SERIALS);
                self.register(&id, &reg, serial, self.now);
            }
            1 => {
                let key = r.key();
                let map_version = r.u64();
                let known = self.mesh.node(&key).is_some();
                let ops = self.mesh.heartbeat(&key, map_version, self.now);
                self.persist(&ops);
                if let Some(n) = self.mesh.node(&key) {
                    assert!(n.online && n.last_seen == self.now && n.map_version == map_version);
                } else {
                    assert!(!known && ops.is_empty(), "a heartbeat of no node wrote");
                }
            }
            2 => {
                let key = r.key();
                let links = (0..r.u8() % 3).map(|_| r.link()).collect::<Vec<_>>();
                self.mesh.report_links(&key, links);
                assert_eq!(
                    self.mesh.version(),
                    version,
                    "a link report moved the version"
                );
            }
            3 => {
                let key = r.key();
                let conflicts = (0..r.u8() % 3).map(|_| r.refusal()).collect::<Vec<_>>();
                let ops = self.mesh.report_conflicts(&key, conflicts.clone());
                self.persist(&ops);
                if let Some(n) = self.mesh.node(&key) {
                    assert_eq!(n.route_conflicts, conflicts);
                }
            }
            4 => {
                let name = r.node_name();
                match self.mesh.resolve(&name) {
                    Ok(key) => {
                        let (serials, ops) = self.mesh.revoke(&key, self.now);
                        self.persist(&ops);
                        for s in &serials {
                            assert!(self.mesh.is_revoked(s), "{s} revoked but not refused");
                        }
                        assert!(self.mesh.node(&key).is_none(), "a revoked node stays");
                        assert!(
                            self.mesh.map_for(&key).is_none(),
                            "a revoked node has a map"
                        );
                    }
                    Err(e) => self.refused(&e, version),
                }
            }
            5 => {
                let ops = self.mesh.tick(self.now);
                self.persist(&ops);
                let timeout = self.config.heartbeat_timeout.as_secs();
                for n in self.mesh.nodes() {
                    assert!(
                        !n.online || self.now.saturating_sub(n.last_seen) <= timeout,
                        "{}/{} stays online, silent since {}",
                        n.site,
                        n.name,
                        n.last_seen
                    );
                }
            }
            6 => {
                let (site, name) = r.key();
                let cert = IssuedCert {
                    serial: r.pick(&SERIALS).into(),
                    site,
                    name,
                    not_after: self.now.saturating_add(u64::from(r.u16())),
                };
                let op = self.mesh.record_issued(cert);
                self.persist(&[op]);
            }
            7 => self.token(r),
            8 => {
                let key = r.key();
                let (site, name) = r.key();
                let mbps = f64::from_bits(r.u64());
                self.mesh
                    .record_throughput(&key, &format!("{site}/{name}"), mbps, self.now);
            }
            9 => {
                // The coordinator restarts: what the store holds is all it knows.
                self.mesh = Mesh::new(self.config.clone(), self.store.clone());
            }
            10 => {
                let (from, to) = (r.node_name(), r.node_name());
                match self.mesh.probe_pair(&from, &to) {
                    Ok(pair) => {
                        for key in [&pair.a, &pair.b] {
                            let n = self.mesh.node(key).expect("a probe pair of no node");
                            assert!(n.online, "a probe pair with an offline node");
                        }
                        assert_ne!(pair.a.0, pair.b.0, "a probe pair within one site");
                    }
                    Err(e) => self.refused(&e, version),
                }
            }
            11 => {
                // Key rotation: announce a next key, or put one in use.
                let key = r.key();
                let wg = wg_key(r.u8());
                let announce = r.u8() % 2 == 0;
                let result = if announce {
                    self.mesh.announce_key(&key, &wg)
                } else {
                    self.mesh.key_in_use(&key, &wg)
                };
                match result {
                    Ok(ops) => {
                        self.persist(&ops);
                        let n = self.mesh.node(&key).expect("a key for no node");
                        // In use: the node's key (a pending announcement of another key
                        // stays when the key said to be in use already was the node's).
                        let now_held = n.wg_public_key == wg
                            || (announce && n.next_wg_public_key.as_deref() == Some(wg.as_str()));
                        assert_ne!(
                            n.next_wg_public_key.as_deref(),
                            Some(n.wg_public_key.as_str()),
                            "{key:?} announced the key it uses"
                        );
                        assert!(now_held, "a key rotation step left {key:?} without {wg}");
                    }
                    Err(e) => self.refused(&e, version),
                }
            }
            _ => {
                let b = r.u8();
                self.now = match b {
                    0..=199 => self.now.saturating_add(u64::from(b)),
                    200..=254 => self.now.saturating_sub(u64::from(b - 199) * 10),
                    255 => u64::MAX - u64::from(r.u8()),
                };
            }
        }
    }

    fn token(&mut self, r: &mut Reader<'_>) {
        let site = r.pick(&SITES);
        let role = r.pick(&[Role::Gateway, Role::Member, Role::Operator]);
        let ttl = Duration::from_secs(u64::from(r.u16()));
        let random = [r.u8(); 22];
        let version = self.mesh.version();
        let ca = Fingerprint([9; 32]);
        let token = match self
            .mesh
            .create_token(site, role, ttl, self.now, ca, random)
        {
            Ok((token, record, ops)) => {
                assert_eq!(token.id(), record.id);
                self.persist(&ops);
                token
            }
            Err(e) => return self.refused(&e, version),
        };
        let (site, role) = if r.u8() & 1 == 0 {
            (site, role)
        } else {
            (r.pick(&SITES), r.pick(&[Role::Gateway, Role::Member]))
        };
        let at = self.now.saturating_add(u64::from(r.u16()));
        let name = r.pick(&NAMES);
        let checked = self.mesh.check_enrollment(&token, site, name, role, at);
        let cert = IssuedCert {
            serial: r.pick(&SERIALS).into(),
            site: site.into(),
            name: name.into(),
            not_after: at.saturating_add(3600),
        };
        match self
            .mesh
            .complete_enrollment(&token, site, role, cert.clone(), at)
        {
            Ok(ops) => {
                assert!(
                    checked.is_ok(),
                    "enrolled after a refused check: {checked:?}"
                );
                self.persist(&ops);
                let again = self.mesh.complete_enrollment(&token, site, role, cert, at);
                assert!(again.is_err(), "a token used twice");
            }
            Err(e) => {
                assert!(
                    checked.is_err(),
                    "a check passed but enrollment failed: {e}"
                );
                self.refused(&e, version);
            }
        }
    }

    fn check(&mut self) {
        let mesh = &self.mesh;
        let version = mesh.version();
        assert!(
            version >= self.version,
            "the version went from {} to {version}",
            self.version
        );
        self.version = version;
        let views = mesh.views();
        assert_eq!(views.version, version, "views behind the mesh");
        assert_eq!(views.mesh(), self.config.mesh);
        let nodes = mesh.nodes();
        let (total, online) = mesh.node_counts();
        assert_eq!(
            (total, online),
            (nodes.len(), nodes.iter().filter(|n| n.online).count())
        );

        let IpNetwork::V4(overlay) = self.config.overlay_cidr else {
            panic!("the fuzzed config has an IPv6 overlay");
        };
        let mut ips: BTreeSet<Ipv4Addr> = self
            .config
            .external_peers
            .iter()
            .filter_map(|e| e.overlay_ip)
            .collect();
        for n in &nodes {
            let ip = n.overlay_ip;
            assert!(
                overlay.contains(ip) && ip != overlay.network() && ip != overlay.broadcast(),
                "{}/{} has overlay address {ip}, outside {overlay}",
                n.site,
                n.name
            );
            assert!(ips.insert(ip), "overlay address {ip} given twice");
            let site = self
                .config
                .site(&n.site)
                .unwrap_or_else(|| panic!("a node of undeclared site {}", n.site));
            for p in &n.prefixes {
                assert_eq!(p.ip(), p.network(), "accepted prefix {p} is not normalized");
                assert!(
                    site.prefixes.iter().any(|own| policy::contains(*own, *p)),
                    "accepted prefix {p} is outside site {}",
                    n.site
                );
            }
        }
        // One WireGuard key, one peer (agents' engines key peers by it).
        let mut keys: BTreeSet<&str> = self
            .config
            .external_peers
            .iter()
            .map(|e| e.public_key.as_str())
            .collect();
        for n in &nodes {
            assert!(
                keys.insert(&n.wg_public_key),
                "{}/{}'s WireGuard key is another peer's",
                n.site,
                n.name
            );
        }
        // ...and a key announced for a rotation is no one else's either.
        for n in &nodes {
            if let Some(next) = &n.next_wg_public_key {
                assert!(
                    keys.insert(next),
                    "{}/{} announced a key already held",
                    n.site,
                    n.name
                );
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            for m in nodes[i + 1..].iter().filter(|m| m.site != n.site) {
                for p in &n.prefixes {
                    for q in &m.prefixes {
                        assert!(
                            !policy::overlaps(*p, *q),
                            "{}/{} carries {p}, {}/{} carries {q}",
                            n.site,
                            n.name,
                            m.site,
                            m.name
                        );
                    }
                }
            }
        }

        let mut keys = BTreeSet::new();
        for n in &nodes {
            let key: NodeKey = (n.site.clone(), n.name.clone());
            let view = views
                .view(&key)
                .unwrap_or_else(|| panic!("registered node {key:?} has no view"));
            let map = view.to_map(views.mesh());
            assert_eq!(mesh.map_for(&key).as_ref(), Some(&map));
            let tunnel = !view.peers.is_empty()
                || nodes.iter().any(|n| {
                    (&n.site, &n.name) == (&key.0, &key.1)
                        && (n.role == Role::Gateway
                            || self.config.site(&n.site).is_some_and(|s| s.full_mesh))
                });
            check_map(&key, &view, &map, version, &self.config, tunnel);
            match self.sessions.get_mut(&key) {
                None => {
                    self.sessions.insert(key.clone(), Session { view, map });
                }
                Some(s) if s.view.version == view.version => {}
                Some(s) => {
                    let delta = s.view.delta(&view);
                    if delta.is_empty() {
                        // Sent later, batched with the next change.
                        let mut same = s.map.clone();
                        same.version = map.version;
                        assert_eq!(same, map, "{key:?}: an empty delta between different maps");
                    } else {
                        s.map
                            .apply(&delta)
                            .unwrap_or_else(|e| panic!("{key:?}: the session's delta: {e}"));
                        assert_eq!(s.map, map, "{key:?}: the delta does not reach the map");
                        s.view = view;
                    }
                }
            }
            keys.insert(key);
        }
        self.sessions.retain(|k, _| keys.contains(k));

        // The fan-out wakes only the sessions `changes` concerns: every node whose map
        // differs (not only in version) from the last check must be among them.
        let changes = self.views.changes(&views);
        let before: BTreeSet<NodeKey> = self.views.keys().cloned().collect();
        for key in keys.union(&before) {
            let differs = match (self.views.view(key), views.view(key)) {
                (Some(a), Some(b)) => !a.delta(&b).is_empty(),
                (None, None) => false,
                _ => true,
            };
            if differs {
                assert!(
                    changes.concerns(key, &views),
                    "{key:?}'s map changed, but the fan-out would not wake its session: {changes:?}"
                );
            }
        }
        self.views = views.clone();

        // A restart from what the store holds.
        let restarted = Mesh::new(self.config.clone(), self.store.clone());
        assert_eq!(
            restarted.version(),
            version,
            "the store holds another version"
        );
        let forget = |mut n: strait_proto::msg::NodeInfo| {
            // Heartbeats are not written while a node stays online.
            n.last_seen = 0;
            n.map_version = 0;
            n
        };
        let again: Vec<_> = restarted.nodes().into_iter().map(forget).collect();
        let nodes: Vec<_> = nodes.into_iter().map(forget).collect();
        assert_eq!(again, nodes, "the store holds other nodes");
        for key in &keys {
            assert_eq!(
                restarted.map_for(key),
                mesh.map_for(key),
                "{key:?}'s map changes in a restart"
            );
        }
        for s in SERIALS {
            assert_eq!(restarted.is_revoked(s), mesh.is_revoked(s), "serial {s:?}");
        }
        for name in NAMES {
            assert_eq!(
                restarted.resolve(name),
                mesh.resolve(name),
                "resolving {name}"
            );
        }

        // Operators' views.
        let _ = (mesh.status("builtin"), mesh.routes(), mesh.graph());
        let policy = mesh.policy_view();
        assert_eq!(policy.rules.len(), self.config.policy.rules.len());
        assert!(policy.since_version <= version);
        for l in mesh.links() {
            assert!(l.a != l.b, "a link from {} to itself", l.a);
        }
        for (a, b) in mesh.tunnel_pairs() {
            if let Err(e) = mesh.probe_pair(&a, &b) {
                panic!("tunnel pair {a} {b} cannot be probed: {e}");
            }
        }
        for ext in &self.config.external_peers {
            mesh.external_peer_config(&ext.name)
                .unwrap_or_else(|e| panic!("external peer {}: {e}", ext.name));
        }
    }
}

/// What one node's view and map must be. `site` is the node's site's config, `tunnel`
/// whether the node terminates tunnels.
fn check_map(
    key: &NodeKey,
    view: &NodeView,
    map: &NetworkMap,
    version: u64,
    config: &Config,
    tunnel: bool,
) {
    // The access policy: a member enforces none; a tunnel node the default, and only rules
    // whose destinations lie in its site or the overlay, in the configured order.
    let site = config.site(&key.0).expect("a node of a declared site");
    if !tunnel {
        assert!(map.access.allows_all(), "{key:?}: a member got a policy");
    } else {
        assert_eq!(map.access.default, config.policy.default);
        let configured: Vec<String> = crate::access::Policy::build(config)
            .expect("a validated config's policy builds")
            .rules
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut at = 0;
        for r in &map.access.rules {
            let Some(i) = configured[at..].iter().position(|n| *n == r.name) else {
                panic!("{key:?}: rule {} out of order or unknown", r.name);
            };
            at += i + 1;
            assert!(
                r.to_node || !r.to.is_empty(),
                "{key:?}: rule {} with no destination",
                r.name
            );
            for p in &r.to {
                assert!(
                    policy::contains(config.overlay_cidr, *p)
                        || site.prefixes.iter().any(|own| policy::overlaps(*own, *p)),
                    "{key:?}: rule {} sends {p} here, outside the site",
                    r.name
                );
            }
        }
    }
    assert_eq!(map.version, version);
    assert_eq!((&map.node.site, &map.node.name), (&key.0, &key.1));
    assert!(
        view.peers.windows(2).all(|w| w[0].id < w[1].id),
        "{key:?}: peer ids are not strictly increasing: {:?}",
        view.peers.iter().map(|p| &p.id).collect::<Vec<_>>()
    );
    assert!(
        view.peers.is_empty() || view.routes.is_empty(),
        "{key:?} has both tunnels and routes"
    );
    let mut routed: BTreeMap<IpNetwork, &str> = BTreeMap::new();
    for (id, p) in &map.peers {
        assert_eq!(*id, p.id);
        assert_ne!(p.site, key.0, "{key:?} has peer {id} of its own site");
        for prefix in &p.allowed_ips {
            if let Some(other) = routed.insert(*prefix, id) {
                panic!("{key:?}: {prefix} is routed to both {other} and {id}");
            }
        }
    }
    for (prefix, route) in &map.routes {
        assert_eq!(*prefix, route.prefix);
        assert_ne!(route.site, key.0, "{key:?} routes its own site's {prefix}");
        assert!(
            route.via.starts_with(&format!("{}/", key.0)),
            "{key:?} routes {prefix} via {}, of another site",
            route.via
        );
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
