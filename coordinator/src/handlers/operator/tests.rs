use strait_proto::msg::{AgentEvent, Response};

use super::*;
use crate::handlers::session::{agent_event, register};
use crate::handlers::testing::{at, ca, gateway, mesh, registration};
use crate::handlers::{SeededEntropy, VaultMode};

#[test]
fn tokens_are_made_from_the_entropy_given_for_declared_sites() {
    let make = |seed| {
        let mut mesh = mesh();
        let (created, ops) = create_token(
            &mut mesh,
            ca(),
            "a",
            Role::Member,
            600,
            at(0),
            &mut SeededEntropy::new(seed),
        )
        .unwrap();
        assert!(matches!(&ops[..], [StoreOp::PutToken(t)] if t.id == created.id));
        created
    };
    let created = make(9);
    assert_eq!(created, make(9), "same seed, same token");
    assert_ne!(created.token, make(10).token);
    assert_eq!((created.site.as_str(), created.role), ("a", Role::Member));
    assert_eq!(created.expires_at, unix(at(600)));
    assert!(created
        .token
        .starts_with(&format!("strait1.{}.", created.id)));
    // The token pins the CA that signs here.
    assert!(created.token.ends_with(&ca().fingerprint().to_hex()));

    let mut mesh = mesh();
    let mut rng = SeededEntropy::new(1);
    let mut token = |site: &str, role, ttl, pki: &dyn Pki| {
        create_token(&mut mesh, pki, site, role, ttl, at(0), &mut rng).unwrap_err()
    };
    let e = token("zz", Role::Gateway, 600, ca());
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("[[sites]]"), "{e}");
    assert_eq!(
        token("a", Role::Gateway, 0, ca()).code,
        ErrorCode::InvalidToken
    );
    let e = token("a", Role::Operator, 600, ca());
    assert!(e.message.contains("gateways and members only"), "{e}");
    assert_eq!(
        token("a", Role::Gateway, 600, &VaultMode).code,
        ErrorCode::Unsupported
    );
}

/// A mesh with gateways `a/gw1` and `b/gw2` registered and online.
fn two_gateways() -> Mesh {
    let mut mesh = mesh();
    register(
        &mut mesh,
        &gateway("a", "gw1"),
        &registration(1, &["10.1.0.0/16"]),
        "01",
        u64::MAX,
        at(0),
    )
    .unwrap();
    register(
        &mut mesh,
        &gateway("b", "gw2"),
        &registration(2, &["10.2.0.0/16"]),
        "02",
        u64::MAX,
        at(0),
    )
    .unwrap();
    mesh
}

#[test]
fn revoking_a_node_removes_it_and_revokes_its_certificates() {
    let mut mesh = two_gateways();
    let before = mesh.version();
    let (revoked, ops) = revoke(&mut mesh, "gw1", at(5)).unwrap();
    assert_eq!(revoked.node, ("a".to_string(), "gw1".to_string()));
    assert_eq!(revoked.serials, ["01"]);
    assert!(matches!(
        &ops[..],
        [StoreOp::DeleteNode { name, .. }, StoreOp::PutRevocation(r), StoreOp::SetVersion(v)]
            if name == "gw1" && r.serial == "01" && r.revoked_at == unix(at(5)) && *v == before + 1
    ));
    assert!(mesh.is_revoked("01"));
    assert!(mesh.views().view(&revoked.node).is_none());
    assert_eq!(
        revoked.response(),
        Response::Revoked {
            node: "a/gw1".into(),
            serials: vec!["01".into()]
        }
    );

    let e = revoke(&mut mesh, "nobody", at(6)).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    register(
        &mut mesh,
        &gateway("a", "gw2"),
        &registration(3, &[]),
        "03",
        u64::MAX,
        at(6),
    )
    .unwrap();
    let e = revoke(&mut mesh, "gw2", at(7)).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("a, b"), "{e}");
    assert_eq!(
        rotate_key_target(&mesh, "b/gw2").unwrap(),
        ("b".to_string(), "gw2".to_string())
    );
    assert_eq!(
        rotate_key_target(&mesh, "gw2").unwrap_err().code,
        ErrorCode::BadRequest
    );
}

#[test]
fn probes_run_between_online_tunnel_peers_within_bounds() {
    let mut mesh = two_gateways();
    let req = |from: &str, to: &str, count| ProbeRequest {
        from: from.into(),
        to: to.into(),
        count,
        interval_ms: 200,
        throughput_secs: None,
    };
    let pair = probe_pair(&mesh, &req("gw1", "b/gw2", 3)).unwrap();
    assert_eq!((pair.a_id.as_str(), pair.b_id.as_str()), ("a/gw1", "b/gw2"));
    let e = probe_pair(&mesh, &req("gw1", "gw2", 1000)).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("count 1000"), "{e}");
    let e = probe_pair(&mesh, &req("gw1", "gw9", 3)).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    // Members have no tunnels of their own.
    let member = strait_pki::Identity::node("prod", "a", "m1", Role::Member).unwrap();
    register(
        &mut mesh,
        &member,
        &registration(4, &[]),
        "04",
        u64::MAX,
        at(0),
    )
    .unwrap();
    let e = probe_pair(&mesh, &req("m1", "gw2", 3)).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("no tunnel"), "{e}");
    // Offline after the heartbeat timeout.
    mesh.tick(unix(at(60)));
    assert_eq!(
        probe_pair(&mesh, &req("gw1", "gw2", 3)).unwrap_err().code,
        ErrorCode::Unavailable
    );
    let key = ("a".to_string(), "gw1".to_string());
    agent_event(
        &mut mesh,
        &key,
        &AgentEvent::Heartbeat { map_version: 1 },
        at(61),
    )
    .unwrap();
    let key = ("b".to_string(), "gw2".to_string());
    agent_event(
        &mut mesh,
        &key,
        &AgentEvent::Heartbeat { map_version: 1 },
        at(61),
    )
    .unwrap();
    probe_pair(&mesh, &req("gw1", "gw2", 3)).unwrap();
}

#[test]
fn read_only_requests_are_answered_from_the_registry() {
    let mesh = two_gateways();
    let Some(Response::Status(s)) = view(&mesh, ca(), &Request::Status) else {
        panic!()
    };
    assert_eq!(
        (s.pki.as_str(), s.nodes_total, s.nodes_online),
        ("builtin", 2, 2)
    );
    let Some(Response::Status(s)) = view(&mesh, &VaultMode, &Request::Status) else {
        panic!()
    };
    assert_eq!(s.pki, "vault");
    assert!(
        matches!(view(&mesh, ca(), &Request::Nodes), Some(Response::Nodes { nodes }) if nodes.len() == 2)
    );
    assert!(
        matches!(view(&mesh, ca(), &Request::Routes), Some(Response::Routes { routes }) if routes.len() == 2)
    );
    assert!(
        matches!(view(&mesh, ca(), &Request::Links), Some(Response::Links { links }) if links.len() == 1)
    );
    assert!(
        matches!(view(&mesh, ca(), &Request::Graph), Some(Response::Graph(g)) if g.links.len() == 1)
    );
    assert!(matches!(
        view(&mesh, ca(), &Request::Policy),
        Some(Response::Policy(_))
    ));
    let Some(Response::Error(e)) = view(
        &mesh,
        ca(),
        &Request::ExternalPeerConfig { name: "dc9".into() },
    ) else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(
        view(&mesh, ca(), &Request::Revoke { node: "gw1".into() }),
        None
    );
    assert_eq!(
        view(
            &mesh,
            ca(),
            &Request::Audit {
                limit: 5,
                before: None
            }
        ),
        None
    );
}

#[test]
fn audit_requests_are_bounded() {
    assert_eq!(audit_limit(0), 1);
    assert_eq!(audit_limit(20), 20);
    assert_eq!(audit_limit(u32::MAX), MAX_AUDIT_ENTRIES);
}
