//! A member (a node with an agent but no tunnels) spreads its traffic for another site over
//! both gateways of its own site, by their answers to its carry queries, and leaves one
//! that fails within a second, with the coordinator stopped (root; in network namespaces
//! this test creates, all deleted at the end).
//!
//! ```text
//!   +------------------------ minet (internet router, counts leaks) ------------------+
//!   | c0 198.51.100.1/24     a1 192.0.2.1/28     a2 192.0.2.17/28     b0 203.0.113.1/24 |
//!   +-----+------------------+-------------------+--------------------+---------------+
//!         |                  |                   |                    |
//!   mcoord .10          mga1 192.0.2.10     mga2 192.0.2.20       mgb 203.0.113.10
//!   (the member reaches the coordinator on a3 192.0.2.33/28, its up0 .40)
//!   coordinator         gateway aws-use1    gateway aws-use1      gateway gcp-usc1
//!   (stopped for        lan0 10.10.0.11     lan0 10.10.0.12       lan0 10.20.0.1/24
//!    the cuts)               |                   |                    |
//!                       +----+---- mlan: bridge br0 (site A's LAN) ---+   mwb 10.20.0.10
//!                       |                                                  (workload, UDP echo)
//!                  mma 10.10.0.20 (member agent)
//! ```
//!
//! Checked: the member's kernel route to site B is a multipath route over both gateways;
//! UDP flows from the member cross both gateways (counted on each), one flow stays on one;
//! with the coordinator stopped, the gateway carrying a 10 ms ping flow is cut three ways
//! (its tunnel only, with the site network up; its uplink; `kill -9` of its agent): the
//! ping flow's interruption must stay under 1 s, and when the gateway returns at most 2
//! pings go unanswered; no packet for a site's prefix crosses the internet router
//! unencrypted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_tests::flows::{
    echo_server, longest_silence, lost_after, ping_flow, udp_flows, unix_now,
};
use strait_tests::kernel::{count_leaks, cut_tunnel, leaked, nft, nft_counters, restore_tunnel};
use strait_tests::netns::{uplink, veth, Netns};
use strait_tests::procs::{wait_for, Agent, Coordinator, Site};

const SITES: &[Site<'static>] = &[
    Site("aws-use1", "10.10.0.0/16"),
    Site("gcp-usc1", "10.20.0.0/16"),
];
const MEMBER: &str = "10.10.0.20";
const WORKLOAD: &str = "10.20.0.10";

/// The member's next hops for site B's prefix, from Strait's routing table.
fn member_next_hops(member: &Netns) -> Vec<String> {
    // Before the agent installed anything the table does not exist yet.
    let out = member.exec(&[
        "ip",
        "-4",
        "route",
        "show",
        "table",
        "21332",
        "10.20.0.0/16",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut hops: Vec<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    hops.sort();
    hops
}

/// Counts, on a gateway, what the member sends to site B through it (forwarded from the
/// site network): UDP and ICMP echo requests.
fn count_member_traffic(gw: &Netns) {
    nft(
        gw,
        &format!(
            "add table inet ms; add chain inet ms pass {{ type filter hook forward priority 0 ; }} ; \
             add rule inet ms pass ip saddr {MEMBER} ip daddr {WORKLOAD} udp dport 7 counter ; \
             add rule inet ms pass ip saddr {MEMBER} ip daddr {WORKLOAD} icmp type echo-request counter"
        ),
    );
}

/// [udp, icmp] packets the gateway forwarded from the member so far.
fn member_traffic(gw: &Netns) -> [u64; 2] {
    let counts = nft_counters(gw, "inet ms pass");
    assert_eq!(counts.len(), 2, "{counts:?}");
    [counts[0], counts[1]]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// UDP 51820 dropped both ways on the gateway's uplink; the uplink and the site
    /// network stay up (the member's queries are still answered).
    Tunnel,
    /// The gateway's uplink down.
    Uplink,
    /// `kill -9` of the gateway's agent.
    Kill,
}

struct Gateway {
    ns: Netns,
    agent: Option<Agent>,
    node: &'static str,
    lan: &'static str,
    upstream: &'static str,
    args: Vec<String>,
}

#[test]
fn a_member_spreads_over_its_sites_gateways_and_leaves_a_failed_one_within_a_second() {
    let inet = Netns::new("minet");
    let coord = Netns::new("mcoord");
    let lan = Netns::new("mlan");
    let member = Netns::new("mma");
    let gwb = Netns::new("mgb");
    let wlb = Netns::new("mwb");
    inet.sysctl("net.ipv4.ip_forward", "1");
    // Per-flow spreading on the member: the kernel hashes ports too.
    member.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    uplink(&gwb, "lan0", &wlb, "eth0", "10.20.0", "10");
    // Site A's network: one bridge the gateways and the member hang off.
    lan.ip(&["link", "add", "br0", "type", "bridge"]);
    lan.ip(&["link", "set", "br0", "up"]);
    veth(&member, "eth0", &lan, "pm");
    lan.ip(&["link", "set", "pm", "master", "br0"]);
    member.ip(&["addr", "add", &format!("{MEMBER}/24"), "dev", "eth0"]);

    let addr: SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let mut c = Coordinator::start_in(&coord.name, addr, SITES, "").unwrap();
    // The member's own way to the coordinator (not through a gateway, so that cutting one
    // does not cut the member's control session).
    veth(&member, "up0", &inet, "a3");
    inet.ip(&["addr", "add", "192.0.2.33/28", "dev", "a3"]);
    member.ip(&["addr", "add", "192.0.2.40/28", "dev", "up0"]);
    member.ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.33"]);

    let tb = c.token("gcp-usc1", "gateway").unwrap();
    let _b = Agent::start_in_netns(
        &gwb.name,
        addr,
        "gcp-usc1",
        "gwb",
        "gateway",
        &tb,
        &[
            "--prefix",
            "10.20.0.0/16",
            "--endpoint",
            "public=203.0.113.10:51820",
            "--probe-interval",
            "100ms",
        ],
    )
    .unwrap();
    let mut gws = Vec::new();
    for (i, (tag, node, up, upstream, lan_ip)) in [
        ("mga1", "gwa1", "192.0.2.10/28", "192.0.2.1", "10.10.0.11"),
        ("mga2", "gwa2", "192.0.2.20/28", "192.0.2.17", "10.10.0.12"),
    ]
    .into_iter()
    .enumerate()
    {
        let ns = Netns::new(tag);
        let router_if = format!("a{}", i + 1);
        veth(&ns, "up0", &inet, &router_if);
        inet.ip(&["addr", "add", &format!("{upstream}/28"), "dev", &router_if]);
        ns.ip(&["addr", "add", up, "dev", "up0"]);
        ns.ip(&["route", "add", "default", "via", upstream]);
        let port = format!("p{}", i + 1);
        veth(&ns, "lan0", &lan, &port);
        lan.ip(&["link", "set", &port, "master", "br0"]);
        ns.ip(&["addr", "add", &format!("{lan_ip}/24"), "dev", "lan0"]);
        count_member_traffic(&ns);
        let public = up.split('/').next().unwrap();
        let args = vec![
            "--prefix".to_string(),
            "10.10.0.0/16".into(),
            "--endpoint".into(),
            format!("public={public}:51820"),
            "--endpoint".into(),
            format!("private={lan_ip}:51820"),
            "--probe-interval".into(),
            "100ms".into(),
        ];
        let token = c.token("aws-use1", "gateway").unwrap();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent =
            Agent::start_in_netns(&ns.name, addr, "aws-use1", node, "gateway", &token, &argv)
                .unwrap();
        gws.push(Gateway {
            ns,
            agent: Some(agent),
            node,
            lan: lan_ip,
            upstream,
            args,
        });
    }
    let tm = c.token("aws-use1", "member").unwrap();
    let m = Agent::start_in_netns(
        &member.name,
        addr,
        "aws-use1",
        "ma",
        "member",
        &tm,
        &[
            "--endpoint",
            &format!("private={MEMBER}:51820"),
            "--probe-interval",
            "100ms",
        ],
    )
    .unwrap();
    count_leaks(&inet, &["10.10.0.0/16", "10.20.0.0/16"]);

    // The member's route to site B spreads over both gateways once both answer that they
    // carry it.
    let both = vec!["10.10.0.11".to_string(), "10.10.0.12".to_string()];
    wait_for(
        Duration::from_secs(30),
        "the member's multipath route over both gateways",
        || (member_next_hops(&member) == both).then_some(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}\n{}",
            member_next_hops(&member),
            m.proc.log_text(),
            gws[0].agent.as_ref().unwrap().proc.log_text()
        )
    });
    let echo = echo_server(&wlb, "10.20.0.10:7");
    wait_for(
        Duration::from_secs(15),
        "the member reaching site B",
        || (udp_flows(&member, MEMBER, "10.20.0.10:7", vec![30999], 1)[0] > 0).then_some(()),
    )
    .unwrap();

    // Flows: 16 UDP flows from the member use both gateways; one flow stays on one.
    let before: Vec<[u64; 2]> = gws.iter().map(|g| member_traffic(&g.ns)).collect();
    let got = udp_flows(
        &member,
        MEMBER,
        "10.20.0.10:7",
        (31000..31016).collect(),
        20,
    );
    let through: Vec<u64> = gws
        .iter()
        .zip(&before)
        .map(|(g, b)| member_traffic(&g.ns)[0] - b[0])
        .collect();
    println!(
        "16 UDP flows x 20 from the member: echoes per flow {got:?}; through gwa1/gwa2 {through:?}"
    );
    assert!(got.iter().all(|n| *n >= 18), "echoes per flow: {got:?}");
    assert!(
        through[0] > 0 && through[1] > 0,
        "the member used one gateway: {through:?}"
    );
    for port in [32000u16, 32001, 32002] {
        let before: Vec<[u64; 2]> = gws.iter().map(|g| member_traffic(&g.ns)).collect();
        udp_flows(&member, MEMBER, "10.20.0.10:7", vec![port], 50);
        let d: Vec<u64> = gws
            .iter()
            .zip(&before)
            .map(|(g, b)| member_traffic(&g.ns)[0] - b[0])
            .collect();
        assert!(
            (d[0] == 0 || d[1] == 0) && d[0] + d[1] == 50,
            "one flow crossed both gateways: {d:?}"
        );
    }

    // The cuts, with the coordinator stopped.
    c.proc.as_mut().unwrap().stop();
    let plan = [
        Cut::Tunnel,
        Cut::Tunnel,
        Cut::Uplink,
        Cut::Uplink,
        Cut::Kill,
        Cut::Kill,
    ];
    let mut results = Vec::new();
    for cut in plan {
        // The gateway the member's ping flow crosses (the kernel's hash decides).
        let before: Vec<[u64; 2]> = gws.iter().map(|g| member_traffic(&g.ns)).collect();
        let ok = member.ping_flow(WORKLOAD, 20);
        assert!(ok.1 >= 19, "the ping flow before a cut: {ok:?}");
        let d: Vec<u64> = gws
            .iter()
            .zip(&before)
            .map(|(g, b)| member_traffic(&g.ns)[1] - b[1])
            .collect();
        let i = if d[0] >= d[1] { 0 } else { 1 };
        let g = &mut gws[i];
        let flow = ping_flow(&member, WORKLOAD, 400);
        std::thread::sleep(Duration::from_millis(1000));
        let cut_at = unix_now();
        let t0 = Instant::now();
        match cut {
            Cut::Tunnel => cut_tunnel(&g.ns, "up0"),
            Cut::Uplink => {
                g.ns.ip(&["link", "set", "up0", "down"]);
            }
            Cut::Kill => {
                g.agent.as_mut().unwrap().proc.kill();
            }
        }
        let left = wait_for(
            Duration::from_secs(5),
            "the member leaving the gateway",
            || {
                (!member_next_hops(&member).contains(&g.lan.to_string()))
                    .then(|| t0.elapsed().as_millis())
            },
        )
        .ok();
        std::thread::sleep(Duration::from_millis(1500));
        match cut {
            Cut::Tunnel => restore_tunnel(&g.ns),
            Cut::Uplink => {
                g.ns.ip(&["link", "set", "up0", "up"]);
                g.ns.ip(&["route", "replace", "default", "via", g.upstream]);
            }
            Cut::Kill => {
                let Agent { proc, dir, .. } = g.agent.take().unwrap();
                drop(proc);
                let args: Vec<&str> = g.args.iter().map(String::as_str).collect();
                g.agent = Some(
                    Agent::run_in_netns(
                        dir, &g.ns.name, addr, "aws-use1", g.node, "gateway", "", &args,
                    )
                    .unwrap(),
                );
            }
        }
        let returned_at = unix_now();
        let replies = flow.join().unwrap();
        let gap = longest_silence(&replies, cut_at, returned_at);
        let lost = lost_after(&replies, returned_at, 400);
        println!(
            "cut {cut:?} of {}: ping interruption {gap} ms; the member's route left it after {left:?} ms; {lost} pings lost after it returned; {} of 400 answered",
            g.node,
            replies.len()
        );
        results.push((cut, g.node, gap, left, lost));
        wait_for(
            Duration::from_secs(30),
            "the gateway back in the member's route",
            || (member_next_hops(&member) == both).then_some(()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}\n{}",
                member_next_hops(&member),
                m.proc.log_text()
            )
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(echo);
    assert_eq!(
        leaked(&inet),
        0,
        "packets for a site's prefix crossed the internet in clear"
    );
    let mut gaps: Vec<u32> = results.iter().map(|r| r.2).collect();
    gaps.sort_unstable();
    println!(
        "member failover over {} cuts: interruption min/median/max {}/{}/{} ms",
        gaps.len(),
        gaps[0],
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
    for (cut, node, gap, left, lost) in &results {
        assert!(
            *gap < 1000,
            "{cut:?} of {node}: traffic stopped for {gap} ms"
        );
        // Polled with `ip route` (each poll a process, slow on a loaded machine): a looser
        // bound than the interruption's, which is what the pings measure.
        assert!(
            left.is_some_and(|ms| ms < 1500),
            "{cut:?} of {node}: the member's route kept the gateway ({left:?} ms)"
        );
        assert!(
            *lost <= 2,
            "{cut:?} of {node}: {lost} pings lost after it returned"
        );
    }
}
