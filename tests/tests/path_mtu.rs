//! Path MTU discovery with real processes: two gateways whose underlay crosses a hop with
//! a smaller MTU than their own interfaces (1500). Root needed; every namespace is this
//! test's own.
//!
//! ```text
//!   gwa 192.0.2.10 (up0, 1500)                                   gwb 203.0.113.10 (up0, 1500)
//!        |                                                              |
//!   inet (router) a0 192.0.2.1 ... x0 10.255.0.1/30 ==== x0 10.255.0.2/30 inet2 (router) b0 203.0.113.1
//!        |                          (the narrow hop: 1280, or 1500 then lowered)
//!   coord 198.51.100.10 (c0)
//!   lan0 10.10.0.1/24 on gwa -- wla 10.10.0.10          lan0 10.20.0.1/24 on gwb -- wlb 10.20.0.10
//! ```
//!
//! - `a_narrow_hop_is_found_and_tcp_and_large_pings_cross_it`: the hop is 1500 at first
//!   (the agents find 1500), then lowered to 1280 while the agents run: both find 1280
//!   without a restart, a 30 MB TCP transfer completes in each direction, and a DF ping
//!   larger than the tunnel carries gets "fragmentation needed" back.
//! - `discovery_converges_when_the_routers_drop_icmp`: the hop is 1280 from the start and
//!   the routers send no ICMP errors at all; discovery still converges (its time printed),
//!   and the transfers complete.
//!
//! A jumbo interconnect next to narrower paths, and failover between them in the middle of
//! a transfer: `three_underlays.rs`.

use std::time::{Duration, Instant};

use strait_tests::netns::{uplink, veth, Netns};
use strait_tests::procs::{wait_for, Agent, Coordinator, TWO_SITES};
use strait_tests::traffic;

struct Mesh {
    _ns: Vec<Netns>,
    inet: Netns,
    inet2: Netns,
    gwa: Netns,
    gwb: Netns,
    wla: Netns,
    wlb: Netns,
    c: Coordinator,
    a: Agent,
    b: Agent,
}

fn mesh(tag: &str, hop_mtu: u32, drop_icmp: bool, extra: &[&str]) -> Mesh {
    let inet = Netns::new(&format!("{tag}i"));
    let inet2 = Netns::new(&format!("{tag}j"));
    let coord = Netns::new(&format!("{tag}c"));
    let gwa = Netns::new(&format!("{tag}a"));
    let gwb = Netns::new(&format!("{tag}b"));
    let wla = Netns::new(&format!("{tag}wa"));
    let wlb = Netns::new(&format!("{tag}wb"));
    for r in [&inet, &inet2] {
        r.sysctl("net.ipv4.ip_forward", "1");
    }
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet2, "b0", &gwb, "up0", "203.0.113", "10");
    veth(&inet, "x0", &inet2, "x0");
    inet.ip(&["addr", "add", "10.255.0.1/30", "dev", "x0"]);
    inet2.ip(&["addr", "add", "10.255.0.2/30", "dev", "x0"]);
    set_hop(&inet, &inet2, hop_mtu);
    inet.ip(&["route", "add", "203.0.113.0/24", "via", "10.255.0.2"]);
    inet2.ip(&["route", "add", "default", "via", "10.255.0.1"]);
    if drop_icmp {
        // Clouds drop ICMP: the routers send no "fragmentation needed" (nor anything else).
        for r in [&inet, &inet2] {
            let out = r.exec(&[
                "nft",
                "add table ip noicmp; add chain ip noicmp out { type filter hook output priority 0; }; add rule ip noicmp out ip protocol icmp drop",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    uplink(&gwa, "lan0", &wla, "eth0", "10.10.0", "10");
    uplink(&gwb, "lan0", &wlb, "eth0", "10.20.0", "10");

    let addr: std::net::SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let c = Coordinator::start_in(&coord.name, addr, TWO_SITES, "").unwrap();
    let start = |ns: &Netns, site: &str, node: &str, prefix: &str, public: &str| {
        let token = c.token(site, "gateway").unwrap();
        let endpoint = format!("public={public}:51820");
        let metrics = format!("{public}:9464");
        let mut args = vec![
            "--prefix",
            prefix,
            "--endpoint",
            &endpoint,
            "--probe-interval",
            "200ms",
            "--metrics-listen",
            &metrics,
        ];
        args.extend_from_slice(extra);
        Agent::start_in_netns(&ns.name, addr, site, node, "gateway", &token, &args).unwrap()
    };
    let started = Instant::now();
    let a = start(&gwa, "aws-use1", "gwa", "10.10.0.0/16", "192.0.2.10");
    let b = start(&gwb, "gcp-usc1", "gwb", "10.20.0.0/16", "203.0.113.10");
    wait_for(
        Duration::from_secs(20),
        "workload A to reach workload B",
        || (wla.ping_flow("10.20.0.10", 1).1 == 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), b.proc.log_text()));
    println!("tunnel up {:?} after the agents started", started.elapsed());
    Mesh {
        _ns: vec![coord],
        inet,
        inet2,
        gwa,
        gwb,
        wla,
        wlb,
        c,
        a,
        b,
    }
}

fn set_hop(inet: &Netns, inet2: &Netns, mtu: u32) {
    for r in [inet, inet2] {
        r.ip(&["link", "set", "x0", "mtu", &mtu.to_string()]);
    }
}

fn curl(ns: &Netns, url: &str) -> String {
    let out = ns.exec(&["curl", "-s", "--max-time", "5", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The path MTU gwa reports for its path to gwb, from its metrics.
fn path_mtu(m: &Mesh) -> Option<u32> {
    let metrics = curl(&m.gwa, "http://192.0.2.10:9464/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("strait_path_mtu_bytes{") && l.contains("gcp-usc1/gwb"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u32)
}

/// Waits until gwa's path to gwb is at `mtu` and the routes to the other site's prefix on
/// both gateways carry the tunnel's MTU for it (outer IPv4 20 + UDP 8 + WireGuard 32 less;
/// the TUN device's MTU follows, above the underlay's 1420); returns how long that took.
/// (Both: each gateway clamps the MSS of the SYNs it forwards to its own route's MTU, and
/// a connection opened while gwb's route still had the underlay's would use 1420.)
fn wait_mtu(m: &Mesh, mtu: u32, within: Duration) -> Duration {
    let t0 = Instant::now();
    let route_mtu = mtu - 60;
    wait_for(within, &format!("path MTU {mtu}"), || {
        let route = m
            .gwa
            .ip(&["route", "show", "table", "21332", "10.20.0.0/16"]);
        let route_b = m
            .gwb
            .ip(&["route", "show", "table", "21332", "10.10.0.0/16"]);
        let want = format!("mtu {route_mtu}");
        (path_mtu(m) == Some(mtu) && route.contains(&want) && route_b.contains(&want)).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: metrics say {:?}, route {}\n{}\n{}",
            path_mtu(m),
            m.gwa.ip(&["route", "show", "table", "21332"]),
            m.a.proc.log_text(),
            m.b.proc.log_text()
        )
    });
    t0.elapsed()
}

/// A 30 MB TCP transfer from `from` to `to` (iperf3); the seconds it took, or a panic
/// naming the direction when it did not complete in 60 s.
fn transfer(from: &Netns, to: &Netns, to_addr: &str, what: &str) -> f64 {
    try_transfer(from, to, to_addr, what, 60).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`transfer`], giving up after `limit` seconds with the reason.
fn try_transfer(
    from: &Netns,
    to: &Netns,
    to_addr: &str,
    what: &str,
    limit: u32,
) -> Result<f64, String> {
    traffic::transfer(from, to, to_addr, what, limit).map(|t| t.secs)
}

#[test]
fn a_narrow_hop_is_found_and_tcp_and_large_pings_cross_it() {
    let m = mesh("pm", 1500, false, &[]);
    let took = wait_mtu(&m, 1500, Duration::from_secs(15));
    println!("path MTU 1500 found {took:?} after the first ping");
    transfer(&m.wla, &m.wlb, "10.20.0.10", "A->B at 1500");

    // The hop shrinks while the agents run: found again without a restart.
    set_hop(&m.inet, &m.inet2, 1280);
    let took = wait_mtu(&m, 1280, Duration::from_secs(20));
    println!("path MTU 1280 found {took:?} after the hop shrank");
    transfer(&m.wla, &m.wlb, "10.20.0.10", "A->B across the 1280 hop");
    transfer(&m.wlb, &m.wla, "10.10.0.10", "B->A across the 1280 hop");

    // Not TCP: a DF ping larger than the tunnel carries gets an error back, not silence.
    let out = m.wla.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "1400",
        "10.20.0.10",
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu = 1220") || text.contains("mtu=1220"),
        "no fragmentation-needed with the tunnel's MTU:\n{text}"
    );
    // One that fits crosses.
    let out = m.wla.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "1192",
        "10.20.0.10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The operator sees it.
    let links = wait_for(Duration::from_secs(15), "links to show the MTU", || {
        let links = m.c.ctl_json(&["links"]).ok()?;
        let l = links
            .as_array()?
            .iter()
            .find(|l| l["a"] == "aws-use1/gwa")?
            .clone();
        (l["mtu"].as_u64() == Some(1280)).then_some(l)
    })
    .unwrap();
    println!("{links}");
    let _ = (&m.wlb, &m.b);
}

#[test]
fn discovery_converges_when_the_routers_drop_icmp() {
    let mut m = mesh("pq", 1280, true, &[]);
    // The workloads drop ICMP too: only MSS clamping on the gateways keeps their TCP
    // segments within the path.
    for w in [&m.wla, &m.wlb] {
        let out = w.exec(&[
            "nft",
            "add table ip noicmp; add chain ip noicmp in { type filter hook input priority 0; }; add rule ip noicmp in ip protocol icmp drop",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let took = wait_mtu(&m, 1280, Duration::from_secs(20));
    println!("path MTU 1280 found {took:?} after the first ping, with no ICMP from the routers");
    let table = m.gwa.exec(&["nft", "list", "table", "inet", "strait_mss"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains("oifname \"strait0\"") && table.contains("maxseg size set rt mtu"),
        "{table}"
    );
    transfer(
        &m.wla,
        &m.wlb,
        "10.20.0.10",
        "A->B across the 1280 hop, no ICMP anywhere",
    );
    transfer(
        &m.wlb,
        &m.wla,
        "10.10.0.10",
        "B->A across the 1280 hop, no ICMP anywhere",
    );
    // A clean stop removes the table, like the routes.
    m.a.proc.stop();
    let out = m.gwa.exec(&["nft", "list", "table", "inet", "strait_mss"]);
    assert!(!out.status.success(), "table left after a clean stop");
}

#[test]
fn a_hop_lowered_while_icmp_is_dropped_is_found_by_probing_alone() {
    let m = mesh("pl", 1500, true, &[]);
    wait_mtu(&m, 1500, Duration::from_secs(15));
    set_hop(&m.inet, &m.inet2, 1280);
    // Nothing but lost probes tells the agents: two lost confirmations (one every 5 probe
    // intervals, 1 s here), then a search.
    let took = wait_mtu(&m, 1280, Duration::from_secs(20));
    println!("path MTU 1280 found {took:?} after the hop shrank, with no ICMP from the routers");
    transfer(
        &m.wla,
        &m.wlb,
        "10.20.0.10",
        "A->B after the hop shrank, no ICMP",
    );
    transfer(
        &m.wlb,
        &m.wla,
        "10.10.0.10",
        "B->A after the hop shrank, no ICMP",
    );
}

/// The control: with an explicit `mtu` (which wins over discovery: no route MTUs, nothing
/// refused for size) above what the hop carries and no ICMP, TCP stalls as it did before
/// path MTU discovery. The discovered MTU is still reported.
#[test]
fn an_explicit_mtu_wins_and_over_a_narrow_hop_without_icmp_it_black_holes() {
    let m = mesh("px", 1280, true, &["--mtu", "1420"]);
    wait_for(Duration::from_secs(20), "path MTU 1280 reported", || {
        (path_mtu(&m) == Some(1280)).then_some(())
    })
    .unwrap();
    let routes = m.gwa.ip(&["route", "show", "table", "21332"]);
    assert!(!routes.contains("mtu"), "{routes}");
    let r = try_transfer(&m.wla, &m.wlb, "10.20.0.10", "A->B, explicit mtu 1420", 15);
    assert!(r.is_err(), "the transfer crossed a 1280 hop at 1420: {r:?}");
    println!("A->B with explicit mtu 1420 across the 1280 hop, no ICMP: no completion in 15 s");
}
