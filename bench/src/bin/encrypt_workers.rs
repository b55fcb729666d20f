//! Encrypt-path scaling: how much one direction's WireGuard encryption and sending gains
//! from a second worker thread, measured apart from the rest of the data plane (issue 20's
//! multi-core design, see BENCHMARKS.md "Spreading one direction's crypto over cores").
//!
//! Each worker holds a boringtun session (a `Tunn` pair whose handshake is done in memory),
//! encrypts `--size`-byte packets in batches of `--batch` into one buffer and sends each
//! batch to a counting UDP sink on loopback as one GSO send (`quinn-udp`, as the agent's
//! pump does). The sink thread receives with GRO and counts datagrams. Rounds alternate 1
//! and 2 workers (and, with `--workers-max 3`, 3), `--seconds` each; the medians of
//! packets encrypted and delivered per second are printed with the ratio to 1 worker, and
//! the packets encrypted per CPU-second of the workers (from each thread's CPU clock): on a
//! machine with fewer cores than workers plus the sink, that figure staying flat from 1 to
//! 2 workers is what says the path scales (nothing shared slows it), where the wall-clock
//! ratio cannot.
//!
//! Each worker has a session of its own, so this measures the crypto and send path with
//! no shared state. The design it stands for shares one session between workers: their
//! only shared write is the session's sending counter (boringtun's `AtomicU64`,
//! `fetch_add` per packet); `--contention` measures that alone, with 1 and 2 threads on
//! one counter.
//!
//!     cargo build --release -p strait-bench --bin encrypt_workers
//!     target/release/encrypt_workers --rounds 5 --seconds 3 --contention

use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use clap::Parser;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

#[derive(Parser, Debug, Clone, Copy)]
struct Args {
    /// Rounds per worker count (medians are taken over them).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Inner packet size in bytes (the TUN MTU's worth).
    #[arg(long, default_value_t = 1420)]
    size: usize,
    /// Packets per batch (one GSO send).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Largest worker count measured.
    #[arg(long, default_value_t = 2)]
    workers_max: usize,
    /// Also measure the shared sending counter alone.
    #[arg(long)]
    contention: bool,
}

/// A session ready to encrypt: `a`'s side of a completed handshake with `b`.
fn session(seed: u8) -> Result<Tunn> {
    let a_secret = StaticSecret::from([seed; 32]);
    let b_secret = StaticSecret::from([seed.wrapping_add(100); 32]);
    let mut a = Tunn::new(
        a_secret.clone(),
        PublicKey::from(&b_secret),
        None,
        None,
        u32::from(seed),
        None,
    );
    let mut b = Tunn::new(
        b_secret,
        PublicKey::from(&a_secret),
        None,
        None,
        u32::from(seed) + 1000,
        None,
    );
    let mut buf_a = vec![0u8; 2048];
    let mut buf_b = vec![0u8; 2048];
    let init = match a.format_handshake_initiation(&mut buf_a, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => anyhow::bail!("no handshake initiation"),
    };
    let response = match b.decapsulate(None, &init, &mut buf_b) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => anyhow::bail!("no handshake response"),
    };
    match a.decapsulate(None, &response, &mut buf_a) {
        TunnResult::WriteToNetwork(_) | TunnResult::Done => {}
        _ => anyhow::bail!("handshake response refused"),
    }
    // The keepalive that confirms the session to b is not needed for a's sending side.
    Ok(a)
}

fn ipv4_packet(size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 1, 0, 1]);
    p[16..20].copy_from_slice(&[10, 2, 0, 1]);
    p
}

/// CPU time this thread has used (`/proc/thread-self/stat`: user + system, in clock
/// ticks of 10 ms; rounds of seconds keep that under 1 %).
fn thread_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// One worker: encrypt and send until `stop`; packets encrypted and the thread's CPU time.
fn worker(
    seed: u8,
    args: &Args,
    sink: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<(u64, Duration)> {
    let cpu0 = thread_cpu();
    let mut tunn = session(seed)?;
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let state = UdpSocketState::new((&socket).into())?;
    let packet = ipv4_packet(args.size);
    let seg = args.size + 32;
    let max_segments = state.max_gso_segments().clamp(1, args.batch);
    let mut out = vec![0u8; seg * max_segments + 64];
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..max_segments {
            match tunn.encapsulate(&packet, &mut out[i * seg..(i + 1) * seg + 16]) {
                TunnResult::WriteToNetwork(p) => debug_assert_eq!(p.len(), seg),
                _ => anyhow::bail!("encapsulate did not produce a data packet"),
            }
        }
        let transmit = Transmit {
            destination: sink,
            ecn: None,
            contents: &out[..seg * max_segments],
            segment_size: (max_segments > 1).then_some(seg),
            src_ip: None,
        };
        // A full socket buffer is the sink's loss, not the worker's: count what was encrypted.
        let _ = state.send((&socket).into(), &transmit);
        sent += max_segments as u64;
    }
    Ok((sent, thread_cpu().saturating_sub(cpu0)))
}

/// The sink: counts datagrams until `stop`.
fn sink(socket: UdpSocket, stop: Arc<AtomicBool>, counted: Arc<AtomicU64>) -> Result<()> {
    let state = UdpSocketState::new((&socket).into())?;
    let _ = state.set_recv_buffer_size((&socket).into(), 8 << 20);
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut bufs = vec![vec![0u8; 65536]; 8];
    let mut meta = vec![RecvMeta::default(); 8];
    while !stop.load(Ordering::Relaxed) {
        let mut slices: Vec<IoSliceMut> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        match state.recv((&socket).into(), &mut slices, &mut meta) {
            Ok(n) => {
                let datagrams: usize = meta[..n]
                    .iter()
                    .map(|m| m.len.div_ceil(m.stride.max(1)))
                    .sum();
                counted.fetch_add(datagrams as u64, Ordering::Relaxed);
            }
            Err(_) => continue,
        }
    }
    Ok(())
}

/// One round with `workers` workers: (encrypted, delivered) packets per second and packets
/// encrypted per CPU-second of the workers.
fn round(args: &Args, workers: usize) -> Result<(f64, f64, f64)> {
    let sink_socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let sink_addr = sink_socket.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
    let sink_thread = {
        let (stop, counted) = (stop.clone(), counted.clone());
        std::thread::spawn(move || sink(sink_socket, stop, counted))
    };
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let stop = stop.clone();
            let args = *args;
            std::thread::spawn(move || worker(w as u8 + 1, &args, sink_addr, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut encrypted = 0;
    let mut cpu = Duration::ZERO;
    for h in handles {
        let (n, used) = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        encrypted += n;
        cpu += used;
    }
    let secs = start.elapsed().as_secs_f64();
    sink_thread
        .join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))??;
    Ok((
        encrypted as f64 / secs,
        counted.load(Ordering::Relaxed) as f64 / secs,
        encrypted as f64 / cpu.as_secs_f64().max(1e-9),
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per `fetch_add` on one shared counter with `threads` threads (each `ops` times).
fn contention(threads: usize, ops: u64) -> f64 {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let c = counter.clone();
            std::thread::spawn(move || {
                for _ in 0..ops {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds > 0 && args.seconds > 0.0,
        "rounds and seconds must be positive"
    );
    ensure!(
        (1..=8).contains(&args.workers_max),
        "--workers-max must be 1-8"
    );
    ensure!(
        (64..=8900).contains(&args.size),
        "--size must be 64-8900 bytes"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "encrypt workers: {} B packets, batches of {}, {} rounds x {} s, {} cores",
        args.size, args.batch, args.rounds, args.seconds, cores
    );
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); args.workers_max];
    for r in 0..args.rounds {
        for w in 1..=args.workers_max {
            let (enc, del, per_cpu) =
                round(&args, w).with_context(|| format!("round {r}, {w} workers"))?;
            println!(
                "round {r} workers {w}: encrypted {:.0} pkt/s ({:.2} Gbit/s inner), delivered {:.0} pkt/s, {:.0} pkt per worker CPU-second",
                enc,
                enc * args.size as f64 * 8.0 / 1e9,
                del,
                per_cpu
            );
            results[w - 1].push((enc, del, per_cpu));
        }
    }
    let base = median(results[0].iter().map(|r| r.0).collect());
    for (i, rs) in results.iter().enumerate() {
        let enc = median(rs.iter().map(|r| r.0).collect());
        let del = median(rs.iter().map(|r| r.1).collect());
        let per_cpu = median(rs.iter().map(|r| r.2).collect());
        println!(
            "median workers {}: encrypted {:.0} pkt/s ({:.2} Gbit/s inner, x{:.2} of 1 worker), delivered {:.0} pkt/s, {:.0} pkt per worker CPU-second",
            i + 1,
            enc,
            enc * args.size as f64 * 8.0 / 1e9,
            enc / base,
            del,
            per_cpu
        );
    }
    if args.contention {
        let ops = 20_000_000;
        let one = median((0..3).map(|_| contention(1, ops)).collect());
        let two = median((0..3).map(|_| contention(2, ops)).collect());
        println!(
            "shared sending counter: fetch_add {one:.1} ns/op with 1 thread, {two:.1} ns/op per thread with 2 on one counter"
        );
    }
    Ok(())
}
