use strait_pki::Role;
use strait_proto::msg::PeerLink;

use super::*;
use crate::handlers::operator::revoke;
use crate::handlers::testing::{at, gateway, mesh, registration, wg_key};

fn key(site: &str, name: &str) -> NodeKey {
    (site.into(), name.into())
}

#[test]
fn a_session_gets_its_snapshot_then_the_deltas_that_concern_it() {
    let mut mesh = mesh();
    let gw1 = gateway("a", "gw1");
    assert_eq!(node_key(&gw1), key("a", "gw1"));
    let (registered, ops) = register(
        &mut mesh,
        &gw1,
        &registration(1, &["10.1.0.0/16", "10.9.0.0/16"]),
        "01",
        99,
        at(0),
    )
    .unwrap();
    assert_eq!(registered.refused.len(), 1, "10.9.0.0/16 is outside site a");
    assert!(
        matches!(&ops[..], [StoreOp::PutNode(n), StoreOp::SetVersion(1)] if n.cert_serial == "01")
    );
    let (current, map) = snapshot(&mesh.views(), &key("a", "gw1")).unwrap();
    assert_eq!(
        (map.version, map.node.overlay_ip),
        (1, registered.overlay_ip)
    );
    assert!(map.peers.is_empty());
    assert!(snapshot(&mesh.views(), &key("b", "gw2")).is_none());

    // A gateway of site b: a new peer for a/gw1.
    register(
        &mut mesh,
        &gateway("b", "gw2"),
        &registration(2, &["10.2.0.0/16"]),
        "02",
        99,
        at(1),
    )
    .unwrap();
    let Update::Send {
        delta,
        next,
        version_only: false,
    } = update(&current, &mesh.views(), &key("a", "gw1"), false)
    else {
        panic!("a new peer is sent at once")
    };
    assert_eq!((delta.from_version, delta.to_version), (1, 2));
    assert_eq!(delta.upsert_peers.len(), 1);
    assert_eq!(delta.upsert_peers[0].id, "b/gw2");
    let mut applied = map.clone();
    applied.apply(&delta).unwrap();
    assert_eq!(
        applied,
        snapshot(&mesh.views(), &key("a", "gw1")).unwrap().1
    );
    assert!(matches!(
        update(&next, &mesh.views(), &key("a", "gw1"), true),
        Update::Nothing
    ));

    // A member of site b changes nothing in a/gw1's map but its version: that waits until
    // versions settle.
    let member = strait_pki::Identity::node("prod", "b", "m1", Role::Member).unwrap();
    register(&mut mesh, &member, &registration(3, &[]), "03", 99, at(2)).unwrap();
    assert!(matches!(
        update(&next, &mesh.views(), &key("a", "gw1"), false),
        Update::Nothing
    ));
    let Update::Send {
        delta,
        version_only: true,
        ..
    } = update(&next, &mesh.views(), &key("a", "gw1"), true)
    else {
        panic!("a version-only delta once versions settle")
    };
    assert!(delta.is_empty() && delta.to_version == 3);

    // Revoked: the session ends with the reason.
    revoke(&mut mesh, "a/gw1", at(3)).unwrap();
    let Update::Removed(reason) = update(&next, &mesh.views(), &key("a", "gw1"), false) else {
        panic!("a removed node's session ends")
    };
    assert_eq!(reason.code, ErrorCode::Revoked);
}

#[test]
fn refused_registrations_are_counted_by_kind() {
    let mut mesh = mesh();
    register(
        &mut mesh,
        &gateway("a", "gw1"),
        &registration(1, &[]),
        "01",
        99,
        at(0),
    )
    .unwrap();
    let e = register(
        &mut mesh,
        &gateway("b", "gw2"),
        &registration(1, &[]),
        "02",
        99,
        at(0),
    )
    .unwrap_err();
    assert_eq!(registration_refusal(&e), Refusal::DuplicateKey);
    let member = strait_pki::Identity::node("prod", "a", "gw1", Role::Member).unwrap();
    let e = register(&mut mesh, &member, &registration(3, &[]), "03", 99, at(0)).unwrap_err();
    assert_eq!(registration_refusal(&e), Refusal::Registration);
    let unknown = gateway("zz", "gw1");
    let e = register(&mut mesh, &unknown, &registration(4, &[]), "04", 99, at(0)).unwrap_err();
    assert_eq!(registration_refusal(&e), Refusal::Registration);
}

#[test]
fn agent_events_change_the_registry_as_reported() {
    let mut mesh = mesh();
    let gw1 = key("a", "gw1");
    register(
        &mut mesh,
        &gateway("a", "gw1"),
        &registration(1, &[]),
        "01",
        99,
        at(0),
    )
    .unwrap();
    register(
        &mut mesh,
        &gateway("b", "gw2"),
        &registration(2, &[]),
        "02",
        99,
        at(0),
    )
    .unwrap();
    let heartbeat = AgentEvent::Heartbeat { map_version: 2 };
    // Online already: a heartbeat is not a map change.
    assert_eq!(agent_event(&mut mesh, &gw1, &heartbeat, at(5)).unwrap(), []);
    assert_eq!(mesh.node(&gw1).unwrap().last_seen, unix(at(5)));
    mesh.tick(unix(at(30)));
    assert!(!mesh.node(&gw1).unwrap().online);
    let ops = agent_event(&mut mesh, &gw1, &heartbeat, at(31)).unwrap();
    assert!(matches!(&ops[..], [StoreOp::PutNode(n), StoreOp::SetVersion(_)] if n.online));

    // Key rotation: announce, then use; another node's key is refused.
    let announce = |k: String| AgentEvent::AnnounceKey {
        next_wg_public_key: k,
    };
    let e = agent_event(&mut mesh, &gw1, &announce(wg_key(2)), at(32)).unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let e = agent_event(
        &mut mesh,
        &gw1,
        &AgentEvent::KeyInUse {
            wg_public_key: wg_key(7),
        },
        at(32),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(!agent_event(&mut mesh, &gw1, &announce(wg_key(7)), at(32))
        .unwrap()
        .is_empty());
    let peer = mesh.views().view(&key("b", "gw2")).unwrap().peers[0].clone();
    assert_eq!(peer.next_wg_public_key, Some(wg_key(7)));
    let in_use = AgentEvent::KeyInUse {
        wg_public_key: wg_key(7),
    };
    assert!(!agent_event(&mut mesh, &gw1, &in_use, at(33))
        .unwrap()
        .is_empty());
    assert_eq!(mesh.node(&gw1).unwrap().wg_public_key, wg_key(7));

    // Conflicts are stored; links are live only.
    let conflicts = AgentEvent::RouteConflicts {
        conflicts: vec![strait_proto::msg::Refusal {
            prefix: "10.2.0.0/16".into(),
            reason: "a main-table route".into(),
        }],
    };
    let ops = agent_event(&mut mesh, &gw1, &conflicts, at(34)).unwrap();
    assert!(matches!(&ops[..], [StoreOp::PutNode(n)] if n.route_conflicts.len() == 1));
    let link = PeerLink {
        peer: "b/gw2".into(),
        endpoint: None,
        handshake_age_secs: Some(3),
        tx_bytes: 10,
        rx_bytes: 20,
        paths: vec![],
    };
    let bgp = strait_proto::msg::BgpReport {
        sessions: vec![strait_proto::msg::BgpSession {
            neighbor: "10.1.0.1".into(),
            state: "up".into(),
            info: "Established".into(),
        }],
        announced: vec!["10.2.0.0/16".into()],
        applied: true,
    };
    let report = AgentEvent::LinkReport {
        peers: vec![link],
        access_drops: vec![],
        bgp: Some(bgp.clone()),
    };
    let version = mesh.version();
    assert_eq!(agent_event(&mut mesh, &gw1, &report, at(35)).unwrap(), []);
    assert_eq!(mesh.version(), version);
    assert_eq!(mesh.links()[0].rx_bytes, Some(20));
    // `straitctl gateways` shows the report: traffic and BGP.
    let gw = mesh
        .gateways()
        .into_iter()
        .find(|g| g.tx_bytes == 10)
        .expect("the reporting gateway");
    assert_eq!((gw.rx_bytes, gw.tunnels), (20, 1));
    assert_eq!(gw.bgp, Some(bgp));
}

/// Found by the mesh simulator: a node revoked between its connection's handshake (where
/// the transport checks revocation) and its subscription registered again with the revoked
/// certificate, and so came back into every map.
#[test]
fn a_revoked_certificate_does_not_register_even_on_an_open_connection() {
    let mut mesh = mesh();
    let gw = gateway("a", "gw1");
    let reg = registration(1, &["10.1.0.0/16"]);
    register(&mut mesh, &gw, &reg, "0a", 99, at(0)).unwrap();
    revoke(&mut mesh, "a/gw1", at(1)).unwrap();
    let version = mesh.version();
    let e = register(&mut mesh, &gw, &reg, "0a", 99, at(2)).unwrap_err();
    assert!(
        matches!(&e, CoreError::Revoked { serial } if serial == "0a"),
        "{e}"
    );
    assert_eq!(core_err(e.clone()).code, ErrorCode::Revoked);
    assert_eq!(registration_refusal(&e), Refusal::Revoked);
    assert_eq!(mesh.version(), version, "a refusal changes nothing");
    assert!(snapshot(&mesh.views(), &key("a", "gw1")).is_none());
}
