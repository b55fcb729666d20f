//! End to end through the data plane, with real coordinator and agent processes in network
//! namespaces this test creates (root needed).
//!
//! ```text
//!            +--------------------- inet (router) ---------------------+
//!            | 198.51.100.1/24      192.0.2.1/24       203.0.113.1/24 |
//!            +-------+-------------------+--------------------+-------+
//!                    |                   |                    |
//!   coord 198.51.100.10        gwa 192.0.2.10           gwb 203.0.113.10
//!   (strait-coordinator)       (gateway aws-use1)       (gateway gcp-usc1)
//!                              10.10.0.1/24 |           10.20.0.1/24 |
//!                              wla 10.10.0.10           wlb 10.20.0.10
//!                              (workload, no agent)     (workload, no agent)
//! ```

use std::time::Duration;

use strait_tests::netns::{veth, Netns};
use strait_tests::procs::{wait_for, Agent, Coordinator, Site};

fn ping(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", to])
        .status
        .success()
}

#[test]
fn workloads_in_two_sites_reach_each_other_through_the_gateways() {
    let inet = Netns::new("inet");
    let coord = Netns::new("coord");
    let gwa = Netns::new("gwa");
    let gwb = Netns::new("gwb");
    let wla = Netns::new("wla");
    let wlb = Netns::new("wlb");
    inet.sysctl("net.ipv4.ip_forward", "1");
    for (ns, inside, outside, net, host) in [
        (&coord, "up0", "c0", "198.51.100", "10"),
        (&gwa, "up0", "a0", "192.0.2", "10"),
        (&gwb, "up0", "b0", "203.0.113", "10"),
    ] {
        veth(ns, inside, &inet, outside);
        inet.ip(&["addr", "add", &format!("{net}.1/24"), "dev", outside]);
        ns.ip(&["addr", "add", &format!("{net}.{host}/24"), "dev", inside]);
        ns.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
    }
    for (gw, wl, net) in [(&gwa, &wla, "10.10.0"), (&gwb, &wlb, "10.20.0")] {
        veth(gw, "lan0", wl, "eth0");
        gw.ip(&["addr", "add", &format!("{net}.1/24"), "dev", "lan0"]);
        wl.ip(&["addr", "add", &format!("{net}.10/24"), "dev", "eth0"]);
        wl.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
    }

    let mut c = Coordinator::init(
        &[
            Site("aws-use1", "10.10.0.0/16"),
            Site("gcp-usc1", "10.20.0.0/16"),
        ],
        "",
    )
    .unwrap();
    // Listen on the coordinator's uplink inside its namespace.
    let addr: std::net::SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let cfg = c.state().join("coordinator.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&c.addr.to_string(), &addr.to_string());
    std::fs::write(&cfg, text).unwrap();
    c.addr = addr;
    c.netns = Some(coord.name.clone());
    c.start().unwrap();

    let ta = c.token("aws-use1", "gateway").unwrap();
    let tb = c.token("gcp-usc1", "gateway").unwrap();
    let a = Agent::start_in_netns(
        &gwa.name,
        addr,
        "aws-use1",
        "gwa",
        "gateway",
        &ta,
        &[
            "--prefix",
            "10.10.0.0/16",
            "--endpoint",
            "public=192.0.2.10:51820",
            "--endpoint",
            "private=10.10.0.1:51820",
        ],
    )
    .unwrap();
    let b = Agent::start_in_netns(
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
            "--endpoint",
            "private=10.20.0.1:51820",
        ],
    )
    .unwrap();

    wait_for(
        Duration::from_secs(20),
        "the gateways to learn each other",
        || {
            let ma = a.saved_map()?;
            let mb = b.saved_map()?;
            (ma["peers"].get("gcp-usc1/gwb").is_some() && mb["peers"].get("aws-use1/gwa").is_some())
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), c.log_text()));
    let routes = gwa.ip(&["route", "show", "proto", "83"]);
    assert!(routes.contains("10.20.0.0/16 dev strait0"), "{routes}");

    wait_for(
        Duration::from_secs(15),
        "workload A to reach workload B",
        || ping(&wla, "10.20.0.10").then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), b.proc.log_text()));
    assert!(ping(&wlb, "10.10.0.10"), "workload B -> workload A");
    let b_overlay = b.saved_map().unwrap()["node"]["overlay-ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ping(&gwa, &b_overlay),
        "gateway A -> gateway B's overlay address"
    );

    // A clean stop leaves no Strait routes behind.
    let mut a = a;
    a.proc.stop();
    let left = gwa.ip(&["route", "show", "proto", "83"]);
    assert!(
        left.trim().is_empty(),
        "routes left after a clean stop: {left}"
    );
}
