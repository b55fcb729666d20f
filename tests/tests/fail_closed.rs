//! Routes fail closed whatever the state of the nodes and across a clean stop (root; in
//! network namespaces this test creates, all deleted at the end). Site B's gateway is
//! revoked, site C never enrolled anything, and gateway A's agent is stopped with SIGTERM
//! (what every upgrade does) while its workload pings site B: at no point may a packet for
//! a site's prefix leave gateway A unencrypted (the router counts any that arrive), until
//! `strait-agent uninstall` removes the fail-closed routes on purpose.
//!
//! ```text
//!            +-------------------- finet (router, counts leaks) ---------------------+
//!            | c0 198.51.100.1/24        a0 192.0.2.1/24         b0 203.0.113.1/24    |
//!            +------+---------------------------+------------------------+------------+
//!                   |                           |                        |
//!      fcoord 198.51.100.10        fgwa 192.0.2.10 (up0)       fgwb 203.0.113.10 (up0)
//!      (coordinator; sites         gateway aws-use1            gateway gcp-usc1
//!       aws-use1 10.10/16,         lan0 10.10.0.1/24           lan0 10.20.0.1/24
//!       gcp-usc1 10.20/16,              |                           |
//!       azure-eus 10.30/16)        fwla 10.10.0.10             fwlb 10.20.0.10
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use strait_tests::kernel::{count_leaks, leaked, route_get, rules, table_routes};
use strait_tests::netns::{uplink, Netns};
use strait_tests::procs::{command, wait_for, Agent, Coordinator, Site};

const SITES: &[Site<'static>] = &[
    Site("aws-use1", "10.10.0.0/16"),
    Site("gcp-usc1", "10.20.0.0/16"),
    Site("azure-eus", "10.30.0.0/16"),
];

fn ping_once(ns: &Netns, to: &str) -> bool {
    ns.exec(&["ping", "-n", "-c", "1", "-W", "1", to])
        .status
        .success()
}

/// Pings `to` from `ns` every 10 ms `count` times in the background; the number of replies.
fn ping_in_background(ns: &Netns, to: &str, count: u32) -> std::thread::JoinHandle<usize> {
    let (ns, to) = (ns.name.clone(), to.to_string());
    std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-n", "-i", "0.01", "-W", "1", "-c",
            ])
            .arg(count.to_string())
            .arg(&to)
            .output()
            .expect("ping");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("bytes from"))
            .count()
    })
}

fn unreachable(routes: &[(String, String)]) -> Vec<&str> {
    routes
        .iter()
        .filter(|(_, t)| t == "unreachable")
        .map(|(p, _)| p.as_str())
        .collect()
}

/// Gateway A would refuse a packet from its workload to `to` (no route out of the node).
fn refused_at_gateway(gwa: &Netns, to: &str) -> bool {
    route_get(gwa, &[to, "from", "10.10.0.10", "iif", "lan0"]).contains("No route to host")
}

#[test]
fn revoked_never_enrolled_and_stopped_all_fail_closed() {
    let inet = Netns::new("finet");
    let coord = Netns::new("fcoord");
    let gwa = Netns::new("fgwa");
    let gwb = Netns::new("fgwb");
    let wla = Netns::new("fwla");
    let wlb = Netns::new("fwlb");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    uplink(&gwa, "lan0", &wla, "eth0", "10.10.0", "10");
    uplink(&gwb, "lan0", &wlb, "eth0", "10.20.0", "10");

    let addr: SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let c = Coordinator::start_in(&coord.name, addr, SITES, "").unwrap();
    let gwa_args: &[&str] = &[
        "--prefix",
        "10.10.0.0/16",
        "--endpoint",
        "public=192.0.2.10:51820",
    ];
    let gwb_args: &[&str] = &[
        "--prefix",
        "10.20.0.0/16",
        "--endpoint",
        "public=203.0.113.10:51820",
    ];
    let ta = c.token("aws-use1", "gateway").unwrap();
    let tb = c.token("gcp-usc1", "gateway").unwrap();
    let a = Agent::start_in_netns(&gwa.name, addr, "aws-use1", "gwa", "gateway", &ta, gwa_args)
        .unwrap();
    let b = Agent::start_in_netns(&gwb.name, addr, "gcp-usc1", "gwb", "gateway", &tb, gwb_args)
        .unwrap();
    wait_for(Duration::from_secs(30), "workload A reaching B", || {
        ping_once(&wla, "10.20.0.10").then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\ngwa: {:?}\ngwb: {:?}\n{}\n{}\n{}",
            table_routes(&gwa),
            table_routes(&gwb),
            route_get(&gwb, &["10.10.0.10", "from", "10.20.0.10", "iif", "lan0"]),
            a.proc.log_text(),
            b.proc.log_text()
        )
    });
    count_leaks(&inet, &["10.10.0.0/16", "10.20.0.0/16", "10.30.0.0/16"]);

    // Every prefix of the mesh's configuration is closed on gateway A: site B's behind its
    // tunnel route, site C's (nothing enrolled there) and the overlay on their own.
    let routes = table_routes(&gwa);
    let closed = unreachable(&routes);
    assert_eq!(
        closed,
        [
            "10.20.0.0/16",
            "10.30.0.0/16",
            "100.64.0.0/10",
            &format!(
                "{}/32",
                b.saved_map().unwrap()["node"]["overlay-ip"]
                    .as_str()
                    .unwrap()
            )
        ],
        "{routes:?}"
    );
    assert!(!ping_once(&wla, "10.30.0.10"), "site C answered");
    assert!(refused_at_gateway(&gwa, "10.30.0.10"));
    assert_eq!(leaked(&inet), 0, "site C's prefix left gateway A in clear");

    // 1. A clean stop of gateway A's agent (SIGTERM) in the middle of a ping flow, and a
    //    restart: while it is down, site B's packets are refused at gateway A.
    let flow = ping_in_background(&wla, "10.20.0.10", 300);
    std::thread::sleep(Duration::from_millis(500));
    let Agent { mut proc, dir, .. } = a;
    proc.stop();
    let stopped = proc.exited().expect("the agent stopped");
    assert!(stopped.success(), "{stopped}\n{}", proc.log_text());
    assert!(
        proc.log_text()
            .contains("the fail-closed routes and the rule kept"),
        "{}",
        proc.log_text()
    );
    drop(proc);
    let left = table_routes(&gwa);
    assert_eq!(rules(&gwa), (1, 1), "the rule after a clean stop");
    assert_eq!(unreachable(&left), closed, "after a clean stop: {left:?}");
    assert!(
        refused_at_gateway(&gwa, "10.20.0.10"),
        "gateway A, its agent stopped, would route site B's prefix: {}",
        route_get(&gwa, &["10.20.0.10", "from", "10.10.0.10", "iif", "lan0"])
    );
    std::thread::sleep(Duration::from_millis(1000));
    let a = Agent::run_in_netns(
        dir, &gwa.name, addr, "aws-use1", "gwa", "gateway", "", gwa_args,
    )
    .unwrap();
    let replies = flow.join().unwrap();
    wait_for(Duration::from_secs(15), "traffic after the restart", || {
        ping_once(&wla, "10.20.0.10").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.proc.log_text()));
    assert_eq!(
        leaked(&inet),
        0,
        "packets left gateway A unencrypted across its agent's clean stop"
    );
    println!("clean stop and restart: {replies} of 300 pings answered, 0 leaked");

    // 2. Site B's only gateway revoked: gateway A drops its tunnel and routes, never the
    //    unreachable route for site B's prefix.
    let out = c.ctl(&["revoke", "gcp-usc1/gwb"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        Duration::from_secs(10),
        "gateway A's map without gwb",
        || {
            let map = a.saved_map()?;
            map["peers"].get("gcp-usc1/gwb").is_none().then_some(())
        },
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "gateway A's tunnel routes to go",
        || {
            let routes = table_routes(&gwa);
            routes.iter().all(|(_, t)| t == "unreachable").then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", table_routes(&gwa)));
    let routes = table_routes(&gwa);
    assert_eq!(
        unreachable(&routes),
        ["10.20.0.0/16", "10.30.0.0/16", "100.64.0.0/10"],
        "{routes:?}"
    );
    for _ in 0..5 {
        assert!(
            !ping_once(&wla, "10.20.0.10"),
            "site B answered after revocation"
        );
    }
    assert!(refused_at_gateway(&gwa, "10.20.0.10"));
    assert_eq!(
        leaked(&inet),
        0,
        "site B's prefix left gateway A after revocation"
    );

    // 3. `strait-agent uninstall` after a stop takes the routes and the rule away on
    //    purpose; then (and only then) site B's packets take the default route, which the
    //    router counts: the counter sees what it is there to see.
    let Agent { mut proc, .. } = a;
    proc.stop();
    drop(proc);
    assert!(!unreachable(&table_routes(&gwa)).is_empty());
    let out = command("strait-agent", Some(&gwa.name))
        .arg("uninstall")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table_routes(&gwa).is_empty(), "{:?}", table_routes(&gwa));
    assert_eq!(rules(&gwa), (0, 0));
    assert!(!ping_once(&wla, "10.20.0.10"));
    assert!(leaked(&inet) > 0, "the leak counter counted nothing");
}
