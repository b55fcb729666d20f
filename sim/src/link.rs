//! The path between each node and the coordinator, and the connections on it: what is
//! sent (held while the path is down, QUIC retransmits it after), what arrives (decoded
//! from the frames' bytes), and how a connection ends (closed on purpose, timed out, reset).

use strait_proto::frame;
use strait_proto::msg::{Request, SessionEvent};

use crate::coord::Presented;
use crate::net::{self, Conn, Ev, Payload, Side};
use crate::world::World;

impl World {
    /// Whether node `i` and the coordinator can exchange packets now.
    pub fn usable(&self, i: usize) -> bool {
        !self.nodes[i].partitioned && self.coord.is_up()
    }

    pub(crate) fn set_partitioned(&mut self, i: usize, partitioned: bool) {
        let before = self.usable(i);
        self.nodes[i].partitioned = partitioned;
        self.path_changed(i, before);
    }

    /// After node `i`'s path may have changed: a path that went down starts the idle
    /// timeouts of its connections; one that came back delivers what was held.
    pub(crate) fn path_changed(&mut self, i: usize, before: bool) {
        let after = self.usable(i);
        if before == after {
            return;
        }
        self.nodes[i].epoch += 1;
        let epoch = self.nodes[i].epoch;
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.node == i)
            .map(|(id, _)| *id)
            .collect();
        for id in conns {
            if !after {
                self.queue.push(
                    self.now + net::AGENT_IDLE,
                    Ev::Idle {
                        conn: id,
                        side: Side::Agent,
                        epoch,
                    },
                );
                self.queue.push(
                    self.now + net::COORDINATOR_IDLE,
                    Ev::Idle {
                        conn: id,
                        side: Side::Coordinator,
                        epoch,
                    },
                );
                continue;
            }
            let c = self.conns.get_mut(&id).expect("listed");
            let held = std::mem::take(&mut c.held);
            let stale = c.established && c.alive(Side::Agent) && !c.alive(Side::Coordinator);
            for (to, payload) in held {
                self.transmit(id, to, payload);
            }
            if stale {
                self.stateless_reset(id);
            }
        }
    }

    /// The agent's next keep-alive on `conn`, whose coordinator side is gone, reaches the
    /// coordinator, which answers with a stateless reset (its endpoint secret survives
    /// restarts).
    pub(crate) fn stateless_reset(&mut self, conn: u64) {
        let at = self.now + self.rng.millis(0, 2_000) + self.cond.delay(&mut self.rng);
        self.queue.push(
            at,
            Ev::Gone {
                conn,
                side: Side::Agent,
                error: "connection lost: stateless reset".into(),
            },
        );
    }

    /// A side that died silently: the other hears nothing more and times out (if nothing
    /// ends it sooner).
    pub(crate) fn silence(&mut self, conn: u64, dead: Side) {
        let (other, timeout) = match dead {
            Side::Agent => (Side::Coordinator, net::COORDINATOR_IDLE),
            Side::Coordinator => (Side::Agent, net::AGENT_IDLE),
        };
        self.queue.push(
            self.now + timeout,
            Ev::Gone {
                conn,
                side: other,
                error: "timed out: no answer from the other side".into(),
            },
        );
    }

    /// Sends `payload` towards side `to` of `conn`.
    pub(crate) fn transmit(&mut self, conn: u64, to: Side, payload: Payload) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let node = c.node;
        if !self.usable(node) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.held.push((to, payload));
            }
            return;
        }
        let delay = self.cond.delay(&mut self.rng);
        let now = self.now;
        let at = self
            .conns
            .get_mut(&conn)
            .expect("checked above")
            .due(to, now, delay);
        self.queue.push(at, Ev::Deliver { conn, to, payload });
    }

    pub fn send_frame<T: serde::Serialize>(&mut self, conn: u64, to: Side, msg: &T) {
        match frame::encode(msg) {
            Ok(bytes) => {
                let payload = net::cut(bytes, &mut self.rng);
                self.transmit(conn, to, payload);
            }
            Err(e) => self.violate("codec", format!("a frame could not be encoded: {e}")),
        }
    }

    pub(crate) fn deliver(&mut self, conn: u64, to: Side, payload: Payload) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let from = match to {
            Side::Agent => Side::Coordinator,
            Side::Coordinator => Side::Agent,
        };
        if !c.alive(to) || !c.alive(from) && to == Side::Coordinator {
            return;
        }
        let node = c.node;
        if !self.usable(node) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.held.push((to, payload));
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let frames = match c.receive(to, payload) {
            Ok(f) => f,
            Err(e) => return self.violate("codec", format!("a frame could not be decoded: {e}")),
        };
        match (to, frames) {
            (Side::Agent, None) => self.agent_stream_end(conn),
            (Side::Agent, Some(frames)) => {
                for body in frames {
                    match frame::decode::<SessionEvent>(&body) {
                        Ok(event) => self.agent_frame(conn, event),
                        Err(e) => {
                            self.violate("codec", format!("a session frame did not decode: {e}"))
                        }
                    }
                }
            }
            (Side::Coordinator, None) => {}
            (Side::Coordinator, Some(frames)) => {
                for body in frames {
                    self.coordinator_frame(conn, &body);
                }
            }
        }
    }

    /// Side `side` of `conn` is gone: told to the agent's session, or the coordinator's
    /// session dropped.
    pub fn kill(&mut self, conn: u64, side: Side, error: String) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive(side) {
            return;
        }
        c.alive[side.index()] = false;
        let (node, incarnation, agent_conn) = (c.node, c.incarnation, c.agent_conn);
        let generation = c.generation;
        if !c.alive(Side::Agent) && !c.alive(Side::Coordinator) {
            self.conns.remove(&conn);
        }
        if self.conns.contains_key(&conn) {
            self.silence(conn, side);
        }
        match side {
            Side::Agent => self.agent_conn_lost(node, incarnation, agent_conn, error),
            Side::Coordinator => {
                if generation == self.coord.generation {
                    self.coord.forget(conn);
                }
            }
        }
    }

    /// `side` closed `conn` on purpose: the other side is told after a one-way delay (if
    /// the path is up; else it times out).
    pub fn close(&mut self, conn: u64, side: Side, reason: String) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive(side) {
            return;
        }
        c.alive[side.index()] = false;
        let node = c.node;
        let other = match side {
            Side::Agent => Side::Coordinator,
            Side::Coordinator => Side::Agent,
        };
        if side == Side::Coordinator {
            self.coord.forget(conn);
        }
        if !self.conns[&conn].alive(other) {
            self.conns.remove(&conn);
            return;
        }
        if self.usable(node) {
            let delay = self.cond.delay(&mut self.rng);
            let now = self.now;
            let at = self
                .conns
                .get_mut(&conn)
                .expect("present")
                .due(other, now, delay);
            self.queue.push(
                at,
                Ev::Gone {
                    conn,
                    side: other,
                    error: format!("connection closed by peer: {reason}"),
                },
            );
        }
    }

    /// A node opens a connection (`Action::Connect`); returns its id.
    pub fn open_conn(
        &mut self,
        i: usize,
        agent_conn: strait_agent::session::ConnId,
        presented: Presented,
        subscribe: Request,
    ) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        let mut conn = Conn::new(i, self.nodes[i].incarnation, agent_conn, presented);
        conn.generation = self.coord.generation;
        // The subscription follows the handshake on the new stream.
        conn.subscribe = Some(subscribe);
        self.conns.insert(id, conn);
        if self.usable(i) {
            let rtt = self.cond.delay(&mut self.rng) + self.cond.delay(&mut self.rng);
            self.queue.push(self.now + rtt, Ev::Handshake { conn: id });
        } else {
            self.queue.push(
                self.now + net::CONNECT_TIMEOUT,
                Ev::ConnectFailed {
                    conn: id,
                    error: "timed out connecting".into(),
                },
            );
        }
        id
    }
}
