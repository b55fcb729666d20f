//! The IO shell around [`Engine`]: moves packets between the TUN device and the UDP socket.
//!
//! Two tasks, one per direction, so that on a multi-threaded runtime encryption and
//! decryption run on different cores:
//! - **outbound**: waits for the TUN device, reads what is queued (with TUN offloads one read
//!   may be a 64 KiB TCP segment, split here into MTU-sized packets; up to [`BATCH`]
//!   packets), encrypts them under one lock of the engine into one contiguous buffer, and
//!   sends runs of equal-sized datagrams to one peer as a single UDP GSO `sendmsg`;
//! - **inbound**: receives up to 32 datagrams per `recvmmsg` (with UDP GRO, one buffer may
//!   hold several datagrams of one sender), decrypts them under one lock, then writes the
//!   packets to the TUN device with consecutive TCP segments of a flow coalesced into one
//!   write (GRO on the TUN side), and sends any handshake answers.
//!
//! A third loop (the caller's task) runs the timers (path probes every 20 ms pass, WireGuard's
//! every 240 ms), applies peer changes and sends on-demand probes ([`PingRequest`]).
//! The engine's lock is never held across a syscall or an `.await`.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tun_rs::{GROTable, VIRTIO_NET_HDR_LEN};

use super::access::{AccessReport, Filter};
use super::engine::{
    Emit, Engine, Outbound, PeerSpec, PeerStatus, PingSent, ProbeOutcome, ProbeRefusal,
};
use super::icmp;
use super::tunnel::BUFFER;
use crate::paths::ping::PingOutcome;
use crate::paths::probe;
use crate::wgkey::WgKey;
use std::time::Instant;

/// Most packets read from the TUN device per wake-up.
pub const BATCH: usize = 128;
/// Read again from the TUN device only while this many packet slots are free (one 64 KiB
/// segment splits into about 46 packets at MTU 1420).
const REFILL: usize = 64;
/// Largest IP packet the TUN device hands us (its MTU is at most this).
const MAX_PACKET: usize = 65535;
/// Receive buffer for one (possibly GRO-coalesced) message.
const RECV_SLOT: usize = 65535;
/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 32;
/// Largest UDP payload of one GSO send (an IPv4 datagram's limit; larger is refused).
const MAX_GSO_BYTES: usize = 65507;
/// The timer pass: probes are sent and their timeouts judged at this resolution (a fast
/// path's timeout is 50 ms and a suspect path is probed every 50 ms at 200 ms probes: a
/// coarser pass would stretch both; see `paths::select`).
const PASS: std::time::Duration = std::time::Duration::from_millis(20);
/// Timer passes between publications of the tunnels' status (5 s); it is also published
/// at once when a peer's path MTU changes.
const STATUS_PASSES: u32 = 250;
/// Timer passes between readings of the interface MTU toward every path (1 s).
const CEILING_PASSES: u32 = 50;
/// Timer passes between runs of WireGuard's timers (boringtun asks for about 250 ms).
const WIREGUARD_TIMER_PASSES: u32 = 12;
/// UDP send buffer asked for (capped by `net.core.wmem_max`).
const SEND_BUFFER: usize = 4 << 20;
/// UDP receive buffer asked for (capped by `net.core.rmem_max`). This is the queue in front
/// of the decrypting task, so its size is latency under load: measured with a saturating TCP
/// stream, 4 MiB gave ping p50/p99 4.2/10.4 ms, 512 KiB 2.8/7.8 ms, 128 KiB 0.9/3.9 ms but
/// 20 % less throughput (BENCHMARKS.md).
const RECV_BUFFER: usize = 512 << 10;

/// What the pump has done since it started, for metrics and tests. With TUN offloads a
/// read can carry many packets (segmentation) and a write many packets (coalescing).
#[derive(Debug, Default)]
pub struct Counters {
    /// Reads from the TUN device, and the packets they yielded.
    pub tun_reads: AtomicU64,
    pub tun_read_packets: AtomicU64,
    /// Packets written to the TUN device (the kernel's RX count of the device is lower when
    /// segments were coalesced into one write).
    pub tun_write_packets: AtomicU64,
    /// UDP sends (each possibly a GSO run), and the datagrams they carried.
    pub udp_sends: AtomicU64,
    pub udp_send_datagrams: AtomicU64,
    /// UDP messages received (each possibly GRO-coalesced), and the datagrams in them.
    pub udp_recvs: AtomicU64,
    pub udp_recv_datagrams: AtomicU64,
    /// Probe datagrams dropped, by [`ProbeRefusal::index`].
    pub probes_rejected: [AtomicU64; ProbeRefusal::ALL.len()],
    /// Packets from the TUN device larger than their peer's path carries, and the ICMP
    /// errors sent back for them (rate-limited).
    pub too_big: AtomicU64,
    pub too_big_errors: AtomicU64,
    /// The access policy's drops and flows, copied from the engine when they change (at
    /// most every timer pass, 20 ms).
    pub access: Mutex<AccessReport>,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The access policy's latest report.
    pub fn access(&self) -> AccessReport {
        self.access
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Shared {
    engine: Mutex<Engine>,
    counters: Arc<Counters>,
    tun: tun_rs::AsyncDevice,
    udp: UdpSocket,
    state: UdpSocketState,
    /// The socket is IPv6 (dual-stack): IPv4 destinations are sent as mapped addresses.
    v6: bool,
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock would be a bug in the engine; its state is still
        // the best there is, so keep going rather than poisoning the data plane.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `contents` (one datagram, or several of `segment` bytes each) to `to`, waiting
    /// while the socket buffer is full. Errors other than a full buffer are logged at TRACE
    /// and the datagrams dropped, as a network would.
    async fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let transmit = Transmit {
            destination: super::underlay::for_socket(to, self.v6),
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        let r = self
            .udp
            .async_io(Interest::WRITABLE, || {
                self.state.send((&self.udp).into(), &transmit)
            })
            .await;
        if let Err(e) = r {
            tracing::trace!(%to, error = %e, "send failed");
        }
    }
}

/// An on-demand probe of every path to one peer (`straitctl probe`).
#[derive(Debug)]
pub struct PingRequest {
    pub peer: [u8; 32],
    /// The probes sent, one per path (`None`: no such peer or no probed path).
    pub sent: oneshot::Sender<Option<Vec<PingSent>>>,
    /// Where their outcomes go (each reply, or its loss after the timeout).
    pub outcomes: mpsc::Sender<PingOutcome>,
}

/// Aborts the direction tasks when `run` ends or is dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// What the pump is told while it runs.
pub struct Feeds {
    /// This node's key; a new one is a key rotation.
    pub keys: watch::Receiver<Arc<WgKey>>,
    /// The peers the engine should have; the pump stops when this closes.
    pub peers: watch::Receiver<Vec<PeerSpec>>,
    /// On-demand probes.
    pub pings: mpsc::Receiver<PingRequest>,
    /// The access policy, compiled from the map. A new one is put in force before the
    /// peers published after it.
    pub access: watch::Receiver<Arc<Filter>>,
}

/// Runs the data plane on `tun` and `socket` until the peers feed closes (or the future
/// is dropped). Peer changes and key rotations apply live; `counters` count the IO.
pub async fn run(
    tun: tun_rs::AsyncDevice,
    socket: std::net::UdpSocket,
    mut engine: Engine,
    feeds: Feeds,
    counters: Arc<Counters>,
    status: watch::Sender<Vec<PeerStatus>>,
    up: watch::Sender<Vec<[u8; 32]>>,
) -> io::Result<()> {
    let Feeds {
        mut keys,
        mut peers,
        mut pings,
        mut access,
    } = feeds;
    socket.set_nonblocking(true)?;
    let state = UdpSocketState::new((&socket).into())?;
    for (what, r) in [
        (
            "receive",
            state.set_recv_buffer_size((&socket).into(), RECV_BUFFER),
        ),
        (
            "send",
            state.set_send_buffer_size((&socket).into(), SEND_BUFFER),
        ),
    ] {
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not size the UDP {what} buffer");
        }
    }
    engine.set_access(access.borrow_and_update().clone());
    engine.set_peers(&peers.borrow_and_update());
    let v6 = socket.local_addr()?.is_ipv6();
    let shared = Arc::new(Shared {
        v6,
        engine: Mutex::new(engine),
        counters,
        tun,
        udp: UdpSocket::from_std(socket)?,
        state,
    });
    let mut outbound = tokio::spawn(outbound(shared.clone()));
    let mut inbound = tokio::spawn(inbound(shared.clone()));
    let _abort = AbortOnDrop(vec![outbound.abort_handle(), inbound.abort_handle()]);
    // Probes are scheduled every pass (each path at its own interval); WireGuard's timers
    // every 240 ms.
    let mut timers = tokio::time::interval(PASS);
    timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pass = 0u32;
    let mut out = vec![0u8; BUFFER];
    let mut pending = Pending::default();
    let mut pings_open = true;
    let mut keys_open = true;
    let mut access_open = true;
    // Where each on-demand probe's outcome goes, by sequence number.
    let mut ping_waiters: HashMap<u64, mpsc::Sender<PingOutcome>> = HashMap::new();
    // Sockets asking the kernel for the MTU toward each path, kept across passes.
    let mut mtu_lookup = super::underlay::MtuLookup::default();
    // ICMP errors for flows a switch to a narrower path refuses, written to the TUN device.
    let mut notices = TunBatch::default();
    let mut notices_gro = GROTable::new();
    loop {
        tokio::select! {
            _ = timers.tick() => {
                pending.clear();
                if pass % CEILING_PASSES == 0 {
                    // Syscalls, so outside the engine's lock.
                    let addresses = shared.engine().mtu_addresses();
                    let ceilings: Vec<_> = addresses
                        .into_iter()
                        .filter_map(|a| Some((a, mtu_lookup.toward(a)?)))
                        .collect();
                    shared.engine().set_ceilings(&ceilings, Instant::now());
                }
                {
                    let mut engine = shared.engine();
                    let now = Instant::now();
                    for outcome in engine.take_ping_outcomes(now) {
                        if let Some(waiter) = ping_waiters.remove(&outcome.seq) {
                            let _ = waiter.try_send(outcome);
                        }
                    }
                    ping_waiters.retain(|_, w| !w.is_closed());
                    engine.probe_tick(now, |ep, b| pending.push(ep, b));
                    engine.start_handshakes(&mut out, |ep, b| pending.push(ep, b));
                    notices.clear();
                    for error in engine.take_too_big_notices() {
                        if notices.len < TunBatch::MAX {
                            notices.push(&error);
                        }
                    }
                    // Peers with a path up, asked every pass (published when a visit changed
                    // them): BGP withdraws a site's prefixes at the pass where its last path
                    // is judged down.
                    if let Some(now_up) = engine.up_peers_changed() {
                        up.send_replace(now_up);
                    }
                    if pass % WIREGUARD_TIMER_PASSES == 0 {
                        engine.tick(&mut out, |ep, b| pending.push(ep, b));
                    }
                    let mtus_changed = engine.peer_mtus_changed();
                    if pass % STATUS_PASSES == 0 || mtus_changed {
                        status.send_replace(engine.status());
                    }
                    if let Some(report) = engine.take_access_report() {
                        *shared.counters.access.lock().unwrap_or_else(|p| p.into_inner()) = report;
                    }
                }
                pass = pass.wrapping_add(1);
                if notices.len > 0 {
                    tracing::debug!(flows = notices.len, "path MTU lowered: recent flows told at once");
                    Counters::add(&shared.counters.too_big_errors, notices.len);
                    if let Err(e) = shared
                        .tun
                        .send_multiple(&mut notices_gro, notices.packets(), TunBatch::OFFSET)
                        .await
                    {
                        tracing::debug!(error = %e, "TUN write of ICMP errors failed");
                    }
                }
                for (to, bytes) in pending.iter() {
                    shared.send(to, bytes, None).await;
                }
            }
            request = pings.recv(), if pings_open => {
                let Some(request) = request else {
                    pings_open = false;
                    continue;
                };
                pending.clear();
                let sent = shared.engine().ping(&request.peer, Instant::now(), |ep, b| pending.push(ep, b));
                for p in sent.iter().flatten() {
                    ping_waiters.insert(p.seq, request.outcomes.clone());
                }
                let _ = request.sent.send(sent);
                for (to, bytes) in pending.iter() {
                    shared.send(to, bytes, None).await;
                }
            }
            changed = peers.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let specs = peers.borrow_and_update().clone();
                // A policy published with these peers applies before they do.
                let filter = access.has_changed().unwrap_or(false).then(|| access.borrow_and_update().clone());
                let mut engine = shared.engine();
                if let Some(filter) = filter {
                    engine.set_access(filter);
                }
                engine.set_peers(&specs);
            }
            changed = access.changed(), if access_open => {
                if changed.is_err() {
                    // The map is no longer followed; the policy stays as it is.
                    access_open = false;
                    continue;
                }
                let filter = access.borrow_and_update().clone();
                shared.engine().set_access(filter);
            }
            changed = keys.changed(), if keys_open => {
                if changed.is_err() {
                    // The control plane is gone; the key stays as it is.
                    keys_open = false;
                    continue;
                }
                let secret = keys.borrow_and_update().secret().clone();
                pending.clear();
                {
                    let mut engine = shared.engine();
                    engine.rotate_own(secret);
                    // Start the new handshakes now rather than at the next timer pass.
                    engine.tick(&mut out, |ep, b| pending.push(ep, b));
                }
                for (to, bytes) in pending.iter() {
                    shared.send(to, bytes, None).await;
                }
            }
            r = &mut outbound => return finished("outbound", r),
            r = &mut inbound => return finished("inbound", r),
        }
    }
}

fn finished(which: &str, r: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("{which} packets: {e}"))),
        Err(e) => Err(io::Error::other(format!("{which} packets stopped: {e}"))),
    }
}

/// Whether a TUN read error is about one malformed packet (dropped) rather than the device.
fn packet_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Other | io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
    )
}

/// TUN -> encrypt -> UDP.
async fn outbound(shared: Arc<Shared>) -> io::Result<()> {
    // One raw read (virtio header + up to 64 KiB), split into packets.
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET];
    let mut packets: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_PACKET]).collect();
    let mut sizes = [0usize; BATCH];
    // Encrypted datagrams back to back, so runs of them can go out as one GSO send.
    let mut wire = vec![0u8; BATCH * BUFFER];
    let mut batch = SendBatch::default();
    // ICMP errors for packets too big for their peer's path, written back to the TUN.
    let mut errors = TunBatch::default();
    let mut gro = GROTable::new();
    let mut limit = icmp::RateLimit::default();
    loop {
        let mut n = match shared
            .tun
            .recv_multiple(&mut raw, &mut packets, &mut sizes, 0)
            .await
        {
            Ok(n) => n,
            Err(e) if packet_error(&e) => {
                tracing::trace!(error = %e, "TUN packet dropped");
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut reads = 1;
        while BATCH - n >= REFILL {
            match shared
                .tun
                .try_recv_multiple(&mut raw, &mut packets[n..], &mut sizes[n..], 0)
            {
                Ok(k) => {
                    n += k;
                    reads += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if packet_error(&e) => {
                    tracing::trace!(error = %e, "TUN packet dropped");
                }
                Err(e) => return Err(e),
            }
        }
        Counters::add(&shared.counters.tun_reads, reads);
        Counters::add(&shared.counters.tun_read_packets, n);
        batch.clear(shared.state.max_gso_segments());
        errors.clear();
        let mut too_big = 0;
        {
            let mut engine = shared.engine();
            let mut cursor = 0;
            for (packet, &len) in packets.iter().zip(&sizes[..n]) {
                let out = &mut wire[cursor..];
                let base = out.as_ptr() as usize;
                match engine.outbound_checked(&packet[..len], out) {
                    Outbound::Send(ep, bytes) => {
                        let start = cursor + (bytes.as_ptr() as usize - base);
                        let end = start + bytes.len();
                        batch.push(ep, start, end);
                        cursor = end;
                    }
                    Outbound::TooBig(mtu) => {
                        too_big += 1;
                        if errors.len < TunBatch::MAX && limit.allow(Instant::now()) {
                            if let Some(error) = icmp::too_big(&packet[..len], mtu) {
                                tracing::trace!(len, mtu, to = ?icmp::source(&packet[..len]), "packet too big for the path; ICMP error sent");
                                errors.push(&error);
                            }
                        }
                    }
                    Outbound::Drop => {}
                }
            }
        }
        if too_big > 0 {
            Counters::add(&shared.counters.too_big, too_big);
            Counters::add(&shared.counters.too_big_errors, errors.len);
        }
        if errors.len > 0 {
            if let Err(e) = shared
                .tun
                .send_multiple(&mut gro, errors.packets(), TunBatch::OFFSET)
                .await
            {
                tracing::trace!(error = %e, "TUN write of ICMP errors failed");
            }
        }
        for run in batch.runs() {
            let datagrams = match run.segment {
                Some(seg) => (run.end - run.start).div_ceil(seg),
                None => 1,
            };
            Counters::add(&shared.counters.udp_sends, 1);
            Counters::add(&shared.counters.udp_send_datagrams, datagrams);
            shared
                .send(run.to, &wire[run.start..run.end], run.segment)
                .await;
        }
    }
}

/// UDP -> decrypt -> TUN (and handshake answers -> UDP).
async fn inbound(shared: Arc<Shared>) -> io::Result<()> {
    let mut slots: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; RECV_SLOT]).collect();
    let mut meta = [RecvMeta::default(); RECV_BATCH];
    let mut out = vec![0u8; BUFFER];
    let mut pending = Pending::default();
    // Decrypted packets, each after room for the virtio header the TUN write needs.
    let mut to_tun = TunBatch::default();
    let mut gro = GROTable::new();
    loop {
        let n = {
            let mut bufs: Vec<IoSliceMut<'_>> =
                slots.iter_mut().map(|s| IoSliceMut::new(s)).collect();
            match shared
                .udp
                .async_io(Interest::READABLE, || {
                    shared
                        .state
                        .recv((&shared.udp).into(), &mut bufs, &mut meta)
                })
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    // ICMP errors surface here (port unreachable from a stale endpoint);
                    // they say nothing about this socket.
                    tracing::trace!(error = %e, "recv failed");
                    continue;
                }
            }
        };
        Counters::add(&shared.counters.udp_recvs, n);
        for m in &meta[..n] {
            let len = m.len.min(RECV_SLOT);
            Counters::add(
                &shared.counters.udp_recv_datagrams,
                len.div_ceil(m.stride.max(1)),
            );
        }
        // Decrypt in chunks of at most `TunBatch::MAX` packets, writing each chunk to the
        // TUN device before the next (the lock is not held across the write).
        let mut cursor = (0, 0);
        loop {
            pending.clear();
            to_tun.clear();
            let done = decrypt(
                &shared,
                &meta[..n],
                &slots,
                &mut cursor,
                &mut out,
                &mut pending,
                &mut to_tun,
            );
            for (to, bytes) in pending.iter() {
                shared.send(to, bytes, None).await;
            }
            if to_tun.len > 0 {
                Counters::add(&shared.counters.tun_write_packets, to_tun.len);
                let r = shared
                    .tun
                    .send_multiple(&mut gro, to_tun.packets(), TunBatch::OFFSET)
                    .await;
                if let Err(e) = r {
                    tracing::trace!(error = %e, "TUN write failed");
                }
            }
            if done {
                break;
            }
        }
    }
}

/// Decrypts received datagrams from `cursor` (message, byte offset) on, under one lock of
/// the engine, until `to_tun` is full. Returns whether every datagram was processed.
fn decrypt(
    shared: &Shared,
    meta: &[RecvMeta],
    slots: &[Vec<u8>],
    cursor: &mut (usize, usize),
    out: &mut [u8],
    pending: &mut Pending,
    to_tun: &mut TunBatch,
) -> bool {
    let mut engine = shared.engine();
    let now = Instant::now();
    while let Some(m) = meta.get(cursor.0) {
        let data = &slots[cursor.0][..m.len.min(RECV_SLOT)];
        let from = super::underlay::canonical(m.addr);
        let stride = m.stride.max(1);
        while cursor.1 < data.len() {
            if to_tun.is_full() {
                return false;
            }
            let end = (cursor.1 + stride).min(data.len());
            let datagram = &data[cursor.1..end];
            if probe::is_probe(datagram) {
                let outcome = engine.on_probe(from, datagram, now, |ep, b| pending.push(ep, b));
                if let ProbeOutcome::Refused(why) = outcome {
                    Counters::add(&shared.counters.probes_rejected[why.index()], 1);
                }
            } else if crate::paths::carry::is_query(datagram) {
                engine.on_carry_query(from, datagram, now, |ep, b| pending.push(ep, b));
            } else {
                engine.inbound(from, datagram, out, |e| match e {
                    Emit::Network(ep, b) => pending.push(ep, b),
                    Emit::Tun(b) => to_tun.push(b),
                });
            }
            cursor.1 = end;
        }
        *cursor = (cursor.0 + 1, 0);
    }
    true
}

/// Packets for one batched TUN write; buffers are reused across batches. Every buffer has
/// room for a whole 64 KiB segment, because GRO coalesces a flow's packets into the first
/// buffer of the flow and only does so when it fits without reallocating.
#[derive(Default)]
struct TunBatch {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl TunBatch {
    /// Room left before each packet for the virtio header.
    const OFFSET: usize = VIRTIO_NET_HDR_LEN;
    /// Packets per write batch (bounds the buffers at MAX x 64 KiB).
    const MAX: usize = 128;
    /// Room reserved for packets a single datagram can still produce (a handshake response
    /// releases the packets queued while it was in flight).
    const HEADROOM: usize = 8;

    fn clear(&mut self) {
        self.len = 0;
    }

    fn is_full(&self) -> bool {
        self.len + Self::HEADROOM >= Self::MAX
    }

    fn push(&mut self, packet: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs
                .push(Vec::with_capacity(Self::OFFSET + MAX_PACKET));
        }
        let buf = &mut self.bufs[self.len];
        buf.clear();
        buf.resize(Self::OFFSET, 0);
        buf.extend_from_slice(packet);
        self.len += 1;
    }

    fn packets(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs[..self.len]
    }
}

/// One GSO send: `contents` are datagrams of `segment` bytes (the last may be shorter).
#[derive(Debug, PartialEq, Eq)]
struct Run {
    to: SocketAddr,
    start: usize,
    end: usize,
    segment: Option<usize>,
}

/// Groups encrypted datagrams, laid out back to back, into GSO sends: consecutive datagrams
/// to the same peer and of the same size form one send; a shorter one ends it.
#[derive(Debug, Default)]
struct SendBatch {
    runs: Vec<Run>,
    /// Datagrams in the last run, and its segment size.
    count: usize,
    size: usize,
    max_segments: usize,
    closed: bool,
}

impl SendBatch {
    fn clear(&mut self, max_segments: usize) {
        self.runs.clear();
        self.count = 0;
        self.max_segments = max_segments.max(1);
    }

    /// Adds the datagram `start..end` for `to` (it must directly follow the previous one).
    fn push(&mut self, to: SocketAddr, start: usize, end: usize) {
        let len = end - start;
        if let Some(last) = self.runs.last_mut() {
            let joins = last.to == to
                && last.end == start
                && !self.closed
                && len <= self.size
                && self.count < self.max_segments
                && end - last.start <= MAX_GSO_BYTES;
            if joins {
                last.end = end;
                last.segment = Some(self.size);
                self.count += 1;
                // A shorter datagram can only be the last of a GSO send.
                self.closed = len < self.size;
                return;
            }
        }
        self.runs.push(Run {
            to,
            start,
            end,
            segment: None,
        });
        self.count = 1;
        self.size = len;
        self.closed = false;
    }

    fn runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter()
    }
}

/// Datagrams of one batch or timer pass (handshakes, keepalives), copied out of the shared
/// output buffer so they can be sent after the engine's lock is released. Its buffers are reused: no allocation per
/// packet once warm.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Destination and range in `bytes`.
    items: Vec<(SocketAddr, usize, usize)>,
}

impl Pending {
    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    fn push(&mut self, to: SocketAddr, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.items.push((to, start, self.bytes.len()));
    }

    fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.items.iter().map(|&(to, s, e)| (to, &self.bytes[s..e]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> SocketAddr {
        "192.0.2.1:51820".parse().unwrap()
    }
    fn b() -> SocketAddr {
        "198.51.100.1:51820".parse().unwrap()
    }

    fn runs(batch: &SendBatch) -> Vec<(SocketAddr, usize, usize, Option<usize>)> {
        batch
            .runs()
            .map(|r| (r.to, r.start, r.end, r.segment))
            .collect()
    }

    #[test]
    fn equal_datagrams_to_one_peer_form_one_gso_send() {
        let mut batch = SendBatch::default();
        batch.clear(64);
        batch.push(a(), 0, 100);
        batch.push(a(), 100, 200);
        batch.push(a(), 200, 260); // shorter: ends the run
        batch.push(a(), 260, 360);
        assert_eq!(
            runs(&batch),
            vec![(a(), 0, 260, Some(100)), (a(), 260, 360, None)]
        );
    }

    #[test]
    fn another_peer_a_larger_datagram_or_the_segment_limit_starts_a_new_send() {
        let mut batch = SendBatch::default();
        batch.clear(2);
        batch.push(a(), 0, 100);
        batch.push(b(), 100, 200);
        batch.push(b(), 200, 350); // larger than the run's segment
        batch.push(b(), 350, 500);
        batch.push(b(), 500, 650); // limit of 2 segments reached
        batch.push(b(), 650, 800);
        batch.push(b(), 800, 800 + MAX_GSO_BYTES - 149); // over the byte limit
        assert_eq!(
            runs(&batch),
            vec![
                (a(), 0, 100, None),
                (b(), 100, 200, None),
                (b(), 200, 500, Some(150)),
                (b(), 500, 800, Some(150)),
                (b(), 800, 800 + MAX_GSO_BYTES - 149, None),
            ]
        );
        // Without GSO every datagram is its own send.
        batch.clear(1);
        batch.push(a(), 0, 100);
        batch.push(a(), 100, 200);
        assert_eq!(runs(&batch).len(), 2);
    }
}
