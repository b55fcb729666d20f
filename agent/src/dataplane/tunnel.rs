//! The one place that drives boringtun's `noise::Tunn`: every `TunnResult` variant is
//! matched here, and after a datagram yields `WriteToNetwork`, queued packets are drained by
//! decapsulating an empty datagram until `Done`, as boringtun requires.
//!
//! Note: `Tunn` reads the clock itself (handshake and rekey timers), so this module is part
//! of the IO shell, not the pure core.

use std::net::IpAddr;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// Largest WireGuard overhead added to an IP packet (header 16 + tag 16, padded).
pub const OVERHEAD: usize = 32;
/// Buffer size that fits any datagram the tunnel emits for a packet up to 65535 bytes, and
/// any handshake message.
pub const BUFFER: usize = 65535 + OVERHEAD + 16;

/// What the tunnel wants done with the bytes it produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// Send this datagram to the peer's endpoint.
    Network(&'a [u8]),
    /// Write this decrypted IP packet (inner source `src`) to the TUN device, after checking
    /// that `src` is one of the peer's allowed IPs.
    Tun(&'a [u8], IpAddr),
    /// Nothing to do.
    Nothing,
}

/// A failure reported by boringtun; the packet or datagram that caused it is dropped.
#[derive(Debug, thiserror::Error)]
#[error("wireguard: {0:?}")]
pub struct TunnelError(pub WireGuardError);

impl TunnelError {
    /// Errors that are routine (an expired session, a replayed counter) rather than a sign
    /// of a misconfigured or hostile peer.
    pub fn is_routine(&self) -> bool {
        matches!(
            self.0,
            WireGuardError::ConnectionExpired
                | WireGuardError::DuplicateCounter
                | WireGuardError::NoCurrentSession
                | WireGuardError::UnderLoad
        )
    }
}

/// Whose a datagram from the network is, as its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee {
    /// A handshake initiation from the peer with this static key (proven by the
    /// initiation, decrypted with this node's key).
    Key([u8; 32]),
    /// Anything else: for the tunnel that chose this receiver index.
    Index(u32),
}

/// Whose `datagram` is (`None`: not WireGuard, or an initiation this node's key does not
/// open). Costs one Diffie-Hellman for an initiation, nothing else for the rest.
#[inline]
pub fn addressee(secret: &StaticSecret, public: &PublicKey, datagram: &[u8]) -> Option<Addressee> {
    match Tunn::parse_incoming_packet(datagram).ok()? {
        Packet::HandshakeInit(init) => {
            let half = parse_handshake_anon(secret, public, &init).ok()?;
            Some(Addressee::Key(half.peer_static_public))
        }
        Packet::HandshakeResponse(p) => Some(Addressee::Index(p.receiver_idx)),
        Packet::PacketCookieReply(p) => Some(Addressee::Index(p.receiver_idx)),
        Packet::PacketData(p) => Some(Addressee::Index(p.receiver_idx)),
    }
}

/// The destination address of an IP packet from the TUN device.
#[inline]
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    Tunn::dst_address(packet)
}

/// One WireGuard peer's session state.
pub struct Tunnel {
    /// Boxed: boringtun keeps its 8 sessions inline (keys and replay windows), 11,040
    /// bytes in all (boringtun 0.7.1). Inline, every peer the engine walks each 20 ms timer
    /// pass would sit that far from the next; boxed, the walk stays on a few pages.
    tunn: Box<Tunn>,
    /// Handshakes this side started and completed (a response processed): each leaves a
    /// current session the peer holds too.
    initiated: u64,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = self.stats();
        f.debug_struct("Tunnel")
            .field("last_handshake", &stats.last_handshake)
            .field("tx_bytes", &stats.tx_bytes)
            .field("rx_bytes", &stats.rx_bytes)
            .finish()
    }
}

/// Counters of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TunnelStats {
    pub last_handshake: Option<std::time::Duration>,
    pub tx_bytes: usize,
    pub rx_bytes: usize,
    pub loss: f32,
    pub rtt_ms: Option<u32>,
}

fn one(result: TunnResult<'_>) -> Result<Output<'_>, TunnelError> {
    match result {
        TunnResult::Done => Ok(Output::Nothing),
        TunnResult::Err(e) => Err(TunnelError(e)),
        TunnResult::WriteToNetwork(b) => Ok(Output::Network(b)),
        TunnResult::WriteToTunnelV4(b, src) => Ok(Output::Tun(b, IpAddr::V4(src))),
        TunnResult::WriteToTunnelV6(b, src) => Ok(Output::Tun(b, IpAddr::V6(src))),
    }
}

impl Tunnel {
    /// A tunnel to the peer with public key `peer`. `index` must be unique among this
    /// node's tunnels (it prefixes the session indices); `keepalive` is the persistent
    /// keepalive in seconds for peers behind NAT.
    pub fn new(own: StaticSecret, peer: PublicKey, keepalive: Option<u16>, index: u32) -> Tunnel {
        Tunnel {
            tunn: Box::new(Tunn::new(own, peer, None, keepalive, index, None)),
            initiated: 0,
        }
    }

    /// Encrypts an IP packet read from the TUN device (or starts a handshake and queues it).
    pub fn encapsulate<'a>(
        &mut self,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> Result<Output<'a>, TunnelError> {
        one(self.tunn.encapsulate(packet, out))
    }

    /// Processes a datagram from the network. `sink` receives every output in order:
    /// handshake answers, then (after a handshake completes) the packets that were queued.
    pub fn decapsulate(
        &mut self,
        src: Option<IpAddr>,
        datagram: &[u8],
        out: &mut [u8],
        mut sink: impl FnMut(Output<'_>),
    ) -> Result<(), TunnelError> {
        // An empty datagram means "drain the queue" to boringtun; from the network it means
        // nothing and is ignored.
        if datagram.is_empty() {
            return Ok(());
        }
        // A handshake response: type 2, 92 bytes (WireGuard's message format).
        let response = datagram.len() == 92 && datagram[..4] == [2, 0, 0, 0];
        match one(self.tunn.decapsulate(src, datagram, out))? {
            Output::Network(b) => {
                // A response accepted is answered with a keepalive on the new session.
                if response {
                    self.initiated += 1;
                }
                sink(Output::Network(b));
                // Drain packets queued while the handshake was in flight.
                loop {
                    match one(self.tunn.decapsulate(None, &[], out))? {
                        Output::Network(b) => sink(Output::Network(b)),
                        Output::Nothing => break,
                        other => {
                            sink(other);
                            break;
                        }
                    }
                }
            }
            other => sink(other),
        }
        Ok(())
    }

    /// Runs the tunnel's timers (handshake retries, rekeying, keepalives); call at least
    /// every 250 ms.
    pub fn tick<'a>(&mut self, out: &'a mut [u8]) -> Result<Output<'a>, TunnelError> {
        one(self.tunn.update_timers(out))
    }

    /// Starts a new handshake now, even with a session up (that one keeps working until the
    /// new one is complete): the initiation to send.
    pub fn rehandshake<'a>(&mut self, out: &'a mut [u8]) -> Result<Output<'a>, TunnelError> {
        one(self.tunn.format_handshake_initiation(out, true))
    }

    /// How many handshakes this side started have completed: once it grows, this side
    /// sends on a session the peer has just agreed to.
    pub fn initiated_handshakes(&self) -> u64 {
        self.initiated
    }

    /// Whether the tunnel has a current session to send on.
    pub fn has_session(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }

    /// Time since the current session's handshake (cheaper than [`Tunnel::stats`]).
    pub fn last_handshake(&self) -> Option<std::time::Duration> {
        self.tunn.time_since_last_handshake()
    }

    pub fn stats(&self) -> TunnelStats {
        let (last_handshake, tx_bytes, rx_bytes, loss, rtt_ms) = self.tunn.stats();
        TunnelStats {
            last_handshake,
            tx_bytes,
            rx_bytes,
            loss,
            rtt_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_is_small_and_its_sessions_live_elsewhere() {
        // The engine walks every peer each timer pass; boringtun's state stays out of it.
        let tunn = std::mem::size_of::<Tunn>();
        assert!(tunn > 8 << 10, "boringtun's Tunn is {tunn} bytes");
        assert!(std::mem::size_of::<Tunnel>() <= 16);
    }

    fn keypair(seed: u8) -> (StaticSecret, PublicKey) {
        let s = StaticSecret::from([seed; 32]);
        let p = PublicKey::from(&s);
        (s, p)
    }

    /// A minimal IPv4/UDP packet from 10.1.0.1 to 10.2.0.1 carrying `payload`.
    fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 1, 0, 1]);
        p[16..20].copy_from_slice(&[10, 2, 0, 1]);
        p[20..22].copy_from_slice(&4000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        p
    }

    /// Decrypted packets with their inner source.
    type Received = Vec<(Vec<u8>, IpAddr)>;

    /// Delivers `datagrams` to `to`, collecting what it sends back and what it writes to TUN.
    fn deliver(to: &mut Tunnel, datagrams: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Received) {
        let mut out = vec![0u8; BUFFER];
        let (mut net, mut tun) = (Vec::new(), Vec::new());
        for d in datagrams {
            to.decapsulate(None, &d, &mut out, |o| match o {
                Output::Network(b) => net.push(b.to_vec()),
                Output::Tun(b, src) => tun.push((b.to_vec(), src)),
                Output::Nothing => {}
            })
            .unwrap();
        }
        (net, tun)
    }

    #[test]
    fn two_tunnels_handshake_and_carry_a_queued_packet() {
        let (a_secret, a_public) = keypair(1);
        let (b_secret, b_public) = keypair(2);
        let mut a = Tunnel::new(a_secret, b_public, None, 1);
        let mut b = Tunnel::new(b_secret, a_public, None, 2);
        let packet = ipv4_packet(b"hello over wireguard");

        // No session yet: the packet is queued and a handshake initiation goes out.
        let mut out = vec![0u8; BUFFER];
        let init = match a.encapsulate(&packet, &mut out).unwrap() {
            Output::Network(b) => b.to_vec(),
            other => panic!("expected a handshake initiation, got {other:?}"),
        };
        let (responses, tun) = deliver(&mut b, vec![init]);
        assert_eq!(responses.len(), 1, "one handshake response");
        assert!(tun.is_empty());
        // The response completes A's handshake; A flushes the queued packet.
        let (to_b, _) = deliver(&mut a, responses);
        assert!(
            !to_b.is_empty(),
            "the queued packet (and a keepalive) are sent"
        );
        let (_, received) = deliver(&mut b, to_b);
        let data: Vec<_> = received.iter().filter(|(p, _)| !p.is_empty()).collect();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].0, packet);
        assert_eq!(data[0].1, "10.1.0.1".parse::<IpAddr>().unwrap());

        // With the session up, packets go straight through both ways.
        let reply = ipv4_packet(b"and back");
        let datagram = match b.encapsulate(&reply, &mut out).unwrap() {
            Output::Network(d) => d.to_vec(),
            other => panic!("{other:?}"),
        };
        let (_, got) = deliver(&mut a, vec![datagram]);
        assert_eq!(got[0].0, reply);
        assert!(a.stats().last_handshake.is_some());
        assert_eq!((a.initiated_handshakes(), b.initiated_handshakes()), (1, 0));

        // A new handshake while the session is up: counted once complete, and the old
        // session carries packets meanwhile.
        let init = match a.rehandshake(&mut out).unwrap() {
            Output::Network(b) => b.to_vec(),
            other => panic!("expected a handshake initiation, got {other:?}"),
        };
        assert_eq!(a.initiated_handshakes(), 1);
        let (responses, _) = deliver(&mut b, vec![init]);
        let (keepalive, _) = deliver(&mut a, responses);
        assert_eq!(a.initiated_handshakes(), 2);
        deliver(&mut b, keepalive);
        let datagram = match b.encapsulate(&reply, &mut out).unwrap() {
            Output::Network(d) => d.to_vec(),
            other => panic!("{other:?}"),
        };
        let (_, got) = deliver(&mut a, vec![datagram]);
        assert_eq!(got[0].0, reply, "the new session carries packets");
    }

    #[test]
    fn garbage_and_foreign_datagrams_are_errors_not_panics() {
        let (a_secret, _) = keypair(1);
        let (_, b_public) = keypair(2);
        let mut a = Tunnel::new(a_secret, b_public, None, 1);
        let mut out = vec![0u8; BUFFER];
        for d in [
            &b"\x01"[..],
            b"\x04\x00\x00\x00garbage-data-packet",
            &[0xffu8; 200][..],
        ] {
            let r = a.decapsulate(None, d, &mut out, |_| {});
            assert!(r.is_err(), "{d:?} accepted");
        }
        let mut outputs = 0;
        a.decapsulate(None, b"", &mut out, |_| outputs += 1)
            .unwrap();
        assert_eq!(
            outputs, 0,
            "an empty datagram from the network does nothing"
        );
        // A handshake from a stranger (wrong key) is refused.
        let (c_secret, _) = keypair(3);
        let (_, a_public) = keypair(1);
        let mut c = Tunnel::new(c_secret, a_public, None, 3);
        let init = match c.encapsulate(&ipv4_packet(b"x"), &mut out).unwrap() {
            Output::Network(b) => b.to_vec(),
            other => panic!("{other:?}"),
        };
        let mut out2 = vec![0u8; BUFFER];
        assert!(a.decapsulate(None, &init, &mut out2, |_| {}).is_err());
    }
}
