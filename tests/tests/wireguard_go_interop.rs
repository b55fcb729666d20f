//! Strait's WireGuard engine (boringtun on a real TUN device) interoperates with stock
//! WireGuard: Debian's `wireguard-go`, configured with `wg`, in a second namespace.
//!
//! ```text
//!  netns A (this test's engine)            netns B (wireguard-go)
//!  strait0 100.64.0.1/10                   wgi<pid> 100.64.0.2/10
//!  a0 192.0.2.1/24  <---- veth ---->  b0 192.0.2.2/24
//! ```

mod engine_node;

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use strait_agent::dataplane::engine::PeerSpec;
use strait_agent::dataplane::routes::{Route, Via};
use strait_tests::netns::{veth, Netns, WireguardGo};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn engine_and_wireguard_go_exchange_traffic_both_ways() {
    let a = Netns::new("wga");
    let b = Netns::new("wgb");
    veth(&a, "a0", &b, "b0");
    a.ip(&["addr", "add", "192.0.2.1/24", "dev", "a0"]);
    b.ip(&["addr", "add", "192.0.2.2/24", "dev", "b0"]);

    let a_secret = StaticSecret::from([11u8; 32]);
    let a_public = PublicKey::from(&a_secret);
    let b_secret = StaticSecret::from([22u8; 32]);
    let b_public = PublicKey::from(&b_secret);
    // wireguard-go in B, configured with wg.
    let wg_go = WireguardGo::start(&b, "wgi");
    let wg_if = &wg_go.interface;
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("b.key");
    std::fs::write(&key_file, b64(&b_secret.to_bytes())).unwrap();
    let set = b.exec(&[
        "wg",
        "set",
        wg_if.as_str(),
        "private-key",
        key_file.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &b64(a_public.as_bytes()),
        "allowed-ips",
        "100.64.0.1/32",
        "endpoint",
        "192.0.2.1:51820",
    ]);
    assert!(
        set.status.success(),
        "wg set: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    b.ip(&["addr", "add", "100.64.0.2/10", "dev", wg_if.as_str()]);
    b.ip(&["link", "set", wg_if.as_str(), "up"]);

    // Strait's engine in A, on its own thread inside the namespace.
    let engine = engine_node::start(
        &a,
        a_secret,
        "100.64.0.1/10",
        vec![Route {
            prefix: "100.64.0.2/32".parse().unwrap(),
            via: Via::Tun,
            mtu: None,
        }],
        PeerSpec {
            public_key: *b_public.as_bytes(),
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            keepalive: None,
            candidates: vec![],
            next_public_key: None,
            priority: 0,
        },
    );

    // A -> B (the engine initiates the handshake), then B -> A.
    let ping = a.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "100.64.0.2"]);
    assert!(
        ping.status.success(),
        "ping A->B failed:\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let ping = b.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "100.64.0.1"]);
    assert!(
        ping.status.success(),
        "ping B->A failed:\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // A large packet (full MTU, fragmented by neither side).
    let big = a.exec(&[
        "ping",
        "-c",
        "2",
        "-M",
        "do",
        "-s",
        "1392",
        "-W",
        "2",
        "100.64.0.2",
    ]);
    assert!(
        big.status.success(),
        "full-MTU ping failed:\n{}",
        String::from_utf8_lossy(&big.stdout)
    );

    let show = b.exec(&["wg", "show", wg_if.as_str(), "latest-handshakes"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains(&b64(a_public.as_bytes())) && !text.trim().ends_with("\t0"),
        "{text}"
    );

    drop(engine);
}
