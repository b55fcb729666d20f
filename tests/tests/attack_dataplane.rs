//! Attacks on the data plane, with real coordinator and agent processes in network namespaces
//! this test creates (root needed; nothing is added to the root namespace). Each attack must
//! be refused, counted in a metric, and leave everyone else's service as it was.
//!
//! 1. Prefix hijack: site C's gateway advertises its own prefix and, besides, the default
//!    routes, site A's prefix and a more-specific inside it.
//!
//! ```text
//!          +--------------------------- inet (router) ----------------------------+
//!          | c0 198.51.100.1   a0 192.0.2.1   b0 203.0.113.1   x0 198.18.0.1     |
//!          +----+----------------+--------------+----------------+---------------+
//!               |                |              |                |
//!        coord .10        gwa 192.0.2.10   gwb 203.0.113.10   gwc 198.18.0.10 (hijacker)
//!                         lan0 10.10.0.1   lan0 10.20.0.1     lan0 10.30.0.1
//!                              10.10.5.1         |                  |
//!                              |            wlb 10.20.0.10     wlc 10.30.0.10
//!                         wla 10.10.0.10
//!                             10.10.5.10
//! ```
//!
//! 2. Forged probes: an attacker on the internet (`atk`, 198.18.1.10) sends gwa's WireGuard
//!    port forged probes, genuine probes it captured earlier (replays) and garbage. gwb
//!    announces a dead interconnect endpoint besides its public one, so a forgery that made
//!    the dead path look alive would move the tunnel onto it.
//!
//! ```text
//!          +---------------------- inet (router) -----------------------+
//!          | c0 198.51.100.1   a0 192.0.2.1   b0 203.0.113.1   x0 198.18.1.1
//!          +----+----------------+--------------+----------------+-----+
//!               |                |              |                |
//!        coord .10        gwa 192.0.2.10   gwb 203.0.113.10    atk 198.18.1.10
//!                              |            (+ interconnect=203.0.113.99, dead)
//!                         wla 10.10.0.10   wlb 10.20.0.10
//! ```

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use strait_tests::netns::{uplink, Netns};
use strait_tests::procs::{metric, wait_for, Agent, Coordinator, Site};

const COORD: &str = "198.51.100.10:7443";
const SITES: &[Site<'static>] = &[
    Site("aws-use1", "10.10.0.0/16"),
    Site("gcp-usc1", "10.20.0.0/16"),
    Site("azure-eus", "10.30.0.0/16"),
];

/// `GET url` from inside `ns` (the metrics endpoints listen inside the namespaces); the body.
fn curl_in(ns: &Netns, url: &str) -> String {
    let out = ns.exec(&["curl", "-s", "--max-time", "5", url]);
    assert!(out.status.success(), "curl {url} in {}", ns.name);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packets through `dev` in `ns` so far: (received, sent), the kernel's counters.
fn link_packets(ns: &Netns, dev: &str) -> (u64, u64) {
    let v = &ns.json(&["-s", "link", "show", dev])[0]["stats64"];
    (
        v["rx"]["packets"].as_u64().unwrap_or(0),
        v["tx"]["packets"].as_u64().unwrap_or(0),
    )
}

/// Every route in table 21332 (Strait's), both families, as `ip route` prints them.
fn strait_routes(ns: &Netns) -> Vec<String> {
    ["-4", "-6"]
        .iter()
        .flat_map(|family| {
            ns.ip(&[family, "route", "show", "table", "21332"])
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// A gateway agent in `ns` with `endpoints` (`kind=addr`) and `prefixes` (comma-separated).
fn gateway(
    c: &Coordinator,
    ns: &Netns,
    site: &str,
    node: &str,
    prefixes: &str,
    endpoints: &[&str],
    extra: &[&str],
) -> Agent {
    let token = c.token(site, "gateway").unwrap();
    let mut args = vec!["--prefix", prefixes, "--probe-interval", "200ms"];
    for e in endpoints {
        args.extend(["--endpoint", e]);
    }
    args.extend(extra);
    Agent::start_in_netns(
        &ns.name,
        COORD.parse().unwrap(),
        site,
        node,
        "gateway",
        &token,
        &args,
    )
    .unwrap()
}

#[test]
fn a_gateway_advertising_other_sites_prefixes_hijacks_nothing() {
    let inet = Netns::new("hinet");
    let coord = Netns::new("hcoord");
    let gwa = Netns::new("hgwa");
    let gwb = Netns::new("hgwb");
    let gwc = Netns::new("hgwc");
    let wla = Netns::new("hwla");
    let wlb = Netns::new("hwlb");
    let wlc = Netns::new("hwlc");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    uplink(&inet, "x0", &gwc, "up0", "198.18.0", "10");
    uplink(&gwa, "lan0", &wla, "eth0", "10.10.0", "10");
    uplink(&gwb, "lan0", &wlb, "eth0", "10.20.0", "10");
    uplink(&gwc, "lan0", &wlc, "eth0", "10.30.0", "10");
    // A second subnet of site A, inside the more-specific the hijacker claims.
    gwa.ip(&["addr", "add", "10.10.5.1/24", "dev", "lan0"]);
    wla.ip(&["addr", "add", "10.10.5.10/24", "dev", "eth0"]);

    let c = Coordinator::start_in(
        &coord.name,
        COORD.parse().unwrap(),
        SITES,
        "metrics-listen = \"198.51.100.10:9465\"",
    )
    .unwrap();
    let a = gateway(
        &c,
        &gwa,
        "aws-use1",
        "gwa",
        "10.10.0.0/16",
        &["public=192.0.2.10:51820"],
        &[],
    );
    let b = gateway(
        &c,
        &gwb,
        "gcp-usc1",
        "gwb",
        "10.20.0.0/16",
        &["public=203.0.113.10:51820"],
        &[],
    );
    // The hijacker: its own prefix, both default routes, site A's prefix exactly and a
    // more-specific inside it.
    let hijacked = ["0.0.0.0/0", "::/0", "10.10.0.0/16", "10.10.5.0/24"];
    let hijacker = gateway(
        &c,
        &gwc,
        "azure-eus",
        "gwc",
        &format!("10.30.0.0/16,{}", hijacked.join(",")),
        &["public=198.18.0.10:51820"],
        &[],
    );
    let logs = || {
        format!(
            "--- gwa\n{}\n--- gwb\n{}\n--- gwc\n{}\n--- coordinator\n{}",
            a.proc.log_text(),
            b.proc.log_text(),
            hijacker.proc.log_text(),
            c.log_text()
        )
    };
    for (from, to) in [
        (&wlb, "10.10.0.10"),
        (&wlb, "10.10.5.10"),
        (&wla, "10.30.0.10"),
    ] {
        wait_for(
            Duration::from_secs(20),
            &format!("{to} from {}", from.name),
            || (from.ping_flow(to, 1).1 == 1).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    }

    // Each hijacked prefix is refused with the conflict named; the legitimate one is not.
    let routes = c.ctl_json(&["routes"]).unwrap();
    let of_gwc: BTreeMap<&str, &Value> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["node"] == "gwc")
        .map(|r| (r["prefix"].as_str().unwrap(), r))
        .collect();
    println!("gwc's routes: {of_gwc:#?}");
    assert_eq!(of_gwc["10.30.0.0/16"]["status"], "accepted");
    for (prefix, names) in [
        ("0.0.0.0/0", "covers the default route"),
        ("::/0", "covers the default route"),
        (
            "10.10.0.0/16",
            "overlaps site aws-use1's prefix 10.10.0.0/16",
        ),
        (
            "10.10.5.0/24",
            "overlaps site aws-use1's prefix 10.10.0.0/16",
        ),
    ] {
        let r = of_gwc
            .get(prefix)
            .unwrap_or_else(|| panic!("no route entry for {prefix}: {routes:#}"));
        assert_eq!(r["status"], "refused", "{r}");
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(names), "{prefix}: {reason}");
    }
    let table = String::from_utf8(c.ctl(&["routes"]).unwrap().stdout).unwrap();
    println!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("10.10.5.0/24") && l.contains("refused")),
        "{table}"
    );

    // Counted by kind of conflict, never by prefix.
    let metrics = curl_in(&coord, "http://198.51.100.10:9465/metrics");
    let refused = |reason: &str| {
        metric(
            &metrics,
            &format!("strait_coordinator_refused_prefixes_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (default_route, other_site) = (refused("default-route"), refused("other-site"));
    println!("refused_prefixes_total: default-route {default_route}, other-site {other_site}");
    assert!(default_route >= 2.0, "{metrics}");
    assert!(other_site >= 2.0, "{metrics}");
    assert!(
        !metrics.contains("refused_prefixes_total{prefix"),
        "{metrics}"
    );

    // No node routes a hijacked prefix to the hijacker: not in any map's allowed IPs of gwc,
    // not in any kernel table. Site A's prefix still goes to site A.
    for (name, agent) in [("gwa", &a), ("gwb", &b)] {
        let map = agent.saved_map().unwrap();
        let allowed: Vec<&str> = map["peers"]["azure-eus/gwc"]["allowed-ips"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no peer gwc: {map:#}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        println!("{name}'s map: gwc carries {allowed:?}");
        assert!(allowed.contains(&"10.30.0.0/16"), "{allowed:?}");
        for p in &allowed {
            assert!(
                !hijacked.contains(p) && !p.starts_with("10.10."),
                "{name} gives gwc {p}"
            );
        }
    }
    let gwb_map = b.saved_map().unwrap();
    assert!(
        gwb_map["peers"]["aws-use1/gwa"]["allowed-ips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "10.10.0.0/16"),
        "{gwb_map:#}"
    );
    for (ns, own) in [(&gwa, "10.10.0.0/16"), (&gwb, "10.20.0.0/16")] {
        let table = strait_routes(ns);
        println!("{} table 21332: {table:#?}", ns.name);
        for line in &table {
            // A fail-closed twin reads `unreachable PREFIX ...`.
            let dest = line
                .split_whitespace()
                .find(|w| *w != "unreachable")
                .unwrap_or_default();
            assert!(
                !["default", "0.0.0.0/0", "::/0", "10.10.5.0/24", own].contains(&dest),
                "{}: {line}",
                ns.name
            );
        }
        assert!(
            table.iter().any(|l| l.starts_with("10.30.0.0/16 ")),
            "{}: {table:?}",
            ns.name
        );
    }
    assert!(
        strait_routes(&gwb)
            .iter()
            .any(|l| l.starts_with("10.10.0.0/16 ")),
        "gwb has no route to site A"
    );

    // Traffic from site B to both of site A's subnets arrives through gwa; the hijacker's
    // TUN device sees none of it (and nothing else meanwhile).
    let (gwa_rx0, _) = link_packets(&gwa, "strait0");
    let gwc0 = link_packets(&gwc, "strait0");
    let mut delivered = 0;
    for to in ["10.10.0.10", "10.10.5.10"] {
        let (sent, got) = wlb.ping_flow(to, 100);
        println!("wlb -> {to}: {got}/{sent}");
        assert_eq!(sent, got, "{to}\n{}", logs());
        delivered += got;
    }
    let (gwa_rx, _) = link_packets(&gwa, "strait0");
    let gwc1 = link_packets(&gwc, "strait0");
    println!(
        "gwa strait0 rx +{}; gwc strait0 rx +{} tx +{}",
        gwa_rx - gwa_rx0,
        gwc1.0 - gwc0.0,
        gwc1.1 - gwc0.1
    );
    assert!(gwa_rx - gwa_rx0 >= u64::from(delivered), "not through gwa");
    assert_eq!(gwc1.0, gwc0.0, "the hijacker's TUN device received packets");

    // Refusal is per prefix: the hijacker's own prefix works, both ways.
    for (from, to) in [(&wla, "10.30.0.10"), (&wlc, "10.20.0.10")] {
        let (sent, got) = from.ping_flow(to, 20);
        assert_eq!(sent, got, "{} -> {to}\n{}", from.name, logs());
    }
}

/// Captures, for `secs` seconds, the probe datagrams arriving at `dev` in `ns` for port
/// 51820: (kind byte, datagram), each distinct datagram once.
fn capture_probes(ns: &Netns, dev: &str, secs: f64) -> Vec<(u8, Vec<u8>)> {
    const CAPTURE: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0800))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
end, seen = time.time() + float(sys.argv[2]), set()
while time.time() < end:
    try:
        frame, addr = s.recvfrom(4096)
    except socket.timeout:
        continue
    if addr[2] != socket.PACKET_HOST:
        continue
    ip = frame[14:]
    if len(ip) < 20 or ip[9] != 17:
        continue
    udp = ip[(ip[0] & 15) * 4:]
    payload = udp[8:]
    if struct.unpack('!H', udp[2:4])[0] == 51820 and len(payload) == 36 and payload[:2] == b'SP' and payload not in seen:
        seen.add(payload)
        print(payload[3], payload.hex(), flush=True)
"#;
    let out = ns.exec(&["python3", "-c", CAPTURE, dev, &secs.to_string()]);
    assert!(
        out.status.success(),
        "capture: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (kind, hex) = l.split_once(' ')?;
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()?;
            Some((kind.parse().ok()?, bytes))
        })
        .collect()
}

/// The attacker: sends `target` the captured replies (`replays` times each), the captured
/// requests once each (and counts the answers), each reply with a wrong MAC and with a
/// changed version, probes with an unknown sender, and garbage of every size. One datagram
/// per millisecond. Prints what it sent as JSON.
const ATTACK: &str = r#"
import json, os, socket, sys, time
target = (sys.argv[1], int(sys.argv[2]))
replays = int(sys.argv[3])
probes = [(int(k), bytes.fromhex(h)) for k, h in (l.split() for l in sys.stdin.read().split('\n') if l.strip())]
replies = [p for k, p in probes if k == 2]
requests = [p for k, p in probes if k == 1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 40000))
sent = {'replayed-replies': 0, 'replayed-requests': 0, 'bad-mac': 0, 'unknown-sender': 0, 'garbage': 0}
def send(d, what):
    s.sendto(d, target)
    sent[what] += 1
    time.sleep(0.001)
for _ in range(replays):
    for p in replies:
        send(p, 'replayed-replies')
for p in requests:
    send(p, 'replayed-requests')
for p in replies:
    send(p[:20] + os.urandom(16), 'bad-mac')
    send(p[:2] + b'\x07' + p[3:], 'bad-mac')
    send(p[:3] + b'\x01' + p[4:], 'bad-mac')
for _ in range(100):
    send(b'SP\x01\x02' + os.urandom(32), 'unknown-sender')
for n in list(range(0, 200)) + [1500]:
    d = bytearray(os.urandom(n))
    if n > 0:
        d[0] = n % 6
    if n == 36:
        d[0] = 0x54
    send(bytes(d), 'garbage')
s.settimeout(1.0)
answers = 0
try:
    while True:
        d = s.recv(2048)
        if len(d) == 36 and d[:2] == b'SP':
            answers += 1
except socket.timeout:
    pass
sent['answers-to-replayed-requests'] = answers
print(json.dumps(sent))
"#;

#[test]
fn forged_and_replayed_probes_are_counted_and_change_no_path() {
    let inet = Netns::new("finet");
    let coord = Netns::new("fcoord");
    let gwa = Netns::new("fgwa");
    let gwb = Netns::new("fgwb");
    let wla = Netns::new("fwla");
    let wlb = Netns::new("fwlb");
    let atk = Netns::new("fatk");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    uplink(&inet, "x0", &atk, "up0", "198.18.1", "10");
    uplink(&gwa, "lan0", &wla, "eth0", "10.10.0", "10");
    uplink(&gwb, "lan0", &wlb, "eth0", "10.20.0", "10");

    let c = Coordinator::start_in(&coord.name, COORD.parse().unwrap(), SITES, "").unwrap();
    let mut a = gateway(
        &c,
        &gwa,
        "aws-use1",
        "gwa",
        "10.10.0.0/16",
        &["public=192.0.2.10:51820"],
        &["--metrics-listen", "192.0.2.10:9464"],
    );
    let b = gateway(
        &c,
        &gwb,
        "gcp-usc1",
        "gwb",
        "10.20.0.0/16",
        &[
            "public=203.0.113.10:51820",
            // Preferred, but nobody is there.
            "interconnect=203.0.113.99:51820",
        ],
        &[],
    );
    let logs = |a: &Agent| {
        format!(
            "--- gwa\n{}\n--- gwb\n{}",
            a.proc.log_text(),
            b.proc.log_text()
        )
    };
    wait_for(
        Duration::from_secs(20),
        "workload A to reach workload B",
        || (wla.ping_flow("10.20.0.10", 1).1 == 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a)));

    let peer = r#"peer="gcp-usc1/gwb""#;
    let public = format!(r#"{{{peer},path_kind="public",address="203.0.113.10:51820"}}"#);
    let dead = format!(r#"{{{peer},path_kind="interconnect",address="203.0.113.99:51820"}}"#);
    let scrape = || curl_in(&gwa, "http://192.0.2.10:9464/metrics");
    // Settled: the public path up and active, the interconnect down.
    let settled = |m: &String| {
        metric(m, &format!("strait_path_active{public}")) == Some(1.0)
            && metric(m, &format!("strait_path_up{public}")) == Some(1.0)
            && metric(m, &format!("strait_path_up{dead}")) == Some(0.0)
            && metric(m, &format!("strait_path_active{dead}")) == Some(0.0)
    };
    wait_for(Duration::from_secs(20), "gwa's paths to settle", || {
        Some(scrape()).filter(settled)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", scrape(), logs(&a)));
    let link = || -> Value {
        let links = c.ctl_json(&["links"]).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["a"] == "aws-use1/gwa" && l["b"] == "gcp-usc1/gwb")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let before = wait_for(Duration::from_secs(15), "links to show the path", || {
        Some(link()).filter(|l| l["path"] == "public 203.0.113.10:51820" && l["loss"] == 0.0)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", link()));
    println!("before: {before}");

    // Genuine probes, captured on the wire at gwa: gwb's requests and its replies.
    let captured = capture_probes(&gwa, "up0", 2.0);
    let replies = captured.iter().filter(|(k, _)| *k == 2).count();
    let requests = captured.iter().filter(|(k, _)| *k == 1).count();
    println!("captured {replies} replies and {requests} requests from gwb");
    assert!(replies >= 3 && requests >= 3, "{captured:?}");
    // Replayed a second later, their probes are no longer in flight.
    std::thread::sleep(Duration::from_secs(1));

    let counters = |m: &str| -> BTreeMap<&'static str, f64> {
        ["unknown-sender", "bad-mac", "malformed", "not-in-flight"]
            .into_iter()
            .map(|r| {
                let series = format!("strait_agent_probes_rejected_total{{reason=\"{r}\"}}");
                (
                    r,
                    metric(m, &series).unwrap_or_else(|| panic!("no {series} in\n{m}")),
                )
            })
            .collect()
    };
    let m0 = scrape();
    let rejected0 = counters(&m0);
    let inbound0 = metric(
        &m0,
        r#"strait_dataplane_packets_total{direction="inbound"}"#,
    )
    .unwrap();

    // The attack, while workload A pings workload B.
    const REPLAYS: usize = 20;
    let mut attacker = Command::new("ip")
        .args(["netns", "exec", &atk.name, "python3", "-c", ATTACK])
        .args(["192.0.2.10", "51820", &REPLAYS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let lines: String = captured
        .iter()
        .map(|(k, d)| {
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            format!("{k} {hex}\n")
        })
        .collect();
    std::io::Write::write_all(attacker.stdin.as_mut().unwrap(), lines.as_bytes()).unwrap();
    drop(attacker.stdin.take());
    let (sent_pings, got_pings) = wla.ping_flow("10.20.0.10", 200);
    let out = attacker.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "attacker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: BTreeMap<String, f64> = serde_json::from_slice(&out.stdout).unwrap();
    println!("attacker sent: {sent:?}");
    println!("pings during the attack: {got_pings}/{sent_pings}");
    assert_eq!(sent_pings, got_pings, "the tunnel suffered\n{}", logs(&a));

    // The agent lives, and counted every forged or replayed probe by reason.
    let exited = a.proc.exited();
    assert!(exited.is_none(), "gwa died: {exited:?}\n{}", logs(&a));
    let m1 = wait_for(Duration::from_secs(5), "the counters to settle", || {
        let m = scrape();
        (counters(&m)["unknown-sender"] - rejected0["unknown-sender"] >= sent["unknown-sender"])
            .then_some(m)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape()));
    let rejected1 = counters(&m1);
    let delta: BTreeMap<&str, f64> = rejected1
        .iter()
        .map(|(r, v)| (*r, v - rejected0[r]))
        .collect();
    let inbound1 = metric(
        &m1,
        r#"strait_dataplane_packets_total{direction="inbound"}"#,
    )
    .unwrap();
    println!(
        "probes rejected during the attack: {delta:?}; inbound datagrams +{}",
        inbound1 - inbound0
    );
    assert_eq!(delta["bad-mac"], sent["bad-mac"], "{m1}");
    assert_eq!(delta["unknown-sender"], sent["unknown-sender"], "{m1}");
    assert_eq!(delta["malformed"], 0.0, "{m1}");
    // Every replayed reply. A genuine reply that came after its probe's timeout would count
    // here too; on these links hardly any does.
    let stale = delta["not-in-flight"] - sent["replayed-replies"];
    assert!((0.0..5.0).contains(&stale), "{delta:?} {sent:?}");

    // The paths are as they were: the dead interconnect still down, the public path active
    // with no loss; and the operator sees the same.
    assert!(settled(&m1), "{m1}");
    // Figures reach the coordinator with the agent's next link reports.
    std::thread::sleep(Duration::from_secs(2));
    let m2 = scrape();
    assert!(settled(&m2), "{m2}");
    let after = link();
    println!("after: {after}");
    assert_eq!(after["path"], before["path"], "{after}");
    assert_eq!(after["loss"], 0.0, "{after}");
    assert!(
        after["rtt-ms"].as_f64().is_some_and(|r| r < 50.0),
        "{after}"
    );
    let (sent_pings, got_pings) = wla.ping_flow("10.20.0.10", 50);
    assert_eq!(sent_pings, got_pings, "the tunnel after the attack");
    let exited = a.proc.exited();
    assert!(exited.is_none(), "gwa died: {exited:?}\n{}", logs(&a));
    assert!(
        !a.proc.log_text().contains("panicked"),
        "{}",
        a.proc.log_text()
    );
}
