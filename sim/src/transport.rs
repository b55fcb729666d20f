//! The coordinator's side of the simulated transport: handshakes (the certificate checked
//! as `server/transport.rs` does), session frames handed to [`crate::coord::Coordinator`],
//! one-shot requests (enrollment, renewal), what the coordinator sends back, and its
//! crashes and restarts.

use std::time::Duration;

use strait_proto::frame;
use strait_proto::msg::{AgentEvent, Request, Response, SessionEvent};

use crate::coord::{Out, Presented};
use crate::net::{self, Ev, Payload, Side};
use crate::world::{World, COORDINATOR_CERT_LIFETIME};

impl World {
    pub fn coordinator_out(&mut self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Send(conn, event) => {
                    match &event {
                        SessionEvent::Delta(_) => self.stats.deltas += 1,
                        SessionEvent::Snapshot(_) => self.stats.snapshots += 1,
                        SessionEvent::Registered(_) => self.stats.registrations += 1,
                        _ => {}
                    }
                    self.send_frame(conn, Side::Agent, &event)
                }
                Out::Finish(conn) => self.transmit(conn, Side::Agent, Payload::Fin),
                Out::Close(conn, reason) => self.close(conn, Side::Coordinator, reason),
            }
        }
    }

    pub(crate) fn coordinator_restart(&mut self, down: Duration) {
        self.stats.coordinator_restarts += 1;
        let before: Vec<bool> = (0..self.nodes.len()).map(|i| self.usable(i)).collect();
        self.coord.crash();
        let conns: Vec<u64> = self.conns.keys().copied().collect();
        for id in conns {
            if let Some(c) = self.conns.get_mut(&id) {
                let was = c.alive(Side::Coordinator);
                c.alive[Side::Coordinator.index()] = false;
                c.held.retain(|(to, _)| *to == Side::Coordinator);
                if was {
                    self.silence(id, Side::Coordinator);
                }
            }
        }
        for (i, was) in before.into_iter().enumerate() {
            self.path_changed(i, was);
        }
        self.queue.push(self.now + down, Ev::CoordinatorUp);
    }

    pub(crate) fn coordinator_up(&mut self) {
        let before: Vec<bool> = (0..self.nodes.len()).map(|i| self.usable(i)).collect();
        self.coord.start();
        self.record(format!(
            "coordinator up (generation {}) at version {}",
            self.coord.generation,
            self.coord.mesh().map_or(0, |m| m.version())
        ));
        self.queue.push(
            self.now + Duration::from_secs(1),
            Ev::Tick {
                generation: self.coord.generation,
            },
        );
        // The previous run's connections: the agent's next keep-alive gets a stateless
        // reset (the endpoint's secret survives restarts).
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.established && c.alive(Side::Agent) && !c.alive(Side::Coordinator))
            .map(|(id, _)| *id)
            .collect();
        for (i, was) in before.into_iter().enumerate() {
            self.path_changed(i, was);
        }
        for id in stale {
            let node = self.conns[&id].node;
            if self.usable(node) {
                self.stateless_reset(id);
            }
        }
    }

    /// The coordinator's certificate left at `now`: it is renewed every two thirds of its
    /// lifetime.
    pub fn coordinator_cert_left(&self) -> Duration {
        let renew = COORDINATOR_CERT_LIFETIME.mul_f64(2.0 / 3.0);
        let issued = renew * (self.now.as_secs_f64() / renew.as_secs_f64()).floor() as u32;
        (issued + COORDINATOR_CERT_LIFETIME).saturating_sub(self.now)
    }

    /// A connection's handshake reaches the coordinator: refused (path down, coordinator
    /// restarted, certificate expired), or up; a revoked certificate's connection is
    /// closed at once, as `server/transport.rs` does.
    pub(crate) fn handshake(&mut self, conn: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let i = c.node;
        let stale = self.nodes[i].incarnation != c.incarnation || self.nodes[i].process.is_none();
        if stale {
            self.conns.remove(&conn);
            return;
        }
        if !self.usable(i) || c.generation != self.coord.generation {
            self.queue.push(
                self.now + net::CONNECT_TIMEOUT / 2,
                Ev::ConnectFailed {
                    conn,
                    error: "timed out connecting".into(),
                },
            );
            return;
        }
        let unix = strait_coordinator::handlers::unix(self.sys(self.now));
        if c.presented.not_after <= unix {
            self.queue.push(
                self.now,
                Ev::ConnectFailed {
                    conn,
                    error: "handshake failed: the certificate expired".into(),
                },
            );
            return;
        }
        let c = self.conns.get_mut(&conn).expect("present");
        c.alive[Side::Coordinator.index()] = true;
        c.established = true;
        let subscribe = c.subscribe.take();
        let (serial, agent_conn) = (c.presented.serial.clone(), c.agent_conn);
        let revoked = self.coord.refuses(&serial);
        if let Some(request) = subscribe {
            self.send_frame(conn, Side::Coordinator, &request);
        }
        let left = self.coordinator_cert_left();
        self.agent_connected(i, agent_conn, serial.clone(), left);
        if revoked {
            self.record(format!("refused connection of revoked serial {serial}"));
            self.close(
                conn,
                Side::Coordinator,
                "code 3: certificate revoked".into(),
            );
        }
    }

    /// A frame on a session stream reaches the coordinator.
    pub(crate) fn coordinator_frame(&mut self, conn: u64, body: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.generation != self.coord.generation {
            return;
        }
        let mut out = Vec::new();
        if !c.subscribed {
            c.subscribed = true;
            let who = c.presented.clone();
            let node = c.node;
            let request = match frame::decode::<Request>(body) {
                Ok(r) => r,
                Err(e) => {
                    return self.violate("codec", format!("a subscription did not decode: {e}"))
                }
            };
            let r = self
                .coord
                .subscribe(self.now, conn, &who, request, &mut out);
            let id = self.nodes[node].id();
            match &r {
                Ok(()) => {
                    if self.nodes[node].revoked_at.is_some() {
                        self.violate(
                            "revocation",
                            format!(
                                "{id} registered again after its revocation (serial {})",
                                who.serial
                            ),
                        );
                    }
                    self.record(format!("{id} registered on conn {conn}"));
                }
                Err(e) => self.record(format!("{id} registration refused: {e}")),
            }
        } else {
            let event = match frame::decode::<AgentEvent>(body) {
                Ok(e) => e,
                Err(e) => {
                    return self.violate("codec", format!("an agent event did not decode: {e}"))
                }
            };
            let line = match &event {
                AgentEvent::Heartbeat { .. }
                | AgentEvent::LinkReport { .. }
                | AgentEvent::RouteConflicts { .. } => None,
                other => Some(format!("{other:?}")),
            };
            let r = self.coord.agent_event(self.now, conn, event, &mut out);
            if let Some(line) = line {
                self.record(format!("conn {conn}: {line}: {r:?}"));
            }
        }
        self.coordinator_out(out);
    }

    /// A one-shot request's connection reaches the coordinator, then the request; its
    /// answer goes back if the path holds.
    pub(crate) fn one_shot(
        &mut self,
        node: usize,
        incarnation: u64,
        who: Option<Presented>,
        bytes: Vec<u8>,
        accepted: bool,
    ) {
        let failed = |w: &mut World, why: &str| {
            w.record(format!("request of node {node} failed: {why}"));
            w.queue.push(
                w.now + net::CONNECT_TIMEOUT,
                Ev::Answer {
                    node,
                    incarnation,
                    bytes: None,
                },
            );
        };
        if !self.usable(node) {
            return failed(self, "no path");
        }
        if !accepted {
            if let Some(w) = &who {
                let unix = strait_coordinator::handlers::unix(self.sys(self.now));
                if w.not_after <= unix {
                    return failed(self, "certificate expired");
                }
                if self.coord.refuses(&w.serial) {
                    return failed(self, "certificate revoked");
                }
            }
            let delay = self.cond.delay(&mut self.rng);
            self.queue.push(
                self.now + delay,
                Ev::Request {
                    node,
                    incarnation,
                    who,
                    bytes,
                    accepted: true,
                },
            );
            return;
        }
        let request = match frame::decode::<Request>(&bytes) {
            Ok(r) => r,
            Err(e) => return self.violate("codec", format!("a request did not decode: {e}")),
        };
        let response = self.coord.request(self.now, who.as_ref(), request);
        if let (Response::Renewed { .. }, Some(at)) = (&response, self.nodes[node].revoked_at) {
            let id = self.nodes[node].id();
            let serial = who.as_ref().map_or("", |w| w.serial.as_str());
            self.violate(
                "revocation",
                format!("{id} got a renewed certificate {} s after its revocation (on a connection with serial {serial})", (self.now - at).as_secs()),
            );
        }
        let bytes = match frame::encode(&response) {
            Ok(b) => b,
            Err(e) => return self.violate("codec", format!("an answer could not be encoded: {e}")),
        };
        let delay = self.cond.delay(&mut self.rng);
        self.queue.push(
            self.now + delay,
            Ev::Answer {
                node,
                incarnation,
                bytes: Some(bytes),
            },
        );
    }

    /// Decodes an answer's frame.
    pub fn decode_answer(&mut self, bytes: &[u8]) -> Option<Response> {
        let mut d = frame::Decoder::new(frame::MAX_FRAME);
        match d
            .push(bytes)
            .map_err(|e| e.to_string())
            .and_then(|mut f| f.pop().ok_or_else(|| "no frame".to_string()))
        {
            Ok(body) => match frame::decode::<Response>(&body) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.violate("codec", format!("an answer did not decode: {e}"));
                    None
                }
            },
            Err(e) => {
                self.violate("codec", format!("an answer did not decode: {e}"));
                None
            }
        }
    }
}
