//! What the handlers' tests share: a two-site mesh, a CA, CSRs, registrations, and time.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strait_pki::ca::{generate_csr, BuiltinCa};
use strait_pki::{Identity, Role};
use strait_proto::msg::{EnrollRequest, Registration};

use crate::config::{Config, PkiConfig, SiteConfig};
use crate::mesh::{Mesh, Persisted};

/// Unix seconds at the start of every test.
pub const T0: u64 = 1_750_000_000;

/// `secs` after [`T0`].
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

/// Mesh `prod`: site `a` (10.1.0.0/16) and site `b` (10.2.0.0/16), gateways only peer.
pub fn config() -> Arc<Config> {
    let site = |name: &str, prefix: &str| SiteConfig {
        name: name.into(),
        cloud: "aws".into(),
        region: "r".into(),
        prefixes: vec![prefix.parse().unwrap()],
        full_mesh: false,
        global_prefixes: vec![],
    };
    Arc::new(Config {
        mesh: "prod".into(),
        name: "primary".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: "/nonexistent".into(),
        overlay_cidr: "100.64.0.0/10".parse().unwrap(),
        global_cidr: None,
        heartbeat_timeout: Duration::from_secs(10),
        pki: PkiConfig::default(),
        sites: vec![site("a", "10.1.0.0/16"), site("b", "10.2.0.0/16")],
        external_peers: vec![],
        throughput_probes: None,
        metrics_listen: None,
        limits: Default::default(),
        policy: Default::default(),
        store: Default::default(),
    })
}

pub fn mesh() -> Mesh {
    Mesh::new(config(), Persisted::default())
}

/// One CA for every test (making one takes a while).
pub fn ca() -> &'static BuiltinCa {
    static CA: OnceLock<BuiltinCa> = OnceLock::new();
    CA.get_or_init(|| BuiltinCa::generate("prod").unwrap())
}

/// A CSR whose key stays here; its names are ignored by the CA.
pub fn csr() -> String {
    generate_csr("whatever-the-node-asks-for").unwrap().csr_pem
}

/// A gateway's enrollment with `token` as `site/node`.
pub fn enroll_request(token: &str, site: &str, node: &str) -> EnrollRequest {
    EnrollRequest {
        token: token.into(),
        site: site.into(),
        node: node.into(),
        role: Role::Gateway,
        csr_pem: csr(),
    }
}

pub fn gateway(site: &str, name: &str) -> Identity {
    Identity::node("prod", site, name, Role::Gateway).unwrap()
}

/// A WireGuard public key of its own for each `n`.
pub fn wg_key(n: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

/// A registration with key `n`, a private endpoint 192.0.2.`n`, advertising `prefixes`.
pub fn registration(n: u8, prefixes: &[&str]) -> Registration {
    Registration {
        wg_public_key: wg_key(n),
        endpoints: vec![strait_proto::msg::Endpoint {
            address: format!("192.0.2.{n}:51820").parse().unwrap(),
            kind: strait_proto::msg::EndpointKind::Private,
            cost: None,
        }],
        prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        agent_version: "test".into(),
        have_version: None,
        priority: 0,
    }
}
