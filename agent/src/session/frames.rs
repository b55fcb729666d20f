//! A connection coming up, and the frames on the session's connection: `Registered`, the
//! map (snapshot, deltas), operator commands, `Closing`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_proto::map::{NetworkMap, VersionGap};
use strait_proto::msg::{AgentEvent, ErrorCode, Registered, SessionEvent};
use strait_proto::probe::{Action as Request, Command, ProbeEvent};

use super::{Action, ConnId, EndReason, Open, Phase, Session, MAX_COMMANDS, MOVE_TIMEOUT};

impl Session {
    pub(super) fn on_connected(
        &mut self,
        now: Instant,
        conn: ConnId,
        serial: String,
        coordinator_cert_left: Option<Duration>,
    ) {
        let expiry = coordinator_cert_left.map(|left| now + left);
        match &mut self.phase {
            Phase::Connecting { conn: c } if *c == conn => {
                self.phase = Phase::Open(Box::new(Open {
                    conn,
                    serial,
                    registered: false,
                    map: None,
                    heartbeat_at: now + self.heartbeat_interval,
                    rotation_at: now,
                    coordinator_expiry: expiry,
                    announced: false,
                    moving: None,
                    held: None,
                }));
                // Every new session hears the data plane's current state.
                self.send_conflicts(conn);
                self.send_links(conn);
            }
            Phase::Open(open) => match &mut open.moving {
                Some(m) if m.conn == conn && m.connected.is_none() => {
                    m.connected = Some((serial, expiry, now + MOVE_TIMEOUT));
                }
                _ => self.actions.push_back(Action::Close {
                    conn,
                    reason: "not needed",
                }),
            },
            _ => self.actions.push_back(Action::Close {
                conn,
                reason: "not needed",
            }),
        }
    }

    pub(super) fn on_connect_failed(&mut self, now: Instant, conn: ConnId, error: String) {
        match &self.phase {
            Phase::Connecting { conn: c } if *c == conn => {
                self.end(now, EndReason::Connection(error));
            }
            _ if self.moving_conn() == Some(conn) => self.move_failed(now, error),
            _ => {}
        }
    }

    pub(super) fn on_frame(&mut self, now: Instant, conn: ConnId, frame: SessionEvent) {
        if self.moving_conn() == Some(conn) {
            return self.on_move_answer(now, conn, frame);
        }
        if self.connection() != Some(conn) {
            return;
        }
        match frame {
            SessionEvent::Registered(r) => {
                self.log_registered(&r);
                if let Phase::Open(open) = &mut self.phase {
                    open.registered = true;
                }
                self.actions.push_back(Action::Registered { conn });
                // Renewed while connecting or subscribing with the certificate before.
                self.move_if_renewed();
            }
            SessionEvent::Snapshot(m) => {
                tracing::info!(
                    version = m.version,
                    peers = m.peers.len(),
                    routes = m.routes.len(),
                    "map snapshot"
                );
                let map = Arc::new(m);
                self.publish(map.clone());
                // Acknowledged at once so the coordinator sees the new version.
                self.send(
                    conn,
                    AgentEvent::Heartbeat {
                        map_version: map.version,
                    },
                );
                if let Phase::Open(open) = &mut self.phase {
                    open.map = Some(map);
                }
            }
            SessionEvent::Delta(d) => {
                let Phase::Open(open) = &mut self.phase else {
                    return;
                };
                let Some(current) = open.map.as_mut() else {
                    return self.end_or_hold(now, EndReason::DeltaBeforeSnapshot);
                };
                if current.version != d.from_version {
                    let gap = VersionGap {
                        have: current.version,
                        from: d.from_version,
                    };
                    return self.end_or_hold(now, EndReason::Gap(gap));
                }
                // Checked first: the map is shared with the data plane, and copied here.
                if let Err(gap) = Arc::make_mut(current).apply(&d) {
                    return self.end_or_hold(now, EndReason::Gap(gap));
                }
                tracing::debug!(
                    version = d.to_version,
                    upserts = d.upsert_peers.len(),
                    removals = d.remove_peers.len(),
                    "map delta"
                );
                let map = current.clone();
                self.publish(map);
            }
            SessionEvent::Command(command) => self.on_command(now, conn, command),
            SessionEvent::Closing(e) => {
                if e.code == ErrorCode::Revoked {
                    tracing::error!("this node was revoked; enroll again with a new join token");
                }
                self.end_or_hold(now, EndReason::Closed(e));
            }
        }
    }

    pub(super) fn on_command(&mut self, now: Instant, conn: ConnId, command: Command) {
        if matches!(command.action, Request::RotateKey) {
            tracing::info!(command = command.id, "operator asked for a key rotation");
            let event = if self.rotation.request() {
                ProbeEvent::Done
            } else {
                ProbeEvent::Failed {
                    message: "a key rotation is already under way".into(),
                }
            };
            self.send(
                conn,
                AgentEvent::Probe {
                    id: command.id,
                    event,
                },
            );
            if let Phase::Open(open) = &mut self.phase {
                open.rotation_at = now;
            }
            return;
        }
        tracing::info!(command = command.id, action = ?command.action, "operator command");
        if self.running.len() >= MAX_COMMANDS {
            let message =
                format!("this node already runs {MAX_COMMANDS} commands; try again later");
            self.send(
                conn,
                AgentEvent::Probe {
                    id: command.id,
                    event: ProbeEvent::Failed { message },
                },
            );
            return;
        }
        self.running.push(command.id);
        self.actions.push_back(Action::RunCommand {
            command,
            map: self.published.clone(),
        });
    }

    pub(super) fn log_registered(&self, r: &Registered) {
        tracing::info!(coordinator = %self.coordinator, overlay_ip = %r.overlay_ip, "registered");
        for refusal in &r.refused {
            tracing::warn!(prefix = %refusal.prefix, reason = %refusal.reason, "coordinator refused an advertised prefix");
        }
    }

    pub(super) fn publish(&mut self, map: Arc<NetworkMap>) {
        self.published = Some(map.clone());
        self.actions.push_back(Action::Publish(map));
    }
}
