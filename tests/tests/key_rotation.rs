//! WireGuard key rotation with real agents: while a one-way UDP flow crosses the tunnel
//! from the rotating gateway (a datagram every 5 ms; the other side sends nothing, so only
//! the rotating side's handshake can bring up new sessions), an operator rotates its key;
//! then the same for the other gateway. The new key is in every peer's map before it is
//! used; not one datagram may be lost, even though gwb's control connection is slow (a
//! relay delays what the coordinator sends it by 400 ms): gwb must take gwa's first
//! handshake under the new key before its map says so. Root needed; every namespace is
//! this test's own.
//!
//! ```text
//!   gwa 192.0.2.10 --- net (router; relay 203.0.113.1:7444 for gwb) --- gwb 198.51.100.10
//!                           |
//!                   coord 203.0.113.10:7443
//! ```

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_tests::impair::{Direction, Relay, RelaySpec};
use strait_tests::netns::{enter, ping_flow, uplink, Netns};
use strait_tests::procs::{wait_for, Agent, Coordinator, TWO_SITES};

/// `site/node`'s WireGuard key and announced next key, as the coordinator has them.
fn keys(c: &Coordinator, name: &str) -> Option<(String, Option<String>)> {
    let nodes = c.ctl_json(&["nodes"]).ok()?;
    let node = nodes.as_array()?.iter().find(|n| n["name"] == name)?;
    Some((
        node["wg-public-key"].as_str()?.to_string(),
        node["next-wg-public-key"].as_str().map(String::from),
    ))
}

fn overlay_ip_of(agent: &Agent, peer: &str) -> Option<String> {
    let map = agent.saved_map()?;
    map["peers"][peer]["overlay-ip"].as_str().map(String::from)
}

fn key_file(agent: &Agent) -> (String, u32) {
    let path = agent.state().join("wg.key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    (std::fs::read_to_string(&path).unwrap(), mode)
}

/// Sends `count` numbered datagrams from namespace `from` to `to_ip:port` (inside `to`),
/// one every `gap`, and counts the distinct ones that arrive: (sent, received).
fn udp_flow(
    from: &Netns,
    to: &Netns,
    to_ip: &str,
    port: u16,
    count: u32,
    gap: Duration,
) -> std::thread::JoinHandle<(u32, u32)> {
    let (from, to) = (from.path(), to.path());
    let target: std::net::SocketAddr = format!("{to_ip}:{port}").parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        enter(&to);
        let socket = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = [0u8; 64];
        // Until 2 s of silence after the last datagram, or a bound on the whole flow.
        let deadline = Instant::now() + gap * count + Duration::from_secs(30);
        while Instant::now() < deadline {
            match socket.recv(&mut buf) {
                Ok(4) => {
                    seen.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                    if seen.len() as u32 == count {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) if !seen.is_empty() => break,
                Err(_) => {}
            }
        }
        seen.len() as u32
    });
    ready_rx.recv().unwrap();
    std::thread::spawn(move || {
        enter(&from);
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let start = Instant::now();
        for i in 0..count {
            // Paced against the start, so a slow send does not stretch the flow.
            let due = start + gap * i;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            socket.send_to(&i.to_be_bytes(), target).unwrap();
        }
        (count, receiver.join().unwrap())
    })
}

/// Rotates `name`'s key through `straitctl` and waits until the coordinator has the new
/// key in use; returns it and how long that took.
fn rotate(c: &Coordinator, name: &str, agents: &[&Agent]) -> (String, Duration) {
    let (before, _) = keys(c, name).unwrap();
    let started = Instant::now();
    let out = c.ctl(&["rotate-key", name]).unwrap();
    assert!(
        out.status.success(),
        "rotate-key {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = || {
        agents
            .iter()
            .map(|a| a.proc.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let new = wait_for(
        Duration::from_secs(20),
        "the new key in use",
        || match keys(c, name)? {
            (key, None) if key != before => Some(key),
            _ => None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.log_text(), logs()));
    (new, started.elapsed())
}

#[test]
fn rotating_keys_loses_no_packet_of_a_running_flow() {
    let net = Netns::new("krnet");
    let gwa = Netns::new("krgwa");
    let gwb = Netns::new("krgwb");
    let coord = Netns::new("krco");
    net.sysctl("net.ipv4.ip_forward", "1");
    uplink(&net, "a0", &gwa, "eth0", "192.0.2", "10");
    uplink(&net, "b0", &gwb, "eth0", "198.51.100", "10");
    uplink(&net, "c0", &coord, "eth0", "203.0.113", "10");

    let addr: std::net::SocketAddr = "203.0.113.10:7443".parse().unwrap();
    let c = Coordinator::start_in(&coord.name, addr, TWO_SITES, "").unwrap();
    // gwb reaches the coordinator through a relay that can delay it.
    let relay = Relay::start(
        Some(&net),
        RelaySpec {
            listen: "203.0.113.1:7444".parse().unwrap(),
            upstream_from: "203.0.113.1".parse().unwrap(),
            target: addr,
            seed: 1,
        },
    )
    .unwrap();
    let start = |ns: &Netns, site: &str, node: &str, prefix: &str, public: &str, via| {
        let token = c.token(site, "gateway").unwrap();
        let endpoint = format!("public={public}:51820");
        let args = ["--prefix", prefix, "--endpoint", &endpoint];
        Agent::start_in_netns(&ns.name, via, site, node, "gateway", &token, &args).unwrap()
    };
    let a = start(&gwa, "aws-use1", "gwa", "10.10.0.0/16", "192.0.2.10", addr);
    let b = start(
        &gwb,
        "gcp-usc1",
        "gwb",
        "10.20.0.0/16",
        "198.51.100.10",
        relay.local_addr(),
    );
    let (a_ip, b_ip) = wait_for(Duration::from_secs(20), "both maps", || {
        Some((
            overlay_ip_of(&b, "aws-use1/gwa")?,
            overlay_ip_of(&a, "gcp-usc1/gwb")?,
        ))
    })
    .unwrap();
    wait_for(Duration::from_secs(20), "the tunnel", || {
        let (_, got) = ping_flow(&gwa.name, &b_ip, 1);
        (got == 1).then_some(())
    })
    .unwrap();
    let (a_key, _) = keys(&c, "gwa").unwrap();
    let (b_key, _) = keys(&c, "gwb").unwrap();
    let (a_file, _) = key_file(&a);
    relay.set_delay_in(Direction::ToClient, Duration::from_millis(400));

    // 2,400 datagrams at 5 ms (12 s) from the rotating side, across its rotation.
    const COUNT: u32 = 2400;
    const GAP: Duration = Duration::from_millis(5);
    let flow = udp_flow(&gwa, &gwb, &b_ip, 9001, COUNT, GAP);
    std::thread::sleep(Duration::from_secs(2));
    let (a_new, a_took) = rotate(&c, "gwa", &[&a, &b]);
    let a_flow = flow.join().unwrap();
    let flow = udp_flow(&gwb, &gwa, &a_ip, 9002, COUNT, GAP);
    std::thread::sleep(Duration::from_secs(2));
    let (b_new, b_took) = rotate(&c, "gwb", &[&a, &b]);
    let b_flow = flow.join().unwrap();
    println!(
        "rotations: gwa in {a_took:?}, gwb in {b_took:?}; one-way UDP flows gwa->gwb {a_flow:?}, gwb->gwa {b_flow:?} (sent, received)"
    );
    assert_ne!(a_new, a_key);
    assert_ne!(b_new, b_key);
    for (label, (sent, received)) in [("gwa -> gwb", a_flow), ("gwb -> gwa", b_flow)] {
        assert_eq!(
            received, sent,
            "{label}: datagrams lost across the rotation"
        );
    }

    // Each side switched its own key and took the other's from a handshake or the map.
    for (agent, peer_log) in [(&a, &b), (&b, &a)] {
        let own = agent.proc.log_text();
        assert!(own.contains("switched to the new WireGuard key"), "{own}");
        let other = peer_log.proc.log_text();
        assert!(
            other.contains("peer switched to its announced key"),
            "{other}"
        );
    }
    // The key file holds the new key, still private; the old one is gone from the maps.
    let (a_file_now, mode) = key_file(&a);
    assert_ne!(a_file_now, a_file);
    assert_eq!(mode, 0o600);
    let map_b: Value = b.saved_map().unwrap();
    assert_eq!(
        map_b["peers"]["aws-use1/gwa"]["wg-public-key"],
        a_new.as_str()
    );
    assert!(map_b["peers"]["aws-use1/gwa"]
        .get("next-wg-public-key")
        .is_none());

    // A restart keeps the rotated key: the coordinator sees no change, the tunnel works.
    let mut a = a;
    a.proc.stop();
    let dir = a.dir;
    let args = [
        "--prefix",
        "10.10.0.0/16",
        "--endpoint",
        "public=192.0.2.10:51820",
    ];
    let a = Agent::run_in_netns(
        dir, &gwa.name, addr, "aws-use1", "gwa", "gateway", "", &args,
    )
    .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the tunnel after a restart",
        || {
            let (_, got) = ping_flow(&gwa.name, &b_ip, 1);
            (got == 1).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", a.proc.log_text()));
    assert_eq!(keys(&c, "gwa").unwrap(), (a_new, None));
}
