//! The simulated network: an event queue in virtual time, connections between agents and
//! the coordinator that behave as QUIC's do for the session (frames reliable and in order,
//! delayed by loss and retransmission; a path down for the idle timeout kills the
//! connection; a closed side is told after a one-way delay), and the path's state per
//! node (partitioned or not, the coordinator up or not).
//!
//! Frames travel as the bytes `strait_proto::frame` makes, cut at a random point and
//! reassembled by a `frame::Decoder` on the receiving side.

use std::collections::BTreeMap;
use std::time::Duration;

use strait_agent::session::ConnId;
use strait_proto::frame::{Decoder, MAX_FRAME};

use crate::coord::Presented;
use crate::rng::Rng;
use strait_proto::msg::Request;

/// The agent's QUIC idle timeout (`control.rs`).
pub const AGENT_IDLE: Duration = Duration::from_secs(10);
/// The coordinator's QUIC idle timeout (`server/transport.rs`).
pub const COORDINATOR_IDLE: Duration = Duration::from_secs(30);
/// How long the agent waits for a connection (`client::connect`'s timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retransmissions one frame may need before it gets through (each adds a timeout).
pub const MAX_RETRANSMITS: u32 = 4;

/// Which end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Agent,
    Coordinator,
}

impl Side {
    pub fn index(self) -> usize {
        match self {
            Side::Agent => 0,
            Side::Coordinator => 1,
        }
    }
}

/// What a stream carries: a frame's bytes (cut in two chunks), or its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Bytes(Vec<u8>, Vec<u8>),
    Fin,
}

/// Something due at a point of virtual time.
#[derive(Debug, Clone)]
pub enum Ev {
    /// `payload` reaches side `to` of `conn`.
    Deliver {
        conn: u64,
        to: Side,
        payload: Payload,
    },
    /// A connection's handshake reaches the coordinator.
    Handshake { conn: u64 },
    /// The agent's connection attempt failed.
    ConnectFailed { conn: u64, error: String },
    /// Side `side` of `conn` learns the connection is gone.
    Gone {
        conn: u64,
        side: Side,
        error: String,
    },
    /// Side `side` of `conn` times out if the node's path stayed down since `epoch`.
    Idle { conn: u64, side: Side, epoch: u64 },
    /// A one-shot request (enrollment, renewal) on a new connection presenting `who`
    /// (`None`: no certificate): its handshake reaches the coordinator (`accepted`
    /// false), whose transport checks the certificate, then the request itself a one-way
    /// delay later (`accepted` true).
    Request {
        node: usize,
        incarnation: u64,
        who: Option<Presented>,
        bytes: Vec<u8>,
        accepted: bool,
    },
    /// Its answer reaches the agent (`None`: the request failed in the network).
    Answer {
        node: usize,
        incarnation: u64,
        bytes: Option<Vec<u8>>,
    },
    /// The coordinator's one-second tick.
    Tick { generation: u64 },
    /// The coordinator is back.
    CoordinatorUp,
    /// A node's own timer: enrollment retry or certificate renewal.
    NodeTimer { node: usize, incarnation: u64 },
}

/// Events by due time, then by insertion: the same seed pops them in the same order.
#[derive(Debug, Default)]
pub struct Queue {
    events: BTreeMap<(Duration, u64), Ev>,
    seq: u64,
}

impl Queue {
    pub fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    pub fn next_at(&self) -> Option<Duration> {
        self.events.keys().next().map(|k| k.0)
    }

    pub fn pop_due(&mut self, now: Duration) -> Option<Ev> {
        let (&key, _) = self.events.iter().next()?;
        if key.0 > now {
            return None;
        }
        self.events.remove(&key)
    }

    /// The events waiting, in the order they will run.
    pub fn pending(&self) -> impl Iterator<Item = &Ev> {
        self.events.values()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// One QUIC connection from an agent to the coordinator, carrying a session stream.
#[derive(Debug)]
pub struct Conn {
    pub node: usize,
    /// The agent process that opened it.
    pub incarnation: u64,
    pub agent_conn: ConnId,
    /// The coordinator process it reached (set at the handshake).
    pub generation: u64,
    pub alive: [bool; 2],
    /// The handshake is done (the agent was told `Connected`).
    pub established: bool,
    /// The coordinator has read the subscription.
    pub subscribed: bool,
    decoders: [Decoder; 2],
    /// When the last payload towards each side is due (streams stay in order).
    last: [Duration; 2],
    /// Payloads waiting for the path to come back (QUIC retransmits them then).
    pub held: Vec<(Side, Payload)>,
    /// The certificate the agent presents.
    pub presented: Presented,
    /// The subscription, written on the session stream once the handshake is done.
    pub subscribe: Option<Request>,
}

impl Conn {
    pub fn new(node: usize, incarnation: u64, agent_conn: ConnId, presented: Presented) -> Conn {
        Conn {
            presented,
            subscribe: None,
            node,
            incarnation,
            agent_conn,
            generation: 0,
            alive: [true, false],
            established: false,
            subscribed: false,
            decoders: [Decoder::new(MAX_FRAME), Decoder::new(MAX_FRAME)],
            last: [Duration::ZERO; 2],
            held: Vec::new(),
        }
    }

    pub fn alive(&self, side: Side) -> bool {
        self.alive[side.index()]
    }

    /// When a payload sent now towards `to` arrives: after `delay`, never before the one
    /// sent before it.
    pub fn due(&mut self, to: Side, now: Duration, delay: Duration) -> Duration {
        let at = (now + delay).max(self.last[to.index()]);
        self.last[to.index()] = at;
        at
    }

    /// Feeds `payload` to side `to`'s decoder: the frames it completes, or `None` for the
    /// stream's end. A decoding error is a simulator or codec bug.
    pub fn receive(&mut self, to: Side, payload: Payload) -> Result<Option<Vec<Vec<u8>>>, String> {
        match payload {
            Payload::Fin => Ok(None),
            Payload::Bytes(a, b) => {
                let d = &mut self.decoders[to.index()];
                let mut frames = d.push(&a).map_err(|e| e.to_string())?;
                frames.extend(d.push(&b).map_err(|e| e.to_string())?);
                Ok(Some(frames))
            }
        }
    }
}

/// How the network treats one run: base latency and loss.
#[derive(Debug, Clone)]
pub struct Conditions {
    /// One-way latency range, milliseconds.
    pub latency: (u64, u64),
    /// Probability that a transmission is lost (and retransmitted after a timeout).
    pub loss: f64,
}

impl Conditions {
    pub fn from_rng(rng: &mut Rng) -> Conditions {
        let lo = 1 + rng.below(40);
        Conditions {
            latency: (lo, lo + rng.below(150)),
            loss: [0.0, 0.01, 0.05, 0.15][rng.below(4) as usize],
        }
    }

    /// One-way delay of one payload: latency, plus a retransmission timeout per loss.
    pub fn delay(&self, rng: &mut Rng) -> Duration {
        let mut d = rng.millis(self.latency.0, self.latency.1);
        let mut rto = Duration::from_millis(200 + 2 * self.latency.1);
        for _ in 0..MAX_RETRANSMITS {
            if !rng.chance(self.loss) {
                break;
            }
            d += rto;
            rto *= 2;
        }
        d
    }
}

/// Cuts `frame` at a random point, so the decoder sees partial reads.
pub fn cut(frame: Vec<u8>, rng: &mut Rng) -> Payload {
    let at = rng.below(frame.len() as u64 + 1) as usize;
    let mut a = frame;
    let b = a.split_off(at);
    Payload::Bytes(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_pops_by_time_then_insertion() {
        let mut q = Queue::default();
        let ms = Duration::from_millis;
        q.push(ms(5), Ev::CoordinatorUp);
        q.push(ms(1), Ev::Tick { generation: 1 });
        q.push(ms(1), Ev::Tick { generation: 2 });
        assert!(q.pop_due(ms(0)).is_none());
        assert!(matches!(q.pop_due(ms(1)), Some(Ev::Tick { generation: 1 })));
        assert!(matches!(q.pop_due(ms(9)), Some(Ev::Tick { generation: 2 })));
        assert!(matches!(q.pop_due(ms(9)), Some(Ev::CoordinatorUp)));
        assert!(q.is_empty());
    }

    #[test]
    fn a_stream_keeps_its_order_and_frames_survive_any_cut() {
        let presented = Presented {
            identity: strait_pki::Identity::node("prod", "a", "n", strait_pki::Role::Member)
                .unwrap(),
            serial: "01".into(),
            not_after: 0,
        };
        let mut c = Conn::new(0, 1, ConnId(1), presented);
        let ms = Duration::from_millis;
        assert_eq!(c.due(Side::Agent, ms(0), ms(50)), ms(50));
        // Sent later with a shorter delay: still after the first.
        assert_eq!(c.due(Side::Agent, ms(10), ms(5)), ms(50));
        let mut rng = Rng::new(1);
        let frame = strait_proto::frame::encode(&"hello").unwrap();
        for _ in 0..20 {
            let got = c
                .receive(Side::Agent, cut(frame.clone(), &mut rng))
                .unwrap();
            assert_eq!(got.map(|f| f.len()), Some(1));
        }
        assert_eq!(c.receive(Side::Agent, Payload::Fin).unwrap(), None);
    }
}
