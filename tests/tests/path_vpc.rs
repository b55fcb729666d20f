//! Two VPCs joined by an interconnect, as clouds build them: the gateways have only their
//! subnet and a default route to the VPC router, and reach each other over the interconnect
//! by their VPC addresses, which lie inside the very prefixes the tunnel carries. The
//! agents' WireGuard socket is marked, so its datagrams skip Strait's routing table and
//! take the underlay; everything else toward the remote VPC goes through the tunnel.
//! Root needed; every namespace is this test's own.
//!
//! ```text
//!   wla 10.10.0.10                                                    wlb 10.20.0.10
//!        |  wl0 10.10.0.1                                  wl0 10.20.0.1  |
//!   +----+---- vpca (router) ----+  ic0 172.31.255.1  +---- vpcb (router) ----+----+
//!   | main: 10.20/16 -> gwa      |=====interconnect=====| main: 10.10/16 -> gwb     |
//!   | from gw/coord subnets:     |  ic0 172.31.255.2  | from gw subnet:           |
//!   |   10.20/16 -> interconnect |                    |   10.10/16 -> interconnect|
//!   +----+-----------+-----------+                    +-----------+---------------+
//!        | gw0 10.10.1.1 | c0 198.51.100.1                         | gw0 10.20.1.1
//!   gwa 10.10.1.5   coord 198.51.100.10                       gwb 10.20.1.5
//!   endpoint interconnect=10.10.1.5:51820             endpoint interconnect=10.20.1.5:51820
//! ```

use std::time::Duration;

use strait_tests::netns::{uplink, veth, Netns};
use strait_tests::procs::{wait_for, Agent, Coordinator, TWO_SITES};

/// Packets of `proto` (icmp, udp) that `ns` forwarded out of `dev`, counted by nftables.
fn forwarded(ns: &Netns, dev: &str, proto: &str) -> u64 {
    let out = ns.exec(&["nft", "-j", "list", "chain", "inet", "tally", "forwarded"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("rule"))
        .find(|r| r["comment"] == format!("{dev}-{proto}"))
        .and_then(|r| {
            r["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
        })
        .unwrap_or(0)
}

#[test]
fn gateways_reach_each_other_over_an_interconnect_by_addresses_the_tunnel_carries() {
    let vpca = Netns::new("vvpca");
    let vpcb = Netns::new("vvpcb");
    let gwa = Netns::new("vgwa");
    let gwb = Netns::new("vgwb");
    let wla = Netns::new("vwla");
    let wlb = Netns::new("vwlb");
    let coord = Netns::new("vcoord");
    for r in [&vpca, &vpcb] {
        r.sysctl("net.ipv4.ip_forward", "1");
    }
    veth(&vpca, "ic0", &vpcb, "ic0");
    vpca.ip(&["addr", "add", "172.31.255.1/30", "dev", "ic0"]);
    vpcb.ip(&["addr", "add", "172.31.255.2/30", "dev", "ic0"]);
    uplink(&vpca, "gw0", &gwa, "eth0", "10.10.1", "5");
    uplink(&vpca, "wl0", &wla, "eth0", "10.10.0", "10");
    uplink(&vpca, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&vpcb, "gw0", &gwb, "eth0", "10.20.1", "5");
    uplink(&vpcb, "wl0", &wlb, "eth0", "10.20.0", "10");
    // Workload subnets send the other VPC's prefix to their gateway; the gateway and
    // coordinator subnets reach the other VPC over the interconnect.
    vpca.ip(&["route", "add", "10.20.0.0/16", "via", "10.10.1.5"]);
    vpca.ip(&[
        "route",
        "add",
        "10.20.0.0/16",
        "via",
        "172.31.255.2",
        "table",
        "100",
    ]);
    vpcb.ip(&["route", "add", "10.10.0.0/16", "via", "10.20.1.5"]);
    vpcb.ip(&[
        "route",
        "add",
        "10.10.0.0/16",
        "via",
        "172.31.255.1",
        "table",
        "100",
    ]);
    vpcb.ip(&["route", "add", "198.51.100.0/24", "via", "172.31.255.1"]);
    for (r, subnets) in [
        (&vpca, &["10.10.1.0/24", "198.51.100.0/24"][..]),
        (&vpcb, &["10.20.1.0/24"][..]),
    ] {
        for s in subnets {
            r.ip(&["rule", "add", "from", s, "lookup", "100", "priority", "100"]);
        }
    }
    // Count what vpca forwards onto the interconnect: WireGuard (udp) and plain pings (icmp).
    for cmd in [
        "add table inet tally",
        "add chain inet tally forwarded { type filter hook forward priority 0 ; }",
        "add rule inet tally forwarded oifname ic0 meta l4proto icmp counter comment ic0-icmp",
        "add rule inet tally forwarded oifname ic0 meta l4proto udp counter comment ic0-udp",
    ] {
        let mut args = vec!["nft"];
        args.extend(cmd.split(' '));
        let out = vpca.exec(&args);
        assert!(
            out.status.success(),
            "nft {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let addr: std::net::SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let c = Coordinator::start_in(&coord.name, addr, TWO_SITES, "").unwrap();
    let start = |ns: &Netns, site: &str, node: &str, prefix: &str, ic: &str| {
        let token = c.token(site, "gateway").unwrap();
        let endpoint = format!("interconnect={ic}:51820");
        let args = [
            "--prefix",
            prefix,
            "--endpoint",
            &endpoint,
            "--probe-interval",
            "200ms",
        ];
        Agent::start_in_netns(&ns.name, addr, site, node, "gateway", &token, &args).unwrap()
    };
    let a = start(&gwa, "aws-use1", "gwa", "10.10.0.0/16", "10.10.1.5");
    let b = start(&gwb, "gcp-usc1", "gwb", "10.20.0.0/16", "10.20.1.5");

    wait_for(
        Duration::from_secs(20),
        "workload A to reach workload B",
        || (wla.ping_flow("10.20.0.10", 1).1 == 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), b.proc.log_text()));

    // Workload traffic goes through the tunnel, whose datagrams cross the interconnect;
    // no plain ping crosses it.
    let (icmp0, udp0, tun0) = (
        forwarded(&vpca, "ic0", "icmp"),
        forwarded(&vpca, "ic0", "udp"),
        gwa.tx_packets("strait0"),
    );
    let (sent, got) = wla.ping_flow("10.20.0.10", 200);
    assert_eq!(sent, got, "{}", a.proc.log_text());
    let (icmp, udp, tun) = (
        forwarded(&vpca, "ic0", "icmp") - icmp0,
        forwarded(&vpca, "ic0", "udp") - udp0,
        gwa.tx_packets("strait0") - tun0,
    );
    println!("200 pings: gwa's TUN +{tun} packets, interconnect +{udp} udp, +{icmp} icmp");
    assert!(
        tun >= 200,
        "the pings did not go through the tunnel: +{tun}"
    );
    assert!(
        udp >= 200,
        "the tunnel did not use the interconnect: +{udp} udp"
    );
    assert_eq!(icmp, 0, "plain pings crossed the interconnect");

    // The operator sees the path.
    let table = wait_for(Duration::from_secs(12), "links to show the path", || {
        let out = c.ctl(&["links"]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .any(|l| l.starts_with("aws-use1/gwa") && l.contains("interconnect 10.20.1.5:51820"))
            .then_some(text)
    })
    .unwrap();
    println!("{table}");
}
