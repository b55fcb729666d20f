//! The inter-site access policy, end to end: a real coordinator with a `[policy]`, two
//! gateway agents and two workloads in network namespaces this test creates (root needed;
//! nothing is added to the root namespace).
//!
//! ```text
//!          +------------------------- inet (router) --------------------------+
//!          | c0 198.51.100.1      a0 192.0.2.1            b0 203.0.113.1      |
//!          +-----+--------------------+-----------------------+---------------+
//!                |                    |                       |
//!          coord .10           gwa 192.0.2.10           gwb 203.0.113.10
//!                              (gateway aws-use1)       (gateway gcp-usc1)
//!                              lan0 10.10.0.1           lan0 10.20.0.1
//!                                    |                        |
//!                              wla 10.10.0.10           wlb 10.20.0.10
//!                              (workload)               (workload: TCP echo on 8443,
//!                                                        listeners on tcp/22, udp/8443)
//! ```
//!
//! The policy: default deny; aws-use1 may open tcp/8443 and ICMP to gcp-usc1 (`web`), and
//! tcp/22 from aws-use1 to gcp-usc1 is refused by a rule of its own (`no-ssh`). gwa is the
//! gateway a compromised site would have: the sending side never consults the policy, so
//! whatever wla sends toward site B leaves gwa encrypted, as from a gateway that ignored
//! its map. gwb, the receiving gateway, must let the allowed flow through both ways (the
//! replies pass gwa because gwa sent the flow), drop and count the rest before it reaches
//! wlb, report the drops to the coordinator (`straitctl policy`), and take a policy change
//! the coordinator reloads on SIGHUP without reconnecting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use strait_tests::background::Background;
use strait_tests::netns::{in_netns, uplink, Netns};
use strait_tests::procs::{metric, wait_for, Agent, Coordinator, Site};

const COORD: &str = "198.51.100.10:7443";
const SITES: &[Site<'static>] = &[
    Site("aws-use1", "10.10.0.0/16"),
    Site("gcp-usc1", "10.20.0.0/16"),
];
const WLB: &str = "10.20.0.10";

/// The policy the coordinator starts with (and `ports` of `web` as reloaded later).
fn policy(web_ports: &str) -> String {
    format!(
        "[policy]\ndefault = \"deny\"\n\
         [[policy.rules]]\nname = \"web\"\nfrom = \"aws-use1\"\nto = \"gcp-usc1\"\nports = {web_ports}\n\
         [[policy.rules]]\nname = \"no-ssh\"\naction = \"deny\"\nfrom = \"aws-use1\"\nto = \"gcp-usc1\"\nports = \"tcp/22\"\n"
    )
}
const WEB: &str = "[\"tcp/8443\", \"icmp\"]";
const WEB_AND_UDP: &str = "[\"tcp/8443\", \"udp/8443\", \"icmp\"]";

/// What wlb's listeners received.
#[derive(Default)]
struct Received {
    echoed: AtomicU64,
    ssh_accepted: AtomicU64,
    udp_datagrams: AtomicU64,
}

/// wlb's servers, on threads inside its namespace (stopped when `threads` drops), and what
/// they received.
struct Servers {
    got: Arc<Received>,
    _threads: Background,
}

fn servers(wlb: &Netns) -> Servers {
    let got = Arc::new(Received::default());
    let mut threads = Background::new();
    // Bound here, before the threads poll them, so no client races the bind.
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(wlb, move || {
        let echo = TcpListener::bind((WLB, 8443)).unwrap();
        let ssh = TcpListener::bind((WLB, 22)).unwrap();
        let udp = UdpSocket::bind((WLB, 8443)).unwrap();
        tx.send((echo, ssh, udp)).unwrap();
    });
    let (echo, ssh, udp) = rx.recv().unwrap();
    for listener in [echo, ssh] {
        let got = got.clone();
        let is_echo = listener.local_addr().unwrap().port() == 8443;
        listener.set_nonblocking(true).unwrap();
        threads.spawn_in(wlb, move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) if is_echo => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut buf = [0u8; 64];
                        if let Ok(n) = conn.read(&mut buf) {
                            let _ = conn.write_all(&buf[..n]);
                            got.echoed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {
                        got.ssh_accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
    }
    let g = got.clone();
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    threads.spawn_in(wlb, move |stop| {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if udp.recv_from(&mut buf).is_ok() {
                g.udp_datagrams.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Servers {
        got,
        _threads: threads,
    }
}

/// From inside `ns`: connects to `to`, sends a line and reads the echo.
fn echo(ns: &Netns, to: SocketAddr) -> Option<String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"through the tunnel").ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// From inside `ns`: whether a TCP connection to `to` opens within 2 s.
fn connects(ns: &Netns, to: SocketAddr) -> bool {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
    })
}

/// From inside `ns`: `n` UDP datagrams to `to`, 5 ms apart.
fn send_udp(ns: &Netns, to: SocketAddr, n: u32) {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..n {
            s.send_to(format!("datagram {i}").as_bytes(), to).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
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

/// Packets the named nftables counter in table `inet count` of `ns` saw.
fn counter(ns: &Netns, name: &str) -> u64 {
    let out = ns.exec(&["nft", "-j", "list", "counter", "inet", "count", name]);
    assert!(out.status.success(), "nft list counter {name}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .unwrap()
}

/// The agent's /metrics, fetched inside its namespace.
fn metrics(ns: &Netns, addr: &str) -> String {
    let out = ns.exec(&[
        "curl",
        "-s",
        "--max-time",
        "5",
        &format!("http://{addr}/metrics"),
    ]);
    assert!(out.status.success(), "curl {addr} in {}", ns.name);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dropped(text: &str, site: &str, reason: &str) -> u64 {
    metric(
        text,
        &format!(
            "strait_agent_access_dropped_packets_total{{site=\"{site}\",reason=\"{reason}\"}}"
        ),
    )
    .unwrap_or(0.0) as u64
}

/// What `straitctl policy` says node `id` dropped from `site` for `reason`.
fn reported(c: &Coordinator, id: &str, site: &str, reason: &str) -> Option<u64> {
    let v = c.ctl_json(&["policy"]).ok()?;
    let node = v["nodes"].as_array()?.iter().find(|n| n["node"] == id)?;
    node["drops"]
        .as_array()?
        .iter()
        .find(|d| d["site"] == site && d["reason"] == reason)?["packets"]
        .as_u64()
}

#[test]
fn the_receiving_gateway_drops_what_the_policy_forbids_whatever_the_sender_does() {
    let inet = Netns::new("pinet");
    let coord = Netns::new("pcoord");
    let gwa = Netns::new("pgwa");
    let gwb = Netns::new("pgwb");
    let wla = Netns::new("pwla");
    let wlb = Netns::new("pwlb");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    uplink(&gwa, "lan0", &wla, "eth0", "10.10.0", "10");
    uplink(&gwb, "lan0", &wlb, "eth0", "10.20.0", "10");
    // The router counts gwa's WireGuard datagrams to gwb, and any packet between the two
    // sites' ranges that crosses it unencrypted.
    nft(
        &inet,
        "add table inet count; \
         add counter inet count wg_ab; add counter inet count plain; \
         add chain inet count through { type filter hook forward priority 0; }; \
         add rule inet count through ip saddr 192.0.2.10 ip daddr 203.0.113.10 udp dport 51820 counter name wg_ab; \
         add rule inet count through ip saddr 10.0.0.0/8 ip daddr 10.0.0.0/8 counter name plain",
    );
    // wlb counts what reaches it from site A on the forbidden services.
    nft(
        &wlb,
        "add table inet count; \
         add counter inet count ssh_in; add counter inet count udp_in; \
         add chain inet count arrive { type filter hook input priority 0; }; \
         add rule inet count arrive ip saddr 10.10.0.0/16 tcp dport 22 counter name ssh_in; \
         add rule inet count arrive ip saddr 10.10.0.0/16 meta l4proto udp counter name udp_in",
    );

    let mut c =
        Coordinator::start_in(&coord.name, COORD.parse().unwrap(), SITES, &policy(WEB)).unwrap();
    let gateway = |ns: &Netns, site: &str, node: &str, prefix: &str, public: &str| {
        let token = c.token(site, "gateway").unwrap();
        Agent::start_in_netns(
            &ns.name,
            COORD.parse().unwrap(),
            site,
            node,
            "gateway",
            &token,
            &[
                "--prefix",
                prefix,
                "--endpoint",
                &format!("public={public}:51820"),
                "--metrics-listen",
                &format!("{public}:9466"),
                "--probe-interval",
                "200ms",
            ],
        )
        .unwrap()
    };
    let a = gateway(&gwa, "aws-use1", "gwa", "10.10.0.0/16", "192.0.2.10");
    let b = gateway(&gwb, "gcp-usc1", "gwb", "10.20.0.0/16", "203.0.113.10");
    let logs = |c: &Coordinator| {
        format!(
            "--- gwa\n{}\n--- gwb\n{}\n--- coordinator\n{}",
            a.proc.log_text(),
            b.proc.log_text(),
            c.log_text()
        )
    };
    let srv = servers(&wlb);
    let web: SocketAddr = format!("{WLB}:8443").parse().unwrap();
    let ssh: SocketAddr = format!("{WLB}:22").parse().unwrap();

    // The allowed flow works both ways: gwb lets wla's connection in, gwa lets the replies
    // back (its own policy lets nothing in but replies to what it sent).
    let answer = wait_for(
        Duration::from_secs(30),
        "wla to reach wlb on tcp/8443",
        || echo(&wla, web),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c)));
    assert_eq!(answer, "through the tunnel");
    assert_eq!(srv.got.echoed.load(Ordering::Relaxed), 1);
    // ICMP: wla's pings to wlb are allowed, and their replies pass gwa; wlb's pings to wla
    // are refused by gwa (default deny, no rule into site A).
    assert_eq!(wla.ping_flow(WLB, 5), (5, 5), "wla -> wlb ping");
    assert_eq!(wlb.ping_flow("10.10.0.10", 3), (3, 0), "wlb -> wla ping");
    let gwa_metrics = metrics(&gwa, "192.0.2.10:9466");
    assert_eq!(
        dropped(&gwa_metrics, "gcp-usc1", "default"),
        3,
        "{gwa_metrics}"
    );

    // wla sends what the policy forbids: gwa carries it (it does not filter), gwb drops it.
    const DATAGRAMS: u32 = 40;
    let wg_before = counter(&inet, "wg_ab");
    send_udp(&wla, web, DATAGRAMS);
    assert!(!connects(&wla, ssh), "tcp/22 opened through the policy");
    std::thread::sleep(Duration::from_millis(500));
    let wg_sent = counter(&inet, "wg_ab") - wg_before;
    assert!(
        wg_sent > u64::from(DATAGRAMS),
        "only {wg_sent} WireGuard datagrams left gwa for gwb; the forbidden packets must leave it encrypted"
    );
    assert_eq!(
        counter(&inet, "plain"),
        0,
        "a packet crossed the internet unencrypted"
    );
    let b_metrics = metrics(&gwb, "203.0.113.10:9466");
    assert_eq!(
        dropped(&b_metrics, "aws-use1", "default"),
        u64::from(DATAGRAMS),
        "{b_metrics}"
    );
    let syns = dropped(&b_metrics, "aws-use1", "no-ssh");
    assert!(syns >= 1, "{b_metrics}");
    assert_eq!(metric(&b_metrics, "strait_agent_access_rules"), Some(2.0));
    // Nothing of it reached wlb.
    assert_eq!(srv.got.udp_datagrams.load(Ordering::Relaxed), 0);
    assert_eq!(srv.got.ssh_accepted.load(Ordering::Relaxed), 0);
    assert_eq!((counter(&wlb, "ssh_in"), counter(&wlb, "udp_in")), (0, 0));
    println!(
        "gwa sent {wg_sent} WireGuard datagrams to gwb for {DATAGRAMS} forbidden UDP datagrams and {syns} SYNs; gwb dropped all of them"
    );

    // The coordinator shows the policy and gwb's drops (reported with its links, every 5 s).
    wait_for(
        Duration::from_secs(15),
        "straitctl policy to show gwb's drops",
        || {
            (reported(&c, "gcp-usc1/gwb", "aws-use1", "default") == Some(u64::from(DATAGRAMS))
                && reported(&c, "gcp-usc1/gwb", "aws-use1", "no-ssh") == Some(syns))
            .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", c.ctl_json(&["policy"]), logs(&c)));
    let table = c.ctl(&["policy"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    println!("{table}");
    // Compared word by word: column widths depend on the contents.
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let lines: Vec<String> = table.lines().map(words).collect();
    for line in [
        "web allow aws-use1 gcp-usc1 tcp/8443,icmp".to_string(),
        "no-ssh deny aws-use1 gcp-usc1 tcp/22".to_string(),
        format!("gcp-usc1/gwb aws-use1 default {DATAGRAMS}"),
        format!("gcp-usc1/gwb aws-use1 no-ssh {syns}"),
        "aws-use1/gwa gcp-usc1 default 3".to_string(),
    ] {
        assert!(lines.contains(&line), "{line:?} not in\n{table}");
    }
    assert!(
        table.starts_with("access policy: default deny, 2 rule(s)"),
        "{table}"
    );

    // A policy change reaches the agents live: SIGHUP makes the coordinator reload it, and
    // the new map version carries it over the sessions they have (no reconnection).
    let sessions = |agent: &Agent| agent.proc.log_text().matches(": registered ").count();
    let (a_sessions, b_sessions) = (sessions(&a), sessions(&b));
    let since = c.ctl_json(&["policy"]).unwrap()["since-version"]
        .as_u64()
        .unwrap();
    let path = c.state().join("coordinator.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&policy(WEB)));
    std::fs::write(&path, text.replace(&policy(WEB), &policy(WEB_AND_UDP))).unwrap();
    let pid = c.proc.as_ref().unwrap().pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let version = wait_for(
        Duration::from_secs(10),
        "gwb's map to carry udp/8443",
        || {
            let map = b.saved_map()?;
            map["access"]
                .to_string()
                .contains("udp/8443")
                .then(|| map["version"].as_u64())?
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c)));
    let view = c.ctl_json(&["policy"]).unwrap();
    assert!(view["since-version"].as_u64().unwrap() > since, "{view}");
    assert!(version >= view["since-version"].as_u64().unwrap(), "{view}");
    assert!(c.log_text().contains("access policy reloaded"));
    send_udp(&wla, web, 5);
    wait_for(
        Duration::from_secs(5),
        "the newly allowed UDP to reach wlb",
        || (srv.got.udp_datagrams.load(Ordering::Relaxed) == 5).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c)));
    assert_eq!(
        (sessions(&a), sessions(&b)),
        (a_sessions, b_sessions),
        "an agent reconnected to get the new policy"
    );
    // A broken policy is refused and the one in force stays.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("udp/8443", "udp/99999")).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(
        Duration::from_secs(5),
        "the coordinator to refuse the broken policy",
        || {
            c.log_text()
                .contains("access policy not reloaded")
                .then_some(())
        },
    )
    .unwrap();
    assert!(c.log_text().contains("udp/99999"), "{}", c.log_text());
    send_udp(&wla, web, 5);
    wait_for(Duration::from_secs(5), "UDP to keep reaching wlb", || {
        (srv.got.udp_datagrams.load(Ordering::Relaxed) == 10).then_some(())
    })
    .unwrap();
    c.proc.as_mut().unwrap().stop();
}
