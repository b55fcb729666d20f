//! Sites whose address space overlaps: maps name translated sites by their global
//! prefixes, everywhere, and carry the own site's pairs.

use super::*;
use strait_proto::map::Translation;

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

/// a and b both 10.10.0.0/16 (globals from 10.128.0.0/12: a 10.128/16, b 10.129/16), c
/// 10.20.0.0/16 untranslated.
fn overlapping(extra_sites: &str, policy: &str) -> Arc<Config> {
    let text = format!(
        r#"
mesh = "prod"
state-dir = "/nonexistent"
global-cidr = "10.128.0.0/12"
[[sites]]
name = "a"
prefixes = ["10.10.0.0/16"]
[[sites]]
name = "b"
prefixes = ["10.10.0.0/16"]
[[sites]]
name = "c"
prefixes = ["10.20.0.0/16"]
{extra_sites}
{policy}
"#
    );
    let c: Config = toml::from_str(&text).unwrap();
    c.validate().unwrap();
    Arc::new(c)
}

fn register_all(mesh: &mut Mesh, nodes: &[(&str, &str, Role, &[&str], &str)]) {
    for (site, name, role, prefixes, lan) in nodes {
        let (_, ops) = mesh
            .register(&id(site, name, *role), &reg(prefixes, lan), "01", 0, 100)
            .unwrap();
        let _ = ops;
    }
}

#[test]
fn translated_sites_are_known_by_their_global_prefixes_everywhere() {
    let mut mesh = Mesh::new(overlapping("", ""), Persisted::default());
    register_all(
        &mut mesh,
        &[
            ("a", "gw", Role::Gateway, &["10.10.0.0/16"], "10.10.0.1"),
            ("b", "gw", Role::Gateway, &["10.10.0.0/16"], "10.10.0.2"),
            ("c", "gw", Role::Gateway, &["10.20.0.0/16"], "10.20.0.1"),
            ("a", "m1", Role::Member, &[], "10.10.0.9"),
            ("c", "m1", Role::Member, &[], "10.20.0.9"),
        ],
    );
    // Both overlapping gateways' prefixes are accepted (they clash only as real addresses).
    for site in ["a", "b"] {
        let n = mesh.node(&key(site, "gw")).unwrap();
        assert_eq!(n.accepted, [net("10.10.0.0/16")], "{:?}", n.refused);
    }
    let a = mesh.map_for(&key("a", "gw")).unwrap();
    assert_eq!(
        a.node.translations,
        [Translation {
            local: net("10.10.0.0/16"),
            global: net("10.128.0.0/16")
        }]
    );
    assert_eq!(a.peers["b/gw"].allowed_ips[1..], [net("10.129.0.0/16")]);
    assert_eq!(a.peers["c/gw"].allowed_ips[1..], [net("10.20.0.0/16")]);
    // Fail closed: the others' mesh prefixes and the own global prefix, never the own
    // local one.
    assert_eq!(
        a.node.fail_closed,
        [
            net("10.20.0.0/16"),
            net("10.128.0.0/16"),
            net("10.129.0.0/16"),
            net("100.64.0.0/10")
        ]
    );
    // The untranslated site sees both by their global prefixes and translates nothing.
    let m = mesh.map_for(&key("a", "m1")).unwrap();
    assert!(m.node.translations.is_empty(), "members do not translate");
    let c = mesh.map_for(&key("c", "gw")).unwrap();
    assert!(c.node.translations.is_empty());
    assert_eq!(c.peers["a/gw"].allowed_ips[1..], [net("10.128.0.0/16")]);
    assert_eq!(c.peers["b/gw"].allowed_ips[1..], [net("10.129.0.0/16")]);
    let m = mesh.map_for(&key("c", "m1")).unwrap();
    let routed: Vec<_> = m.routes.keys().copied().collect();
    assert_eq!(
        routed,
        [
            net("10.128.0.0/16"),
            net("10.129.0.0/16"),
            net("100.64.0.0/10")
        ]
    );
    let m = mesh.map_for(&key("a", "m1")).unwrap();
    let routed: Vec<_> = m.routes.keys().copied().collect();
    assert_eq!(
        routed,
        [
            net("10.20.0.0/16"),
            net("10.129.0.0/16"),
            net("100.64.0.0/10")
        ]
    );
    // Operators see both forms, and can ask which site an address is.
    let routes = mesh.routes();
    let b = routes.iter().find(|r| r.site == "b").unwrap();
    assert_eq!(
        (b.prefix.as_str(), b.global),
        ("10.10.0.0/16", Some(net("10.129.0.0/16")))
    );
    assert_eq!(routes.iter().find(|r| r.site == "c").unwrap().global, None);
    let found = mesh.resolve_address("10.129.0.20".parse().unwrap());
    assert_eq!(found.len(), 1);
    assert_eq!(
        (
            found[0].site.as_str(),
            found[0].local.to_string(),
            found[0].node.as_deref(),
            found[0].by.as_str()
        ),
        ("b", "10.10.0.20".into(), Some("b/gw"), "global")
    );
    assert_eq!(mesh.resolve_address("10.10.0.20".parse().unwrap()).len(), 2);
}

#[test]
fn a_translated_site_never_routes_or_accepts_an_untranslated_overlapping_sites_addresses() {
    // Only a has global prefixes (declared; no global-cidr, so d gets none).
    let text = r#"
mesh = "prod"
state-dir = "/nonexistent"
[[sites]]
name = "a"
prefixes = ["10.10.0.0/16"]
global-prefixes = ["172.16.0.0/16"]
[[sites]]
name = "d"
prefixes = ["10.10.0.0/16"]
"#;
    let c: Config = toml::from_str(text).unwrap();
    c.validate().unwrap();
    let mut mesh = Mesh::new(Arc::new(c), Persisted::default());
    register_all(
        &mut mesh,
        &[
            ("a", "gw", Role::Gateway, &["10.10.0.0/16"], "10.10.0.1"),
            ("d", "gw", Role::Gateway, &["10.10.0.0/16"], "10.10.0.2"),
            ("a", "m1", Role::Member, &[], "10.10.0.9"),
        ],
    );
    let a = mesh.map_for(&key("a", "gw")).unwrap();
    // d's real prefix is a's own address space: not in d's allowed IPs as a sees them
    // (packets from d with such sources are refused), not routed, not closed.
    assert_eq!(a.peers["d/gw"].allowed_ips.len(), 1, "only the overlay /32");
    assert!(!a.node.fail_closed.contains(&net("10.10.0.0/16")));
    let m = mesh.map_for(&key("a", "m1")).unwrap();
    assert!(!m.routes.contains_key(&net("10.10.0.0/16")));
    // d sees a by its global prefix.
    let d = mesh.map_for(&key("d", "gw")).unwrap();
    assert_eq!(d.peers["a/gw"].allowed_ips[1..], [net("172.16.0.0/16")]);
}

#[test]
fn the_access_policy_is_shipped_in_mesh_addresses() {
    let policy = r#"
[policy]
default = "deny"
[[policy.rules]]
name = "web"
from = "c"
to = "b"
ports = "tcp/443"
[[policy.rules]]
name = "db"
from = "10.20.1.0/24"
to = "10.129.5.0/24"
ports = "tcp/5432"
"#;
    let mut mesh = Mesh::new(overlapping("", policy), Persisted::default());
    register_all(
        &mut mesh,
        &[("b", "gw", Role::Gateway, &["10.10.0.0/16"], "10.10.0.2")],
    );
    let b = mesh.map_for(&key("b", "gw")).unwrap();
    let to: Vec<Vec<ipnetwork::IpNetwork>> = b.access.rules.iter().map(|r| r.to.clone()).collect();
    assert_eq!(to, [vec![net("10.129.0.0/16")], vec![net("10.129.5.0/24")]]);
    // A real prefix of overlapping sites is ambiguous: refused, naming each global form.
    let c: Config = toml::from_str(&format!(
        "{}\n[policy]\n[[policy.rules]]\nfrom = \"c\"\nto = \"10.10.5.0/24\"\nports = \"any\"",
        r#"
mesh = "prod"
state-dir = "/nonexistent"
global-cidr = "10.128.0.0/12"
[[sites]]
name = "a"
prefixes = ["10.10.0.0/16"]
[[sites]]
name = "b"
prefixes = ["10.10.0.0/16"]
[[sites]]
name = "c"
prefixes = ["10.20.0.0/16"]
"#
    ))
    .unwrap();
    let err = format!("{:#}", c.validate().unwrap_err());
    assert!(
        err.contains("10.10.5.0/24 lies in sites a and b")
            && err.contains("a: 10.128.5.0/24, b: 10.129.5.0/24"),
        "{err}"
    );
}
