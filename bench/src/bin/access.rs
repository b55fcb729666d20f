//! Access policy micro-benchmark: what the policy costs on the engine's packet path.
//!
//! Two real engines (boringtun sessions, no sockets) exchange TCP packets of `--size`
//! bytes in both directions: A encrypts (`Engine::outbound`, where flows are tracked), B
//! decrypts and judges (`Engine::inbound`), and B's replies go back the same way. Rounds
//! alternate between three policies on both engines so that load from other processes
//! hits them alike: none (allow all, as without a policy), and 20 rules with the packets
//! matching the last rule (the worst case for first-match: every rule is tried). Prints
//! the median ns per packet of each (encryption and decryption included), then the
//! policy's own cost per packet without the crypto (`Access` alone: the packets of one flow,
//! which after the first take the recent-flows cache; a new flow per packet, which all go
//! through the rules; replies; outbound tracking), and how long a sweep of a full flow table
//! takes.
//!
//!     cargo build --release -p strait-bench --bin access
//!     target/release/access --rounds 15

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use boringtun::x25519::{PublicKey, StaticSecret};
use clap::Parser;
use ipnetwork::IpNetwork;
use strait_agent::dataplane::access::{Access, Filter, MAX_FLOWS};
use strait_agent::dataplane::engine::{Emit, Engine, PeerSpec};
use strait_proto::access::{AccessPolicy, AccessRule, Action, Source};

#[derive(Parser, Debug)]
struct Args {
    /// Rounds per policy (medians are taken over them).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Packets each way per round.
    #[arg(long, default_value_t = 20_000)]
    packets: usize,
    /// IP packet size in bytes.
    #[arg(long, default_value_t = 1400)]
    size: usize,
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("constant prefix")
}

/// A TCP/IPv4 packet of `size` bytes (checksums unset: nothing here reads them).
fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size.max(40)];
    p[0] = 0x45;
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x10;
    p
}

/// 19 rules that do not match the benchmark's packets (other sites, prefixes and ports),
/// then the one that allows them: every packet is tried against all 20.
fn twenty_rules(to: &str) -> AccessPolicy {
    let mut rules: Vec<AccessRule> = (0..19)
        .map(|i| AccessRule {
            name: format!("r{i}"),
            action: if i % 3 == 0 {
                Action::Deny
            } else {
                Action::Allow
            },
            from: vec![
                Source::Site(format!("other-{i}")),
                Source::Prefix(net(&format!("10.{}.0.0/16", 100 + i))),
            ],
            to: vec![net(to)],
            to_node: true,
            services: vec![
                format!("tcp/{}", 1000 + i)
                    .parse()
                    .expect("constant service"),
                "udp/53".parse().expect("constant service"),
            ],
        })
        .collect();
    rules.push(AccessRule {
        name: "web".into(),
        action: Action::Allow,
        from: vec![Source::Site("a".into()), Source::Site("b".into())],
        to: vec![net(to)],
        to_node: true,
        services: vec!["tcp/443".parse().expect("constant service")],
    });
    AccessPolicy {
        default: Action::Deny,
        rules,
    }
}

struct Pair {
    a: Engine,
    b: Engine,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
}

fn pair() -> Result<Pair> {
    let a_secret = StaticSecret::from([1u8; 32]);
    let b_secret = StaticSecret::from([2u8; 32]);
    let a_pub = *PublicKey::from(&a_secret).as_bytes();
    let b_pub = *PublicKey::from(&b_secret).as_bytes();
    let a_addr: SocketAddr = "192.0.2.1:51820".parse()?;
    let b_addr: SocketAddr = "198.51.100.1:51820".parse()?;
    let spec = |key, endpoint, allowed: &str| PeerSpec {
        public_key: key,
        endpoint: Some(endpoint),
        allowed_ips: vec![net(allowed)],
        keepalive: None,
        candidates: vec![],
        next_public_key: None,
        priority: 0,
    };
    let mut a = Engine::new(a_secret, Duration::from_secs(1));
    a.set_peers(&[spec(b_pub, b_addr, "10.2.0.0/16")]);
    let mut b = Engine::new(b_secret, Duration::from_secs(1));
    b.set_peers(&[spec(a_pub, a_addr, "10.1.0.0/16")]);
    let mut p = Pair {
        a,
        b,
        a_addr,
        b_addr,
    };
    // Handshake: A's first packet starts it; datagrams go back and forth until quiet.
    let mut out = vec![0u8; 65_600];
    let first = tcp([10, 1, 0, 5], 40000, [10, 2, 0, 9], 443, 100);
    let (_, init) =
        p.a.outbound(&first, &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .ok_or_else(|| anyhow::anyhow!("no handshake initiation"))?;
    let mut in_flight = vec![(p.b_addr, init)];
    for _ in 0..10 {
        let Some((to, d)) = in_flight.pop() else {
            break;
        };
        let (engine, from) = if to == p.b_addr {
            (&mut p.b, p.a_addr)
        } else {
            (&mut p.a, p.b_addr)
        };
        let reply_to = from;
        engine.inbound(from, &d, &mut out, |e| {
            if let Emit::Network(_, d) = e {
                in_flight.push((reply_to, d.to_vec()));
            }
        });
    }
    Ok(p)
}

/// One round: `n` packets A -> B and `n` B -> A; returns ns per packet and how many were
/// delivered.
fn round(p: &mut Pair, n: usize, size: usize) -> (f64, usize) {
    let mut out = vec![0u8; 65_600];
    let mut wire = vec![0u8; 65_600];
    let ab = tcp([10, 1, 0, 5], 40000, [10, 2, 0, 9], 443, size);
    let ba = tcp([10, 2, 0, 9], 443, [10, 1, 0, 5], 40000, size);
    let mut delivered = 0;
    let t0 = Instant::now();
    let mut one = |from: &mut Engine, to: &mut Engine, packet: &[u8], from_addr: SocketAddr| {
        if let Some((_, d)) = from.outbound(packet, &mut wire) {
            to.inbound(from_addr, d, &mut out, |e| {
                if matches!(e, Emit::Tun(_)) {
                    delivered += 1;
                }
            });
        }
    };
    for _ in 0..n {
        one(&mut p.a, &mut p.b, &ab, p.a_addr);
        one(&mut p.b, &mut p.a, &ba, p.b_addr);
    }
    let ns = t0.elapsed().as_nanos() as f64 / (2 * n) as f64;
    (ns, delivered)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn filter_for(policy: &AccessPolicy, own: [u8; 4], peer_site: &str, peer_net: &str) -> Arc<Filter> {
    Arc::new(Filter::compile(
        policy,
        &[(peer_site.to_string(), vec![net(peer_net)])],
        Some(Ipv4Addr::from(own)),
    ))
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds >= 1 && args.packets >= 1,
        "at least one round and packet"
    );
    let mut p = pair()?;
    let now = Instant::now();
    p.a.probe_tick(now, |_, _| {});
    p.b.probe_tick(now, |_, _| {});
    let none = AccessPolicy::default();
    let rules_a = twenty_rules("10.1.0.0/16");
    let rules_b = twenty_rules("10.2.0.0/16");
    let policies: [(&str, Arc<Filter>, Arc<Filter>); 2] = [
        (
            "no policy (allow all)",
            filter_for(&none, [100, 64, 0, 1], "b", "10.2.0.0/16"),
            filter_for(&none, [100, 64, 0, 2], "a", "10.1.0.0/16"),
        ),
        (
            "20 rules, last one matches",
            filter_for(&rules_a, [100, 64, 0, 1], "b", "10.2.0.0/16"),
            filter_for(&rules_b, [100, 64, 0, 2], "a", "10.1.0.0/16"),
        ),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); policies.len()];
    // Warm-up.
    round(&mut p, args.packets, args.size);
    for _ in 0..args.rounds {
        for (i, (_, fa, fb)) in policies.iter().enumerate() {
            p.a.set_access(fa.clone());
            p.b.set_access(fb.clone());
            let (ns, delivered) = round(&mut p, args.packets, args.size);
            ensure!(
                delivered == 2 * args.packets,
                "{}: {delivered} of {} packets delivered",
                policies[i].0,
                2 * args.packets
            );
            results[i].push(ns);
        }
    }
    println!(
        "engine, {} B TCP packets, encrypt + decrypt + policy, median of {} rounds of {} packets each way:",
        args.size, args.rounds, args.packets
    );
    let base = median(results[0].clone());
    for (i, (name, _, _)) in policies.iter().enumerate() {
        let m = median(results[i].clone());
        println!(
            "  {name:<28} {m:>8.1} ns/packet  ({:+.1} ns, {:+.2} %)  min {:.1}  max {:.1}",
            m - base,
            (m - base) / base * 100.0,
            results[i].iter().copied().fold(f64::INFINITY, f64::min),
            results[i].iter().copied().fold(0.0, f64::max),
        );
    }

    // The policy alone: Access::inbound on B for A's packets (rules) and for replies to
    // B's own flows (rules refuse, the flow table lets them in), Access::outbound on A.
    let n = 2_000_000;
    let ab = tcp([10, 1, 0, 5], 40000, [10, 2, 0, 9], 443, args.size);
    let reply = tcp([10, 1, 0, 5], 8080, [10, 2, 0, 9], 50000, args.size);
    let sent = tcp([10, 2, 0, 9], 50000, [10, 1, 0, 5], 8080, args.size);
    let time = |f: &mut dyn FnMut() -> bool| {
        let t0 = Instant::now();
        let mut passed = 0usize;
        for _ in 0..n {
            passed += usize::from(std::hint::black_box(f()));
        }
        (t0.elapsed().as_nanos() as f64 / n as f64, passed)
    };
    println!("the policy alone (no crypto), ns per packet over {n} packets:");
    for (name, filter) in [
        (
            "no policy",
            filter_for(&none, [100, 64, 0, 2], "a", "10.1.0.0/16"),
        ),
        (
            "20 rules",
            filter_for(&rules_b, [100, 64, 0, 2], "a", "10.1.0.0/16"),
        ),
    ] {
        let mut access = Access::default();
        access.set_filter(filter);
        access.tick(Instant::now());
        access.outbound(&sent);
        let (inbound, ok1) = time(&mut || access.inbound(std::hint::black_box(&ab)));
        let (reply_ns, ok2) = time(&mut || access.inbound(std::hint::black_box(&reply)));
        let (outbound, _) = time(&mut || {
            access.outbound(std::hint::black_box(&sent));
            true
        });
        // Every packet of a flow the node has not seen yet (65,536 source ports in turn, more
        // than the recent-flows cache holds): the rules themselves.
        let mut fresh = ab.clone();
        let mut port = 0u16;
        let (new_flows, ok3) = time(&mut || {
            port = port.wrapping_add(1);
            fresh[20..22].copy_from_slice(&port.to_be_bytes());
            access.inbound(std::hint::black_box(&fresh))
        });
        ensure!(ok1 == n && ok2 == n && ok3 == n, "{name}: packets refused");
        println!(
            "  {name:<10} inbound, same flow {inbound:>6.1}  inbound, a new flow each {new_flows:>6.1}  inbound reply {reply_ns:>6.1}  outbound (tracked) {outbound:>6.1}"
        );
    }

    // A full flow table, then a new flow once every flow is idle: one sweep of them all.
    let mut access = Access::default();
    access.set_filter(filter_for(&rules_b, [100, 64, 0, 2], "a", "10.1.0.0/16"));
    let t0 = Instant::now();
    access.tick(t0);
    for i in 0..MAX_FLOWS {
        let port = (i % 60_000) as u16 + 1024;
        let host = [10, 1, (i / 60_000) as u8, 7];
        access.outbound(&tcp([10, 2, 0, 9], port, host, 443, 40));
    }
    let filled = access.report().flows;
    access.tick(t0 + Duration::from_secs(3 * 60 * 60));
    let t1 = Instant::now();
    access.outbound(&tcp([10, 2, 0, 9], 1, [10, 1, 9, 9], 443, 40));
    let sweep = t1.elapsed();
    println!(
        "flow table: {filled} flows; sweeping them when full (all idle) took {:.2} ms under the engine's lock",
        sweep.as_secs_f64() * 1e3
    );
    Ok(())
}
