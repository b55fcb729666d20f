//! Transport and admission: the QUIC endpoint (its settings and the secret that survives
//! restarts), each connection attempt decided at its first packet (limits per source and in
//! total, address validation when many handshakes are in progress), handshakes counted and
//! bounded in time, refusals counted and logged without flooding the log, and who is on the
//! other end of an established connection (certificate, mesh, revocation).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use strait_pki::tls::{self, CertStore, ClientAuth};
use strait_pki::Identity;
use strait_proto::msg::close;
use strait_proto::ALPN;

use super::requests::handle_stream;
use super::{unix, Coordinator, REVOKED_REASON};
use crate::connlimit::Over;
use crate::metrics::Refusal;

/// Streams a connection may have open at once: an agent uses two at most (its session and a
/// renewal), straitctl one. quinn keeps per-connection state for each allowed stream (16
/// cost 1 KiB more per connection than 4, measured with heaptrack).
const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress above which clients must first prove their address with a QUIC
/// Retry (one round trip; a spoofed source address cannot answer it).
const HANDSHAKES_BEFORE_RETRY: u32 = 256;
/// Connection attempts quinn queues before the accept loop sees them; past this they are
/// refused by quinn itself. The loop decides on each at once, so the queue stays short.
const MAX_INCOMING: usize = 1024;
/// Bytes buffered per queued connection attempt (beyond its first packet), and in all.
const INCOMING_BUFFER: u64 = 64 << 10;
const INCOMING_BUFFER_TOTAL: u64 = 16 << 20;
/// How often, at most, refused connection attempts are logged at WARN (a flood would
/// otherwise fill the log; each refusal is counted and logged at DEBUG).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Coordinator {
    /// Admits a connection from `ip` (see [`crate::connlimit`]); the slot releases it on drop.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<ConnectionSlot, Over> {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.admit(ip)?;
        self.metrics.connections.set(i64::from(conns.total()));
        Ok(ConnectionSlot {
            c: self.clone(),
            ip,
        })
    }

    /// Counts and logs a connection attempt refused for `over`.
    pub(super) fn refused_over(&self, remote: SocketAddr, over: Over) {
        let why = match over {
            Over::Total { .. } => Refusal::TooManyConnections,
            Over::Source { .. } => Refusal::TooManyFromAddress,
        };
        self.refused_attempt(
            remote,
            why,
            &over,
            "raise [limits] in the config if these are real agents",
        );
    }

    /// Counts a refused connection attempt (over the limits, or a failed handshake) and
    /// logs it at DEBUG, and at WARN at most every [`REFUSAL_LOG_EVERY`] with how many were
    /// refused since: a flood of attempts must not flood the log.
    pub(super) fn refused_attempt(
        &self,
        remote: SocketAddr,
        why: Refusal,
        detail: &dyn std::fmt::Display,
        advice: &str,
    ) {
        self.metrics.refused(why);
        tracing::debug!(%remote, reason = why.label(), %detail, "connection attempt refused");
        let now = std::time::Instant::now();
        let mut log = self.refusal_log.lock().unwrap_or_else(|p| p.into_inner());
        log.1 += 1;
        if log
            .0
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY)
        {
            tracing::warn!(%remote, reason = why.label(), %detail, refused = log.1, "refusing connection attempts (this one and the count since the last such line; each is logged at DEBUG): {advice}");
            *log = (Some(now), 0);
        }
    }
}

/// An admitted connection's place in the limits; released when dropped.
struct ConnectionSlot {
    c: Arc<Coordinator>,
    ip: std::net::IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut conns = self.c.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.release(self.ip);
        self.c.metrics.connections.set(i64::from(conns.total()));
    }
}

/// Counts a handshake in progress while alive (`strait_coordinator_handshakes`).
struct Handshaking(prometheus_client::metrics::gauge::Gauge);

impl Handshaking {
    fn new(n: &prometheus_client::metrics::gauge::Gauge) -> Self {
        n.inc();
        Handshaking(n.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Length of the secret behind the endpoint's stateless resets and connection IDs.
const ENDPOINT_SECRET_LEN: usize = 32;

/// The QUIC endpoint settings that must survive a restart, from the secret in `path`
/// (created, random and 0600, when missing): the key authenticating stateless resets and the
/// key of the connection IDs. A coordinator restarted after a crash then recognises the
/// connection IDs of its previous run and answers their packets with a stateless reset the
/// agents can verify, and they reconnect at once. With new keys it would drop those packets
/// as noise, and every agent would wait for its idle timeout (30 s) before reconnecting.
pub fn endpoint_config(path: &std::path::Path) -> Result<quinn::EndpointConfig> {
    let secret = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = vec![0u8; ENDPOINT_SECRET_LEN];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| anyhow::anyhow!("no randomness for the QUIC endpoint secret"))?;
            strait_pki::material::write_file(path, &bytes, 0o600)?;
            bytes
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if secret.len() != ENDPOINT_SECRET_LEN {
        anyhow::bail!(
            "{} holds {} bytes instead of {ENDPOINT_SECRET_LEN}; remove it and a new one is made",
            path.display(),
            secret.len()
        );
    }
    let derive = |label: &[u8]| {
        ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            label,
        )
    };
    let reset = derive(b"strait quic stateless reset");
    let cid = derive(b"strait quic connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        reset.as_ref(),
    )));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// Binds the QUIC endpoint presenting `certs` and trusting client certificates from `cas`,
/// with `endpoint` from [`endpoint_config`].
pub fn bind(
    listen: SocketAddr,
    certs: CertStore,
    cas: &[rustls_pki_types::CertificateDer<'static>],
    endpoint: quinn::EndpointConfig,
) -> Result<quinn::Endpoint> {
    let tls = tls::server_config(cas, certs, ClientAuth::OptionalForEnrollment, ALPN)?;
    let mut server = tls::quic_server_config(tls)?;
    server
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        // Control messages are small; modest windows keep per-connection memory low.
        .stream_receive_window((256u32 << 10).into())
        .receive_window((1u32 << 20).into())
        .send_window(1 << 20)
        // No UDP GSO: control traffic is a few datagrams at a time, and with GSO every
        // connection keeps a send buffer for a whole batch (about 13 KiB each, 65 MB at
        // 5,000 agents; measured with heaptrack).
        .enable_segmentation_offload(false)
        // Datagrams stay at QUIC's minimum size (1,200 bytes): with path MTU discovery every
        // connection's send buffer grew from 1,200 to 2,400 bytes (heaptrack: 11.7 MiB at
        // 5,000 agents), for control messages that fit a datagram or a few anyway.
        .mtu_discovery_config(None)
        .max_idle_timeout(Some(
            Duration::from_secs(30).try_into().context("idle timeout")?,
        ));
    server.transport_config(Arc::new(transport));
    let socket = bind_udp(listen).with_context(|| format!("binding UDP {listen}"))?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(endpoint, Some(server), socket, runtime)
        .with_context(|| format!("serving QUIC on UDP {listen}"))
}

/// The listening socket. `[::]:port` serves IPv6 and IPv4 alike (not IPv6-only, whatever
/// the host's `net.ipv6.bindv6only`).
fn bind_udp(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if listen.is_ipv6() && listen.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

/// Decides on a connection attempt at once: refused over the limits (no TLS work done),
/// asked to prove its address when many handshakes are in progress, or admitted and handed
/// to its own task.
pub(super) fn accept(coordinator: &Arc<Coordinator>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let slot = match coordinator.admit(remote.ip()) {
        Ok(slot) => slot,
        Err(over) => {
            coordinator.refused_over(remote, over);
            incoming.refuse();
            return;
        }
    };
    let busy = coordinator.metrics.handshakes.get() >= i64::from(HANDSHAKES_BEFORE_RETRY);
    if busy && !incoming.remote_address_validated() {
        drop(slot);
        coordinator.metrics.address_validations.inc();
        tracing::debug!(%remote, "many handshakes in progress: asking the client to prove its address");
        if let Err(e) = incoming.retry() {
            e.into_incoming().ignore();
        }
        return;
    }
    let c = coordinator.clone();
    // Counted here, not in the task: the next connection attempt's `busy` must see it.
    let handshaking = Handshaking::new(&c.metrics.handshakes);
    // Boxed, and made outside the connection's task: the handshake's state (the incoming
    // connection alone is 384 bytes) is large and over once it is done; inside the task it
    // would size the task for the connection's whole life (968 bytes instead of 592,
    // measured with -Zprint-type-sizes).
    let handshake = {
        Box::pin(async move {
            let _handshaking = handshaking;
            match incoming.accept() {
                Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
                Err(e) => Ok(Err(e)),
            }
        })
    };
    tokio::spawn(async move {
        let _slot = slot;
        let conn = handshake.await;
        match conn {
            Ok(Ok(conn)) => handle_connection(c, conn).await,
            Ok(Err(e)) => {
                let why = crate::handshake::refusal(&e);
                c.refused_attempt(
                    remote,
                    why,
                    &e,
                    "the client's certificate must come from this mesh's CA and be valid now",
                );
            }
            Err(_) => {
                let detail = format!("handshake not finished within {HANDSHAKE_TIMEOUT:?}");
                c.refused_attempt(
                    remote,
                    Refusal::HandshakeTimeout,
                    &detail,
                    "a client that starts a handshake must finish it",
                );
            }
        }
    });
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub(super) identity: Option<Identity>,
    pub(super) serial: String,
    pub(super) not_after: u64,
    pub(super) addr: SocketAddr,
}

fn peer_of(conn: &quinn::Connection) -> Result<Peer, String> {
    let identity = tls::peer_identity(conn).map_err(|e| e.to_string())?;
    let (serial, not_after) = match tls::peer_certificate(conn) {
        Some(info) => (info.serial, unix(info.not_after)),
        None => (String::new(), 0),
    };
    Ok(Peer {
        identity,
        serial,
        not_after,
        addr: conn.remote_address(),
    })
}

async fn handle_connection(c: Arc<Coordinator>, conn: quinn::Connection) {
    let peer = match peer_of(&conn) {
        Ok(p) => p,
        Err(e) => {
            c.metrics.refused(Refusal::BadIdentity);
            tracing::warn!(remote = %conn.remote_address(), error = %e, "refused: unusable certificate");
            conn.close(close::BAD_IDENTITY.into(), e.as_bytes());
            return;
        }
    };
    if let Some(id) = &peer.identity {
        if id.mesh() != c.config.mesh {
            c.metrics.refused(Refusal::OtherMesh);
            tracing::warn!(remote = %peer.addr, identity = %id, "refused: certificate of another mesh");
            conn.close(
                close::BAD_IDENTITY.into(),
                b"certificate is for another mesh",
            );
            return;
        }
        if c.core().mesh.is_revoked(&peer.serial) {
            c.metrics.refused(Refusal::Revoked);
            tracing::warn!(remote = %peer.addr, identity = %id, serial = %peer.serial, "refused: revoked certificate");
            conn.close(close::REVOKED.into(), REVOKED_REASON);
            return;
        }
    }
    tracing::debug!(remote = %peer.addr, identity = ?peer.identity.as_ref().map(|i| i.to_string()), "connection");
    let anonymous = peer.identity.is_none();
    let streams = async {
        while let Ok((send, recv)) = conn.accept_bi().await {
            let (c, conn, peer) = (c.clone(), conn.clone(), peer.clone());
            tokio::spawn(async move { handle_stream(c, conn, peer, send, recv).await });
        }
    };
    if !anonymous {
        streams.await;
        return;
    }
    // Without a certificate a connection may only enroll, which takes one request.
    let lifetime = c.config.limits.anonymous_lifetime;
    if tokio::time::timeout(lifetime, streams).await.is_err() {
        c.metrics.refused(Refusal::AnonymousLifetime);
        tracing::debug!(remote = %peer.addr, "closing a connection without a certificate after {lifetime:?}");
        let reason = format!(
            "connections without a client certificate last at most {}; enroll on a new connection",
            humantime::format_duration(lifetime)
        );
        conn.close(close::LIMIT.into(), reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_ipv6_listener_also_takes_ipv4() {
        let socket = bind_udp("[::]:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"v4", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"v4");
        assert!(from.is_ipv6(), "{from}: an IPv4-mapped address");
    }

    #[test]
    fn the_endpoint_secret_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quic.key");
        endpoint_config(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        assert_eq!(first.len(), ENDPOINT_SECRET_LEN);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restart reads the same secret, so it resets the previous run's connections.
        endpoint_config(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        std::fs::write(&path, b"short").unwrap();
        let e = endpoint_config(&path).unwrap_err().to_string();
        assert!(e.contains("holds 5 bytes instead of 32"), "{e}");
    }
}
