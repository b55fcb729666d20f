//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` (`configs`, `probes`)
//! and by the corpus replay test (`agent/tests/fuzz_corpus.rs`), which runs in plain
//! `cargo test`.
//!
//! Not part of the crate's API. Every function here must return normally for any input; a
//! panic means a real bug. They are deterministic: no clock is read (time is an offset
//! from one `Instant`), and no file named by an input is ever opened.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use strait_pki::fuzzing::{sandbox_vault, sandboxed};
use strait_pki::identity::Label;
use strait_proto::msg::EndpointKind;

use crate::config::{Config, FileConfig, Overrides};
use crate::dataplane::engine::{Emit, Engine, PeerSpec, ProbeOutcome, ProbeRefusal};
use crate::dataplane::tunnel::BUFFER;
use crate::paths::probe::{self, Kind, Probe, ProbeError, ProbeKey, PROBE_LEN};
use crate::paths::select::{Candidate, PathReport};

// ---- configs ----

/// `data` as an `agent.toml` (UTF-8; other inputs are skipped, as reading the file would
/// fail): deserialized, then merged with no flags or variables, as [`Config::load`] does.
/// Checks that errors have messages, and that an accepted config is within the documented
/// ranges.
///
/// Files the config names (`join-token-file`, and those of `[vault]`) are moved under
/// [`fuzzing::SANDBOX`](strait_pki::fuzzing::SANDBOX) first (see
/// [`sandbox_vault`](strait_pki::fuzzing::sandbox_vault)): the input never picks a file to
/// read, and the outcome does not depend on the machine.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file: FileConfig = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().trim().is_empty(), "an empty TOML error");
            return;
        }
    };
    match Config::merge(sandbox(file), Overrides::default()) {
        Ok(c) => accepted(&c),
        Err(e) => {
            for cause in e.chain() {
                assert!(
                    !cause.to_string().trim().is_empty(),
                    "an empty message in the error {e:#}"
                );
            }
        }
    }
}

fn sandbox(mut f: FileConfig) -> FileConfig {
    f.join_token_file = f.join_token_file.as_deref().map(sandboxed);
    if let Some(v) = &mut f.vault {
        sandbox_vault(v);
    }
    f
}

/// What [`Config::merge`] promises about a config it accepts.
fn accepted(c: &Config) {
    for (what, value) in [("mesh", &c.mesh), ("site", &c.site), ("node name", &c.node)] {
        Label::parse(what, value).expect("an accepted config has a bad label");
    }
    assert!(c.role.has_site(), "role {} accepted", c.role);
    assert!(!c.coordinators.is_empty());
    for coordinator in &c.coordinators {
        let port = coordinator.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        assert!(matches!(port, Some(Ok(_))), "coordinator {coordinator:?}");
    }
    for d in [c.heartbeat_interval, c.probe_interval] {
        assert!(
            (Duration::from_millis(200)..=Duration::from_secs(60)).contains(&d),
            "interval {d:?} accepted"
        );
    }
    assert!((1..=15).contains(&c.tun_name.len()) && !c.tun_name.contains(['/', ' ']));
    if let Some(mtu) = c.mtu {
        assert!((576..=9000).contains(&mtu), "mtu {mtu} accepted");
    }
    assert_ne!(c.persistent_keepalive, Some(0));
    // Vault needs a file from the sandbox, which cannot be read.
    assert!(
        c.vault.is_none(),
        "Vault settings accepted without their files"
    );
}

// ---- probes ----

/// This node's WireGuard secret in [`probes`].
pub const OWN_SECRET: [u8; 32] = [1; 32];
/// The one peer's WireGuard secret in [`probes`].
pub const PEER_SECRET: [u8; 32] = [2; 32];
/// The peer's two announced paths.
pub const PATHS: [&str; 2] = ["198.51.100.1:51820", "172.31.255.2:51820"];
/// An address that is none of the peer's.
pub const STRANGER: &str = "192.0.2.99:4000";

/// Most steps one input runs.
pub const MAX_STEPS: usize = 256;

/// Probe datagrams, alone and through an [`Engine`] with one peer that has two paths (the
/// engine has sent one probe on each, sequence numbers 1 and 2, at the start).
///
/// `data` is a series of steps, each starting with a control byte `c`:
///
/// - `c & 3 == 0`: the next byte `n`; time moves on `20 * n` ms and the engine's probe timer
///   runs (each probe it sends must be a request from this node that decodes with the key);
/// - otherwise a datagram: the next byte is its length, then its bytes. With `c & 4` bytes
///   4..12 become the peer's probe id, and with `c & 8` a 36-byte datagram is signed with the
///   peer's key (else the fuzzer could never produce an authentic probe). `c >> 4 & 3` picks
///   where it comes from: either path, a stranger, or the first path's host on another port.
///
/// Each datagram is checked with [`probe::is_probe`], [`probe::sender_of`] and
/// [`probe::decode`] with the key (which must agree, and a probe that decodes must encode
/// to the same bytes), then given to [`Engine::on_probe`] and to [`Engine::inbound`]. A
/// datagram that is not an authentic probe from the peer must change no path and send
/// nothing; an authentic request must be answered with one authentic reply, on the path it
/// came in on; `inbound` (no WireGuard session exists) must emit nothing and move nothing.
pub fn probes(data: &[u8]) {
    let mut bench = ProbeBench::new();
    let mut input = data;
    for _ in 0..MAX_STEPS {
        let Some((&ctrl, rest)) = input.split_first() else {
            break;
        };
        let (arg, rest) = rest.split_first().map_or((0, rest), |(&b, r)| (b, r));
        if ctrl & 3 == 0 {
            input = rest;
            bench.advance(Duration::from_millis(20 * u64::from(arg)));
        } else {
            let (datagram, rest) = rest.split_at(usize::from(arg).min(rest.len()));
            input = rest;
            bench.datagram(ctrl, datagram);
        }
    }
}

struct ProbeBench {
    engine: Engine,
    key: &'static ProbeKey,
    own_id: [u8; 8],
    peer_id: [u8; 8],
    paths: [SocketAddr; 2],
    now: Instant,
    out: Vec<u8>,
}

/// What the bench derives from the two constant keys, computed once: X25519 is slow in
/// an instrumented build, and the engine does its own share for every input.
struct Keys {
    key: ProbeKey,
    own_id: [u8; 8],
    peer_id: [u8; 8],
    peer: [u8; 32],
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let own = StaticSecret::from(OWN_SECRET);
        let peer = PublicKey::from(&StaticSecret::from(PEER_SECRET));
        Keys {
            key: ProbeKey::derive(&own, &peer),
            own_id: probe::id_of(&PublicKey::from(&own)),
            peer_id: probe::id_of(&peer),
            peer: *peer.as_bytes(),
        }
    })
}

impl ProbeBench {
    fn new() -> ProbeBench {
        let keys = keys();
        let paths = PATHS.map(|p| p.parse().expect("constant address"));
        let mut engine = Engine::new(StaticSecret::from(OWN_SECRET), Duration::from_secs(1));
        engine.set_peers(&[PeerSpec {
            public_key: keys.peer,
            endpoint: Some(paths[0]),
            allowed_ips: vec!["10.2.0.0/16".parse().expect("constant prefix")],
            keepalive: None,
            candidates: vec![
                Candidate {
                    address: paths[0],
                    kind: EndpointKind::Public,
                    cost: 0,
                },
                Candidate {
                    address: paths[1],
                    kind: EndpointKind::Interconnect,
                    cost: 0,
                },
            ],
            next_public_key: None,
            priority: 0,
        }]);
        let mut bench = ProbeBench {
            engine,
            key: &keys.key,
            own_id: keys.own_id,
            peer_id: keys.peer_id,
            paths,
            now: Instant::now(),
            out: vec![0; BUFFER],
        };
        bench.advance(Duration::ZERO);
        bench
    }

    fn endpoint(&self) -> Option<SocketAddr> {
        self.engine.status().first().and_then(|p| p.endpoint)
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let mut sent = Vec::new();
        self.engine
            .probe_tick(self.now, |to, d| sent.push((to, d.to_vec())));
        for (to, d) in sent {
            assert!(self.paths.contains(&to), "a probe sent to {to}");
            let p = probe::decode(&d, self.key).expect("the engine sent a probe that fails");
            assert_eq!((p.kind, p.sender), (Kind::Request, self.own_id));
        }
    }

    fn datagram(&mut self, ctrl: u8, raw: &[u8]) {
        let mut d = raw.to_vec();
        if ctrl & 4 != 0 && d.len() >= 12 {
            d[4..12].copy_from_slice(&self.peer_id);
        }
        if ctrl & 8 != 0 {
            if let Ok(whole) = <&mut [u8; PROBE_LEN]>::try_from(d.as_mut_slice()) {
                probe::sign(whole, self.key);
            }
        }
        let from = match (ctrl >> 4) & 3 {
            0 => self.paths[0],
            1 => self.paths[1],
            2 => STRANGER.parse().expect("constant address"),
            _ => SocketAddr::new(self.paths[0].ip(), self.paths[0].port().wrapping_add(1)),
        };
        let decoded = check_parsers(&d, self.key);
        let authentic = matches!(decoded, Some(p) if p.sender == self.peer_id);

        let (paths, endpoint) = (self.engine.paths(), self.endpoint());
        let mut sent = Vec::new();
        let outcome = self
            .engine
            .on_probe(from, &d, self.now, |to, b| sent.push((to, b.to_vec())));
        match decoded {
            Some(p) if authentic && p.kind == Kind::Reply => {
                assert!(sent.is_empty(), "a reply was answered");
                match outcome {
                    ProbeOutcome::Recorded => {}
                    ProbeOutcome::Refused(ProbeRefusal::NotInFlight) => {
                        self.unchanged(&paths, endpoint, "a reply to no probe in flight");
                    }
                    other => panic!("an authentic reply was {other:?}"),
                }
            }
            Some(p) if authentic => {
                assert_eq!(outcome, ProbeOutcome::Answered);
                assert_eq!(sent.len(), 1, "a request answered {} times", sent.len());
                assert_eq!(sent[0].0, from, "a reply sent on another path");
                let reply = probe::decode(&sent[0].1, self.key).expect("an unauthentic reply");
                assert_eq!(
                    reply,
                    Probe {
                        kind: Kind::Reply,
                        sender: self.own_id,
                        seq: p.seq
                    }
                );
                self.unchanged(&paths, endpoint, "an authentic request");
            }
            _ => {
                assert!(
                    matches!(outcome, ProbeOutcome::Refused(_)),
                    "a datagram that is no authentic probe was {outcome:?}"
                );
                assert!(
                    sent.is_empty(),
                    "answered a datagram that is no authentic probe"
                );
                self.unchanged(&paths, endpoint, "a datagram that is no authentic probe");
            }
        }

        let (paths, endpoint) = (self.engine.paths(), self.endpoint());
        let mut emitted = 0;
        self.engine.inbound(from, &d, &mut self.out, |e| {
            emitted += 1;
            if let Emit::Tun(p) = e {
                panic!("inbound delivered {} bytes with no session", p.len());
            }
        });
        assert_eq!(emitted, 0, "inbound answered a datagram with no session");
        self.unchanged(&paths, endpoint, "inbound");
    }

    fn unchanged(
        &self,
        paths: &[([u8; 32], Vec<PathReport>)],
        endpoint: Option<SocketAddr>,
        what: &str,
    ) {
        assert_eq!(self.engine.paths(), paths, "{what} changed the paths");
        assert_eq!(self.endpoint(), endpoint, "{what} moved the endpoint");
    }
}

/// The three parsers agree on `d`; the probe if it decodes with `key`.
fn check_parsers(d: &[u8], key: &ProbeKey) -> Option<Probe> {
    let looks = probe::is_probe(d);
    let sender = probe::sender_of(d);
    assert_eq!(sender.is_ok(), looks, "sender_of and is_probe disagree");
    if let Ok(id) = sender {
        assert_eq!(id[..], d[4..12]);
    }
    let decoded = probe::decode(d, key);
    match &decoded {
        Ok(p) => {
            assert!(looks);
            assert_eq!(p.sender[..], d[4..12]);
            assert_eq!(
                probe::encode(p, key)[..],
                d[..],
                "a decoded probe encodes to other bytes"
            );
        }
        Err(e) => {
            assert!(!e.to_string().trim().is_empty());
            match e {
                ProbeError::NotAProbe => assert!(!looks),
                ProbeError::Mac => assert!(looks),
                ProbeError::Version(v) => assert!(looks && *v == d[2] && *v != 1),
                ProbeError::Kind(k) => assert!(looks && *k == d[3] && d[2] == 1),
            }
        }
    }
    decoded.ok()
}

// ---- carry queries ----

/// `data` as a datagram on a gateway's WireGuard port and on a member's carry socket. With
/// the first byte odd, the rest is the body of a query (count and prefixes) that the bench
/// signs as the peer's key would (else the fuzzer could never produce an authentic one);
/// otherwise the rest is the datagram as it came.
///
/// Checks: [`carry::decode_answer`] with the shared key never panics; the gateway engine
/// ([`Engine::on_carry_query`]) answers exactly the queries that [`carry::decode_query`]
/// accepts under the key derived from the public key they carry, with one answer, to the
/// sender, shorter than the query, that the member decodes to the query's sequence number
/// and one bit per prefix; every other datagram gets nothing.
pub fn carry(data: &[u8]) {
    use crate::dataplane::engine::CarryOutcome;
    use crate::paths::carry;
    let keys = keys();
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let datagram = if first & 1 == 1 {
        let mut d = vec![b'S', b'P', 1, 4];
        d.extend_from_slice(&keys.peer);
        d.extend_from_slice(&7u64.to_be_bytes());
        d.extend_from_slice(rest);
        let tag = ring::hmac::sign(keys.key.hmac(), &d);
        d.extend_from_slice(&tag.as_ref()[..16]);
        d
    } else {
        rest.to_vec()
    };
    let _ = carry::decode_answer(&datagram, &keys.key);
    let from: SocketAddr = PATHS[0].parse().expect("constant address");
    let mut engine = Engine::new(StaticSecret::from(OWN_SECRET), Duration::from_secs(1));
    let mut sent: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let outcome = engine.on_carry_query(from, &datagram, Instant::now(), |to, d| {
        sent.push((to, d.to_vec()))
    });
    let accepted = carry::member_of(&datagram).ok().and_then(|member| {
        let key = ProbeKey::derive(&StaticSecret::from(OWN_SECRET), &PublicKey::from(member));
        carry::decode_query(&datagram, &key).ok().map(|q| (q, key))
    });
    match (outcome, accepted) {
        (CarryOutcome::Answered, Some((query, key))) => {
            assert_eq!(sent.len(), 1, "one answer");
            assert_eq!(sent[0].0, from, "answered to the sender");
            assert!(
                sent[0].1.len() < datagram.len(),
                "an answer larger than its query"
            );
            let answer =
                carry::decode_answer(&sent[0].1, &key).expect("the member decodes the answer");
            assert_eq!(answer.seq, query.seq);
            assert_eq!(answer.carries.len(), query.prefixes.len());
        }
        (CarryOutcome::Answered, None) => panic!("answered a query that does not decode"),
        (_, Some(_)) => panic!("refused a query that decodes: {outcome:?}"),
        (_, None) => assert!(sent.is_empty(), "sent something for a refused datagram"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_cases() {
        agent_config(b"");
        agent_config(b"mesh = 1");
        agent_config(b"\xff");
        agent_config(
            b"mesh = \"prod\"\nsite = \"a\"\nnode = \"gw\"\nrole = \"gateway\"\n\
              coordinators = [\"127.0.0.1:7443\"]\nstate-dir = \"/x\"\n\
              join-token-file = \"/dev/zero\"\n",
        );
        probes(b"");
        probes(&[1, 0, 0, 200]);
        // A signed reply to the first probe, from the first path.
        let mut reply = vec![0x0d, 36, b'S', b'P', 1, 2, 0, 0, 0, 0, 0, 0, 0, 0];
        reply.extend(1u64.to_be_bytes());
        reply.extend([0; 16]);
        probes(&reply);
    }
}
