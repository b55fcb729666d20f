//! A small userspace UDP impairment relay for tests, since these machines have no `tc netem`.
//!
//! The relay works like a NAT in front of one target: it listens on one address, and for
//! each client address that sends to it opens an upstream socket of its own, from which it
//! forwards that client's datagrams to the target; datagrams the target sends back to that
//! upstream socket go to the client, from the listening address. Each direction drops
//! datagrams with a loss probability (a seeded xorshift generator, so a run's drop pattern
//! is reproducible) and holds them for a fixed delay. Both can be changed while it runs, and
//! counters tell what it did.
//!
//! It runs on its own thread (a single-threaded tokio runtime, inside a network namespace
//! if asked) until its [`Relay`] handle is dropped. Nothing it receives can make it panic;
//! every queue and table has a bound.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::netns::Netns;

/// Largest datagram relayed (larger ones are truncated by the kernel and dropped here).
const MAX_DATAGRAM: usize = 65535;
/// Datagrams waiting for their delay to pass, per direction; beyond it they are dropped
/// (and counted as failed).
const QUEUE: usize = 8192;
/// The longest delay a direction can be given.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Clients served at once; datagrams from more are dropped (counted as failed).
const MAX_CLIENTS: usize = 64;

/// One way through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client to the target.
    ToTarget,
    /// From the target back to a client.
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToTarget => 0,
            Direction::ToClient => 1,
        }
    }
}

/// What one direction has done since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams sent on.
    pub forwarded: u64,
    /// Datagrams dropped by the loss setting.
    pub dropped: u64,
    /// Datagrams lost otherwise: queue full, too many clients, or a failed send.
    pub failed: u64,
}

/// A tiny xorshift64* generator: deterministic for a seed, good enough for loss decisions.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Zero is xorshift's one fixed point; any other state works.
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Settings and counters of one direction, shared between the handle and the relay.
#[derive(Debug)]
struct Lane {
    /// Loss probability in parts per million.
    loss_ppm: AtomicU32,
    delay_us: AtomicU64,
    rng: Mutex<XorShift>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Lane {
    fn new(seed: u64) -> Lane {
        Lane {
            loss_ppm: AtomicU32::new(0),
            delay_us: AtomicU64::new(0),
            rng: Mutex::new(XorShift::new(seed)),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Whether the next datagram is lost (one draw per datagram, so the pattern depends
    /// only on the seed and the order of arrival).
    fn lose(&self) -> bool {
        let draw = match self.rng.lock() {
            Ok(mut rng) => rng.next(),
            Err(poisoned) => poisoned.into_inner().next(),
        };
        draw % 1_000_000 < u64::from(self.loss_ppm.load(Ordering::Relaxed))
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    fn counts(&self) -> Counts {
        Counts {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A datagram on its way out once `due`.
struct Pending {
    due: Instant,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// One direction: applies loss, then queues the datagram for delivery after the delay.
#[derive(Clone)]
struct Path {
    lane: Arc<Lane>,
    queue: mpsc::Sender<Pending>,
}

impl Path {
    fn offer(&self, socket: &Arc<UdpSocket>, to: SocketAddr, bytes: &[u8]) {
        if self.lane.lose() {
            self.lane.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let pending = Pending {
            due: Instant::now() + self.lane.delay(),
            socket: socket.clone(),
            to,
            bytes: bytes.to_vec(),
        };
        if self.queue.try_send(pending).is_err() {
            self.lane.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends queued datagrams in order, each once its delay has passed.
async fn deliver(lane: Arc<Lane>, mut queue: mpsc::Receiver<Pending>) {
    while let Some(p) = queue.recv().await {
        if p.due > Instant::now() {
            tokio::time::sleep_until(p.due).await;
        }
        let counter = match p.socket.send_to(&p.bytes, p.to).await {
            Ok(_) => &lane.forwarded,
            Err(_) => &lane.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where the relay listens and where it forwards to.
#[derive(Debug, Clone, Copy)]
pub struct RelaySpec {
    /// The address clients send to.
    pub listen: SocketAddr,
    /// The local address upstream sockets are bound to (port chosen by the kernel).
    pub upstream_from: IpAddr,
    /// Where client datagrams go.
    pub target: SocketAddr,
    /// Seed of the loss decisions (each direction derives its own generator from it).
    pub seed: u64,
}

/// A running relay; stops (within milliseconds) when dropped.
pub struct Relay {
    lanes: [Arc<Lane>; 2],
    local: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay inside `netns` (`None`: the calling thread's namespace), once its
    /// listening socket is bound. Loss and delay start at zero.
    pub fn start(netns: Option<&Netns>, spec: RelaySpec) -> Result<Relay> {
        let lanes = [
            Arc::new(Lane::new(spec.seed)),
            Arc::new(Lane::new(spec.seed ^ 0x9E37_79B9_7F4A_7C15)),
        ];
        let path = netns.map(Netns::path);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread_lanes = lanes.clone();
        let thread = std::thread::Builder::new()
            .name("impair-relay".into())
            .spawn(move || {
                if let Some(path) = path {
                    crate::netns::enter(&path);
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e).context("runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listen = match UdpSocket::bind(spec.listen).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ =
                                ready_tx.send(Err(e).with_context(|| {
                                    format!("binding the relay on {}", spec.listen)
                                }));
                            return;
                        }
                    };
                    let _ = ready_tx.send(listen.local_addr().context("relay address"));
                    tokio::select! {
                        _ = stopped => {}
                        () = serve(listen, spec, thread_lanes) => {}
                    }
                });
            })
            .context("spawning the relay thread")?;
        let local = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the relay thread did not start")??;
        Ok(Relay {
            lanes,
            local,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address clients send to (with the port the kernel chose, if any).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sets the loss probability (0 to 1) of both directions.
    pub fn set_loss(&self, loss: f64) {
        self.set_loss_in(Direction::ToTarget, loss);
        self.set_loss_in(Direction::ToClient, loss);
    }

    /// Sets the loss probability (0 to 1; anything else is clamped, NaN is 0) of one
    /// direction.
    pub fn set_loss_in(&self, dir: Direction, loss: f64) {
        let loss = if loss.is_nan() {
            0.0
        } else {
            loss.clamp(0.0, 1.0)
        };
        let ppm = (loss * 1_000_000.0).round() as u32;
        self.lanes[dir.index()]
            .loss_ppm
            .store(ppm, Ordering::Relaxed);
    }

    /// Sets the delay of both directions (at most [`MAX_DELAY`]) for datagrams arriving from now
    /// on (each direction delivers in order, so a shorter delay shows once the datagrams
    /// already queued have left).
    pub fn set_delay(&self, delay: Duration) {
        self.set_delay_in(Direction::ToTarget, delay);
        self.set_delay_in(Direction::ToClient, delay);
    }

    /// Sets the delay of one direction (at most [`MAX_DELAY`]).
    pub fn set_delay_in(&self, dir: Direction, delay: Duration) {
        let us = delay.min(MAX_DELAY).as_micros() as u64;
        self.lanes[dir.index()]
            .delay_us
            .store(us, Ordering::Relaxed);
    }

    /// What one direction has done so far.
    pub fn counts(&self, dir: Direction) -> Counts {
        self.lanes[dir.index()].counts()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Receives from clients, opening an upstream socket (and a task reading it) per client.
async fn serve(listen: UdpSocket, spec: RelaySpec, lanes: [Arc<Lane>; 2]) {
    let listen = Arc::new(listen);
    let mut paths = Vec::with_capacity(2);
    for lane in lanes {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(lane.clone(), rx));
        paths.push(Path { lane, queue: tx });
    }
    let (to_target, to_client) = (paths[0].clone(), paths[1].clone());
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match listen.recv_from(&mut buf).await {
            Ok(got) => got,
            // ICMP errors from an earlier send surface here; nothing to do but not spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let bytes = buf.get(..n).unwrap_or_default();
        let upstream = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None if upstreams.len() >= MAX_CLIENTS => {
                to_target.lane.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            None => {
                let Ok(socket) = UdpSocket::bind(SocketAddr::new(spec.upstream_from, 0)).await
                else {
                    to_target.lane.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let socket = Arc::new(socket);
                tokio::spawn(answer(
                    socket.clone(),
                    spec.target,
                    listen.clone(),
                    client,
                    to_client.clone(),
                ));
                upstreams.insert(client, socket.clone());
                socket
            }
        };
        to_target.offer(&upstream, spec.target, bytes);
    }
}

/// Relays what the target sends to `upstream` back to `client` (datagrams from anyone
/// else are ignored, as a NAT would).
async fn answer(
    upstream: Arc<UdpSocket>,
    target: SocketAddr,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    to_client: Path,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match upstream.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        if from != target {
            continue;
        }
        to_client.offer(&listen, client, buf.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdSocket;
    use std::time::Instant as StdInstant;

    /// An echo server on loopback (answers every datagram with its bytes) and a relay in
    /// front of it; both stop at the end of the test.
    struct Bench {
        relay: Relay,
        client: StdSocket,
        _echo: Echo,
    }

    struct Echo {
        addr: SocketAddr,
        stop: Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Echo {
            let socket = StdSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let addr = socket.local_addr().unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            });
            Echo {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn bench(seed: u64) -> Bench {
        let echo = Echo::start();
        let relay = Relay::start(
            None,
            RelaySpec {
                listen: "127.0.0.1:0".parse().unwrap(),
                upstream_from: "127.0.0.1".parse().unwrap(),
                target: echo.addr,
                seed,
            },
        )
        .unwrap();
        let client = StdSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        Bench {
            relay,
            client,
            _echo: echo,
        }
    }

    impl Bench {
        /// Sends `count` datagrams in bursts of 50, reading the echoes after each burst (so
        /// no socket buffer overflows), and returns how many came back.
        fn round_trips(&self, count: u32) -> u32 {
            let to = self.relay.local_addr();
            let mut got = 0;
            let mut buf = [0u8; 64];
            self.client
                .set_read_timeout(Some(Duration::from_millis(30)))
                .unwrap();
            for burst in 0..count.div_ceil(50) {
                let sent = (burst * 50 + 50).min(count);
                for i in burst * 50..sent {
                    self.client.send_to(&i.to_be_bytes(), to).unwrap();
                }
                // Echoes of this burst (and late ones of earlier bursts), until a pause.
                while got < sent {
                    match self.client.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            assert_eq!(from, to, "the echo did not come from the relay");
                            assert_eq!(n, 4);
                            got += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            // Stragglers (a loaded machine), then the counters, which are updated just
            // after each send.
            self.client
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            while got < count && self.client.recv_from(&mut buf).is_ok() {
                got += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
            got
        }
    }

    #[test]
    fn forwards_both_ways() {
        let b = bench(1);
        let to = b.relay.local_addr();
        b.client.send_to(b"hello", to).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = b.client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"hello"[..], to));
        let other = StdSocket::bind("127.0.0.1:0").unwrap();
        other
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        other.send_to(b"second client", to).unwrap();
        let (n, _) = other.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"second client");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.relay.counts(Direction::ToTarget).forwarded, 2);
        assert_eq!(b.relay.counts(Direction::ToClient).forwarded, 2);
    }

    #[test]
    fn loss_of_one_drops_all_and_zero_none() {
        let b = bench(2);
        b.relay.set_loss(1.0);
        assert_eq!(b.round_trips(200), 0);
        let up = b.relay.counts(Direction::ToTarget);
        assert_eq!((up.forwarded, up.dropped), (0, 200));
        b.relay.set_loss(0.0);
        assert_eq!(b.round_trips(2000), 2000);
        let up = b.relay.counts(Direction::ToTarget);
        let down = b.relay.counts(Direction::ToClient);
        assert_eq!((up.forwarded, up.dropped, up.failed), (2000, 200, 0));
        assert_eq!((down.forwarded, down.dropped, down.failed), (2000, 0, 0));
    }

    #[test]
    fn loss_drops_about_that_fraction() {
        let b = bench(3);
        b.relay.set_loss_in(Direction::ToTarget, 0.3);
        let got = b.round_trips(2000);
        let up = b.relay.counts(Direction::ToTarget);
        println!("loss 0.3 toward the target: {} of 2000 dropped", up.dropped);
        // Binomial(2000, 0.3): mean 600, standard deviation 20.5; these bounds are 5 sigma.
        assert!((500..=700).contains(&up.dropped), "{up:?}");
        assert_eq!(u64::from(got), 2000 - up.dropped);
        assert_eq!(up.forwarded + up.dropped, 2000);
        // Both directions at 0.3: about 1 - 0.7^2 = 51 % of round trips fail.
        b.relay.set_loss(0.3);
        let got = b.round_trips(2000);
        // Binomial(2000, 0.49): standard deviation 22.4; 5 sigma either side.
        assert!((860..=1100).contains(&got), "{got} of 2000 came back");
    }

    #[test]
    fn the_same_seed_drops_the_same_datagrams() {
        let pattern = |seed| {
            let lane = Lane::new(seed);
            lane.loss_ppm.store(250_000, Ordering::Relaxed);
            (0..500).map(|_| lane.lose()).collect::<Vec<_>>()
        };
        assert_eq!(pattern(7), pattern(7));
        assert_ne!(pattern(7), pattern(8));
    }

    #[test]
    fn delay_holds_each_datagram() {
        let b = bench(4);
        b.relay
            .set_delay_in(Direction::ToTarget, Duration::from_millis(50));
        let to = b.relay.local_addr();
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            let sent = StdInstant::now();
            b.client.send_to(b"x", to).unwrap();
            b.client
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            b.client.recv_from(&mut buf).unwrap();
            let rtt = sent.elapsed();
            assert!(rtt >= Duration::from_millis(50), "{rtt:?}");
            assert!(rtt < Duration::from_millis(500), "{rtt:?}");
        }
        // Both ways: twice the delay.
        b.relay.set_delay(Duration::from_millis(50));
        let sent = StdInstant::now();
        b.client.send_to(b"y", to).unwrap();
        b.client.recv_from(&mut buf).unwrap();
        assert!(sent.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn survives_odd_datagrams_and_stops_when_dropped() {
        let b = bench(5);
        let to = b.relay.local_addr();
        // Datagrams of every size up to nearly the largest, from another client.
        let odd = StdSocket::bind("127.0.0.1:0").unwrap();
        for len in [0usize, 1, 1500, 65_000] {
            let _ = odd.send_to(&vec![0xAB; len], to);
        }
        assert_eq!(b.round_trips(10), 10);
        let started = StdInstant::now();
        drop(b);
        assert!(started.elapsed() < Duration::from_secs(1));
        // Nothing listens any more: nothing answers.
        let c = StdSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = c.send_to(b"anyone?", to);
        assert!(c.recv_from(&mut [0u8; 16]).is_err());
    }
}
