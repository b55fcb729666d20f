//! Make-before-break: a second connection up to its `Registered`, then the first closed.
//! Started by a renewed certificate or the expiry of the coordinator's; while it is under
//! way the first connection's end is held, and decides only if the move fails.

use std::time::Instant;

use strait_proto::msg::{Registered, SessionEvent};

use super::{Action, ConnId, EndReason, Move, Moving, Phase, Session};

impl Session {
    pub(super) fn moving_conn(&self) -> Option<ConnId> {
        match &self.phase {
            Phase::Open(open) => open.moving.as_ref().map(|m| m.conn),
            _ => None,
        }
    }

    /// The first answer on a move's connection.
    pub(super) fn on_move_answer(&mut self, now: Instant, conn: ConnId, frame: SessionEvent) {
        match frame {
            SessionEvent::Registered(r) => self.adopt(conn, &r),
            SessionEvent::Closing(e) => {
                self.actions.push_back(Action::Close {
                    conn,
                    reason: "session refused",
                });
                self.move_failed(now, format!("coordinator refused the session: {e}"));
            }
            other => {
                self.actions.push_back(Action::Close {
                    conn,
                    reason: "unexpected answer",
                });
                self.move_failed(now, format!("unexpected first answer {other:?}"));
            }
        }
    }

    /// Starts a move to the renewed certificate, once the session is registered. Not
    /// before: two subscriptions of one node in flight at once race at the coordinator,
    /// which keeps the one it registers last and closes the other as replaced; the
    /// session could then adopt the move's connection holding an older snapshot than the
    /// map it had published (found by the mesh simulator, `strait-sim`).
    pub(super) fn move_if_renewed(&mut self) {
        let Phase::Open(open) = &self.phase else {
            return;
        };
        let renewed = self.serial.as_ref().is_some_and(|s| *s != open.serial);
        if renewed && open.registered && open.moving.is_none() {
            self.start_move(Move::Renewed);
        }
    }

    pub(super) fn start_move(&mut self, why: Move) {
        let conn = self.new_conn();
        let registration = self.subscription();
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        open.moving = Some(Moving {
            why,
            conn,
            connected: None,
        });
        self.actions.push_back(Action::Connect {
            conn,
            coordinator: self.coordinator.clone(),
            registration,
        });
    }

    /// The move's connection is registered: it carries the session from now on.
    pub(super) fn adopt(&mut self, conn: ConnId, registered: &Registered) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let Some(Moving {
            why,
            connected: Some((serial, expiry, _)),
            ..
        }) = open.moving.take()
        else {
            return;
        };
        let old = std::mem::replace(&mut open.conn, conn);
        let previous = std::mem::replace(&mut open.serial, serial);
        open.coordinator_expiry = expiry;
        open.registered = true;
        // The new registration dropped a key announcement: it is made again.
        open.announced = false;
        open.held = None;
        let coordinator = &self.coordinator;
        let reason = match why {
            Move::Renewed => {
                tracing::info!(coordinator = %coordinator, previous_serial = %previous, serial = %open.serial, "moved the session to the renewed certificate");
                "moved to a renewed certificate"
            }
            Move::CoordinatorCertExpired => {
                tracing::info!(coordinator = %coordinator, "moved the session to a connection with the coordinator's current certificate");
                "the coordinator's certificate expired"
            }
        };
        self.actions.push_back(Action::Close { conn: old, reason });
        self.log_registered(registered);
        self.actions.push_back(Action::Registered { conn });
        self.send_conflicts(conn);
        self.send_links(conn);
        // Renewed again while moving.
        self.move_if_renewed();
    }

    pub(super) fn move_failed(&mut self, now: Instant, error: String) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let Some(moving) = open.moving.take() else {
            return;
        };
        match moving.why {
            // The current session goes on; the coordinator ends it when its certificate
            // expires, and the agent then reconnects with the renewed one.
            Move::Renewed => {
                tracing::warn!(coordinator = %self.coordinator, serial = %self.serial.as_deref().unwrap_or("?"), error = %error, "could not move the session to the renewed certificate; keeping the current session");
                if let Some(held) = open.held.take() {
                    self.end(now, held);
                }
            }
            // An expired certificate no longer vouches for this connection: the session
            // ends, and the agent reconnects with backoff (the data plane keeps its map).
            Move::CoordinatorCertExpired => {
                let reason = EndReason::CoordinatorCertExpired {
                    coordinator: self.coordinator.clone(),
                    error,
                };
                self.end(now, reason);
            }
        }
    }
}
