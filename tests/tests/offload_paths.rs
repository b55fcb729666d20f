//! Two Strait engines on real TUN devices with offloads, in two namespaces this test creates
//! (root needed): small, full-MTU (DF set) and fragmented packets cross, and a TCP transfer
//! goes through the segmentation path (one TUN read = many packets) on the sender and the
//! coalescing path (many packets = one TUN write) on the receiver, checked against the
//! kernel's own packet counters of the TUN devices.
//!
//! ```text
//!  netns A                                   netns B
//!  strait0 100.64.0.1/10 (engine)            strait0 100.64.0.2/10 (engine)
//!  a0 192.0.2.1/24  <-------- veth -------->  b0 192.0.2.2/24
//! ```

mod engine_node;

use std::process::{Command, Stdio};
use std::time::Duration;

use boringtun::x25519::{PublicKey, StaticSecret};
use engine_node::start;
use strait_agent::dataplane::engine::PeerSpec;
use strait_agent::dataplane::pump::Counters;
use strait_tests::netns::{veth, Netns};

/// The kernel's (rx, tx) packet counters of `strait0` in `ns`: rx = writes by the engine,
/// tx = packets (or 64 KiB segments) handed to the engine.
fn tun_counters(ns: &Netns) -> (u64, u64) {
    let v = ns.json(&["-s", "link", "show", "strait0"]);
    let stats = &v[0]["stats64"];
    (
        stats["rx"]["packets"].as_u64().unwrap(),
        stats["tx"]["packets"].as_u64().unwrap(),
    )
}

fn ping(ns: &Netns, args: &[&str]) -> std::process::Output {
    let mut all = vec!["ping", "-c", "2", "-i", "0.2", "-W", "2"];
    all.extend_from_slice(args);
    ns.exec(&all)
}

#[test]
fn segmented_and_coalesced_paths_carry_small_large_and_fragmented_packets_and_tcp() {
    let a = Netns::new("ofa");
    let b = Netns::new("ofb");
    veth(&a, "a0", &b, "b0");
    a.ip(&["addr", "add", "192.0.2.1/24", "dev", "a0"]);
    b.ip(&["addr", "add", "192.0.2.2/24", "dev", "b0"]);
    let a_secret = StaticSecret::from([31u8; 32]);
    let b_secret = StaticSecret::from([32u8; 32]);
    let a_key = *PublicKey::from(&a_secret).as_bytes();
    let b_key = *PublicKey::from(&b_secret).as_bytes();
    let node_a = start(
        &a,
        a_secret,
        "100.64.0.1/10",
        vec![],
        PeerSpec {
            public_key: b_key,
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            keepalive: None,
            candidates: vec![],
            next_public_key: None,
            priority: 0,
        },
    );
    let node_b = start(
        &b,
        b_secret,
        "100.64.0.2/10",
        vec![],
        PeerSpec {
            public_key: a_key,
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
            allowed_ips: vec!["100.64.0.1/32".parse().unwrap()],
            keepalive: None,
            candidates: vec![],
            next_public_key: None,
            priority: 0,
        },
    );

    // Small, full-MTU with DF set (1392 + 8 + 20 = 1420), and larger than the MTU (the
    // kernel fragments; the fragments cross separately and are reassembled).
    for (what, args) in [
        ("small", vec!["-s", "8"]),
        ("full MTU, DF", vec!["-M", "do", "-s", "1392"]),
        ("fragmented", vec!["-M", "dont", "-s", "4000"]),
    ] {
        let mut args = args.clone();
        args.push("100.64.0.2");
        let out = ping(&a, &args);
        assert!(
            out.status.success(),
            "{what} ping A->B failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // One byte over the MTU with DF: refused by A's own stack, never sent.
    let over = ping(&a, &["-M", "do", "-s", "1393", "100.64.0.2"]);
    assert!(!over.status.success());

    let (b_rx0, _) = tun_counters(&b);
    let (_, a_tx0) = tun_counters(&a);
    let a_read0 = Counters::get(&node_a.counters.tun_read_packets);
    let b_write0 = Counters::get(&node_b.counters.tun_write_packets);

    // 32 MiB of TCP A -> B, hashed at both ends.
    const SERVER: &str = "import socket,hashlib\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('100.64.0.2',5001));s.listen(1);s.settimeout(30)\nc,_=s.accept();c.settimeout(30);h=hashlib.sha256();n=0\nwhile True:\n d=c.recv(1<<20)\n if not d: break\n h.update(d);n+=len(d)\nprint(n,h.hexdigest())";
    const CLIENT: &str = "import socket,hashlib,os\ndata=os.urandom(32<<20)\nc=socket.create_connection(('100.64.0.2',5001),timeout=20);c.sendall(data);c.close()\nprint(len(data),hashlib.sha256(data).hexdigest())";
    let server = Command::new("ip")
        .args(["netns", "exec", &b.name, "python3", "-c", SERVER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(500));
    let sent = a.exec(&["python3", "-c", CLIENT]);
    assert!(
        sent.status.success(),
        "client: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let received = server.wait_with_output().expect("server");
    let sent = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    let received = String::from_utf8_lossy(&received.stdout).trim().to_string();
    assert!(sent.starts_with(&format!("{} ", 32 << 20)), "{sent}");
    assert_eq!(sent, received, "bytes or hash differ");

    // Segmentation: the kernel handed A's engine fewer (larger) packets than it encrypted.
    let (_, a_tx1) = tun_counters(&a);
    let a_reads = a_tx1 - a_tx0;
    let a_packets = Counters::get(&node_a.counters.tun_read_packets) - a_read0;
    // Coalescing: B's engine wrote fewer packets to the kernel than it decrypted.
    let (b_rx1, _) = tun_counters(&b);
    let b_writes = b_rx1 - b_rx0;
    let b_packets = Counters::get(&node_b.counters.tun_write_packets) - b_write0;
    println!(
        "A: {a_reads} TUN packets from the kernel -> {a_packets} packets encrypted; \
         B: {b_packets} packets decrypted -> {b_writes} TUN packets to the kernel; \
         UDP sends {} carrying {} datagrams",
        Counters::get(&node_a.counters.udp_sends),
        Counters::get(&node_a.counters.udp_send_datagrams),
    );
    assert!(
        a_packets > a_reads * 2,
        "segmentation did not happen: {a_reads} kernel packets -> {a_packets}"
    );
    assert!(
        b_packets > b_writes * 2,
        "coalescing did not happen: {b_packets} packets -> {b_writes} kernel packets"
    );
    assert!(
        Counters::get(&node_a.counters.udp_send_datagrams)
            > Counters::get(&node_a.counters.udp_sends),
        "no UDP GSO send carried more than one datagram"
    );
    drop(node_a);
    drop(node_b);
}
