//! Carry queries: how a member asks the gateways of its site which of its routes' prefixes
//! each can carry now, on the gateway's WireGuard UDP port, outside the WireGuard protocol
//! (like path probes, see `probe`).
//!
//! ```text
//! query (member -> gateway), kind 4:
//!  0      2    3     4                   36          44      46                    end-16
//!  +------+----+-----+-------------------+-----------+-------+---------------------+-----+
//!  | "SP" | v1 | 4   | member public key | sequence  | count | count x prefix      | MAC |
//!  +------+----+-----+-------------------+-----------+-------+---------------------+-----+
//!  prefix: family (4 or 6), length, then 4 or 16 address bytes
//!
//! answer (gateway -> member), kind 5:
//!  0      2    3     4            12          20      22                      end-16
//!  +------+----+-----+------------+-----------+-------+-----------------------+-----+
//!  | "SP" | v1 | 5   | gateway id | sequence  | count | bitmap, ceil(count/8) | MAC |
//!  +------+----+-----+------------+-----------+-------+-----------------------+-----+
//!  bit i (byte i/8, bit i%8 from the least significant): the gateway carries prefix i
//! ```
//!
//! The MAC is HMAC-SHA256 over every byte before it, truncated to 16 bytes, keyed with the
//! probe key of the member and the gateway ([`ProbeKey::derive`], an X25519 agreement
//! of their static keys). The query carries the member's whole public key, so the gateway,
//! which does not know its site's members, derives the key from the query itself: it learns
//! that the sender holds that key's private half, not that it is a member. The member learns
//! more: an answer that checks came from the holder of the gateway's private key, for its
//! own sequence number, so nobody on the site network can make it route through a gateway
//! that is dead or cannot carry a prefix. An answer is always shorter than its query (5 or
//! 17 bytes per prefix asked, 1 bit answered), so the port amplifies nothing.

use ring::hmac;

use super::probe::ProbeKey;

const MAGIC: &[u8; 2] = b"SP";
const VERSION: u8 = 1;
const QUERY: u8 = 4;
const ANSWER: u8 = 5;
const MAC_LEN: usize = 16;
const QUERY_HEAD: usize = 46;
const ANSWER_HEAD: usize = 22;
/// Largest query: fits a 1280-byte IPv6 packet with room to spare.
pub const MAX_QUERY: usize = 1200;
/// The most prefixes one query can ask about (all IPv4); IPv6 ones take more room, so
/// callers split their prefixes with [`chunks`].
pub const MAX_PREFIXES: usize = (MAX_QUERY - QUERY_HEAD - MAC_LEN) / 6;

/// Why a datagram is not a valid carry query or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CarryError {
    #[error("not a carry query or answer (wrong length, magic or kind)")]
    NotCarry,
    #[error("malformed prefix list")]
    Malformed,
    #[error("carry authentication failed")]
    Mac,
}

/// A member's question: which of `prefixes` can you carry?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub member: [u8; 32],
    pub seq: u64,
    pub prefixes: Vec<ipnetwork::IpNetwork>,
}

/// A gateway's answer to query `seq`: `carries[i]` for the query's prefix `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub gateway: [u8; 8],
    pub seq: u64,
    pub carries: Vec<bool>,
}

fn prefix_len(p: &ipnetwork::IpNetwork) -> usize {
    if p.is_ipv4() {
        6
    } else {
        18
    }
}

/// Splits `prefixes` into runs that each fit one query, in order.
pub fn chunks(prefixes: &[ipnetwork::IpNetwork]) -> Vec<std::ops::Range<usize>> {
    let room = MAX_QUERY - QUERY_HEAD - MAC_LEN;
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, p) in prefixes.iter().enumerate() {
        let len = prefix_len(p);
        if used + len > room || i - start == usize::from(u16::MAX) {
            out.push(start..i);
            (start, used) = (i, 0);
        }
        used += len;
    }
    if start < prefixes.len() {
        out.push(start..prefixes.len());
    }
    out
}

fn tag(key: &ProbeKey, signed: &[u8]) -> hmac::Tag {
    hmac::sign(key.hmac(), signed)
}

fn checked<'a>(datagram: &'a [u8], key: &ProbeKey) -> Result<&'a [u8], CarryError> {
    let (signed, mac) = datagram.split_at(datagram.len() - MAC_LEN);
    let want = tag(key, signed);
    let ok = want.as_ref()[..MAC_LEN]
        .iter()
        .zip(mac)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    if ok {
        Ok(signed)
    } else {
        Err(CarryError::Mac)
    }
}

/// Whether `datagram` looks like a carry query (cheap: magic, kind and length only).
pub fn is_query(datagram: &[u8]) -> bool {
    (QUERY_HEAD + MAC_LEN..=MAX_QUERY).contains(&datagram.len())
        && datagram.starts_with(MAGIC)
        && datagram[2] == VERSION
        && datagram[3] == QUERY
}

/// Whether `datagram` looks like a carry answer.
pub fn is_answer(datagram: &[u8]) -> bool {
    (ANSWER_HEAD + MAC_LEN..=MAX_QUERY).contains(&datagram.len())
        && datagram.starts_with(MAGIC)
        && datagram[2] == VERSION
        && datagram[3] == ANSWER
}

/// The member public key a query claims, to derive the key to check it with.
pub fn member_of(datagram: &[u8]) -> Result<[u8; 32], CarryError> {
    if !is_query(datagram) {
        return Err(CarryError::NotCarry);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&datagram[4..36]);
    Ok(key)
}

/// A query, signed. `query.prefixes` must fit ([`chunks`]); extra ones are left out.
pub fn encode_query(query: &Query, key: &ProbeKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_QUERY);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, QUERY]);
    out.extend_from_slice(&query.member);
    out.extend_from_slice(&query.seq.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    let mut count: u16 = 0;
    for p in &query.prefixes {
        if out.len() + prefix_len(p) + MAC_LEN > MAX_QUERY || count == u16::MAX {
            break;
        }
        match p.network() {
            std::net::IpAddr::V4(a) => {
                out.extend_from_slice(&[4, p.prefix()]);
                out.extend_from_slice(&a.octets());
            }
            std::net::IpAddr::V6(a) => {
                out.extend_from_slice(&[6, p.prefix()]);
                out.extend_from_slice(&a.octets());
            }
        }
        count += 1;
    }
    out[44..46].copy_from_slice(&count.to_be_bytes());
    let t = tag(key, &out);
    out.extend_from_slice(&t.as_ref()[..MAC_LEN]);
    out
}

/// Checks and parses a query.
pub fn decode_query(datagram: &[u8], key: &ProbeKey) -> Result<Query, CarryError> {
    let member = member_of(datagram)?;
    let signed = checked(datagram, key)?;
    let seq = u64::from_be_bytes(
        signed[36..44]
            .try_into()
            .map_err(|_| CarryError::Malformed)?,
    );
    let count = u16::from_be_bytes([signed[44], signed[45]]);
    let mut rest = &signed[QUERY_HEAD..];
    let mut prefixes = Vec::with_capacity(usize::from(count).min(MAX_PREFIXES));
    for _ in 0..count {
        let (family, len) = match rest {
            [f, l, ..] => (*f, *l),
            _ => return Err(CarryError::Malformed),
        };
        let (addr, n): (std::net::IpAddr, usize) = match family {
            4 if rest.len() >= 6 => {
                let o: [u8; 4] = rest[2..6].try_into().map_err(|_| CarryError::Malformed)?;
                (o.into(), 6)
            }
            6 if rest.len() >= 18 => {
                let o: [u8; 16] = rest[2..18].try_into().map_err(|_| CarryError::Malformed)?;
                (o.into(), 18)
            }
            _ => return Err(CarryError::Malformed),
        };
        prefixes.push(ipnetwork::IpNetwork::new(addr, len).map_err(|_| CarryError::Malformed)?);
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        return Err(CarryError::Malformed);
    }
    Ok(Query {
        member,
        seq,
        prefixes,
    })
}

/// An answer, signed.
pub fn encode_answer(answer: &Answer, key: &ProbeKey) -> Vec<u8> {
    let count = answer.carries.len().min(usize::from(u16::MAX));
    let mut out = Vec::with_capacity(ANSWER_HEAD + count.div_ceil(8) + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, ANSWER]);
    out.extend_from_slice(&answer.gateway);
    out.extend_from_slice(&answer.seq.to_be_bytes());
    out.extend_from_slice(&(count as u16).to_be_bytes());
    let mut bits = vec![0u8; count.div_ceil(8)];
    for (i, _) in answer.carries[..count]
        .iter()
        .enumerate()
        .filter(|(_, c)| **c)
    {
        bits[i / 8] |= 1 << (i % 8);
    }
    out.extend_from_slice(&bits);
    let t = tag(key, &out);
    out.extend_from_slice(&t.as_ref()[..MAC_LEN]);
    out
}

/// Checks and parses an answer.
pub fn decode_answer(datagram: &[u8], key: &ProbeKey) -> Result<Answer, CarryError> {
    if !is_answer(datagram) {
        return Err(CarryError::NotCarry);
    }
    let signed = checked(datagram, key)?;
    let gateway: [u8; 8] = signed[4..12]
        .try_into()
        .map_err(|_| CarryError::Malformed)?;
    let seq = u64::from_be_bytes(
        signed[12..20]
            .try_into()
            .map_err(|_| CarryError::Malformed)?,
    );
    let count = usize::from(u16::from_be_bytes([signed[20], signed[21]]));
    let bits = &signed[ANSWER_HEAD..];
    if bits.len() != count.div_ceil(8) {
        return Err(CarryError::Malformed);
    }
    Ok(Answer {
        gateway,
        seq,
        carries: (0..count)
            .map(|i| bits[i / 8] & (1 << (i % 8)) != 0)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use boringtun::x25519::{PublicKey, StaticSecret};

    use super::*;
    use crate::paths::probe::{id_of, is_probe};

    fn net(s: &str) -> ipnetwork::IpNetwork {
        s.parse().unwrap()
    }

    fn keys() -> (StaticSecret, StaticSecret, StaticSecret) {
        (
            StaticSecret::from([1u8; 32]),
            StaticSecret::from([2u8; 32]),
            StaticSecret::from([3u8; 32]),
        )
    }

    #[test]
    fn a_query_and_its_answer_round_trip_and_the_answer_is_smaller() {
        let (member, gateway, _) = keys();
        let mk = ProbeKey::derive(&member, &PublicKey::from(&gateway));
        let query = Query {
            member: *PublicKey::from(&member).as_bytes(),
            seq: 77,
            prefixes: vec![
                net("10.20.0.0/16"),
                net("2001:db8:20::/48"),
                net("100.64.0.0/10"),
            ],
        };
        let wire = encode_query(&query, &mk);
        assert!(is_query(&wire) && !is_answer(&wire) && !is_probe(&wire));
        // The gateway derives the key from the query's own public key.
        let claimed = PublicKey::from(member_of(&wire).unwrap());
        let gk = ProbeKey::derive(&gateway, &claimed);
        assert_eq!(decode_query(&wire, &gk), Ok(query.clone()));
        let answer = Answer {
            gateway: id_of(&PublicKey::from(&gateway)),
            seq: 77,
            carries: vec![true, false, true],
        };
        let reply = encode_answer(&answer, &gk);
        assert!(reply.len() < wire.len());
        assert!(is_answer(&reply) && !is_query(&reply) && !is_probe(&reply));
        assert_eq!(decode_answer(&reply, &mk), Ok(answer));
    }

    #[test]
    fn forged_tampered_and_garbage_datagrams_are_refused() {
        let (member, gateway, stranger) = keys();
        let mk = ProbeKey::derive(&member, &PublicKey::from(&gateway));
        let gk = ProbeKey::derive(&gateway, &PublicKey::from(&member));
        // A stranger who knows both public keys cannot answer for the gateway.
        let forged = encode_answer(
            &Answer {
                gateway: id_of(&PublicKey::from(&gateway)),
                seq: 1,
                carries: vec![true],
            },
            &ProbeKey::derive(&stranger, &PublicKey::from(&member)),
        );
        assert_eq!(decode_answer(&forged, &mk), Err(CarryError::Mac));
        let wire = encode_query(
            &Query {
                member: *PublicKey::from(&member).as_bytes(),
                seq: 5,
                prefixes: vec![net("10.20.0.0/16")],
            },
            &mk,
        );
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            assert!(
                decode_query(&bad, &gk).is_err(),
                "bit flip at byte {i} accepted"
            );
        }
        for len in [0, 3, 37, 61, 1201] {
            let mut data = vec![0u8; len];
            if len >= 4 {
                data[..4].copy_from_slice(&[b'S', b'P', 1, 4]);
            }
            assert!(decode_query(&data, &gk).is_err());
            assert!(decode_answer(&data, &mk).is_err());
        }
    }

    #[test]
    fn long_prefix_lists_are_split_into_queries_that_fit() {
        let many: Vec<_> = (0..300u32)
            .map(|i| net(&format!("10.{}.{}.0/24", i / 256, i % 256)))
            .chain((0..100u32).map(|i| net(&format!("2001:db8:{i:x}::/48"))))
            .collect();
        let runs = chunks(&many);
        assert_eq!(runs.first().map(|r| r.start), Some(0));
        assert_eq!(runs.last().map(|r| r.end), Some(many.len()));
        let (member, gateway, _) = keys();
        let mk = ProbeKey::derive(&member, &PublicKey::from(&gateway));
        for pair in runs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for run in runs {
            let query = Query {
                member: [1; 32],
                seq: 1,
                prefixes: many[run].to_vec(),
            };
            let wire = encode_query(&query, &mk);
            assert!(wire.len() <= MAX_QUERY);
            assert_eq!(decode_query(&wire, &mk).unwrap().prefixes, query.prefixes);
        }
    }
}
