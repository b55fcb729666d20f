//! Flows between workloads in test namespaces, measured per packet: a UDP echo server,
//! UDP flows on chosen source ports, a 10 ms ping flow with arrival times, and what they
//! tell (the longest silence, pings lost after a moment).

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::background::Background;
use crate::netns::{in_netns, Netns};

/// A UDP echo server on `bind` (`address:port`) in `ns`, until the value drops.
pub fn echo_server(ns: &Netns, bind: &str) -> Background {
    let bind = bind.to_string();
    let mut server = Background::new();
    server.spawn_in(ns, move |stop| {
        let sock = UdpSocket::bind(bind.as_str()).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    server
}

/// From `ns`, `packets` datagrams from `from` (an address of `ns`) on each of `ports`
/// (source ports) to the echo server at `to`, 5 ms apart; the echoes received per port.
pub fn udp_flows(ns: &Netns, from: &str, to: &str, ports: Vec<u16>, packets: usize) -> Vec<usize> {
    let (from, to) = (from.to_string(), to.to_string());
    in_netns(ns, move || {
        let socks: Vec<UdpSocket> = ports
            .iter()
            .map(|p| {
                let s = UdpSocket::bind((from.as_str(), *p)).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let mut got = vec![0usize; socks.len()];
        let mut buf = [0u8; 64];
        for _ in 0..packets {
            for s in &socks {
                let _ = s.send_to(b"ha", to.as_str());
            }
            std::thread::sleep(Duration::from_millis(5));
            for (i, s) in socks.iter().enumerate() {
                while s.recv_from(&mut buf).is_ok() {
                    got[i] += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for (i, s) in socks.iter().enumerate() {
            while s.recv_from(&mut buf).is_ok() {
                got[i] += 1;
            }
        }
        got
    })
}

/// Pings `to` from `ns` every 10 ms, `count` times, in the background: each reply's
/// sequence number and arrival time (Unix seconds, from `ping -D`).
pub fn ping_flow(ns: &Netns, to: &str, count: u32) -> std::thread::JoinHandle<Vec<(u32, f64)>> {
    let ns = ns.name.clone();
    let to = to.to_string();
    std::thread::spawn(move || {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-D", "-n", "-i", "0.01", "-W", "1", "-c",
            ])
            .arg(count.to_string())
            .arg(&to)
            .output()
            .expect("ping");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let at: f64 = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
                let seq = l.split("icmp_seq=").nth(1)?;
                Some((seq.split_whitespace().next()?.parse().ok()?, at))
            })
            .collect()
    })
}

/// The longest time between two consecutive replies received between Unix times `from`
/// and `to`, in ms.
pub fn longest_silence(replies: &[(u32, f64)], from: f64, to: f64) -> u32 {
    let mut times: Vec<f64> = replies.iter().map(|r| r.1).collect();
    times.sort_by(f64::total_cmp);
    times
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| ((w[1] - w[0]) * 1000.0).round() as u32)
        .max()
        .unwrap_or(u32::MAX)
}

/// Pings sent after Unix time `at` that got no reply: those numbered after the last one
/// answered before `at`, up to `count` (the flow's last).
pub fn lost_after(replies: &[(u32, f64)], at: f64, count: u32) -> usize {
    let last_before = replies
        .iter()
        .filter(|r| r.1 < at)
        .map(|r| r.0)
        .max()
        .unwrap_or(0);
    let answered: std::collections::BTreeSet<u32> = replies.iter().map(|r| r.0).collect();
    (last_before + 1..=count)
        .filter(|seq| !answered.contains(seq))
        .count()
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
