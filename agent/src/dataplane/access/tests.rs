use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_proto::access::{AccessRule, Action, Service, Source};

use super::packet::build::{icmp, ports, v4, v6};
use super::packet::{ICMP, ICMPV6};
use super::*;

const OWN: [u8; 4] = [100, 64, 0, 2];

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// Node B's peers: site a's gateway and site c's.
fn peers() -> Vec<(String, Vec<IpNetwork>)> {
    vec![
        (
            "a".into(),
            vec![net("100.64.0.1/32"), net("10.1.0.0/16"), net("fd00:1::/48")],
        ),
        (
            "c".into(),
            vec![net("100.64.0.3/32"), net("10.3.0.0/16"), net("fd00:3::/48")],
        ),
    ]
}

fn rule(
    name: &str,
    action: Action,
    from: Vec<Source>,
    to: &[&str],
    services: &[&str],
) -> AccessRule {
    AccessRule {
        name: name.into(),
        action,
        from,
        to: to.iter().map(|p| net(p)).collect(),
        to_node: false,
        services: services.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

/// Default deny; a may open tcp/443 and ICMP to b (its prefixes and the node); c's
/// 10.3.1.0/24 may not send DNS to b, and the rest of c may reach 10.2.5.0/24 at all.
fn deny_policy() -> AccessPolicy {
    let mut web = rule(
        "web",
        Action::Allow,
        vec![Source::Site("a".into())],
        &["10.2.0.0/16", "fd00:2::/48"],
        &["tcp/443", "icmp"],
    );
    web.to_node = true;
    AccessPolicy {
        default: Action::Deny,
        rules: vec![
            web,
            rule(
                "no-c-dns",
                Action::Deny,
                vec![Source::Prefix(net("10.3.1.0/24"))],
                &["10.2.0.0/16"],
                &["udp/53"],
            ),
            rule(
                "c-any",
                Action::Allow,
                vec![Source::Site("c".into())],
                &["10.2.5.0/24"],
                &["any"],
            ),
        ],
    }
}

fn access(policy: &AccessPolicy) -> Access {
    let mut a = Access::default();
    a.set_filter(Arc::new(Filter::compile(
        policy,
        &peers(),
        Some(Ipv4Addr::from(OWN)),
    )));
    a
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    v4(src, dst, TCP, &ports(TCP, sport, dport))
}

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    v4(src, dst, UDP, &ports(UDP, sport, dport))
}

fn drops(a: &Access) -> Vec<(String, String, u64)> {
    a.report()
        .drops
        .into_iter()
        .map(|d| (d.site, d.reason, d.packets))
        .collect()
}

fn d(site: &str, reason: &str, n: u64) -> (String, String, u64) {
    (site.into(), reason.into(), n)
}

const A_HOST: [u8; 4] = [10, 1, 0, 5];
const B_HOST: [u8; 4] = [10, 2, 0, 9];

#[test]
fn without_a_policy_everything_passes_and_nothing_is_kept() {
    let mut a = access(&AccessPolicy::default());
    assert!(a.filter().allows_all());
    for p in [
        tcp(A_HOST, 1000, B_HOST, 22),
        udp([10, 3, 1, 7], 1000, B_HOST, 53),
        vec![0x45, 0, 0],
    ] {
        assert!(a.inbound(&p));
        a.outbound(&p);
    }
    assert_eq!(a.report(), AccessReport::default());
}

#[test]
fn rules_decide_in_order_by_site_prefix_protocol_and_port() {
    let mut a = access(&deny_policy());
    // Allowed: a to b's prefix and to the node itself on tcp/443, ICMP, over IPv4 and IPv6.
    assert!(a.inbound(&tcp(A_HOST, 40000, B_HOST, 443)));
    assert!(a.inbound(&tcp([100, 64, 0, 1], 40000, OWN, 443)));
    assert!(a.inbound(&v4(
        A_HOST,
        B_HOST,
        ICMP,
        &icmp(8, 0, [0, 1, 0, 1], b"ping")
    )));
    let v6_443 = v6("fd00:1::5", "fd00:2::9", TCP, &ports(TCP, 40000, 443));
    assert!(a.inbound(&v6_443));
    // Refused by the default: another port, UDP to the allowed port, another destination.
    assert!(!a.inbound(&tcp(A_HOST, 40000, B_HOST, 22)));
    assert!(!a.inbound(&udp(A_HOST, 40000, B_HOST, 443)));
    assert!(!a.inbound(&v6("fd00:1::5", "fd00:2::9", UDP, &ports(UDP, 1, 443))));
    assert!(!a.inbound(&tcp(A_HOST, 40000, [100, 64, 0, 9], 443)));
    // c: DNS from 10.3.1.0/24 is refused by the first rule that matches, though the next
    // one would allow it; the rest of c reaches 10.2.5.0/24 with anything.
    assert!(!a.inbound(&udp([10, 3, 1, 7], 999, [10, 2, 5, 1], 53)));
    assert!(a.inbound(&udp([10, 3, 2, 7], 999, [10, 2, 5, 1], 53)));
    assert!(a.inbound(&v4([10, 3, 2, 7], [10, 2, 5, 1], 47, &[0; 4])));
    assert!(!a.inbound(&udp([10, 3, 2, 7], 999, [10, 2, 6, 1], 53)));
    // A source in no rule's sites or prefixes (a site with no peer here).
    assert!(!a.inbound(&tcp([10, 9, 0, 1], 1, B_HOST, 443)));
    assert_eq!(
        drops(&a),
        vec![
            d("-", "default", 1),
            d("a", "default", 4),
            d("c", "default", 1),
            d("c", "no-c-dns", 1),
        ]
    );
}

#[test]
fn replies_to_flows_this_node_sent_pass_until_they_go_idle() {
    let mut a = access(&deny_policy());
    let t0 = Instant::now();
    a.tick(t0);
    // b's host opens TCP to a:8080 and asks a's DNS server; a's answers pass, others not.
    a.outbound(&tcp(B_HOST, 50000, A_HOST, 8080));
    a.outbound(&udp(B_HOST, 50001, A_HOST, 53));
    assert!(a.inbound(&tcp(A_HOST, 8080, B_HOST, 50000)));
    assert!(a.inbound(&udp(A_HOST, 53, B_HOST, 50001)));
    assert!(
        !a.inbound(&tcp(A_HOST, 8081, B_HOST, 50000)),
        "another port"
    );
    assert!(
        !a.inbound(&tcp(A_HOST, 8080, B_HOST, 50002)),
        "another local port"
    );
    assert!(
        !a.inbound(&udp(A_HOST, 8080, B_HOST, 50000)),
        "UDP is not TCP"
    );
    assert!(
        !a.inbound(&tcp([10, 3, 0, 1], 8080, B_HOST, 50000)),
        "another host"
    );
    // IPv6 too.
    a.outbound(&v6("fd00:2::9", "fd00:1::5", UDP, &ports(UDP, 5000, 5001)));
    assert!(a.inbound(&v6("fd00:1::5", "fd00:2::9", UDP, &ports(UDP, 5001, 5000))));
    // UDP goes idle after UDP_IDLE; TCP lasts longer; a packet sent refreshes a flow.
    a.tick(t0 + Duration::from_secs(u64::from(UDP_IDLE)));
    assert!(!a.inbound(&udp(A_HOST, 53, B_HOST, 50001)));
    assert!(a.inbound(&tcp(A_HOST, 8080, B_HOST, 50000)));
    a.outbound(&tcp(B_HOST, 50000, A_HOST, 8080));
    a.tick(t0 + Duration::from_secs(u64::from(UDP_IDLE + TCP_IDLE - 1)));
    assert!(a.inbound(&tcp(A_HOST, 8080, B_HOST, 50000)));
    a.tick(t0 + Duration::from_secs(u64::from(UDP_IDLE + TCP_IDLE)));
    assert!(!a.inbound(&tcp(A_HOST, 8080, B_HOST, 50000)));
    assert_eq!(a.report().flows, 3);
}

#[test]
fn icmp_echo_replies_and_errors_about_own_flows_pass() {
    let mut a = access(&deny_policy());
    // c may not send ICMP to 10.2.0.0/16 (only to 10.2.5.0/24).
    let c_host = [10, 3, 0, 7];
    a.outbound(&v4(
        B_HOST,
        c_host,
        ICMP,
        &icmp(8, 0, [0x42, 0x42, 0, 1], b"ping"),
    ));
    assert!(a.inbound(&v4(
        c_host,
        B_HOST,
        ICMP,
        &icmp(0, 0, [0x42, 0x42, 0, 1], b"ping")
    )));
    let other_id = v4(c_host, B_HOST, ICMP, &icmp(0, 0, [0x42, 0x43, 0, 1], b""));
    assert!(!a.inbound(&other_id), "another id");
    let request = v4(c_host, B_HOST, ICMP, &icmp(8, 0, [0x42, 0x42, 0, 1], b""));
    assert!(!a.inbound(&request), "a request");
    // Errors quoting a packet b sent (fragmentation needed, from a router of c's), and
    // one quoting an echo request b sent.
    let sent = udp(B_HOST, 40000, c_host, 9999);
    a.outbound(&sent);
    let router = [10, 3, 0, 1];
    assert!(a.inbound(&v4(
        router,
        B_HOST,
        ICMP,
        &icmp(3, 4, [0, 0, 5, 0x78], &sent[..28])
    )));
    let echo = v4(B_HOST, c_host, ICMP, &icmp(8, 0, [0x42, 0x42, 0, 1], b""));
    assert!(a.inbound(&v4(router, B_HOST, ICMP, &icmp(11, 0, [0; 4], &echo))));
    // Errors quoting what b did not send, or sent to another host than the quote's source.
    let other = udp(B_HOST, 40001, c_host, 9999);
    assert!(!a.inbound(&v4(router, B_HOST, ICMP, &icmp(3, 3, [0; 4], &other[..28]))));
    assert!(!a.inbound(&v4(
        router,
        [10, 2, 0, 10],
        ICMP,
        &icmp(3, 3, [0; 4], &sent[..28])
    )));
    let short = v4(router, B_HOST, ICMP, &icmp(3, 3, [0; 4], &sent[..22]));
    assert!(!a.inbound(&short), "too short a quote");
    // IPv6: packet too big about a TCP flow to c, from a router of c's.
    let sent6 = v6("fd00:2::9", "fd00:3::5", TCP, &ports(TCP, 40000, 8443));
    let ptb = v6(
        "fd00:3::1",
        "fd00:2::9",
        ICMPV6,
        &icmp(2, 0, [0, 0, 5, 0], &sent6),
    );
    assert!(!a.inbound(&ptb), "before b sent anything");
    a.outbound(&sent6);
    assert!(a.inbound(&ptb));
    // An echo reply from a passes by the rule (ICMP is allowed from a) anyway.
    assert!(a.inbound(&v6(
        "fd00:1::5",
        "fd00:2::9",
        ICMPV6,
        &icmp(129, 0, [0, 9, 0, 1], b"")
    )));
    assert_eq!(drops(&a), vec![d("c", "default", 6)]);
}

#[test]
fn deny_rules_under_a_default_allow_spare_replies() {
    let policy = AccessPolicy {
        default: Action::Allow,
        rules: vec![
            rule(
                "no-ssh",
                Action::Deny,
                vec![Source::Site("a".into())],
                &["10.2.0.0/16"],
                &["tcp/22"],
            ),
            rule(
                "no-udp",
                Action::Deny,
                vec![Source::Site("a".into())],
                &["10.2.0.0/16"],
                &["udp"],
            ),
        ],
    };
    let mut a = access(&policy);
    assert!(!a.inbound(&tcp(A_HOST, 50000, B_HOST, 22)));
    assert!(a.inbound(&tcp(A_HOST, 50000, B_HOST, 80)));
    assert!(!a.inbound(&udp(A_HOST, 53, B_HOST, 40000)));
    // b asks a's DNS server: the answer passes although the rule refuses UDP from a.
    a.outbound(&udp(B_HOST, 40000, A_HOST, 53));
    assert!(a.inbound(&udp(A_HOST, 53, B_HOST, 40000)));
    assert_eq!(drops(&a), vec![d("a", "no-ssh", 1), d("a", "no-udp", 1)]);
}

#[test]
fn unreadable_packets_are_dropped_as_malformed() {
    let mut a = access(&deny_policy());
    // Keepalives (empty) pass; a truncated header is dropped as malformed.
    assert!(a.inbound(&[]));
    let p = tcp(A_HOST, 40000, B_HOST, 443);
    assert!(!a.inbound(&p[..22]));
    assert!(!a.inbound(&[0x45]));
    assert_eq!(
        drops(&a),
        vec![d("-", "malformed", 1), d("a", "malformed", 1)]
    );
}

/// A fragment of datagram `id`: the first (with `transport`) or one at byte offset 800.
fn fragment(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, first: Option<&[u8]>) -> Vec<u8> {
    let mut p = v4(src, dst, proto, first.unwrap_or(&[0u8; 64]));
    p[4..6].copy_from_slice(&id.to_be_bytes());
    let flags: u16 = if first.is_some() { 0x2000 } else { 100 };
    p[6..8].copy_from_slice(&flags.to_be_bytes());
    p
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut a = access(&deny_policy());
    let t0 = Instant::now();
    a.tick(t0);
    // Datagram 7 to tcp/443 is allowed: its first fragment passes, and so do the others.
    let web = ports(TCP, 40000, 443);
    assert!(a.inbound(&fragment(A_HOST, B_HOST, TCP, 7, Some(&web))));
    assert!(a.inbound(&fragment(A_HOST, B_HOST, TCP, 7, None)));
    // Datagram 9 to tcp/22 is not, nor its other fragments; nor those of a datagram whose
    // first fragment never came, or came from another host.
    let ssh = ports(TCP, 40000, 22);
    assert!(!a.inbound(&fragment(A_HOST, B_HOST, TCP, 9, Some(&ssh))));
    assert!(!a.inbound(&fragment(A_HOST, B_HOST, TCP, 9, None)));
    assert!(!a.inbound(&fragment(A_HOST, B_HOST, TCP, 8, None)));
    assert!(!a.inbound(&fragment([10, 1, 0, 6], B_HOST, TCP, 7, None)));
    // A fragmented reply to a flow b sent (a large DNS answer).
    a.outbound(&udp(B_HOST, 50000, A_HOST, 53));
    let answer = ports(UDP, 53, 50000);
    assert!(a.inbound(&fragment(A_HOST, B_HOST, UDP, 11, Some(&answer))));
    assert!(a.inbound(&fragment(A_HOST, B_HOST, UDP, 11, None)));
    // Remembered for FRAGMENT_IDLE only.
    a.tick(t0 + Duration::from_secs(u64::from(FRAGMENT_IDLE)));
    assert!(!a.inbound(&fragment(A_HOST, B_HOST, TCP, 7, None)));
    assert_eq!(drops(&a), vec![d("a", "default", 5)]);
    // A rule for a whole protocol (no port range) covers fragments by themselves.
    let any_udp = AccessPolicy {
        default: Action::Deny,
        rules: vec![rule(
            "udp",
            Action::Allow,
            vec![Source::Site("a".into())],
            &["10.2.0.0/16"],
            &["udp"],
        )],
    };
    let mut a = access(&any_udp);
    assert!(a.inbound(&fragment(A_HOST, B_HOST, UDP, 12, None)));
    assert!(!a.inbound(&fragment(A_HOST, B_HOST, TCP, 12, None)));
}

#[test]
fn counts_survive_a_new_filter_and_reports_come_when_something_changed() {
    let mut a = access(&deny_policy());
    assert!(a.take_report().is_some(), "a new filter is news");
    assert!(a.take_report().is_none());
    a.inbound(&tcp(A_HOST, 1, B_HOST, 22));
    let r = a.take_report().unwrap();
    assert_eq!((r.rules, r.drops.len()), (3, 1));
    // The policy changes (rules renumbered, a site added to the peers): counts are kept by
    // name and add up.
    let mut p = deny_policy();
    p.rules.remove(1);
    let mut peers = peers();
    peers.insert(0, ("d".into(), vec![net("10.4.0.0/16")]));
    a.set_filter(Arc::new(Filter::compile(
        &p,
        &peers,
        Some(Ipv4Addr::from(OWN)),
    )));
    a.inbound(&tcp(A_HOST, 1, B_HOST, 22));
    a.inbound(&tcp([10, 4, 0, 1], 1, B_HOST, 22));
    assert_eq!(drops(&a), vec![d("a", "default", 2), d("d", "default", 1)]);
    assert_eq!(a.take_report().unwrap().rules, 2);
}

#[test]
fn a_filter_knows_the_map_it_was_compiled_from() {
    use strait_proto::map::{PeerKind, PeerView, SelfView};
    let mut map = NetworkMap {
        version: 1,
        mesh: "prod".into(),
        node: SelfView {
            site: "b".into(),
            name: "gw".into(),
            role: strait_proto::Role::Gateway,
            overlay_ip: Ipv4Addr::from(OWN),
            overlay_cidr: net("100.64.0.0/10"),
            accepted: vec![],
            refused: vec![],
            next_wg_public_key: None,
            fail_closed: vec![],
            translations: vec![],
            local_gateways: vec![],
        },
        peers: Default::default(),
        routes: Default::default(),
        access: deny_policy(),
    };
    map.peers.insert(
        "a/gw".into(),
        PeerView {
            id: "a/gw".into(),
            site: "a".into(),
            name: "gw".into(),
            kind: PeerKind::Agent,
            role: None,
            wg_public_key: "k".into(),
            next_wg_public_key: None,
            endpoints: vec![],
            allowed_ips: peers()[0].1.clone(),
            overlay_ip: None,
            online: true,
            priority: 0,
        },
    );
    let f = Filter::for_map(&map);
    assert!(f.is_for(&map));
    let mut a = Access::default();
    a.set_filter(Arc::new(f.clone()));
    assert!(
        a.inbound(&tcp([100, 64, 0, 1], 1, OWN, 443)),
        "to the node itself"
    );
    map.version = 2;
    assert!(f.is_for(&map), "the version alone changes nothing");
    map.access.rules.pop();
    assert!(!f.is_for(&map));
    let f = Filter::for_map(&map);
    map.peers.get_mut("a/gw").unwrap().allowed_ips.pop();
    assert!(!f.is_for(&map));
    // Another protocol is covered by `any` only, over IPv6 as over IPv4.
    let h = packet::parse(&v6("fd00:1::5", "fd00:2::9", 132, &[0; 8])).unwrap();
    let f = Facts::of(&h);
    assert!(!f.served_by(&Service::Icmp.into()) && f.served_by(&Service::Any.into()));
    let udp_any: Service = "udp".parse().unwrap();
    assert!(!f.served_by(&udp_any.into()));
}

#[test]
fn what_recent_flows_got_never_outlives_the_policy_or_the_flow() {
    let mut a = access(&deny_policy());
    let t0 = Instant::now();
    a.tick(t0);
    let web = tcp(A_HOST, 40000, B_HOST, 443);
    assert!(
        a.inbound(&web) && a.inbound(&web),
        "allowed, then from the cache"
    );
    // The rule goes: the flow's next packet is judged again.
    let mut p = deny_policy();
    p.rules.remove(0);
    a.set_filter(Arc::new(Filter::compile(
        &p,
        &peers(),
        Some(Ipv4Addr::from(OWN)),
    )));
    assert!(!a.inbound(&web));
    // A reply passes from the cache while its flow lives, and not after.
    a.outbound(&udp(B_HOST, 50001, A_HOST, 53));
    let answer = udp(A_HOST, 53, B_HOST, 50001);
    assert!(a.inbound(&answer) && a.inbound(&answer));
    a.tick(t0 + Duration::from_secs(u64::from(UDP_IDLE)));
    assert!(!a.inbound(&answer));
    // Sending again within the same second refreshes nothing new, but a later second does.
    a.outbound(&udp(B_HOST, 50001, A_HOST, 53));
    a.outbound(&udp(B_HOST, 50001, A_HOST, 53));
    assert!(a.inbound(&answer));
    a.tick(t0 + Duration::from_secs(u64::from(2 * UDP_IDLE) - 1));
    a.outbound(&udp(B_HOST, 50001, A_HOST, 53));
    a.tick(t0 + Duration::from_secs(u64::from(2 * UDP_IDLE) + 1));
    assert!(
        a.inbound(&answer),
        "refreshed a second before it would have gone"
    );
    assert_eq!(
        drops(&a),
        vec![d("a", "default", 2)],
        "the rule-less web packet and the late answer"
    );
}

#[test]
fn arbitrary_bytes_never_panic_and_unreadable_ones_never_pass() {
    // Real packets with bytes flipped and cut, and plain noise, through both directions.
    let mut a = access(&deny_policy());
    a.tick(Instant::now());
    let seeds = [
        tcp(A_HOST, 40000, B_HOST, 443),
        udp(B_HOST, 50000, A_HOST, 53),
        v4(
            A_HOST,
            B_HOST,
            ICMP,
            &icmp(3, 4, [0; 4], &udp(B_HOST, 1, A_HOST, 2)[..28]),
        ),
        v6(
            "fd00:1::5",
            "fd00:2::9",
            44,
            &[TCP, 0, 0, 1, 0, 0, 0, 7, 0x9c, 0x40, 1, 187],
        ),
        v6(
            "fd00:3::1",
            "fd00:2::9",
            ICMPV6,
            &icmp(
                2,
                0,
                [0; 4],
                &v6("fd00:2::9", "fd00:3::5", UDP, &ports(UDP, 1, 2)),
            ),
        ),
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..200_000u64 {
        let mut p = if i % 10 == 0 {
            (0..next() % 80).map(|_| next() as u8).collect()
        } else {
            seeds[(next() % seeds.len() as u64) as usize].clone()
        };
        for _ in 0..next() % 4 {
            if !p.is_empty() {
                let at = (next() % p.len() as u64) as usize;
                p[at] = next() as u8;
            }
        }
        if next() % 3 == 0 {
            p.truncate((next() % (p.len() as u64 + 1)) as usize);
        }
        a.outbound(&p);
        let passed = a.inbound(&p);
        if passed && !p.is_empty() {
            assert!(
                packet::parse(&p).is_some(),
                "an unreadable packet passed: {p:?}"
            );
        }
    }
}
