//! Replays the fuzz corpus (`fuzz/corpus/frames/`) through the same checks as the fuzzer, so
//! plain `cargo test` catches a regression on any input the fuzzer ever found interesting.
//! See `fuzz/README.md` for running the fuzzer itself.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use strait_proto::access::{self, AccessDrop, AccessPolicy, AccessRule, Source};
use strait_proto::frame;
use strait_proto::fuzzing;
use strait_proto::map::{NetworkMap, PeerKind, PeerView, RouteView, SelfView};
use strait_proto::msg::*;
use strait_proto::probe::{Action, Command, ProbeEvent, ProbeRequest};
use strait_proto::Role;

#[test]
fn fuzz_corpus_replays_cleanly() {
    fuzzing::replay_corpus("frames", fuzzing::frames);
}

/// Writes the seed inputs into the corpus. Run by hand when the messages change:
/// `cargo test -p strait-proto --test fuzz_corpus -- --ignored write_seed_corpus`,
/// then let the fuzzer grow the corpus and minimize it (see `fuzz/README.md`).
#[test]
#[ignore = "writes fuzz/corpus/frames; run by hand"]
fn write_seed_corpus() {
    for (name, ctrl, frames) in seeds() {
        let mut data = vec![ctrl];
        for f in frames {
            data.extend(f);
        }
        fuzzing::write_seed("frames", name, &data, fuzzing::frames);
    }
}

fn enc<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    frame::encode(msg).unwrap()
}

fn endpoint(addr: &str, kind: EndpointKind, cost: Option<u32>) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        kind,
        cost,
    }
}

fn peer(id: &str, online: bool) -> PeerView {
    let (site, name) = id.split_once('/').unwrap();
    PeerView {
        id: id.into(),
        site: site.into(),
        name: name.into(),
        kind: if site == "external" {
            PeerKind::External
        } else {
            PeerKind::Agent
        },
        role: (site != "external").then_some(Role::Gateway),
        wg_public_key: "mKk2zv7bQv0yUaXwRr2oJtR6uJ0nH3o1nVZ9kqUu3Xo=".into(),
        next_wg_public_key: None,
        endpoints: vec![endpoint(
            "198.51.100.7:51820",
            EndpointKind::Public,
            Some(10),
        )],
        allowed_ips: vec![
            "100.64.0.2/32".parse().unwrap(),
            "10.2.0.0/16".parse().unwrap(),
        ],
        overlay_ip: Some(Ipv4Addr::new(100, 64, 0, 2)),
        online,
        priority: 0,
    }
}

fn map(version: u64, peers: &[PeerView], with_route: bool) -> NetworkMap {
    let mut routes = BTreeMap::new();
    if with_route {
        let prefix = "10.3.0.0/16".parse().unwrap();
        routes.insert(
            prefix,
            RouteView {
                prefix,
                site: "gcp-euw1".into(),
                via: "aws-use1/gw".into(),
                via_address: "10.1.0.10".parse().unwrap(),
            },
        );
    }
    NetworkMap {
        version,
        mesh: "prod".into(),
        node: SelfView {
            site: "aws-use1".into(),
            name: "gw".into(),
            role: Role::Gateway,
            overlay_ip: Ipv4Addr::new(100, 64, 0, 1),
            overlay_cidr: "100.64.0.0/10".parse().unwrap(),
            accepted: vec!["10.1.0.0/16".parse().unwrap()],
            refused: vec![refusal()],
            next_wg_public_key: None,
            fail_closed: vec!["10.2.0.0/16".parse().unwrap()],
            translations: vec![],
            local_gateways: vec![],
        },
        peers: peers.iter().map(|p| (p.id.clone(), p.clone())).collect(),
        routes,
        access: Default::default(),
    }
}

/// A site's access policy: default deny, web from one site, no DNS from a prefix.
fn access_policy() -> AccessPolicy {
    AccessPolicy {
        default: access::Action::Deny,
        rules: vec![
            AccessRule {
                name: "web".into(),
                action: access::Action::Allow,
                from: vec![Source::Site("gcp-euw1".into())],
                to: vec![
                    "10.1.0.0/16".parse().unwrap(),
                    "fd00:1::/48".parse().unwrap(),
                ],
                to_node: true,
                services: vec!["tcp/443".parse().unwrap(), "icmp".parse().unwrap()],
            },
            AccessRule {
                name: "rule-2".into(),
                action: access::Action::Deny,
                from: vec![Source::Prefix("10.2.1.0/24".parse().unwrap())],
                to: vec!["10.1.5.0/24".parse().unwrap()],
                to_node: false,
                services: vec!["udp/53-54".parse().unwrap(), "any".parse().unwrap()],
            },
        ],
    }
}

fn refusal() -> Refusal {
    Refusal {
        prefix: "10.9.0.0/16".into(),
        reason: "overlaps aws-use1".into(),
    }
}

fn node_info() -> NodeInfo {
    NodeInfo {
        site: "aws-use1".into(),
        name: "gw".into(),
        role: Role::Gateway,
        next_wg_public_key: None,
        overlay_ip: Ipv4Addr::new(100, 64, 0, 1),
        wg_public_key: "k".into(),
        endpoints: vec![
            endpoint("10.1.0.10:51820", EndpointKind::Private, None),
            endpoint("[2001:db8::1]:51820", EndpointKind::Interconnect, Some(1)),
        ],
        prefixes: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()],
        global_prefixes: vec![],
        refused: vec![refusal()],
        route_conflicts: vec![],
        agent_version: "0.1.0".into(),
        online: true,
        last_seen: 1_700_000_000,
        cert_not_after: 1_700_086_400,
        cert_serial: "0a1b2c".into(),
        map_version: 7,
    }
}

fn link() -> LinkInfo {
    LinkInfo {
        a: "aws-use1/gw".into(),
        b: "external/office".into(),
        kind: "tunnel".into(),
        state: "up".into(),
        path: None,
        rtt_ms: None,
        jitter_ms: None,
        loss: None,
        mtu: None,
        handshake_age_secs: None,
        tx_bytes: None,
        rx_bytes: None,
        throughput_mbps: Some(940.5),
        throughput_at: Some(1_700_000_000),
    }
}

/// (name, chunking byte, frames)
fn seeds() -> Vec<(&'static str, u8, Vec<Vec<u8>>)> {
    let registration = Registration {
        wg_public_key: "mKk2zv7bQv0yUaXwRr2oJtR6uJ0nH3o1nVZ9kqUu3Xo=".into(),
        endpoints: vec![
            endpoint("192.0.2.1:51820", EndpointKind::Public, None),
            endpoint("10.1.0.10:51820", EndpointKind::Private, Some(5)),
        ],
        prefixes: vec!["10.1.0.0/16".parse().unwrap()],
        agent_version: "0.1.0".into(),
        have_version: Some(3),
        priority: 0,
    };
    let m1 = map(1, &[peer("gcp-euw1/gw", true)], false);
    let m2 = map(
        2,
        &[peer("gcp-euw1/gw", false), peer("external/office", true)],
        true,
    );
    let m3 = map(3, &[peer("external/office", true)], true);
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    vec![
        // Requests.
        ("req-status", 0, vec![enc(&Request::Status)]),
        (
            "req-enroll",
            7,
            vec![enc(&Request::Enroll(EnrollRequest {
                token: "strait1.abc.def".into(),
                site: "aws-use1".into(),
                node: "gw".into(),
                role: Role::Gateway,
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n".into(),
            }))],
        ),
        (
            "req-subscribe",
            0,
            vec![enc(&Request::Subscribe(registration.clone()))],
        ),
        (
            "req-operator",
            1,
            vec![
                enc(&Request::CreateToken {
                    site: "aws-use1".into(),
                    role: Role::Member,
                    ttl_secs: 600,
                }),
                enc(&Request::Revoke {
                    node: "aws-use1/gw".into(),
                }),
                enc(&Request::ExternalPeerConfig {
                    name: "office".into(),
                }),
                enc(&Request::Renew {
                    csr_pem: "csr".into(),
                }),
                enc(&Request::Nodes),
                enc(&Request::Graph),
            ],
        ),
        // Responses.
        (
            "resp-enrolled",
            0,
            vec![enc(&Response::Enrolled {
                cert_pem: pem.into(),
                ca_pem: pem.into(),
            })],
        ),
        (
            "resp-status",
            200,
            vec![enc(&Response::Status(MeshStatus {
                mesh: "prod".into(),
                map_version: 12,
                pki: "builtin".into(),
                coordinator_version: "0.1.0".into(),
                nodes_total: 3,
                nodes_online: 2,
                revoked_certificates: 1,
                refused_prefixes: 0,
                sites: vec![SiteInfo {
                    name: "aws-use1".into(),
                    cloud: "aws".into(),
                    region: "us-east-1".into(),
                    prefixes: vec!["10.1.0.0/16".parse().unwrap()],
                    global_prefixes: vec![],
                    full_mesh: false,
                    nodes: 2,
                    online: 2,
                    gateways: 1,
                }],
            }))],
        ),
        (
            "resp-nodes-routes",
            16,
            vec![
                enc(&Response::Nodes {
                    nodes: vec![node_info()],
                }),
                enc(&Response::Routes {
                    routes: vec![RouteInfo {
                        prefix: "10.2.0.0/16".into(),
                        site: "gcp-euw1".into(),
                        node: "gw".into(),
                        status: "refused".into(),
                        global: None,
                        reason: Some("overlap".into()),
                    }],
                }),
            ],
        ),
        (
            "resp-graph",
            0,
            vec![
                enc(&Response::Links {
                    links: vec![link()],
                }),
                enc(&Response::Graph(GraphView {
                    mesh: "prod".into(),
                    sites: vec![GraphSite {
                        name: "aws-use1".into(),
                        cloud: "aws".into(),
                        region: "us-east-1".into(),
                        prefixes: vec![],
                        global_prefixes: vec![],
                        nodes: vec![GraphNode {
                            id: "aws-use1/gw".into(),
                            name: "gw".into(),
                            role: "gateway".into(),
                            online: true,
                        }],
                    }],
                    links: vec![link()],
                })),
            ],
        ),
        (
            "resp-misc",
            3,
            vec![
                enc(&Response::Token(TokenCreated {
                    token: "strait1.x.y".into(),
                    id: "t1".into(),
                    site: "aws-use1".into(),
                    role: Role::Member,
                    expires_at: 1_700_000_600,
                })),
                enc(&Response::Revoked {
                    node: "aws-use1/gw".into(),
                    serials: vec!["0a".into(), "0b".into()],
                }),
                enc(&Response::ExternalPeerConfig {
                    config: "[Interface]\nPrivateKey = ...\n".into(),
                }),
                enc(&Response::Error(ErrorBody::new(
                    ErrorCode::PermissionDenied,
                    "operators only",
                ))),
            ],
        ),
        // A session: registration, a snapshot, deltas, closing.
        (
            "session",
            5,
            vec![
                enc(&SessionEvent::Registered(Registered {
                    overlay_ip: Ipv4Addr::new(100, 64, 0, 1),
                    refused: vec![refusal()],
                })),
                enc(&SessionEvent::Snapshot(m1.clone())),
                enc(&SessionEvent::Delta(m1.diff(&m2))),
                enc(&SessionEvent::Delta(m2.diff(&m3))),
                enc(&SessionEvent::Closing(ErrorBody::new(
                    ErrorCode::Revoked,
                    "certificate revoked",
                ))),
            ],
        ),
        (
            "session-resnapshot",
            0,
            vec![
                enc(&SessionEvent::Snapshot(m2.clone())),
                enc(&SessionEvent::Snapshot(m3.clone())),
                enc(&SessionEvent::Delta(m1.diff(&m2))),
            ],
        ),
        // The access policy: in a snapshot and a delta, reported drops, straitctl policy.
        (
            "access",
            6,
            vec![
                enc(&SessionEvent::Snapshot({
                    let mut m = m3.clone();
                    m.access = access_policy();
                    m
                })),
                enc(&SessionEvent::Delta(m2.diff(&{
                    let mut m = m3.clone();
                    m.access = access_policy();
                    m
                }))),
                enc(&AgentEvent::LinkReport {
                    peers: vec![],
                    access_drops: vec![AccessDrop {
                        site: "gcp-euw1".into(),
                        reason: "default".into(),
                        packets: 12,
                    }],
                    bgp: None,
                }),
                enc(&Request::Policy),
                enc(&Response::Policy(access::PolicyView {
                    default: access::Action::Deny,
                    rules: vec![access::RuleView {
                        name: "web".into(),
                        action: access::Action::Allow,
                        from: vec!["gcp-euw1".into()],
                        to: vec!["aws-use1".into()],
                        services: vec!["tcp/8000-8100".parse().unwrap()],
                    }],
                    since_version: 4,
                    nodes: vec![access::NodeDrops {
                        node: "aws-use1/gw".into(),
                        online: true,
                        map_version: 4,
                        rules: 2,
                        drops: vec![],
                    }],
                })),
            ],
        ),
        // Agent events.
        (
            "agent-events",
            2,
            vec![
                enc(&AgentEvent::Heartbeat { map_version: 3 }),
                enc(&AgentEvent::RouteConflicts {
                    conflicts: vec![refusal()],
                }),
            ],
        ),
        // Operators' probes: the request, the commands agents get, the events they send.
        (
            "probes",
            3,
            vec![
                enc(&Request::Probe(ProbeRequest {
                    from: "aws-use1/gw".into(),
                    to: "gcp-usc1/gw".into(),
                    count: 5,
                    interval_ms: 1000,
                    throughput_secs: Some(5),
                })),
                enc(&SessionEvent::Command(Command {
                    id: 7,
                    action: Action::ThroughputSend {
                        to: "100.64.0.2:40000".parse().unwrap(),
                        nonce: "00112233445566778899aabbccddeeff".into(),
                        secs: 5,
                    },
                })),
                enc(&AgentEvent::Probe {
                    id: 7,
                    event: ProbeEvent::Pong {
                        seq: 1,
                        kind: EndpointKind::Interconnect,
                        address: "172.31.255.2:51820".parse().unwrap(),
                        active: true,
                        rtt_us: 412,
                    },
                }),
                enc(&Response::Probe {
                    node: "aws-use1/gw".into(),
                    event: ProbeEvent::Throughput {
                        bytes: 1 << 30,
                        elapsed_ms: 5012,
                    },
                }),
                enc(&Response::ProbeDone),
            ],
        ),
        // Framing edge cases.
        ("empty-frame", 1, vec![vec![0, 0, 0, 0]]),
        ("oversized", 0, vec![vec![0, 1, 0, 1, b'{']]),
        ("truncated", 4, vec![enc(&Request::Status)[..9].to_vec()]),
        (
            "other-version",
            0,
            vec![frame_of(br#"{"v":2,"msg":{"type":"status"}}"#)],
        ),
    ]
}

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}
