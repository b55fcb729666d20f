use std::collections::BTreeSet;
use std::time::Duration;

use strait_pki::{Fingerprint, Identity, Role};
use strait_proto::msg::{Endpoint, EndpointKind, PeerLink, Registration};

use super::*;
use crate::config::PkiConfig;

/// A WireGuard public key of its own for each node address (nodes may not share one).
fn wg_key(lan: &str) -> String {
    use base64::Engine;
    let ip: Ipv4Addr = lan.parse().unwrap();
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&ip.octets());
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn config(full_mesh_b: bool) -> Arc<Config> {
    let site = |name: &str, prefix: &str, full_mesh| SiteConfig {
        name: name.into(),
        cloud: "aws".into(),
        region: "r".into(),
        prefixes: vec![prefix.parse().unwrap()],
        full_mesh,
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
        sites: vec![
            site("a", "10.1.0.0/16", false),
            site("b", "10.2.0.0/16", full_mesh_b),
        ],
        external_peers: vec![],
        throughput_probes: None,
        metrics_listen: None,
        limits: Default::default(),
        policy: Default::default(),
        store: Default::default(),
    })
}

fn reg(prefixes: &[&str], lan: &str) -> Registration {
    Registration {
        wg_public_key: wg_key(lan),
        endpoints: vec![Endpoint {
            address: format!("{lan}:51820").parse().unwrap(),
            kind: EndpointKind::Private,
            cost: None,
        }],
        prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        agent_version: "test".into(),
        have_version: None,
        priority: 0,
    }
}

fn id(site: &str, name: &str, role: Role) -> Identity {
    Identity::node("prod", site, name, role).unwrap()
}

fn key(site: &str, name: &str) -> NodeKey {
    (site.into(), name.into())
}

/// Applies store ops to an in-memory copy, as a store would.
fn persist(p: &mut Persisted, ops: &[StoreOp]) {
    for op in ops {
        match op {
            StoreOp::PutNode(n) => {
                p.nodes.retain(|x| x.key() != n.key());
                p.nodes.push(n.clone());
            }
            StoreOp::DeleteNode { site, name } => {
                p.nodes.retain(|x| x.key() != (site.clone(), name.clone()))
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

fn three_nodes(mesh: &mut Mesh, store: &mut Persisted) {
    for (i, s, n, role, prefixes) in [
        ("10.1.0.1", "a", "gw", Role::Gateway, &["10.1.0.0/16"][..]),
        ("10.2.0.1", "b", "gw", Role::Gateway, &["10.2.0.0/16"][..]),
        ("10.1.0.9", "a", "m1", Role::Member, &[][..]),
    ] {
        let (_, ops) = mesh
            .register(&id(s, n, role), &reg(prefixes, i), "01", 0, 100)
            .unwrap();
        persist(store, &ops);
    }
}

#[test]
fn gateways_peer_across_sites_and_members_route_via_their_gateway() {
    let mut store = Persisted::default();
    let mut mesh = Mesh::new(config(false), Persisted::default());
    three_nodes(&mut mesh, &mut store);

    let a = mesh.map_for(&key("a", "gw")).unwrap();
    assert_eq!(a.peers.keys().collect::<Vec<_>>(), vec!["b/gw"]);
    let b_peer = &a.peers["b/gw"];
    let allowed: Vec<String> = b_peer.allowed_ips.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        allowed,
        vec![
            format!("{}/32", b_peer.overlay_ip.unwrap()),
            "10.2.0.0/16".into()
        ]
    );

    let m = mesh.map_for(&key("a", "m1")).unwrap();
    assert!(m.peers.is_empty(), "members have no tunnels of their own");
    let r = &m.routes[&"10.2.0.0/16".parse().unwrap()];
    assert_eq!(
        (
            r.via.as_str(),
            r.via_address.to_string().as_str(),
            r.site.as_str()
        ),
        ("a/gw", "10.1.0.1", "b")
    );
    assert!(m.routes.contains_key(&"100.64.0.0/10".parse().unwrap()));
    assert!(
        !m.routes.contains_key(&"10.1.0.0/16".parse().unwrap()),
        "no route for the own site"
    );
    assert_eq!(mesh.links().len(), 2);
}

#[test]
fn overlay_ips_are_stable_across_reregistration_and_restart() {
    let mut store = Persisted::default();
    let mut mesh = Mesh::new(config(false), Persisted::default());
    three_nodes(&mut mesh, &mut store);
    let before: Vec<(String, Ipv4Addr)> = mesh
        .nodes()
        .iter()
        .map(|n| (n.name.clone() + &n.site, n.overlay_ip))
        .collect();
    let ips: BTreeSet<Ipv4Addr> = before.iter().map(|x| x.1).collect();
    assert_eq!(ips.len(), 3, "distinct addresses");

    let (r, ops) = mesh
        .register(
            &id("b", "gw", Role::Gateway),
            &reg(&["10.2.0.0/16"], "10.2.0.1"),
            "02",
            0,
            200,
        )
        .unwrap();
    persist(&mut store, &ops);
    assert_eq!(
        Some(&(String::from("gwb"), r.overlay_ip)),
        before.iter().find(|x| x.0 == "gwb")
    );

    let restarted = Mesh::new(config(false), store.clone());
    let after: Vec<(String, Ipv4Addr)> = restarted
        .nodes()
        .iter()
        .map(|n| (n.name.clone() + &n.site, n.overlay_ip))
        .collect();
    assert_eq!(before, after);
    assert_eq!(restarted.version(), mesh.version());
}

#[test]
fn refused_prefixes_are_reported_and_not_routed() {
    let mut mesh = Mesh::new(config(false), Persisted::default());
    let (r, _) = mesh
        .register(
            &id("b", "gw", Role::Gateway),
            &reg(
                &["10.2.0.0/16", "10.1.5.0/24", "0.0.0.0/0", "192.168.1.0/24"],
                "10.2.0.1",
            ),
            "01",
            0,
            1,
        )
        .unwrap();
    let reasons: Vec<&str> = r.refused.iter().map(|x| x.reason.as_str()).collect();
    assert_eq!(r.refused.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("site a"));
    assert!(reasons[1].contains("default route"));
    assert!(reasons[2].contains("outside site b"));
    let refused_routes = mesh
        .routes()
        .into_iter()
        .filter(|r| r.status == "refused")
        .count();
    assert_eq!(refused_routes, 3);
    mesh.register(
        &id("a", "gw", Role::Gateway),
        &reg(&["10.1.0.0/16"], "10.1.0.1"),
        "01",
        0,
        1,
    )
    .unwrap();
    let a = mesh.map_for(&key("a", "gw")).unwrap();
    assert_eq!(
        a.peers["b/gw"].allowed_ips.len(),
        2,
        "only the accepted prefix is routed"
    );
}

#[test]
fn silent_nodes_go_offline_but_stay_in_maps() {
    let mut store = Persisted::default();
    let mut mesh = Mesh::new(config(false), Persisted::default());
    three_nodes(&mut mesh, &mut store);
    let v = mesh.version();
    assert!(mesh.tick(105).is_empty());
    mesh.heartbeat(&key("a", "gw"), v, 108);
    let ops = mesh.tick(111);
    assert!(!ops.is_empty());
    assert_eq!(mesh.version(), v + 1);
    let a = mesh.map_for(&key("a", "gw")).unwrap();
    assert!(!a.peers["b/gw"].online, "b/gw went silent");
    assert!(
        mesh.nodes()
            .iter()
            .find(|n| n.site == "a" && n.name == "gw")
            .unwrap()
            .online
    );
    // It comes back with a heartbeat.
    assert!(!mesh.heartbeat(&key("b", "gw"), v, 112).is_empty());
    assert!(mesh.map_for(&key("a", "gw")).unwrap().peers["b/gw"].online);
}

#[test]
fn presence_from_other_coordinators_keeps_nodes_online_and_reloads_keep_live_data() {
    let mut store = Persisted::default();
    let mut mesh = Mesh::new(config(false), Persisted::default());
    three_nodes(&mut mesh, &mut store);
    let v = mesh.version();
    // b/gw's session is on another coordinator, which saw it at 108.
    let elsewhere = Presence {
        site: "b".into(),
        name: "gw".into(),
        last_seen: 108,
        map_version: v,
    };
    mesh.observe(std::slice::from_ref(&elsewhere));
    mesh.heartbeat(&key("a", "gw"), v, 108);
    mesh.heartbeat(&key("a", "m1"), v, 108);
    assert!(mesh.tick(111).is_empty(), "nobody is silent");
    assert_eq!(mesh.version(), v, "presence is no map change");
    // An older report never moves last_seen back.
    mesh.observe(&[Presence {
        last_seen: 90,
        map_version: 0,
        ..elsewhere.clone()
    }]);
    let b = |m: &Mesh| m.node(&key("b", "gw")).cloned().unwrap();
    assert_eq!((b(&mesh).last_seen, b(&mesh).map_version), (108, v));

    // A reload from the store (another coordinator wrote) keeps what was never stored.
    mesh.report_links(
        &key("a", "gw"),
        vec![PeerLink {
            peer: "b/gw".into(),
            endpoint: None,
            handshake_age_secs: Some(1),
            tx_bytes: 1,
            rx_bytes: 2,
            paths: vec![],
        }],
        None,
    );
    let mut reloaded = Mesh::new(config(false), store.clone());
    assert_eq!(reloaded.node(&key("a", "gw")).unwrap().last_seen, 100);
    reloaded.carry_live(&mesh);
    let gw = reloaded.node(&key("a", "gw")).unwrap();
    assert_eq!((gw.last_seen, gw.map_version, gw.links.len()), (108, v, 1));
    assert_eq!(b(&reloaded).last_seen, 108);
    assert!(reloaded.tick(111).is_empty());
}

#[test]
fn revocation_removes_the_node_and_refuses_its_certificates() {
    let mut mesh = Mesh::new(config(false), Persisted::default());
    mesh.record_issued(IssuedCert {
        serial: "aa".into(),
        site: "b".into(),
        name: "gw".into(),
        not_after: 10_000,
    });
    mesh.record_issued(IssuedCert {
        serial: "old".into(),
        site: "b".into(),
        name: "gw".into(),
        not_after: 50,
    });
    let mut store = Persisted::default();
    three_nodes(&mut mesh, &mut store);
    assert_eq!(
        mesh.resolve("gw").unwrap_err().code(),
        ErrorCode::BadRequest,
        "gw is in two sites"
    );
    let k = mesh.resolve("b/gw").unwrap();
    let (serials, _) = mesh.revoke(&k, 100);
    assert_eq!(serials, vec!["01".to_string(), "aa".to_string()]);
    assert!(mesh.is_revoked("aa") && mesh.is_revoked("01") && !mesh.is_revoked("old"));
    assert!(mesh.map_for(&key("a", "gw")).unwrap().peers.is_empty());
    assert!(mesh.map_for(&k).is_none());
    assert!(matches!(
        mesh.resolve("nobody"),
        Err(CoreError::NoSuchNode(_))
    ));
}

#[test]
fn full_mesh_sites_peer_every_node() {
    let mut store = Persisted::default();
    let mut mesh = Mesh::new(config(true), Persisted::default());
    three_nodes(&mut mesh, &mut store);
    mesh.register(
        &id("b", "m2", Role::Member),
        &reg(&[], "10.2.0.7"),
        "01",
        0,
        100,
    )
    .unwrap();
    let m2 = mesh.map_for(&key("b", "m2")).unwrap();
    assert_eq!(
        m2.peers.keys().collect::<Vec<_>>(),
        vec!["a/gw"],
        "a's member has no tunnel"
    );
    assert!(m2.routes.is_empty());
    assert!(mesh
        .map_for(&key("a", "gw"))
        .unwrap()
        .peers
        .contains_key("b/m2"));
}

#[test]
fn every_gateway_of_a_site_carries_its_prefix_online_or_not() {
    let mut mesh = Mesh::new(config(false), Persisted::default());
    let mut store = Persisted::default();
    three_nodes(&mut mesh, &mut store);
    let (_, ops) = mesh
        .register(
            &id("b", "gw2", Role::Gateway),
            &Registration {
                priority: 1,
                ..reg(&["10.2.0.0/16"], "10.2.0.2")
            },
            "01",
            0,
            100,
        )
        .unwrap();
    persist(&mut store, &ops);
    // A standby gateway's priority reaches its peers' maps, and survives a reload.
    let a = mesh.map_for(&key("a", "gw")).unwrap();
    assert_eq!(
        (a.peers["b/gw"].priority, a.peers["b/gw2"].priority),
        (0, 1)
    );
    let reloaded = Mesh::new(config(false), store.clone());
    assert_eq!(
        reloaded.map_for(&key("a", "gw")).unwrap().peers["b/gw2"].priority,
        1
    );
    let carriers = |mesh: &Mesh| {
        let a = mesh.map_for(&key("a", "gw")).unwrap();
        a.peers
            .values()
            .filter(|p| p.allowed_ips.len() == 2)
            .map(|p| p.id.clone())
            .collect::<Vec<_>>()
    };
    // Peers judge the gateways' health by their own probes: the coordinator lists all.
    assert_eq!(carriers(&mesh), vec!["b/gw", "b/gw2"]);
    mesh.heartbeat(&key("b", "gw2"), 0, 111);
    mesh.heartbeat(&key("a", "gw"), 0, 111);
    mesh.tick(111);
    assert_eq!(carriers(&mesh), vec!["b/gw", "b/gw2"]);
    let a = mesh.map_for(&key("a", "gw")).unwrap();
    assert!(!a.peers["b/gw"].online && a.peers["b/gw2"].online);
}

#[test]
fn members_learn_every_gateway_of_their_site_and_gateways_none() {
    let mut mesh = Mesh::new(config(false), Persisted::default());
    let mut store = Persisted::default();
    three_nodes(&mut mesh, &mut store);
    let (_, ops) = mesh
        .register(
            &id("a", "gw2", Role::Gateway),
            &Registration {
                priority: 1,
                ..reg(&["10.1.0.0/16"], "10.1.0.2")
            },
            "01",
            0,
            100,
        )
        .unwrap();
    persist(&mut store, &ops);
    let m1 = mesh.map_for(&key("a", "m1")).unwrap();
    let listed: Vec<(String, String, String, u8)> = m1
        .node
        .local_gateways
        .iter()
        .map(|g| {
            (
                g.id.clone(),
                g.wg_public_key.clone(),
                g.address.to_string(),
                g.priority,
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                "a/gw".into(),
                wg_key("10.1.0.1"),
                "10.1.0.1:51820".into(),
                0
            ),
            (
                "a/gw2".into(),
                wg_key("10.1.0.2"),
                "10.1.0.2:51820".into(),
                1
            ),
        ]
    );
    // Gateways of other sites are not listed; gateways themselves get no list.
    assert!(mesh
        .map_for(&key("a", "gw"))
        .unwrap()
        .node
        .local_gateways
        .is_empty());
    // Offline gateways stay listed (the member judges them by their answers), and the list
    // survives a reload.
    let v = mesh.version();
    mesh.heartbeat(&key("a", "gw2"), v, 108);
    mesh.tick(111);
    assert!(
        !mesh
            .nodes()
            .iter()
            .find(|n| n.site == "a" && n.name == "gw")
            .unwrap()
            .online
    );
    let reloaded = Mesh::new(config(false), store.clone());
    for mesh in [&mesh, &reloaded] {
        let m1 = mesh.map_for(&key("a", "m1")).unwrap();
        assert_eq!(m1.node.local_gateways.len(), 2);
    }
}

#[test]
fn tokens_only_for_declared_sites_and_single_use() {
    let mut mesh = Mesh::new(config(false), Persisted::default());
    let fp = Fingerprint([1; 32]);
    assert!(matches!(
        mesh.create_token(
            "nowhere",
            Role::Gateway,
            Duration::from_secs(60),
            0,
            fp,
            [5; 22]
        ),
        Err(CoreError::UnknownSite(_))
    ));
    let (t, _, ops) = mesh
        .create_token("a", Role::Gateway, Duration::from_secs(60), 0, fp, [5; 22])
        .unwrap();
    assert_eq!(ops.len(), 1);
    mesh.check_enrollment(&t, "a", "gw", Role::Gateway, 1)
        .unwrap();
    let cert = IssuedCert {
        serial: "s".into(),
        site: "a".into(),
        name: "gw".into(),
        not_after: 99,
    };
    mesh.complete_enrollment(&t, "a", Role::Gateway, cert, 1)
        .unwrap();
    let err = mesh
        .check_enrollment(&t, "a", "gw2", Role::Gateway, 2)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidToken);
    assert!(err.to_string().contains("already used"), "{err}");
}

#[test]
fn bad_wireguard_keys_and_service_identities_are_refused() {
    let mut mesh = Mesh::new(config(false), Persisted::default());
    let mut r = reg(&[], "10.1.0.1");
    r.wg_public_key = "short".into();
    assert!(matches!(
        mesh.register(&id("a", "gw", Role::Gateway), &r, "1", 0, 0),
        Err(CoreError::BadPublicKey(_))
    ));
    let op = Identity::service("prod", "ops", Role::Operator).unwrap();
    assert!(matches!(
        mesh.register(&op, &reg(&[], "10.1.0.1"), "1", 0, 0),
        Err(CoreError::NotANode(_))
    ));
    assert!(matches!(
        mesh.register(
            &id("zz", "gw", Role::Gateway),
            &reg(&[], "10.1.0.1"),
            "1",
            0,
            0
        ),
        Err(CoreError::UnknownSite(_))
    ));
}

#[test]
fn a_rotated_key_reaches_peers_before_and_after_it_is_used() {
    const KEY_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=";
    const KEY_C: &str = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCA=";
    let mut store = Persisted::default();
    let mut mesh = Mesh::new(config(false), Persisted::default());
    three_nodes(&mut mesh, &mut store);
    let a = key("a", "gw");
    // A key another node uses is refused, naming the owner.
    let err = mesh.announce_key(&a, &wg_key("10.2.0.1")).unwrap_err();
    assert!(err.to_string().contains("already belongs to b/gw"), "{err}");
    assert!(mesh.announce_key(&a, "short").is_err());
    // A key that was never announced cannot be put in use.
    assert!(mesh.key_in_use(&a, KEY_B).is_err());

    let v0 = mesh.version();
    let ops = mesh.announce_key(&a, KEY_B).unwrap();
    persist(&mut store, &ops);
    assert!(mesh.version() > v0);
    let peer = &mesh.map_for(&key("b", "gw")).unwrap().peers["a/gw"];
    assert_eq!(
        (
            peer.wg_public_key.as_str(),
            peer.next_wg_public_key.as_deref()
        ),
        (wg_key("10.1.0.1").as_str(), Some(KEY_B))
    );
    let own = mesh.map_for(&a).unwrap().node;
    assert_eq!(own.next_wg_public_key.as_deref(), Some(KEY_B));
    // Announcing it again changes nothing; another node may not take it meanwhile.
    let v1 = mesh.version();
    assert!(mesh.announce_key(&a, KEY_B).unwrap().is_empty());
    assert_eq!(mesh.version(), v1);
    assert!(mesh.announce_key(&key("b", "gw"), KEY_B).is_err());
    // ...nor register with it.
    let mut taken = reg(&[], "10.1.0.30");
    taken.wg_public_key = KEY_B.into();
    assert!(mesh
        .register(&id("a", "m2", Role::Member), &taken, "05", 0, 150)
        .is_err());

    let ops = mesh.key_in_use(&a, KEY_B).unwrap();
    persist(&mut store, &ops);
    let peer = &mesh.map_for(&key("b", "gw")).unwrap().peers["a/gw"];
    assert_eq!(
        (
            peer.wg_public_key.as_str(),
            peer.next_wg_public_key.as_deref()
        ),
        (KEY_B, None)
    );
    // Persisted: a coordinator restarting from the store has the new key.
    let restarted = Mesh::new(config(false), store.clone());
    assert_eq!(restarted.node(&a).unwrap().wg_public_key, KEY_B);

    // A re-registration (a new session) drops an announcement the agent makes again.
    mesh.announce_key(&a, KEY_C).unwrap();
    let mut r = reg(&["10.1.0.0/16"], "10.1.0.1");
    r.wg_public_key = KEY_B.into();
    mesh.register(&id("a", "gw", Role::Gateway), &r, "01", 0, 200)
        .unwrap();
    assert_eq!(mesh.node(&a).unwrap().next_wg_public_key, None);
}

#[test]
fn a_wireguard_key_belongs_to_one_node() {
    let mut store = Persisted::default();
    let mut mesh = Mesh::new(config(false), Persisted::default());
    three_nodes(&mut mesh, &mut store);
    let version = mesh.version();

    // Another node announcing b/gw's key (a copied wg.key) is refused, named and unchanged.
    let mut stolen = reg(&[], "10.1.0.20");
    stolen.wg_public_key = wg_key("10.2.0.1");
    let err = mesh
        .register(&id("a", "thief", Role::Member), &stolen, "09", 0, 150)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    let text = err.to_string();
    assert!(text.contains("already belongs to b/gw"), "{text}");
    assert!(text.contains("remove wg.key"), "{text}");
    assert!(mesh.node(&key("a", "thief")).is_none());
    assert_eq!(mesh.version(), version, "a refusal moved the version");
    // ...also to re-register an existing node with it.
    let err = mesh
        .register(&id("a", "m1", Role::Member), &stolen, "09", 0, 150)
        .unwrap_err();
    assert!(matches!(err, CoreError::KeyInUse { ref owner, .. } if owner == "b/gw"));
    assert_eq!(
        mesh.node(&key("a", "m1")).unwrap().wg_public_key,
        wg_key("10.1.0.9")
    );

    // The owner re-registering with its own key (an agent restart) is fine, and so is a
    // node moving to a fresh key.
    mesh.register(
        &id("b", "gw", Role::Gateway),
        &reg(&["10.2.0.0/16"], "10.2.0.1"),
        "02",
        0,
        160,
    )
    .unwrap();
    mesh.register(
        &id("a", "m1", Role::Member),
        &reg(&[], "10.1.0.99"),
        "03",
        0,
        160,
    )
    .unwrap();

    // A revoked node leaves the registry: its key is free for a node enrolled anew.
    mesh.revoke(&key("b", "gw"), 170);
    mesh.register(&id("a", "thief", Role::Member), &stolen, "09", 0, 180)
        .unwrap();
}

#[test]
fn an_external_peers_key_is_taken() {
    use crate::config::ExternalPeerConfig;
    let mut config = (*config(false)).clone();
    config.external_peers.push(ExternalPeerConfig {
        name: "dc1".into(),
        site: "a".into(),
        public_key: wg_key("10.1.7.7"),
        endpoint: None,
        prefixes: vec!["10.1.7.0/24".parse().unwrap()],
        overlay_ip: None,
    });
    let mut mesh = Mesh::new(Arc::new(config), Persisted::default());
    let err = mesh
        .register(
            &id("b", "gw", Role::Gateway),
            &reg(&[], "10.1.7.7"),
            "01",
            0,
            1,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("already belongs to external/dc1"),
        "{err}"
    );
}

#[test]
fn key_checks_take_the_set_of_keys_in_use() {
    let in_use: BTreeMap<&str, String> = [("k1", "a/gw".to_string())].into();
    assert_eq!(check_key_free(&in_use, "k2"), Ok(()));
    assert_eq!(
        check_key_free(&in_use, "k1"),
        Err(CoreError::KeyInUse {
            key: "k1".into(),
            owner: "a/gw".into()
        })
    );
}

#[test]
fn a_node_name_belongs_to_one_identity() {
    let mut store = Persisted::default();
    let mut mesh = Mesh::new(config(false), Persisted::default());
    three_nodes(&mut mesh, &mut store);
    let fp = Fingerprint([1; 32]);
    let (member_token, _, _) = mesh
        .create_token(
            "a",
            Role::Member,
            Duration::from_secs(600),
            100,
            fp,
            [6; 22],
        )
        .unwrap();

    // A member token cannot enroll a node under the gateway's name...
    let err = mesh
        .check_enrollment(&member_token, "a", "gw", Role::Member, 101)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    let text = err.to_string();
    assert!(
        text.contains("a/gw belongs to the registered gateway a/gw")
            && text.contains("straitctl revoke a/gw"),
        "{text}"
    );
    let cert = IssuedCert {
        serial: "m".into(),
        site: "a".into(),
        name: "gw".into(),
        not_after: 9_999,
    };
    assert!(matches!(
        mesh.complete_enrollment(&member_token, "a", Role::Member, cert, 101),
        Err(CoreError::NameTaken { .. })
    ));
    // ...and the token is not spent by the refusal.
    mesh.check_enrollment(&member_token, "a", "m2", Role::Member, 101)
        .unwrap();

    // A member certificate naming the gateway (say, from a Vault role that allows it) does
    // not take the gateway's place: the registration is refused, the gateway keeps its
    // record, address and role.
    let before = mesh.node(&key("a", "gw")).unwrap().clone();
    let version = mesh.version();
    let err = mesh
        .register(
            &id("a", "gw", Role::Member),
            &reg(&[], "10.1.0.66"),
            "m",
            9_999,
            102,
        )
        .unwrap_err();
    assert!(matches!(err, CoreError::NameTaken { .. }), "{err}");
    assert!(err.to_string().contains("names a member"), "{err}");
    assert_eq!(mesh.node(&key("a", "gw")).unwrap(), &before);
    assert_eq!(mesh.version(), version);

    // The gateway itself re-registers (a new session, a renewed certificate).
    mesh.register(
        &id("a", "gw", Role::Gateway),
        &reg(&["10.1.0.0/16"], "10.1.0.1"),
        "g3",
        9_999,
        103,
    )
    .unwrap();

    // A node whose certificates all expired may enroll again in its own role (the gateway
    // registered above with certificates valid until 9,999).
    let (gw_token, _, _) = mesh
        .create_token(
            "a",
            Role::Gateway,
            Duration::from_secs(20_000),
            100,
            fp,
            [9; 22],
        )
        .unwrap();
    let err = mesh
        .check_enrollment(&gw_token, "a", "gw", Role::Gateway, 9_000)
        .unwrap_err();
    assert!(matches!(err, CoreError::NameTaken { .. }), "{err}");
    mesh.check_enrollment(&gw_token, "a", "gw", Role::Gateway, 10_000)
        .unwrap();
    assert!(mesh
        .check_enrollment(&member_token, "a", "gw", Role::Member, 10_000)
        .is_err());

    // An enrolled but unregistered name is held by its certificate until it expires or is
    // revoked.
    let (t1, _, _) = mesh
        .create_token(
            "b",
            Role::Member,
            Duration::from_secs(600),
            100,
            fp,
            [7; 22],
        )
        .unwrap();
    let (t2, _, _) = mesh
        .create_token(
            "b",
            Role::Member,
            Duration::from_secs(600),
            100,
            fp,
            [8; 22],
        )
        .unwrap();
    let cert = |serial: &str| IssuedCert {
        serial: serial.into(),
        site: "b".into(),
        name: "new".into(),
        not_after: 500,
    };
    mesh.complete_enrollment(&t1, "b", Role::Member, cert("n1"), 110)
        .unwrap();
    let err = mesh
        .check_enrollment(&t2, "b", "new", Role::Member, 111)
        .unwrap_err();
    assert!(err.to_string().contains("serial n1"), "{err}");
    mesh.check_enrollment(&t2, "b", "new", Role::Member, 501)
        .unwrap();
    mesh.revoke(&key("b", "new"), 112);
    mesh.complete_enrollment(&t2, "b", Role::Member, cert("n2"), 113)
        .unwrap();
}

mod overlap;
