//! Sites whose address space overlaps, end to end: two sites both use 10.10.0.0/16 (the
//! coordinator allocates them global prefixes from `global-cidr` 10.128.0.0/12: site ova
//! is 10.128.0.0/16 to the rest of the mesh, ovb 10.129.0.0/16), a third uses 10.20.0.0/16
//! and keeps its real addresses. Real coordinator and gateway agents, workloads without
//! agents, in network namespaces this test creates (root needed; nothing is added to the
//! root namespace).
//!
//! ```text
//!   +------------------------------ inet (router, and the coordinator on 198.51.100.1) ----+
//!   | a0 192.0.2.1                  b0 203.0.113.1                c0 198.51.100.1          |
//!   +----+-----------------------------+------------------------------+--------------------+
//!        |                             |                              |
//!   gwa 192.0.2.10               gwb 203.0.113.10              gwc 198.51.100.10
//!   (gateway ova, 10.10/16       (gateway ovb, 10.10/16        (gateway ovc, 10.20/16,
//!    = global 10.128/16)          = global 10.129/16)           untranslated)
//!   lan0 10.10.0.1               lan0 10.10.0.1                lan0 10.20.0.1
//!        |                             |                              |
//!   wla 10.10.0.10               wlb 10.10.0.10                wlc 10.20.0.10
//! ```
//!
//! Every workload runs a TCP and a UDP echo that answer `<site> saw <source address>`.
//! wla and wlb have the *same* address; each reaches the other by its global address, and
//! wlc by its real one; wlc reaches both by their global addresses. TCP and UDP, both
//! directions; the answers say who answered and what source it saw (the sender's global
//! address for translated sites, the real one for ovc). The gateways' translation table
//! has exactly one rule per direction on gwa and gwb and does not exist on gwc; it is
//! removed at a clean stop and is neither missing nor duplicated after a restart (SIGTERM
//! for gwa, SIGKILL for gwb). The router sees no packet between private ranges in clear.
//! An access policy rule written with ovb's global address (ovc may not open tcp/7001 on
//! wlb) is enforced by gwb, which judges packets before translating them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use strait_tests::background::Background;
use strait_tests::netns::{in_netns, uplink, Netns};
use strait_tests::procs::{wait_for, Agent, Coordinator, Site};

const COORD: &str = "198.51.100.1:7443";
/// ovb starts with a placeholder prefix (`init` refuses overlapping sites without global
/// addresses); the config is then edited to overlap ova and get `global-cidr`.
const SITES: &[Site<'static>] = &[
    Site("ova", "10.10.0.0/16"),
    Site("ovb", "10.30.0.0/16"),
    Site("ovc", "10.20.0.0/16"),
];
const GLOBAL_CIDR: &str = "10.128.0.0/12";
const WL: &str = "10.10.0.10";
const WLA_GLOBAL: &str = "10.128.0.10";
const WLB_GLOBAL: &str = "10.129.0.10";
const WLC: &str = "10.20.0.10";
const PORT: u16 = 7000;

/// Echo servers in `ns` on `addr` (TCP and UDP on `PORT`), answering
/// `<site> saw <source ip>: <what was sent>`; stopped when the value drops.
fn echo_servers(ns: &Netns, site: &'static str, addr: &'static str) -> Background {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let tcp = TcpListener::bind((addr, PORT)).unwrap();
        let udp = UdpSocket::bind((addr, PORT)).unwrap();
        tx.send((tcp, udp)).unwrap();
    });
    let (tcp, udp) = rx.recv().unwrap();
    tcp.set_nonblocking(true).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut servers = Background::new();
    servers.spawn_in(ns, move |stop| {
        while !stop.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((mut conn, peer)) => {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let mut buf = [0u8; 256];
                    if let Ok(n) = conn.read(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let _ =
                            conn.write_all(format!("{site} saw {}: {text}", peer.ip()).as_bytes());
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    servers.spawn_in(ns, move |stop| {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = udp.send_to(format!("{site} saw {}: {text}", peer.ip()).as_bytes(), peer);
            }
        }
    });
    servers
}

/// From inside `ns`: a TCP exchange with `to:PORT`; the answer, if any.
fn tcp(ns: &Netns, to: &str) -> Option<String> {
    let to: SocketAddr = format!("{to}:{PORT}").parse().unwrap();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"over tcp").ok()?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// From inside `ns`: a UDP exchange with `to:PORT` (3 tries); the answer and the address
/// it came from.
fn udp(ns: &Netns, to: &str) -> Option<(String, std::net::IpAddr)> {
    let to: SocketAddr = format!("{to}:{PORT}").parse().unwrap();
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        for _ in 0..3 {
            s.send_to(b"over udp", to).ok()?;
            let mut buf = [0u8; 256];
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from.ip()));
            }
        }
        None
    })
}

fn nft(ns: &Netns, script: &str) {
    let out = ns.exec(&["nft", script]);
    assert!(
        out.status.success(),
        "nft in {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The translation rules in `ns` (`None`: no table), each as nft lists it.
fn translation_rules(ns: &Netns) -> Option<Vec<String>> {
    let out = ns.exec(&["nft", "-j", "list", "table", "inet", "strait_translate"]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rules: Vec<String> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| format!("{} {}", r["chain"], r["expr"]))
        .collect();
    rules.sort();
    Some(rules)
}

/// Packets between private ranges the router forwarded in clear.
fn plain(inet: &Netns) -> u64 {
    let out = inet.exec(&["nft", "-j", "list", "counter", "inet", "count", "plain"]);
    assert!(out.status.success(), "nft list counter");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .unwrap()
}

/// Every exchange the test expects, each checked for who answered and which source it saw.
fn check_all(wla: &Netns, wlb: &Netns, wlc: &Netns, what: &str) {
    let cases: [(&Netns, &str, &str, &str); 6] = [
        (wla, WLB_GLOBAL, "ovb", WLA_GLOBAL),
        (wlb, WLA_GLOBAL, "ova", WLB_GLOBAL),
        (wla, WLC, "ovc", WLA_GLOBAL),
        (wlc, WLA_GLOBAL, "ova", WLC),
        (wlb, WLC, "ovc", WLB_GLOBAL),
        (wlc, WLB_GLOBAL, "ovb", WLC),
    ];
    for (from, to, site, seen) in cases {
        let got = tcp(from, to);
        assert_eq!(
            got.as_deref(),
            Some(format!("{site} saw {seen}: over tcp").as_str()),
            "{what}: TCP from {} to {to}",
            from.name
        );
        let got = udp(from, to);
        assert_eq!(
            got,
            Some((format!("{site} saw {seen}: over udp"), to.parse().unwrap())),
            "{what}: UDP from {} to {to} (the answer must come back from the address asked)",
            from.name
        );
    }
}

#[test]
fn overlapping_sites_reach_each_other_by_global_addresses_through_stateless_translation() {
    let inet = Netns::new("oinet");
    let gwa = Netns::new("ogwa");
    let gwb = Netns::new("ogwb");
    let gwc = Netns::new("ogwc");
    let wla = Netns::new("owla");
    let wlb = Netns::new("owlb");
    let wlc = Netns::new("owlc");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    uplink(&inet, "c0", &gwc, "up0", "198.51.100", "10");
    uplink(&gwa, "lan0", &wla, "eth0", "10.10.0", "10");
    uplink(&gwb, "lan0", &wlb, "eth0", "10.10.0", "10");
    uplink(&gwc, "lan0", &wlc, "eth0", "10.20.0", "10");
    nft(
        &inet,
        "add table inet count; add counter inet count plain; \
         add chain inet count through { type filter hook forward priority 0; }; \
         add rule inet count through ip saddr 10.0.0.0/8 ip daddr 10.0.0.0/8 counter name plain",
    );

    // The access policy names ovb's workload by its global address, as the receiving
    // gateway sees packets: ovc may not open tcp/7001 on it, ova may.
    let policy = format!(
        "[policy]\n[[policy.rules]]\nname = \"no-7001\"\naction = \"deny\"\nfrom = \"ovc\"\nto = \"{WLB_GLOBAL}/32\"\nports = \"tcp/7001\"\n"
    );
    let mut c =
        Coordinator::init(SITES, &format!("global-cidr = \"{GLOBAL_CIDR}\"\n{policy}")).unwrap();
    let path = c.state().join("coordinator.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("10.30.0.0/16", "10.10.0.0/16")).unwrap();
    c.move_to(&inet.name, COORD.parse().unwrap()).unwrap();
    c.start().unwrap();

    let gateway = |c: &Coordinator, ns: &Netns, site: &str, prefix: &str, public: &str| {
        let token = c.token(site, "gateway").unwrap();
        Agent::start_in_netns(
            &ns.name,
            COORD.parse().unwrap(),
            site,
            "gw",
            "gateway",
            &token,
            &[
                "--prefix",
                prefix,
                "--endpoint",
                &format!("public={public}:51820"),
                "--probe-interval",
                "200ms",
            ],
        )
        .unwrap()
    };
    let a = gateway(&c, &gwa, "ova", "10.10.0.0/16", "192.0.2.10");
    let b = gateway(&c, &gwb, "ovb", "10.10.0.0/16", "203.0.113.10");
    let gc = gateway(&c, &gwc, "ovc", "10.20.0.0/16", "198.51.100.10");
    let logs = |c: &Coordinator, a: &Agent, b: &Agent| {
        format!(
            "--- gwa\n{}\n--- gwb\n{}\n--- gwc\n{}\n--- coordinator\n{}",
            a.proc.log_text(),
            b.proc.log_text(),
            gc.proc.log_text(),
            c.log_text()
        )
    };
    let _ea = echo_servers(&wla, "ova", WL);
    let _eb = echo_servers(&wlb, "ovb", WL);
    let _ec = echo_servers(&wlc, "ovc", WLC);

    // Wait for the whole mesh (every gateway's tunnels), then every exchange.
    for (from, to) in [(&wla, WLB_GLOBAL), (&wla, WLC), (&wlb, WLC)] {
        wait_for(Duration::from_secs(30), "the tunnels to carry TCP", || {
            tcp(from, to)
        })
        .unwrap_or_else(|e| panic!("{e}: {} to {to}\n{}", from.name, logs(&c, &a, &b)));
    }
    check_all(&wla, &wlb, &wlc, "first start");
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&wlb, move || {
        tx.send(TcpListener::bind((WL, 7001)).unwrap()).unwrap()
    });
    let _denied = rx.recv().unwrap();
    let opens = |ns: &Netns| {
        let to: SocketAddr = format!("{WLB_GLOBAL}:7001").parse().unwrap();
        in_netns(ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
        })
    };
    assert!(opens(&wla), "ova may open tcp/7001 on ovb's workload");
    assert!(!opens(&wlc), "ovc opened tcp/7001 through the policy");

    // The rules: one per direction on each translated gateway, none on gwc.
    let rules_a = translation_rules(&gwa).expect("gwa has the translation table");
    let rules_b = translation_rules(&gwb).expect("gwb has the translation table");
    assert_eq!(rules_a.len(), 2, "{rules_a:#?}");
    assert_eq!(rules_b.len(), 2, "{rules_b:#?}");
    assert!(
        rules_a.iter().any(|r| r.contains("10.128.0.0")),
        "{rules_a:#?}"
    );
    assert!(
        rules_b.iter().any(|r| r.contains("10.129.0.0")),
        "{rules_b:#?}"
    );
    assert_eq!(
        translation_rules(&gwc),
        None,
        "nothing is translated for ovc"
    );

    // straitctl: routes show both forms, resolve names the site and node.
    let routes = c.ctl_json(&["routes"]).unwrap();
    let global_of = |site: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["site"] == site && r["status"] == "accepted")
            .map(|r| r["global"].clone())
    };
    assert_eq!(global_of("ova"), Some(Value::from("10.128.0.0/16")));
    assert_eq!(global_of("ovb"), Some(Value::from("10.129.0.0/16")));
    assert_eq!(global_of("ovc"), Some(Value::Null));
    let resolved = c.ctl_json(&["resolve", WLB_GLOBAL]).unwrap();
    let m = &resolved["matches"];
    assert_eq!(m.as_array().map(Vec::len), Some(1), "{resolved}");
    assert_eq!(
        (&m[0]["site"], &m[0]["local"], &m[0]["node"], &m[0]["by"]),
        (
            &Value::from("ovb"),
            &Value::from(WL),
            &Value::from("ovb/gw"),
            &Value::from("global")
        ),
        "{resolved}"
    );
    let resolved = c.ctl_json(&["resolve", WL]).unwrap();
    assert_eq!(
        resolved["matches"].as_array().map(Vec::len),
        Some(2),
        "{resolved}"
    );
    let table = c.ctl(&["resolve", WLA_GLOBAL]).unwrap();
    println!("{}", String::from_utf8_lossy(&table.stdout));

    // A clean stop removes the table; the restarted agent puts the same rules back.
    let Agent { mut proc, dir, .. } = a;
    proc.stop();
    drop(proc);
    assert_eq!(
        translation_rules(&gwa),
        None,
        "the table outlived gwa's clean stop"
    );
    let token = c.token("ova", "gateway").unwrap();
    let a = Agent::run_in_netns(
        dir,
        &gwa.name,
        COORD.parse().unwrap(),
        "ova",
        "gw",
        "gateway",
        &token,
        &[
            "--prefix",
            "10.10.0.0/16",
            "--endpoint",
            "public=192.0.2.10:51820",
            "--probe-interval",
            "200ms",
        ],
    )
    .unwrap();
    wait_for(
        Duration::from_secs(30),
        "gwa's tunnels after its restart",
        || tcp(&wla, WLB_GLOBAL),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c, &a, &b)));
    assert_eq!(
        translation_rules(&gwa),
        Some(rules_a.clone()),
        "after a restart"
    );

    // SIGKILL leaves the table; the restarted agent replaces it, not adds to it.
    let Agent { mut proc, dir, .. } = b;
    proc.kill();
    drop(proc);
    assert_eq!(
        translation_rules(&gwb),
        Some(rules_b.clone()),
        "left by a killed agent"
    );
    let token = c.token("ovb", "gateway").unwrap();
    let b = Agent::run_in_netns(
        dir,
        &gwb.name,
        COORD.parse().unwrap(),
        "ovb",
        "gw",
        "gateway",
        &token,
        &[
            "--prefix",
            "10.10.0.0/16",
            "--endpoint",
            "public=203.0.113.10:51820",
            "--probe-interval",
            "200ms",
        ],
    )
    .unwrap();
    wait_for(
        Duration::from_secs(30),
        "gwb's tunnels after its restart",
        || tcp(&wlb, WLA_GLOBAL),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c, &a, &b)));
    assert_eq!(
        translation_rules(&gwb),
        Some(rules_b),
        "after a restart over a killed agent's table"
    );
    check_all(&wla, &wlb, &wlc, "after the restarts");
    assert_eq!(plain(&inet), 0, "a packet crossed the internet unencrypted");
    println!("translation rules on gwa: {rules_a:#?}");
}
