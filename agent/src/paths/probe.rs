//! Path probes: small authenticated datagrams sent on the WireGuard UDP port, outside the
//! WireGuard protocol, to measure each path without disturbing the tunnel.
//!
//! ```text
//!  0      2    3     4              12             20                      36
//!  +------+----+-----+--------------+--------------+-----------------------+
//!  | "SP" | v1 | kind| sender id    | sequence     | MAC (16 bytes)        |
//!  +------+----+-----+--------------+--------------+-----------------------+
//! ```
//!
//! The first byte (0x53) never starts a WireGuard message (types 1-4), so the receiver tells
//! them apart before boringtun sees anything. The sender id is the first 8 bytes of the
//! sender's WireGuard public key; the MAC is HMAC-SHA256 over bytes 0..20, truncated, keyed
//! with a key both nodes derive from their static X25519 keys (and nobody else can). A
//! forged probe fails the MAC; a replayed reply carries a sequence number no longer in
//! flight and is ignored by the selector; a request reflected back to its sender names the
//! sender itself, which is no peer. (Each is counted by reason, see
//! `engine::ProbeRefusal`.) A replayed request is answered like a fresh one: the reply goes
//! to whoever sent it, is no larger, and changes no state.
//!
//! A **size request** (kind 3, for path MTU discovery, see `paths::pmtu`) is a request
//! padded with zeros after the MAC to the size being probed; its MAC also covers its total
//! length (2 bytes, big endian, after byte 20), so a truncated copy fails. It is answered
//! with an ordinary 36-byte reply: only the request's direction is measured, and a probe
//! never draws a reply larger than itself. Agents before size requests drop them (their
//! check is `length == 36`), so toward them the path MTU stays unknown.

use boringtun::x25519::{PublicKey, StaticSecret};
use ring::hmac;

pub const PROBE_LEN: usize = 36;
const MAGIC: &[u8; 2] = b"SP";
const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const SIGNED: usize = PROBE_LEN - MAC_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Reply,
    /// A request padded to a size being probed.
    SizeRequest,
}

/// A probe's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: Kind,
    /// First 8 bytes of the sender's WireGuard public key.
    pub sender: [u8; 8],
    pub seq: u64,
}

/// Why a datagram is not a valid probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("not a probe (wrong length or magic)")]
    NotAProbe,
    #[error("probe version {0} is not supported (this agent speaks 1)")]
    Version(u8),
    #[error("unknown probe kind {0}")]
    Kind(u8),
    #[error("probe authentication failed")]
    Mac,
}

/// The probe key shared by two nodes.
pub struct ProbeKey(hmac::Key);

impl std::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

/// The id a node's probes carry: the first 8 bytes of its WireGuard public key.
pub fn id_of(public: &PublicKey) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&public.as_bytes()[..8]);
    id
}

impl ProbeKey {
    /// The HMAC key, for the other messages signed with it (`carry`).
    pub(crate) fn hmac(&self) -> &hmac::Key {
        &self.0
    }

    /// The key between this node (`own`) and `peer`: HMAC-SHA256 of the X25519 shared
    /// secret over a label and both public keys in a fixed order, so both ends get the same.
    pub fn derive(own: &StaticSecret, peer: &PublicKey) -> ProbeKey {
        let own_public = PublicKey::from(own);
        let shared = own.diffie_hellman(peer);
        let (a, b) = if own_public.as_bytes() <= peer.as_bytes() {
            (own_public.as_bytes(), peer.as_bytes())
        } else {
            (peer.as_bytes(), own_public.as_bytes())
        };
        let outer = hmac::Key::new(hmac::HMAC_SHA256, shared.as_bytes());
        let mut ctx = hmac::Context::with_key(&outer);
        ctx.update(b"strait path probe v1");
        ctx.update(a);
        ctx.update(b);
        ProbeKey(hmac::Key::new(hmac::HMAC_SHA256, ctx.sign().as_ref()))
    }
}

/// Kind byte of a size request.
const SIZE_REQUEST: u8 = 3;
/// Largest size request (a jumbo frame's UDP payload).
pub const MAX_SIZED: usize = 9001;

/// Whether `datagram` looks like a probe (cheap: length and magic only).
pub fn is_probe(datagram: &[u8]) -> bool {
    (PROBE_LEN..=MAX_SIZED).contains(&datagram.len())
        && datagram.starts_with(MAGIC)
        && (datagram.len() == PROBE_LEN || datagram[3] == SIZE_REQUEST)
}

/// The unauthenticated sender id, to find the key to check the probe with.
pub fn sender_of(datagram: &[u8]) -> Result<[u8; 8], ProbeError> {
    if !is_probe(datagram) {
        return Err(ProbeError::NotAProbe);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&datagram[4..12]);
    Ok(id)
}

pub fn encode(probe: &Probe, key: &ProbeKey) -> [u8; PROBE_LEN] {
    let mut out = [0u8; PROBE_LEN];
    out[..2].copy_from_slice(MAGIC);
    out[2] = VERSION;
    out[3] = match probe.kind {
        Kind::Request => 1,
        Kind::Reply => 2,
        Kind::SizeRequest => SIZE_REQUEST,
    };
    out[4..12].copy_from_slice(&probe.sender);
    out[12..20].copy_from_slice(&probe.seq.to_be_bytes());
    sign(&mut out, key);
    out
}

/// Writes the MAC of the first 20 bytes into the last 16.
pub(crate) fn sign(datagram: &mut [u8; PROBE_LEN], key: &ProbeKey) {
    let tag = hmac::sign(&key.0, &datagram[..SIGNED]);
    datagram[SIGNED..].copy_from_slice(&tag.as_ref()[..MAC_LEN]);
}

/// A size request of `len` bytes (at least [`PROBE_LEN`], at most [`MAX_SIZED`]) into
/// `out` (cleared first).
pub fn encode_sized(sender: [u8; 8], seq: u64, len: usize, key: &ProbeKey, out: &mut Vec<u8>) {
    let len = len.clamp(PROBE_LEN, MAX_SIZED);
    let head = encode(
        &Probe {
            kind: Kind::SizeRequest,
            sender,
            seq,
        },
        key,
    );
    out.clear();
    out.extend_from_slice(&head[..SIGNED]);
    let tag = mac(key, &head[..SIGNED], Some(len));
    out.extend_from_slice(&tag.as_ref()[..MAC_LEN]);
    out.resize(len, 0);
}

/// The MAC of a probe's signed bytes; a size request's also covers its length.
fn mac(key: &ProbeKey, signed: &[u8], sized: Option<usize>) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&key.0);
    ctx.update(signed);
    if let Some(len) = sized {
        ctx.update(&(len as u16).to_be_bytes());
    }
    ctx.sign()
}

/// Checks and parses a probe.
pub fn decode(datagram: &[u8], key: &ProbeKey) -> Result<Probe, ProbeError> {
    if !is_probe(datagram) {
        return Err(ProbeError::NotAProbe);
    }
    let sized = (datagram[3] == SIZE_REQUEST).then_some(datagram.len());
    let tag = mac(key, &datagram[..SIGNED], sized);
    if !constant_time_eq(&tag.as_ref()[..MAC_LEN], &datagram[SIGNED..PROBE_LEN]) {
        return Err(ProbeError::Mac);
    }
    if datagram[2] != VERSION {
        return Err(ProbeError::Version(datagram[2]));
    }
    let kind = match datagram[3] {
        1 => Kind::Request,
        2 => Kind::Reply,
        SIZE_REQUEST => Kind::SizeRequest,
        k => return Err(ProbeError::Kind(k)),
    };
    let mut sender = [0u8; 8];
    sender.copy_from_slice(&datagram[4..12]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&datagram[12..20]);
    Ok(Probe {
        kind,
        sender,
        seq: u64::from_be_bytes(seq),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (StaticSecret, StaticSecret, StaticSecret) {
        (
            StaticSecret::from([1u8; 32]),
            StaticSecret::from([2u8; 32]),
            StaticSecret::from([3u8; 32]),
        )
    }

    #[test]
    fn both_ends_derive_one_key_and_a_third_party_cannot() {
        let (a, b, c) = keys();
        let ab = ProbeKey::derive(&a, &PublicKey::from(&b));
        let ba = ProbeKey::derive(&b, &PublicKey::from(&a));
        let cb = ProbeKey::derive(&c, &PublicKey::from(&b));
        let probe = Probe {
            kind: Kind::Request,
            sender: id_of(&PublicKey::from(&a)),
            seq: 42,
        };
        let wire = encode(&probe, &ab);
        assert!(is_probe(&wire));
        assert_eq!(sender_of(&wire), Ok(probe.sender));
        assert_eq!(decode(&wire, &ba), Ok(probe));
        // C (who knows B's public key, and A's) forges a probe claiming to be A.
        let forged = encode(&probe, &cb);
        assert_eq!(decode(&forged, &ba), Err(ProbeError::Mac));
    }

    #[test]
    fn size_requests_carry_their_length_under_the_mac() {
        let (a, b, _) = keys();
        let ab = ProbeKey::derive(&a, &PublicKey::from(&b));
        let ba = ProbeKey::derive(&b, &PublicKey::from(&a));
        let sender = id_of(&PublicKey::from(&a));
        let mut wire = Vec::new();
        for len in [PROBE_LEN, 1252, 1472, 8973] {
            encode_sized(sender, 9, len, &ab, &mut wire);
            assert_eq!(wire.len(), len);
            assert!(is_probe(&wire));
            assert_eq!(
                decode(&wire, &ba),
                Ok(Probe {
                    kind: Kind::SizeRequest,
                    sender,
                    seq: 9
                })
            );
        }
        // Truncated (a large probe's head copied into a small datagram) or padded: refused.
        encode_sized(sender, 9, 1472, &ab, &mut wire);
        assert_eq!(decode(&wire[..1000], &ba), Err(ProbeError::Mac));
        assert_eq!(decode(&wire[..PROBE_LEN], &ba), Err(ProbeError::Mac));
        let mut longer = wire.clone();
        longer.push(0);
        assert_eq!(decode(&longer, &ba), Err(ProbeError::Mac));
        // Too short to hold a MAC, or larger than any size probed: not a probe.
        assert!(!is_probe(&wire[..20]));
        assert!(!is_probe(&vec![0x53; MAX_SIZED + 1]));
    }

    #[test]
    fn tampering_and_garbage_are_refused_without_panicking() {
        let (a, b, _) = keys();
        let key = ProbeKey::derive(&a, &PublicKey::from(&b));
        let wire = encode(
            &Probe {
                kind: Kind::Reply,
                sender: [9; 8],
                seq: 7,
            },
            &key,
        );
        for i in 0..PROBE_LEN {
            let mut bad = wire;
            bad[i] ^= 0x01;
            assert!(decode(&bad, &key).is_err(), "bit flip at byte {i} accepted");
        }
        for len in [0, 1, 2, 35, 37, 148, 9002] {
            let data = vec![0x53u8; len];
            assert_eq!(decode(&data, &key), Err(ProbeError::NotAProbe));
        }
        // WireGuard messages (type 1-4, three zero bytes) are never probes.
        for t in 1u8..=4 {
            let mut wg = [0u8; PROBE_LEN];
            wg[0] = t;
            assert!(!is_probe(&wg));
        }
    }
}
