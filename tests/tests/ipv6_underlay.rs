//! IPv6 underlays with real processes. Root needed; every namespace is this test's own.
//!
//! ```text
//!                +------------------------- inet (router) -------------------------+
//!                | a0 2001:db8:a::1 (192.0.2.1)  c0 2001:db8:c::1  b0 2001:db8:b::1 (203.0.113.1)
//!                +------+--------------------------+----------------------+--------+
//!                       |                          |                      |
//!     gwa 2001:db8:a::10 (192.0.2.10)    coord [2001:db8:c::10]:7443   gwb 2001:db8:b::10 (203.0.113.10)
//!     lan0 10.10.0.1/24, fd10::1/64                                    lan0 10.20.0.1/24, fd20::1/64
//!          |                                                                |
//!     wla 10.10.0.10, fd10::10                                         wlb 10.20.0.10, fd20::10
//! ```
//!
//! - `an_ipv6_only_underlay_carries_ipv4_and_ipv6_workloads`: the gateways and the
//!   coordinator have IPv6 addresses only (the IPv4 ones in brackets are not configured);
//!   IPv4 and IPv6 workload prefixes, ping and TCP both ways, the path's MTU discovered.
//! - `a_dual_stack_peer_fails_over_from_ipv4_to_ipv6`: both families, IPv4 preferred; when
//!   the router stops forwarding IPv4 the tunnel moves to the IPv6 path.

use std::time::{Duration, Instant};

use strait_tests::netns::{lan, veth, Netns};
use strait_tests::procs::{wait_for, Agent, Coordinator, Site};
use strait_tests::traffic;

const SITES: &[Site<'static>] = &[
    Site("aws-use1", "10.10.0.0/16,fd10::/48"),
    Site("gcp-usc1", "10.20.0.0/16,fd20::/48"),
];

/// `ns`'s `inside` linked to the router's `outside`, IPv6 always (`net6`::1 on the router,
/// ::`host` in `ns`, default route through the router), IPv4 too when `net4` is given.
fn uplink(router: &Netns, outside: &str, ns: &Netns, inside: &str, net6: &str, net4: Option<&str>) {
    veth(ns, inside, router, outside);
    router.ip(&[
        "addr",
        "add",
        &format!("{net6}::1/64"),
        "dev",
        outside,
        "nodad",
    ]);
    ns.ip(&[
        "addr",
        "add",
        &format!("{net6}::10/64"),
        "dev",
        inside,
        "nodad",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("{net6}::1"),
    ]);
    if let Some(net4) = net4 {
        router.ip(&["addr", "add", &format!("{net4}.1/24"), "dev", outside]);
        ns.ip(&["addr", "add", &format!("{net4}.10/24"), "dev", inside]);
        ns.ip(&["route", "add", "default", "via", &format!("{net4}.1")]);
    }
}

struct Sites {
    _ns: Vec<Netns>,
    inet: Netns,
    gwa: Netns,
    wla: Netns,
    wlb: Netns,
    _c: Coordinator,
    a: Agent,
    b: Agent,
}

/// Two sites; with `dual`, IPv4 on the uplinks too and each gateway announces its IPv4
/// endpoint as the preferred path (`interconnect`) and its IPv6 one as `public`.
fn sites(tag: &str, dual: bool) -> Sites {
    let inet = Netns::new(&format!("{tag}i"));
    let coord = Netns::new(&format!("{tag}c"));
    let gwa = Netns::new(&format!("{tag}a"));
    let gwb = Netns::new(&format!("{tag}b"));
    let wla = Netns::new(&format!("{tag}wa"));
    let wlb = Netns::new(&format!("{tag}wb"));
    inet.sysctl("net.ipv6.conf.all.forwarding", "1");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "2001:db8:c", None);
    uplink(
        &inet,
        "a0",
        &gwa,
        "up0",
        "2001:db8:a",
        dual.then_some("192.0.2"),
    );
    uplink(
        &inet,
        "b0",
        &gwb,
        "up0",
        "2001:db8:b",
        dual.then_some("203.0.113"),
    );
    lan(&gwa, &wla, "10.10.0", "fd10:0:0:1");
    lan(&gwb, &wlb, "10.20.0", "fd20:0:0:1");

    let addr: std::net::SocketAddr = "[2001:db8:c::10]:7443".parse().unwrap();
    let c = Coordinator::start_in(&coord.name, addr, SITES, "").unwrap();
    let start = |ns: &Netns, site: &str, node: &str, prefixes: &str, v6: &str, v4: &str| {
        let token = c.token(site, "gateway").unwrap();
        let mut args = vec![
            "--prefix".to_string(),
            prefixes.to_string(),
            "--endpoint".to_string(),
            format!("public=[{v6}]:51820"),
            "--probe-interval".to_string(),
            "200ms".to_string(),
            "--metrics-listen".to_string(),
            format!("[{v6}]:9464"),
        ];
        if dual {
            args.push("--endpoint".into());
            args.push(format!("interconnect={v4}:51820"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start_in_netns(&ns.name, addr, site, node, "gateway", &token, &args).unwrap()
    };
    let a = start(
        &gwa,
        "aws-use1",
        "gwa",
        "10.10.0.0/16,fd10::/48",
        "2001:db8:a::10",
        "192.0.2.10",
    );
    let b = start(
        &gwb,
        "gcp-usc1",
        "gwb",
        "10.20.0.0/16,fd20::/48",
        "2001:db8:b::10",
        "203.0.113.10",
    );
    for to in ["10.20.0.10", "fd20:0:0:1::10"] {
        wait_for(
            Duration::from_secs(25),
            &format!("workload A to reach {to}"),
            || (wla.ping_flow(to, 1).1 == 1).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), b.proc.log_text()));
    }
    Sites {
        _ns: vec![coord, gwb],
        inet,
        gwa,
        wla,
        wlb,
        _c: c,
        a,
        b,
    }
}

fn metrics(s: &Sites) -> String {
    let out = s.gwa.exec(&[
        "curl",
        "-s",
        "--max-time",
        "5",
        "http://[2001:db8:a::10]:9464/metrics",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 30 MB TCP transfer (iperf3) from `from` to `to_addr` in `to`; panics if it fails.
fn transfer(from: &Netns, to: &Netns, to_addr: &str, what: &str) {
    traffic::transfer(from, to, to_addr, what, 60).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_ipv6_only_underlay_carries_ipv4_and_ipv6_workloads() {
    let s = sites("v6", false);
    assert!(
        s.gwa
            .ip(&["-4", "addr", "show", "dev", "up0"])
            .trim()
            .is_empty(),
        "gwa has an IPv4 underlay address"
    );
    for (from, to) in [
        (&s.wla, "10.20.0.10"),
        (&s.wla, "fd20:0:0:1::10"),
        (&s.wlb, "10.10.0.10"),
        (&s.wlb, "fd10:0:0:1::10"),
    ] {
        let (sent, got) = from.ping_flow(to, 20);
        assert_eq!(sent, got, "{to}");
    }
    transfer(
        &s.wla,
        &s.wlb,
        "fd20:0:0:1::10",
        "A->B over IPv6, IPv6 workloads",
    );
    transfer(
        &s.wlb,
        &s.wla,
        "10.10.0.10",
        "B->A over IPv6, IPv4 workloads",
    );
    // The path's MTU over IPv6 (the underlay is 1500; IPv6 headers are 40 bytes, so the
    // tunnel carries 1500 - 80).
    let path = r#"{peer="gcp-usc1/gwb",path_kind="public",address="[2001:db8:b::10]:51820"}"#;
    // (Link reports are published every 5 s, and at once when a path MTU changes.)
    wait_for(
        Duration::from_secs(10),
        "the IPv6 path's MTU, in use",
        || {
            let m = metrics(&s);
            (m.contains(&format!("strait_path_mtu_bytes{path} 1500"))
                && m.contains(&format!("strait_path_active{path} 1")))
            .then_some(m)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", metrics(&s)));
    let route = s
        .gwa
        .ip(&["route", "show", "table", "21332", "10.20.0.0/16"]);
    assert!(route.contains("mtu 1420"), "{route}");
    let _ = (&s.inet, &s.a, &s.b);
}

#[test]
fn a_dual_stack_peer_fails_over_from_ipv4_to_ipv6() {
    let s = sites("v46", true);
    let v4 = r#"{peer="gcp-usc1/gwb",path_kind="interconnect",address="203.0.113.10:51820"}"#;
    let v6 = r#"{peer="gcp-usc1/gwb",path_kind="public",address="[2001:db8:b::10]:51820"}"#;
    wait_for(Duration::from_secs(15), "the IPv4 path in use", || {
        metrics(&s)
            .contains(&format!("strait_path_active{v4} 1"))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", metrics(&s)));
    // IPv4 is cut on the router: the tunnel moves to IPv6.
    let out = s.inet.exec(&[
        "nft",
        "add table ip cut; add chain ip cut block { type filter hook forward priority 0; }; add rule ip cut block drop",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    wait_for(Duration::from_secs(10), "the IPv6 path in use", || {
        metrics(&s)
            .contains(&format!("strait_path_active{v6} 1"))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", metrics(&s), s.a.proc.log_text()));
    println!("failover from IPv4 to IPv6 in {:?}", t0.elapsed());
    let (sent, got) = s.wla.ping_flow("10.20.0.10", 50);
    assert_eq!(sent, got, "after the failover");
    transfer(&s.wla, &s.wlb, "10.20.0.10", "A->B after failover to IPv6");
    let _ = &s.b;
}
