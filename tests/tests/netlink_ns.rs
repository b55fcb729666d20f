//! The netlink adapter against a real kernel, inside a network namespace this test creates
//! (root needed; nothing is touched in the root namespace): a real TUN device gets the
//! overlay address, MTU and state; Strait's routes are added, reconciled idempotently and
//! removed, conflicts are refused, and other owners' routes are left alone; fail-closed
//! routes outlive the TUN device, so its traffic is refused rather than sent by the main
//! table.

use ipnetwork::IpNetwork;
use strait_agent::dataplane::netlink::Netlink;
use strait_agent::dataplane::routes::{Route, Via, RTPROT_STRAIT, STRAIT_TABLE};
use strait_tests::netns::{block_on_in, Netns};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn strait_routes(ns: &Netns) -> Vec<String> {
    let table = STRAIT_TABLE.to_string();
    let v = ns.json(&[
        "route",
        "show",
        "table",
        &table,
        "proto",
        &RTPROT_STRAIT.to_string(),
    ]);
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["dst"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn routes_are_reconciled_idempotently_and_conflicts_refused() {
    let ns = Netns::new("nl");
    ns.ip(&["tuntap", "add", "dev", "strait0", "mode", "tun"]);
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    ns.ip(&["addr", "add", "10.10.0.5/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&[
        "route",
        "add",
        "192.168.77.0/24",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);

    let tun = |p: &str| Route {
        prefix: net(p),
        via: Via::Tun,
        mtu: None,
    };
    let desired = vec![
        tun("10.20.0.0/16"),
        tun("100.64.0.2/32"),
        tun("10.10.0.0/16"),
        tun("192.168.77.0/24"),
    ];
    let kept = desired.clone();
    let (first, second, index) = block_on_in(&ns, move || async move {
        let nl = Netlink::connect().unwrap();
        let index = nl
            .link_index("strait0")
            .await
            .unwrap()
            .expect("strait0 exists");
        assert_eq!(nl.link_index("nope0").await.unwrap(), None);
        nl.configure_link(index, net("100.64.0.1/10"), 1420)
            .await
            .unwrap();
        nl.configure_link(index, net("100.64.0.1/10"), 1420)
            .await
            .unwrap();
        let first = nl.reconcile(&desired, index).await.unwrap();
        let second = nl.reconcile(&desired, index).await.unwrap();
        nl.ensure_rules().await.unwrap();
        nl.ensure_rules().await.unwrap();
        (first, second, index)
    });
    // One rule per family sends everything but the WireGuard socket's marked datagrams
    // through Strait's table; the main table keeps nothing of Strait's.
    for family in ["-4", "-6"] {
        let rules = ns.ip(&[family, "rule", "show"]);
        let ours = rules
            .lines()
            .filter(|l| l.contains(&format!("lookup {STRAIT_TABLE}")))
            .collect::<Vec<_>>();
        assert_eq!(ours.len(), 1, "{rules}");
        assert!(ours[0].contains("not from all fwmark 0x5354"), "{rules}");
    }
    assert_eq!(ns.ip(&["route", "show", "proto", "83"]), "", "main table");
    assert_eq!(first.add.len(), 2, "{first:?}");
    assert_eq!(first.conflicts.len(), 2, "{first:?}");
    assert!(
        first.conflicts[0]
            .reason
            .contains("connected route 10.10.0.0/24"),
        "{:?}",
        first.conflicts
    );
    assert!(
        first.conflicts[1].reason.contains("another owner"),
        "{:?}",
        first.conflicts
    );
    assert!(
        second.is_empty(),
        "second reconcile changed something: {second:?}"
    );
    assert_eq!(
        strait_routes(&ns),
        vec!["10.20.0.0/16".to_string(), "100.64.0.2".to_string()]
    );

    let link = &ns.json(&["addr", "show", "dev", "strait0"])[0];
    assert_eq!(link["mtu"], 1420);
    assert_eq!(link["ifindex"], index);
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert!(link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == "100.64.0.1" && a["prefixlen"] == 10));

    // A path MTU on a peer's prefix: the route is replaced in place with `mtu 1220` (never
    // removed first), read back, and a second pass changes nothing; then back to none.
    let mut with_mtu = kept.clone();
    with_mtu[0].mtu = Some(1220);
    let (set, again, shown, cleared) = block_on_in(&ns, {
        let ns_name = ns.name.clone();
        move || async move {
            let nl = Netlink::connect().unwrap();
            let set = nl.reconcile(&with_mtu, index).await.unwrap();
            let again = nl.reconcile(&with_mtu, index).await.unwrap();
            let shown = std::process::Command::new("ip")
                .args([
                    "-n",
                    &ns_name,
                    "route",
                    "show",
                    "table",
                    &STRAIT_TABLE.to_string(),
                ])
                .output()
                .unwrap();
            let cleared = nl.reconcile(&kept, index).await.unwrap();
            (
                set,
                again,
                String::from_utf8_lossy(&shown.stdout).into_owned(),
                cleared,
            )
        }
    });
    assert_eq!((set.add.len(), set.remove.len()), (1, 0), "{set:?}");
    assert!(again.is_empty(), "{again:?}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("10.20.0.0/16") && l.contains("mtu 1220")),
        "{shown}"
    );
    assert_eq!(
        (cleared.add.len(), cleared.remove.len()),
        (1, 0),
        "{cleared:?}"
    );

    // A smaller desired set removes only the stale route; shutdown removes all of ours and
    // nothing else.
    let removed = block_on_in(&ns, move || async move {
        let nl = Netlink::connect().unwrap();
        let p = nl.reconcile(&[tun("100.64.0.2/32")], index).await.unwrap();
        assert_eq!(p.remove.len(), 1);
        nl.remove_rules().await.unwrap();
        nl.remove_all(false).await.unwrap()
    });
    assert!(
        !ns.ip(&["rule", "show"]).contains("5354"),
        "rule left behind"
    );
    assert_eq!(removed, 1);
    assert!(strait_routes(&ns).is_empty());
    let static_routes = ns.ip(&["route", "show", "proto", "static"]);
    assert!(
        static_routes.contains("192.168.77.0/24"),
        "another owner's route was touched: {static_routes}"
    );
}

/// What the kernel would do with a packet to `to` (`ip route get`; the error text if it
/// refuses, e.g. "RTNETLINK answers: No route to host").
fn route_get(ns: &Netns, to: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ip", "route", "get", to])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn fail_closed_routes_outlive_the_tun_device_and_go_at_uninstall() {
    let ns = Netns::new("fc");
    ns.ip(&["tuntap", "add", "dev", "strait0", "mode", "tun"]);
    ns.ip(&["link", "set", "strait0", "up"]);
    // The underlay: a default route, which is where a packet for a remote prefix would
    // go, in clear, without Strait's routes.
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "up0"]);
    ns.ip(&["addr", "add", "2001:db8:1::10/64", "dev", "up0", "nodad"]);
    ns.ip(&["link", "set", "up0", "up"]);
    ns.ip(&["link", "set", "up0p", "up"]);
    ns.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);

    let twins = |p: &str| {
        [Via::Tun, Via::Unreachable].map(|via| Route {
            prefix: net(p),
            via,
            mtu: None,
        })
    };
    let desired: Vec<Route> = [twins("10.20.0.0/16"), twins("2001:db8:20::/48")].concat();
    let (first, second) = block_on_in(&ns, move || async move {
        let nl = Netlink::connect().unwrap();
        let index = nl.link_index("strait0").await.unwrap().unwrap();
        nl.ensure_rules().await.unwrap();
        let first = nl.reconcile(&desired, index).await.unwrap();
        let second = nl.reconcile(&desired, index).await.unwrap();
        (first, second)
    });
    assert_eq!(first.add.len(), 4, "{first:?}");
    assert!(
        second.is_empty(),
        "second reconcile changed something: {second:?}"
    );
    assert!(
        route_get(&ns, "10.20.0.5").contains("dev strait0"),
        "{}",
        route_get(&ns, "10.20.0.5")
    );
    assert!(route_get(&ns, "2001:db8:20::5").contains("dev strait0"));

    // The agent dies: its TUN device goes, and the routes on it. Packets for the tunnel's
    // prefixes are refused; anything else still takes the default route.
    ns.ip(&["link", "del", "strait0"]);
    for to in ["10.20.0.5", "2001:db8:20::5"] {
        let got = route_get(&ns, to);
        assert!(
            // EHOSTUNREACH: what an `unreachable` route answers.
            got.contains("No route to host") && !got.contains("up0"),
            "{to} after the TUN device went: {got}"
        );
    }
    assert!(route_get(&ns, "198.51.100.7").contains("via 192.0.2.1 dev up0"));

    // A restart (or a clean stop) keeps the twins; `strait-agent uninstall` removes all.
    let (kept, removed) = block_on_in(&ns, || async {
        let nl = Netlink::connect().unwrap();
        let kept = nl.remove_all(true).await.unwrap();
        let removed = strait_agent::dataplane::uninstall().await.unwrap();
        (kept, removed)
    });
    assert_eq!((kept, removed), (0, 2));
    assert!(
        !ns.ip(&["rule", "show"]).contains("5354"),
        "uninstall left the rule"
    );
    assert!(strait_routes(&ns).is_empty());
    assert!(ns
        .ip(&["-6", "route", "show", "table", "21332"])
        .trim()
        .is_empty());
    assert!(route_get(&ns, "10.20.0.5").contains("via 192.0.2.1 dev up0"));
}

#[test]
fn the_tun_mtu_follows_the_underlay_toward_the_coordinator() {
    let ns = Netns::new("mtu");
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    ns.ip(&["link", "set", "up0", "mtu", "1380"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"]);
    ns.ip(&["link", "set", "up0", "up"]);
    ns.ip(&["link", "set", "lo", "up"]);
    let (via_uplink, via_loopback, unresolvable) = block_on_in(&ns, || async {
        let nl = Netlink::connect().unwrap();
        let mtu = |t: &str| {
            let nl = nl.clone();
            let t = vec![t.to_string()];
            async move { strait_agent::dataplane::tun_mtu(&nl, &t).await }
        };
        (
            mtu("192.0.2.7:7443").await,
            mtu("127.0.0.1:7443").await,
            mtu("no-such-host.invalid:7443").await,
        )
    });
    assert_eq!(via_uplink, 1300, "1380-byte underlay minus 80");
    assert_eq!(
        via_loopback,
        strait_agent::config::DEFAULT_MTU,
        "loopback is not an underlay"
    );
    assert_eq!(unresolvable, strait_agent::config::DEFAULT_MTU);
}
