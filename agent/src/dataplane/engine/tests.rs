//! The engine with real boringtun tunnels, packets handed between engines in memory.

use super::*;
use crate::dataplane::tunnel::BUFFER;
use crate::paths::probe::{Kind, Probe};

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 253; // experimental protocol: no checksum needed
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(payload);
    p
}

struct Node {
    engine: Engine,
    addr: SocketAddr,
}

#[test]
fn roaming_returns_to_the_selected_path_but_never_jumps_to_another_endpoint() {
    let ic: SocketAddr = "172.31.255.2:51820".parse().unwrap();
    let public: SocketAddr = "203.0.113.10:51820".parse().unwrap();
    let nat: SocketAddr = "172.31.255.5:50487".parse().unwrap();
    let candidates = vec![
        Candidate {
            address: ic,
            kind: strait_proto::msg::EndpointKind::Interconnect,
            cost: 0,
        },
        Candidate {
            address: public,
            kind: strait_proto::msg::EndpointKind::Public,
            cost: 0,
        },
    ];
    let th = Thresholds::for_interval(std::time::Duration::from_secs(1));
    let mut selector = Selector::new(&candidates, th);
    // Only the public path answers: it becomes the active one.
    let t0 = Instant::now();
    let mut now = t0;
    for _ in 0..3 {
        for (to, seq) in selector.due(now) {
            if to == public {
                let recorded = selector.on_reply(seq, now + std::time::Duration::from_millis(1));
                assert!(recorded.is_ok());
            }
        }
        now += th.interval;
        selector.on_tick(now);
    }
    assert_eq!(selector.active(), Some(public));
    let state = PeerState {
        tunnel: Tunnel::new(
            StaticSecret::from([1u8; 32]),
            PublicKey::from(&StaticSecret::from([2u8; 32])),
            None,
            1,
        ),
        spec: PeerSpec {
            public_key: [2u8; 32],
            endpoint: Some(nat),
            allowed_ips: vec![],
            keepalive: None,
            candidates,
            next_public_key: None,
            priority: 0,
        },
        probe_key: ProbeKey::derive(
            &StaticSecret::from([1u8; 32]),
            &PublicKey::from(&StaticSecret::from([2u8; 32])),
        ),
        selector: Some(selector),
        standing: Standing::Primary,
        predecessor: None,
        standby: None,
        kick: false,
        mtu: PeerMtu::default(),
        rejoin: super::Rejoin::new(0),
        rehandshake: false,
        wake: None,
        visiting: false,
        published_up: false,
    };
    assert!(state.may_roam_to(public), "back to the selected path");
    assert!(
        !state.may_roam_to(ic),
        "another announced endpoint: the selector decides"
    );
    assert!(
        state.may_roam_to("198.51.100.7:4000".parse().unwrap()),
        "a new NAT mapping"
    );
}

fn pair() -> (Node, Node) {
    let a_secret = StaticSecret::from([1u8; 32]);
    let b_secret = StaticSecret::from([2u8; 32]);
    let a_pub = *PublicKey::from(&a_secret).as_bytes();
    let b_pub = *PublicKey::from(&b_secret).as_bytes();
    let a_addr: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let b_addr: SocketAddr = "198.51.100.1:51820".parse().unwrap();
    let mut a = Engine::new(a_secret, std::time::Duration::from_secs(1));
    a.set_peers(&[PeerSpec {
        public_key: b_pub,
        endpoint: Some(b_addr),
        allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
        keepalive: None,
        candidates: vec![],
        next_public_key: None,
        priority: 0,
    }]);
    let mut b = Engine::new(b_secret, std::time::Duration::from_secs(1));
    // B does not know A's endpoint (A is behind NAT): it learns it.
    b.set_peers(&[PeerSpec {
        public_key: a_pub,
        endpoint: None,
        allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
        keepalive: None,
        candidates: vec![],
        next_public_key: None,
        priority: 0,
    }]);
    (
        Node {
            engine: a,
            addr: a_addr,
        },
        Node {
            engine: b,
            addr: b_addr,
        },
    )
}

/// Delivers datagrams back and forth until quiet; returns what each side wrote to TUN.
fn exchange(
    a: &mut Node,
    b: &mut Node,
    first: (SocketAddr, Vec<u8>),
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut out = vec![0u8; BUFFER];
    let mut in_flight = vec![(a.addr, first.0, first.1)];
    let (mut tun_a, mut tun_b) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let Some((from, to, bytes)) = in_flight.pop() else {
            break;
        };
        let (node, tun) = if to == b.addr {
            (&mut *b, &mut tun_b)
        } else {
            (&mut *a, &mut tun_a)
        };
        let me = node.addr;
        node.engine.inbound(from, &bytes, &mut out, |e| match e {
            Emit::Network(ep, d) => in_flight.insert(0, (me, ep, d.to_vec())),
            Emit::Tun(p) => tun.push(p.to_vec()),
        });
    }
    (tun_a, tun_b)
}

/// Encrypts `packet` at `from` and delivers it at `to`; what `to` wrote to TUN.
fn send_one(from: &mut Node, to: &mut Node, packet: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; BUFFER];
    let Some((_, d)) = from.engine.outbound(packet, &mut out) else {
        return Vec::new();
    };
    let d = d.to_vec();
    let mut got = Vec::new();
    let from_addr = from.addr;
    to.engine.inbound(from_addr, &d, &mut out, |e| {
        if let Emit::Tun(p) = e {
            got.push(p.to_vec())
        }
    });
    got
}

#[test]
fn a_key_rotation_loses_no_packet_in_either_direction() {
    let (mut a, mut b) = pair();
    let mut out = vec![0u8; BUFFER];
    let a_to_b = |n: u8| ipv4([10, 1, 0, 5], [10, 2, 0, 9], &[n]);
    let b_to_a = |n: u8| ipv4([10, 2, 0, 9], [10, 1, 0, 5], &[n]);
    let (ep, init) = a
        .engine
        .outbound(&a_to_b(0), &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();
    exchange(&mut a, &mut b, (ep, init));
    assert_eq!(send_one(&mut b, &mut a, &b_to_a(1)), vec![b_to_a(1)]);

    // A announces its next key; B's map carries it (a standby tunnel, no route).
    let next = StaticSecret::from([7u8; 32]);
    let next_pub = *PublicKey::from(&next).as_bytes();
    let a_pub = *PublicKey::from(&StaticSecret::from([1u8; 32])).as_bytes();
    let a_addr = a.addr;
    let spec_of_a = |key: [u8; 32], next: Option<[u8; 32]>| PeerSpec {
        public_key: key,
        endpoint: Some(a_addr),
        allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
        keepalive: None,
        candidates: vec![],
        next_public_key: next,
        priority: 0,
    };
    b.engine.set_peers(&[spec_of_a(a_pub, Some(next_pub))]);
    assert_eq!(b.engine.peer_count(), 1);
    // A datagram encrypted under the old session, still in flight after the switch.
    let (_, late) = a
        .engine
        .outbound(&a_to_b(2), &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();

    // A switches. Until its new tunnel has a session, the old session carries traffic.
    a.engine.rotate_own(next);
    assert_eq!(send_one(&mut a, &mut b, &a_to_b(3)), vec![a_to_b(3)]);
    assert_eq!(send_one(&mut b, &mut a, &b_to_a(4)), vec![b_to_a(4)]);
    // The new handshake starts at the next tick; B answers on its standby and promotes it.
    let mut kicked = Vec::new();
    a.engine
        .tick(&mut out, |ep, d| kicked.push((ep, d.to_vec())));
    assert_eq!(kicked.len(), 1, "one handshake initiation");
    exchange(&mut a, &mut b, kicked.remove(0));
    // Both directions work on the new sessions, and the straggler is still decrypted.
    assert_eq!(send_one(&mut a, &mut b, &a_to_b(5)), vec![a_to_b(5)]);
    assert_eq!(send_one(&mut b, &mut a, &b_to_a(6)), vec![b_to_a(6)]);
    let mut got = Vec::new();
    b.engine.inbound(a.addr, &late, &mut out, |e| {
        if let Emit::Tun(p) = e {
            got.push(p.to_vec())
        }
    });
    assert_eq!(got, vec![a_to_b(2)], "in-flight datagram under the old key");
    // B's status shows A under its new key; the map catching up changes nothing.
    assert_eq!(b.engine.status()[0].public_key, next_pub);
    b.engine.set_peers(&[spec_of_a(next_pub, None)]);
    assert_eq!(b.engine.peer_count(), 1);
    assert_eq!(send_one(&mut a, &mut b, &a_to_b(7)), vec![a_to_b(7)]);
    // Retired tunnels go after RETIRE_AFTER; traffic is unaffected.
    let t0 = Instant::now();
    for node in [&mut a, &mut b] {
        node.engine.probe_tick(t0, |_, _| {});
        let just_before = t0 + rotation::RETIRE_AFTER - std::time::Duration::from_millis(1);
        node.engine.probe_tick(just_before, |_, _| {});
        assert_eq!(
            node.engine.peers.len(),
            2,
            "the retiring tunnel stays its time"
        );
        node.engine
            .probe_tick(t0 + rotation::RETIRE_AFTER, |_, _| {});
        assert_eq!(node.engine.peers.len(), 1, "only the primary is left");
    }
    assert_eq!(send_one(&mut b, &mut a, &b_to_a(8)), vec![b_to_a(8)]);
    assert_eq!(send_one(&mut a, &mut b, &a_to_b(9)), vec![a_to_b(9)]);
    // The old key no longer gets in: a handshake under it finds no tunnel.
    assert!(!b.engine.by_key.contains_key(&a_pub));
}

#[test]
fn a_peer_that_never_uses_its_announced_key_keeps_its_tunnel() {
    let (mut a, mut b) = pair();
    let mut out = vec![0u8; BUFFER];
    let (ep, init) = a
        .engine
        .outbound(&ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"x"), &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();
    exchange(&mut a, &mut b, (ep, init));
    let a_pub = *PublicKey::from(&StaticSecret::from([1u8; 32])).as_bytes();
    let mut spec = PeerSpec {
        public_key: a_pub,
        endpoint: Some(a.addr),
        allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
        keepalive: None,
        candidates: vec![],
        next_public_key: Some([9u8; 32]),
        priority: 0,
    };
    b.engine.set_peers(std::slice::from_ref(&spec));
    assert_eq!(b.engine.peers.len(), 2, "primary and standby");
    // The announcement is withdrawn (the agent restarted): the standby goes.
    spec.next_public_key = None;
    b.engine.set_peers(std::slice::from_ref(&spec));
    assert_eq!(b.engine.peers.len(), 1);
    let p = ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"y");
    assert_eq!(send_one(&mut a, &mut b, &p), vec![p]);
}

#[test]
fn packets_cross_after_a_handshake_and_the_nat_side_is_learned() {
    let (mut a, mut b) = pair();
    let mut out = vec![0u8; BUFFER];
    let packet = ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"ping");
    let (ep, init) = a
        .engine
        .outbound(&packet, &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();
    assert_eq!(ep, b.addr);
    let (_, tun_b) = exchange(&mut a, &mut b, (ep, init));
    assert!(
        tun_b.contains(&packet),
        "queued packet delivered after the handshake"
    );
    // B learned A's endpoint from the authenticated handshake and can answer.
    let reply = ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"pong");
    let (ep, data) = b
        .engine
        .outbound(&reply, &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();
    assert_eq!(ep, a.addr);
    let mut got = Vec::new();
    a.engine.inbound(b.addr, &data, &mut out, |e| {
        if let Emit::Tun(p) = e {
            got.push(p.to_vec())
        }
    });
    assert_eq!(got, vec![reply]);
    // No route: dropped.
    assert!(a
        .engine
        .outbound(&ipv4([10, 1, 0, 5], [172, 16, 0, 1], b"x"), &mut out)
        .is_none());
}

/// A peer without probing (no candidates): the key of secret `[seed; 32]`, reached at
/// `endpoint`, carrying `prefix`.
fn unprobed(seed: u8, endpoint: SocketAddr, prefix: &str) -> PeerSpec {
    PeerSpec {
        public_key: *PublicKey::from(&StaticSecret::from([seed; 32])).as_bytes(),
        endpoint: Some(endpoint),
        allowed_ips: vec![prefix.parse().unwrap()],
        keepalive: None,
        candidates: vec![],
        next_public_key: None,
        priority: 0,
    }
}

#[test]
fn idle_peers_are_visited_about_once_a_second_and_a_new_session_is_published_at_the_next_pass() {
    let (mut a, mut b) = pair();
    // 30 more peers without probing (external WireGuard devices), never answering.
    let mut specs = vec![unprobed(2, b.addr, "10.2.0.0/16")];
    for i in 0..30u8 {
        let endpoint = SocketAddr::from(([203, 0, 113, i], 51820));
        specs.push(unprobed(100 + i, endpoint, &format!("10.50.{i}.0/24")));
    }
    a.engine.set_peers(&specs);
    let pass = std::time::Duration::from_millis(20);
    let mut now = Instant::now();
    let mut emitted = 0;
    let mut out = vec![0u8; BUFFER];
    let mut init = None;
    // 4 s of passes, 200 of them, as the shell runs them: each peer visited at its first
    // passes (until its first handshake is started), then once a second.
    for _ in 0..200 {
        a.engine.probe_tick(now, |_, _| emitted += 1);
        a.engine.start_handshakes(&mut out, |to, d| {
            if to == b.addr {
                init.get_or_insert_with(|| d.to_vec());
            }
        });
        assert_eq!(a.engine.up_peers_changed(), None, "nobody is up");
        now += pass;
    }
    let visits = a.engine.visits;
    assert!(
        (31 * 4..=31 * 6).contains(&visits),
        "{visits} visits of 31 peers in 200 passes"
    );
    assert_eq!(emitted, 0, "peers without probing are sent no probes");
    // A session with B (the handshake A started at its first pass): published as up at
    // the next pass, not at B's next visit.
    let init = init.expect("a handshake was started toward B");
    let to = b.addr;
    exchange(&mut a, &mut b, (to, init));
    a.engine.probe_tick(now, |_, _| {});
    let b_key = specs[0].public_key;
    assert_eq!(a.engine.up_peers_changed(), Some(vec![b_key]));
    assert_eq!(a.engine.up_peers_changed(), None);
    // A peer removed: published at once.
    a.engine.set_peers(&specs[1..]);
    a.engine.probe_tick(now + pass, |_, _| {});
    assert_eq!(a.engine.up_peers_changed(), Some(vec![]));
}

#[test]
fn a_peer_cannot_send_from_addresses_it_does_not_own() {
    let (mut a, mut b) = pair();
    let mut out = vec![0u8; BUFFER];
    let first = ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"hello");
    let (ep, init) = a
        .engine
        .outbound(&first, &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();
    exchange(&mut a, &mut b, (ep, init));
    // A spoofs an inner source in B's own range: B must drop it.
    let spoofed = ipv4([10, 2, 0, 1], [10, 2, 0, 9], b"spoof");
    a.engine.set_peers(&[unprobed(2, b.addr, "10.2.0.0/16")]);
    let (_, data) = a
        .engine
        .outbound(&spoofed, &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();
    let mut delivered = 0;
    b.engine.inbound(a.addr, &data, &mut out, |e| {
        if matches!(e, Emit::Tun(p) if !p.is_empty()) {
            delivered += 1
        }
    });
    assert_eq!(delivered, 0, "spoofed inner source delivered");
    // Removing the peer drops its traffic; the session of others is untouched.
    b.engine.set_peers(&[]);
    assert_eq!(b.engine.peer_count(), 0);
}

#[test]
fn the_receiving_engine_enforces_its_policy_and_lets_replies_to_its_own_flows_in() {
    use crate::dataplane::access::packet::build::{ports, v4};
    use crate::dataplane::access::packet::TCP;
    use strait_proto::access::{AccessPolicy, AccessRule, Action, Source};
    let (mut a, mut b) = pair();
    let mut out = vec![0u8; BUFFER];
    let tcp = |src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16| {
        v4(src, dst, TCP, &ports(TCP, sport, dport))
    };
    let (ep, init) = a
        .engine
        .outbound(&ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"x"), &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();
    exchange(&mut a, &mut b, (ep, init));
    // B lets site a open tcp/443 and nothing else; A lets nothing in.
    let net = |s: &str| s.parse::<IpNetwork>().unwrap();
    let web = AccessPolicy {
        default: Action::Deny,
        rules: vec![AccessRule {
            name: "web".into(),
            action: Action::Allow,
            from: vec![Source::Site("a".into())],
            to: vec![net("10.2.0.0/16")],
            to_node: false,
            services: vec!["tcp/443".parse().unwrap()],
        }],
    };
    b.engine.set_access(std::sync::Arc::new(Filter::compile(
        &web,
        &[("a".into(), vec![net("10.1.0.0/16")])],
        None,
    )));
    let closed = AccessPolicy {
        default: Action::Deny,
        rules: vec![],
    };
    a.engine.set_access(std::sync::Arc::new(Filter::compile(
        &closed,
        &[("b".into(), vec![net("10.2.0.0/16")])],
        None,
    )));
    let (a_host, b_host) = ([10, 1, 0, 5], [10, 2, 0, 9]);
    let open = tcp(a_host, 40000, b_host, 443);
    assert_eq!(send_one(&mut a, &mut b, &open), vec![open.clone()]);
    // A sends anyway what B's policy refuses (A does not filter): B drops it.
    let ssh = tcp(a_host, 40001, b_host, 22);
    assert_eq!(send_one(&mut a, &mut b, &ssh), Vec::<Vec<u8>>::new());
    // B's answer on the flow A opened reaches A; a flow B opens does not.
    let answer = tcp(b_host, 443, a_host, 40000);
    assert_eq!(send_one(&mut b, &mut a, &answer), vec![answer.clone()]);
    let back = tcp(b_host, 5555, a_host, 22);
    assert_eq!(send_one(&mut b, &mut a, &back), Vec::<Vec<u8>>::new());
    let drops = |n: &mut Node| {
        n.engine
            .take_access_report()
            .unwrap()
            .drops
            .into_iter()
            .map(|d| (d.site, d.reason, d.packets))
            .collect::<Vec<_>>()
    };
    assert_eq!(drops(&mut b), vec![("a".into(), "default".into(), 1)]);
    assert_eq!(drops(&mut a), vec![("b".into(), "default".into(), 1)]);
}

#[test]
fn probes_choose_the_endpoint_and_ignore_forgeries() {
    use crate::paths::select::Health;
    use strait_proto::msg::EndpointKind;
    let (mut a, mut b) = pair();
    let b_pub = *PublicKey::from(&StaticSecret::from([2u8; 32])).as_bytes();
    let inside: SocketAddr = "10.2.0.1:51820".parse().unwrap();
    a.engine.set_peers(&[PeerSpec {
        public_key: b_pub,
        endpoint: Some(b.addr),
        allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
        keepalive: None,
        candidates: vec![
            Candidate {
                address: b.addr,
                kind: EndpointKind::Public,
                cost: 0,
            },
            // B's address on its own LAN, inside the prefixes the tunnel carries: probed
            // too (the marked socket takes the underlay), but it never answers here.
            Candidate {
                address: inside,
                kind: EndpointKind::Private,
                cost: 0,
            },
        ],
        next_public_key: None,
        priority: 0,
    }]);
    let t0 = Instant::now();
    for round in 0..3u32 {
        let now = t0 + std::time::Duration::from_secs(u64::from(round));
        let mut requests = Vec::new();
        a.engine
            .probe_tick(now, |to, d| requests.push((to, d.to_vec())));
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert!(requests.iter().any(|(to, _)| *to == inside));
        let mut replies = Vec::new();
        for (_, req) in requests.iter().filter(|(to, _)| *to == b.addr) {
            let outcome = b
                .engine
                .on_probe(a.addr, req, now, |to, d| replies.push((to, d.to_vec())));
            assert_eq!(outcome, ProbeOutcome::Answered);
        }
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, a.addr, "answered on the path it came in on");
        // A forged reply (a third node's key) and a replay of a real one change nothing.
        let forged = probe::encode(
            &Probe {
                kind: Kind::Reply,
                sender: probe::id_of(&PublicKey::from(&StaticSecret::from([2u8; 32]))),
                seq: 1,
            },
            &ProbeKey::derive(
                &StaticSecret::from([9u8; 32]),
                &PublicKey::from(&StaticSecret::from([1u8; 32])),
            ),
        );
        let before = a.engine.paths();
        let outcome = a
            .engine
            .on_probe(b.addr, &forged, now, |_, _| panic!("answered a reply"));
        assert_eq!(outcome, ProbeOutcome::Refused(ProbeRefusal::BadMac));
        assert_eq!(a.engine.paths(), before);
        // A probe naming no peer, and one reflected back to its sender (it names A).
        let mut stranger = forged;
        stranger[4..12].copy_from_slice(b"stranger");
        let reflected = &requests[0].1;
        for d in [&stranger[..], reflected] {
            let outcome = a.engine.on_probe(b.addr, d, now, |_, _| panic!("answered"));
            assert_eq!(outcome, ProbeOutcome::Refused(ProbeRefusal::UnknownSender));
        }
        assert_eq!(a.engine.paths(), before);
        let later = now + std::time::Duration::from_millis(2);
        let outcome = a.engine.on_probe(b.addr, &replies[0].1, later, |_, _| {});
        assert_eq!(outcome, ProbeOutcome::Recorded);
        let after = a.engine.paths();
        let outcome = a.engine.on_probe(b.addr, &replies[0].1, later, |_, _| {});
        assert_eq!(outcome, ProbeOutcome::Refused(ProbeRefusal::NotInFlight));
        assert_eq!(a.engine.paths(), after, "a replayed reply counted");
    }
    let paths = a.engine.paths();
    assert_eq!(paths.len(), 1);
    let report = &paths[0].1;
    assert_eq!(report.len(), 2, "{report:?}");
    let public = report.iter().find(|p| p.address == b.addr).unwrap();
    assert_eq!(public.health, Health::Up);
    assert!(public.active);
    let lan = report.iter().find(|p| p.address == inside).unwrap();
    assert!(lan.health != Health::Up && !lan.active, "{lan:?}");
}

/// A with two peers (B1, B2: the gateways of one site) carrying the same prefix, each with
/// one probed path; probes are exchanged in memory unless the peer is `cut`.
#[test]
fn flows_spread_over_a_sites_gateways_and_leave_one_whose_probes_fail() {
    use crate::dataplane::access::packet::build::{ports, v4};
    use crate::dataplane::access::packet::UDP;
    let secret = |n: u8| StaticSecret::from([n; 32]);
    let public = |n: u8| *PublicKey::from(&secret(n)).as_bytes();
    let addr = |n: u8| -> SocketAddr { format!("198.51.100.{n}:51820").parse().unwrap() };
    let interval = std::time::Duration::from_millis(200);
    let candidate = |n: u8| Candidate {
        address: addr(n),
        kind: strait_proto::msg::EndpointKind::Public,
        cost: 0,
    };
    let spec = |n: u8, allowed: &str, with_path: bool| PeerSpec {
        public_key: public(n),
        endpoint: Some(addr(n)),
        allowed_ips: vec![allowed.parse().unwrap()],
        keepalive: None,
        candidates: if with_path {
            vec![candidate(n)]
        } else {
            vec![]
        },
        next_public_key: None,
        priority: 0,
    };
    let mut a = Engine::new(secret(1), interval);
    a.set_peers(&[spec(2, "10.2.0.0/16", true), spec(3, "10.2.0.0/16", true)]);
    let mut gws: Vec<(u8, Engine)> = [2u8, 3]
        .into_iter()
        .map(|n| {
            let mut e = Engine::new(secret(n), interval);
            e.set_peers(&[spec(1, "10.1.0.0/16", true)]);
            (n, e)
        })
        .collect();
    let carriers: Vec<u32> = {
        let mut v: Vec<u32> = a.table.lookup("10.2.0.9".parse().unwrap()).unwrap().clone();
        v.sort_unstable();
        v
    };
    assert_eq!(carriers.len(), 2, "both gateways carry the prefix");
    let key_of = |e: &Engine, idx: u32| e.peers[&idx].spec.public_key;
    let chosen = |a: &Engine| -> std::collections::BTreeMap<[u8; 32], usize> {
        let mut m = std::collections::BTreeMap::new();
        for port in 0..200u16 {
            let p = v4(
                [10, 1, 0, 5],
                [10, 2, 0, 9],
                UDP,
                &ports(UDP, 20000 + port, 53),
            );
            let idx = a.carrier(&carriers, &p).unwrap();
            // One flow, one gateway, as long as health does not change.
            assert_eq!(a.carrier(&carriers, &p), Some(idx));
            *m.entry(key_of(a, idx)).or_default() += 1;
        }
        m
    };
    // `rounds` intervals of probes and WireGuard timers, every datagram delivered between A
    // and the gateways; gateways in `cut` get nothing and send nothing, and those in
    // `no_wg` get and send probes only (their WireGuard messages are lost).
    let mut now = Instant::now();
    let mut run =
        |a: &mut Engine, gws: &mut Vec<(u8, Engine)>, rounds: usize, cut: &[u8], no_wg: &[u8]| {
            let mut out = vec![0u8; BUFFER];
            for _ in 0..rounds {
                // (from, to, datagram)
                let mut queue: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
                a.probe_tick(now, |to, b| queue.push((addr(1), to, b.to_vec())));
                a.tick(&mut out, |to, b| queue.push((addr(1), to, b.to_vec())));
                for (n, gw) in gws.iter_mut() {
                    gw.tick(&mut out, |to, b| queue.push((addr(*n), to, b.to_vec())));
                }
                for _ in 0..100 {
                    let Some((from, to, bytes)) = queue.pop() else {
                        break;
                    };
                    let gw_end = if to == addr(1) { from } else { to };
                    let Some(n) = (2u8..=3).find(|n| addr(*n) == gw_end) else {
                        continue;
                    };
                    let probe = bytes.first() == Some(&b'S');
                    if cut.contains(&n) || (!probe && no_wg.contains(&n)) {
                        continue;
                    }
                    let at = now + std::time::Duration::from_millis(1);
                    let node = if to == addr(1) {
                        &mut *a
                    } else {
                        &mut gws.iter_mut().find(|(m, _)| *m == n).unwrap().1
                    };
                    let mut sent = Vec::new();
                    if probe {
                        node.on_probe(from, &bytes, at, |ep, r| sent.push((to, ep, r.to_vec())));
                    } else {
                        node.inbound(from, &bytes, &mut out, |e| {
                            if let Emit::Network(ep, d) = e {
                                sent.push((to, ep, d.to_vec()));
                            }
                        });
                    }
                    queue.extend(sent);
                }
                now += interval;
            }
        };
    // Nothing is up before the first probes: nothing to publish.
    assert_eq!(a.up_peers_changed(), None);
    run(&mut a, &mut gws, 4, &[], &[]);
    let mut up_both = vec![public(2), public(3)];
    up_both.sort_unstable();
    assert_eq!(a.up_peers(), up_both);
    // The shell publishes the peers up when they change, and only then.
    assert_eq!(a.up_peers_changed(), Some(up_both.clone()));
    assert_eq!(a.up_peers_changed(), None);
    let both = chosen(&a);
    assert_eq!(both.len(), 2, "flows use both gateways: {both:?}");
    assert!(both.values().all(|n| *n > 50), "{both:?}");
    // B3's path stops answering: within 3 lost probes (0.6-0.8 s at 200 ms) it carries
    // nothing, and B2 carries every flow.
    run(&mut a, &mut gws, 4, &[3], &[]);
    assert!(!a.peer_reachable(&public(3)));
    assert_eq!(a.up_peers(), vec![public(2)]);
    assert_eq!(a.up_peers_changed(), Some(vec![public(2)]));
    let one = chosen(&a);
    assert_eq!(one.into_keys().collect::<Vec<_>>(), vec![public(2)]);
    // B3's probes answer again but its handshakes are lost (its agent restarted and is not
    // ready, say): reachable, yet no flow goes back and it is not up for BGP.
    run(&mut a, &mut gws, 4, &[], &[3]);
    assert!(a.peer_reachable(&public(3)));
    assert_eq!(a.up_peers(), vec![public(2)]);
    assert_eq!(a.up_peers_changed(), None, "reachable is not up");
    assert_eq!(
        chosen(&a).into_keys().collect::<Vec<_>>(),
        vec![public(2)],
        "flows moved back before a new handshake"
    );
    // The handshake A started when the path came back is retried after REJOIN_RETRY and
    // completes: flows spread again and B3 is up.
    run(&mut a, &mut gws, 6, &[], &[]);
    assert_eq!(a.up_peers(), up_both);
    assert_eq!(a.up_peers_changed(), Some(up_both.clone()));
    assert_eq!(chosen(&a).len(), 2);
    // A peer without probing (no announced endpoint) counts as reachable, and as up
    // with a recent handshake: no change to publish.
    a.set_peers(&[spec(2, "10.2.0.0/16", true), spec(3, "10.2.0.0/16", false)]);
    assert!(a.peer_reachable(&public(3)));
    assert_eq!(a.up_peers_changed(), None);
    // A peer that goes is published at once.
    a.set_peers(&[spec(2, "10.2.0.0/16", true)]);
    assert_eq!(a.up_peers_changed(), Some(vec![public(2)]));
}

/// Path MTU discovery between two engines over a simulated path that drops datagrams
/// larger than 1280 bytes (outer IPv4 packets; no ICMP): A finds 1280, reports it per path,
/// and refuses a packet larger than the tunnel then carries, with the MTU to report.
#[test]
fn size_probes_find_the_path_mtu_and_oversized_packets_are_refused() {
    use strait_proto::msg::EndpointKind;
    let (mut a, mut b) = pair();
    let b_pub = *PublicKey::from(&StaticSecret::from([2u8; 32])).as_bytes();
    a.engine.set_peers(&[PeerSpec {
        public_key: b_pub,
        endpoint: Some(b.addr),
        allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
        keepalive: None,
        candidates: vec![Candidate {
            address: b.addr,
            kind: EndpointKind::Public,
            cost: 0,
        }],
        next_public_key: None,
        priority: 0,
    }]);
    let t0 = Instant::now();
    // No ceiling known yet: no size probes.
    let mut sent = Vec::new();
    a.engine.probe_tick(t0, |to, d| sent.push((to, d.len())));
    assert!(
        sent.iter().all(|(_, len)| *len == probe::PROBE_LEN),
        "{sent:?}"
    );
    a.engine.set_ceilings(&[(b.addr, 1500)], t0);
    let path = 1280usize;
    let mut now = t0;
    let mut largest_sent = 0;
    for _ in 0..200 {
        now += std::time::Duration::from_millis(50);
        let mut out = Vec::new();
        a.engine.probe_tick(now, |to, d| out.push((to, d.to_vec())));
        for (_, d) in out {
            // Outer size: IPv4 20 + UDP 8 + payload.
            let size = d.len() + 28;
            largest_sent = largest_sent.max(size);
            if size > path {
                continue;
            }
            let mut replies = Vec::new();
            b.engine
                .on_probe(a.addr, &d, now, |to, r| replies.push((to, r.to_vec())));
            for (_, r) in replies {
                assert_eq!(r.len(), probe::PROBE_LEN, "a reply is never larger");
                a.engine.on_probe(b.addr, &r, now, |_, _| {});
            }
        }
    }
    assert_eq!(largest_sent, 1500, "the interface's MTU is probed");
    let paths = a.engine.paths();
    assert_eq!(paths[0].1[0].mtu, Some(1280), "{paths:?}");
    let limit = 1280 - 60;
    assert_eq!(a.engine.peer_mtus(), vec![(b_pub, Some(limit))]);
    // The shell publishes the status when a limit changes (here: since none was
    // published), and not again until the next change.
    assert!(a.engine.peer_mtus_changed());
    assert!(!a.engine.peer_mtus_changed());
    let mut out = vec![0u8; BUFFER];
    let big = ipv4(
        [10, 1, 0, 5],
        [10, 2, 0, 9],
        &vec![0u8; usize::from(limit) - 19],
    );
    assert_eq!(
        a.engine.outbound_checked(&big, &mut out),
        Outbound::TooBig(limit)
    );
    let fits = ipv4(
        [10, 1, 0, 5],
        [10, 2, 0, 9],
        &vec![0u8; usize::from(limit) - 20],
    );
    assert_ne!(
        a.engine.outbound_checked(&fits, &mut out),
        Outbound::TooBig(limit)
    );
    // With an explicit MTU the operator's figure wins: nothing is refused for size.
    a.engine.set_enforce_mtu(false);
    assert_ne!(
        a.engine.outbound_checked(&big, &mut out),
        Outbound::TooBig(limit)
    );
    assert!(!a.engine.peer_mtus_changed());
    // The peer goes: a change.
    a.engine.set_peers(&[]);
    assert!(a.engine.peer_mtus_changed());
    assert!(!a.engine.peer_mtus_changed());
}

#[test]
fn a_gateway_answers_carry_queries_by_its_tunnels_state_and_refuses_forgeries() {
    use crate::paths::carry::{self, CarryError, Query};
    let (mut a, mut b) = pair();
    let member = StaticSecret::from([7u8; 32]);
    let member_pub = *PublicKey::from(&member).as_bytes();
    let a_pub = PublicKey::from(&StaticSecret::from([1u8; 32]));
    let key = ProbeKey::derive(&member, &a_pub);
    let lan: SocketAddr = "10.1.0.9:40000".parse().unwrap();
    let now = Instant::now();
    let prefixes: Vec<IpNetwork> = ["10.2.0.0/16", "10.9.0.0/16", "10.0.0.0/8"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let ask = |a: &mut Node, seq: u64, key: &ProbeKey| {
        let wire = carry::encode_query(
            &Query {
                member: member_pub,
                seq,
                prefixes: prefixes.clone(),
            },
            key,
        );
        let mut sent = Vec::new();
        let outcome = a
            .engine
            .on_carry_query(lan, &wire, now, |to, d| sent.push((to, d.to_vec())));
        (outcome, sent)
    };
    // No session with B yet: A carries nothing.
    let (outcome, sent) = ask(&mut a, 1, &key);
    assert_eq!(outcome, CarryOutcome::Answered);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, lan, "answered to the sender");
    let answer = carry::decode_answer(&sent[0].1, &key).unwrap();
    assert_eq!((answer.seq, answer.carries), (1, vec![false, false, false]));
    // After a handshake with B: B's prefix, and any prefix overlapping it.
    let mut out = vec![0u8; BUFFER];
    let packet = ipv4([10, 1, 0, 9], [10, 2, 0, 1], b"x");
    let (ep, init) = a
        .engine
        .outbound(&packet, &mut out)
        .map(|(e, d)| (e, d.to_vec()))
        .unwrap();
    let (_, tun_b) = exchange(&mut a, &mut b, (ep, init));
    assert!(tun_b.contains(&packet), "handshake completed");
    let (_, sent) = ask(&mut a, 3, &key);
    let answer = carry::decode_answer(&sent[0].1, &key).unwrap();
    assert_eq!(answer.carries, vec![true, false, true]);
    // A query under the member's key but signed by someone else: refused, unanswered.
    let stranger = ProbeKey::derive(&StaticSecret::from([8u8; 32]), &a_pub);
    let (outcome, sent) = ask(&mut a, 4, &stranger);
    assert_eq!(outcome, CarryOutcome::Refused(CarryError::Mac));
    assert!(sent.is_empty());
    // A flood of queries under made-up keys: only so many keys derived per second; the
    // known member is still answered.
    let mut limited = 0;
    for i in 0..(super::carry::DERIVATIONS_PER_SECOND + 50) {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k[31] = 0x40;
        let fake = StaticSecret::from(k);
        let wire = carry::encode_query(
            &Query {
                member: *PublicKey::from(&fake).as_bytes(),
                seq: 1,
                prefixes: prefixes.clone(),
            },
            &ProbeKey::derive(&fake, &a_pub),
        );
        if a.engine.on_carry_query(lan, &wire, now, |_, _| {}) == CarryOutcome::Limited {
            limited += 1;
        }
    }
    assert!(limited >= 50, "{limited} limited");
    let (outcome, _) = ask(&mut a, 5, &key);
    assert_eq!(outcome, CarryOutcome::Answered);
}
