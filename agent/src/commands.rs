//! What an operator asks this node to run through the coordinator (`straitctl probe`):
//! rounds of probes over every path to a peer, and either end of a throughput transfer
//! through the tunnel. Each command runs in its own task, bounded in time, and reports
//! [`ProbeEvent`]s on the session; the last one is `Done` or `Failed`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use strait_proto::map::NetworkMap;
use strait_proto::msg::EndpointKind;
use strait_proto::probe::{
    Action, Command, ProbeEvent, MAX_PING_COUNT, MAX_THROUGHPUT_SECS, MIN_PING_INTERVAL_MS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::dataplane::pump::PingRequest;
use crate::paths::ping::PING_TIMEOUT;

/// How long a throughput listener waits for its sender to connect.
const ACCEPT_WINDOW: Duration = Duration::from_secs(10);
/// Extra time, beyond the transfer, for draining and answering the count.
const SLACK: Duration = Duration::from_secs(10);
/// The nonce a throughput sender presents: 32 hex characters.
const NONCE_LEN: usize = 32;
const CHUNK: usize = 128 << 10;

/// What commands need from the rest of the agent.
#[derive(Clone)]
pub struct Context {
    /// The data plane's on-demand probes (`None` without a userspace data plane).
    pub pings: Option<mpsc::Sender<PingRequest>>,
    /// One throughput transfer at a time on this node, either end.
    pub transfer_busy: Arc<AtomicBool>,
}

impl Context {
    pub fn new(pings: Option<mpsc::Sender<PingRequest>>) -> Context {
        Context {
            pings,
            transfer_busy: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Runs `command` against `map`, sending its events on `events` (the last is `Done` or
/// `Failed`). The session's shell runs each in its own task.
pub async fn run(
    command: Command,
    map: Option<Arc<NetworkMap>>,
    ctx: Context,
    events: mpsc::Sender<(u64, ProbeEvent)>,
) {
    let id = command.id;
    let out = Events { id, events };
    let result = match (command.action, map) {
        (_, None) => Err("this node has no network map yet".to_string()),
        (
            Action::Ping {
                peer,
                count,
                interval_ms,
            },
            Some(map),
        ) => ping(&ctx, &map, &peer, count, interval_ms, &out).await,
        (Action::ThroughputListen { from, nonce, secs }, Some(map)) => {
            exclusive(&ctx, listen(&map, from, &nonce, secs, &out)).await
        }
        (Action::ThroughputSend { to, nonce, secs }, Some(map)) => {
            exclusive(&ctx, send(&map, to, &nonce, secs, &out)).await
        }
        // The session itself rotates keys; it never hands this command here.
        (Action::RotateKey, Some(_)) => Err("key rotation is not a probe".to_string()),
    };
    match result {
        Ok(()) => out.emit(ProbeEvent::Done).await,
        Err(message) => {
            tracing::info!(command = id, %message, "probe command failed");
            out.emit(ProbeEvent::Failed { message }).await;
        }
    }
}

struct Events {
    id: u64,
    events: mpsc::Sender<(u64, ProbeEvent)>,
}

impl Events {
    async fn emit(&self, event: ProbeEvent) {
        let _ = self.events.send((self.id, event)).await;
    }
}

async fn exclusive(
    ctx: &Context,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    if ctx.transfer_busy.swap(true, Ordering::AcqRel) {
        return Err(
            "another throughput transfer is running on this node; try again when it ends".into(),
        );
    }
    let result = work.await;
    ctx.transfer_busy.store(false, Ordering::Release);
    result
}

/// `count` rounds, `interval_ms` apart, of one probe on every path to `peer`; each reply
/// or loss is reported as it happens.
async fn ping(
    ctx: &Context,
    map: &NetworkMap,
    peer: &str,
    count: u32,
    interval_ms: u64,
    out: &Events,
) -> Result<(), String> {
    let pings = ctx
        .pings
        .as_ref()
        .ok_or("this node runs no userspace data plane, so it sends no probes")?;
    let key = peer_key(map, peer)?;
    let count = count.clamp(1, MAX_PING_COUNT);
    let interval = Duration::from_millis(interval_ms.max(MIN_PING_INTERVAL_MS));
    let (outcomes_tx, mut outcomes) = mpsc::channel(1024);
    // seq -> (round, kind, address, active)
    let mut waiting: HashMap<u64, (u32, EndpointKind, SocketAddr, bool)> = HashMap::new();
    let mut next_round = Instant::now();
    let mut round = 0u32;
    let mut last_sent = Instant::now();
    loop {
        let deadline = if round < count {
            next_round
        } else if waiting.is_empty() {
            return Ok(());
        } else {
            last_sent + PING_TIMEOUT + Duration::from_millis(500)
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                if round >= count {
                    // The data plane reports every loss; this only guards against a stop.
                    return Err("the data plane stopped answering".into());
                }
                round += 1;
                let (sent_tx, sent_rx) = oneshot::channel();
                let request = PingRequest { peer: key, sent: sent_tx, outcomes: outcomes_tx.clone() };
                pings.send(request).await.map_err(|_| "the data plane is not running")?;
                let sent = sent_rx
                    .await
                    .map_err(|_| "the data plane is not running")?
                    .ok_or_else(|| format!("no probed path to {peer}: its endpoints are all inside the overlay, or it announced none"))?;
                for p in sent {
                    waiting.insert(p.seq, (round, p.kind, p.address, p.active));
                }
                last_sent = Instant::now();
                next_round += interval;
            }
            Some(outcome) = outcomes.recv() => {
                let Some((round, kind, address, active)) = waiting.remove(&outcome.seq) else {
                    continue;
                };
                let event = match outcome.rtt {
                    Some(rtt) => ProbeEvent::Pong { seq: round, kind, address, active, rtt_us: rtt.as_micros() as u64 },
                    None => ProbeEvent::Lost { seq: round, kind, address },
                };
                out.emit(event).await;
            }
        }
    }
}

fn peer_key(map: &NetworkMap, peer: &str) -> Result<[u8; 32], String> {
    let p = map
        .peers
        .get(peer)
        .ok_or_else(|| format!("this node has no tunnel to {peer}"))?;
    base64::engine::general_purpose::STANDARD
        .decode(&p.wg_public_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| format!("{peer}'s WireGuard key in the map is not 32 bytes of base64"))
}

/// Compares without stopping at the first difference.
fn same_nonce(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check(nonce: &str, secs: u32) -> Result<Duration, String> {
    if nonce.len() != NONCE_LEN || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the transfer's nonce is not 32 hex characters".into());
    }
    if secs == 0 || secs > MAX_THROUGHPUT_SECS {
        return Err(format!(
            "transfer of {secs} s is out of range (1 to {MAX_THROUGHPUT_SECS} s)"
        ));
    }
    Ok(Duration::from_secs(secs.into()))
}

/// The receiving end: one listener on this node's overlay address that takes the first
/// connection from `from` presenting `nonce`, counts what arrives until the sender closes
/// (or the time is up), and answers the count as 8 bytes big-endian.
async fn listen(
    map: &NetworkMap,
    from: Ipv4Addr,
    nonce: &str,
    secs: u32,
    out: &Events,
) -> Result<(), String> {
    let duration = check(nonce, secs)?;
    let own = map.node.overlay_ip;
    let listener = TcpListener::bind((own, 0))
        .await
        .map_err(|e| format!("cannot listen on the overlay address {own}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    out.emit(ProbeEvent::Listening { port }).await;
    let accept_until = Instant::now() + ACCEPT_WINDOW;
    let mut stream = loop {
        let (mut stream, addr) = tokio::time::timeout_at(accept_until, listener.accept())
            .await
            .map_err(|_| format!("no connection from {from} within {ACCEPT_WINDOW:?}"))?
            .map_err(|e| format!("accepting: {e}"))?;
        if addr.ip() != IpAddr::V4(from) {
            tracing::warn!(%addr, expected = %from, "throughput listener: connection from an unexpected address refused");
            continue;
        }
        let mut presented = [0u8; NONCE_LEN];
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut presented)).await;
        if matches!(read, Ok(Ok(_))) && same_nonce(&presented, nonce.as_bytes()) {
            break stream;
        }
        tracing::warn!(%addr, "throughput listener: wrong or missing nonce; connection refused");
    };
    drop(listener);
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    let until = Instant::now() + duration + SLACK;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => bytes += n as u64,
            Ok(Err(e)) => return Err(format!("receiving: {e}")),
            Err(_) => {
                return Err(format!(
                    "the sender did not finish within {:?}",
                    duration + SLACK
                ))
            }
        }
    }
    stream
        .write_all(&bytes.to_be_bytes())
        .await
        .map_err(|e| format!("answering the count: {e}"))?;
    let _ = stream.shutdown().await;
    tracing::info!(bytes, "throughput transfer received");
    Ok(())
}

/// The sending end: connects from this node's overlay address to `to` (through the tunnel),
/// presents `nonce`, sends for `secs` (reporting progress each second), then waits for the
/// receiver's count. The rate is the receiver's count over the time until it answered.
async fn send(
    map: &NetworkMap,
    to: SocketAddr,
    nonce: &str,
    secs: u32,
    out: &Events,
) -> Result<(), String> {
    let duration = check(nonce, secs)?;
    let own = map.node.overlay_ip;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::from((own, 0)))
        .map_err(|e| format!("cannot bind the overlay address {own}: {e}"))?;
    let mut stream: TcpStream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| format!("no connection to {to} through the tunnel within 5 s"))?
        .map_err(|e| format!("connecting to {to} through the tunnel: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(nonce.as_bytes())
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let end = start + duration;
    let mut next_report = start + Duration::from_secs(1);
    let mut sent = 0u64;
    while Instant::now() < end {
        match tokio::time::timeout_at(end, stream.write(&chunk)).await {
            Ok(Ok(n)) => sent += n as u64,
            Ok(Err(e)) => return Err(format!("sending: {e}")),
            Err(_) => break,
        }
        if Instant::now() >= next_report {
            out.emit(ProbeEvent::Progress {
                elapsed_ms: start.elapsed().as_millis() as u64,
                bytes: sent,
            })
            .await;
            next_report += Duration::from_secs(1);
        }
    }
    stream
        .shutdown()
        .await
        .map_err(|e| format!("closing the transfer: {e}"))?;
    let mut count = [0u8; 8];
    tokio::time::timeout(SLACK, stream.read_exact(&mut count))
        .await
        .map_err(|_| format!("the receiver did not answer its count within {SLACK:?}"))?
        .map_err(|e| format!("reading the receiver's count: {e}"))?;
    let bytes = u64::from_be_bytes(count);
    let elapsed_ms = start.elapsed().as_millis() as u64;
    tracing::info!(
        sent,
        received = bytes,
        elapsed_ms,
        "throughput transfer done"
    );
    out.emit(ProbeEvent::Throughput { bytes, elapsed_ms }).await;
    Ok(())
}
