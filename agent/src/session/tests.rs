//! Each transition of the session, driven with simulated time: no sockets, no tasks.

use std::collections::BTreeMap;

use strait_proto::map::{MapDelta, PeerKind, PeerView, SelfView};
use strait_proto::msg::{Endpoint, ErrorCode, Registered};
use strait_proto::probe::Action as Request;

use super::*;
use crate::keyrotation::DISTRIBUTION_DELAY;

const HEARTBEAT: Duration = Duration::from_secs(5);
const C1: &str = "c1.example:7443";
const C2: &str = "c2.example:7443";
const DAY: Duration = Duration::from_secs(86_400);

fn registration() -> Registration {
    Registration {
        wg_public_key: "K1".into(),
        endpoints: vec![Endpoint {
            address: "192.0.2.10:51820".parse().unwrap(),
            kind: strait_proto::msg::EndpointKind::Public,
            cost: None,
        }],
        prefixes: vec!["10.10.0.0/16".parse().unwrap()],
        agent_version: "test".into(),
        have_version: None,
        priority: 0,
    }
}

fn settings(t0: Instant) -> Settings {
    Settings {
        coordinators: vec![C1.into(), C2.into()],
        heartbeat_interval: HEARTBEAT,
        registration: registration(),
        rotation: KeyRotation::new(None, Duration::ZERO, t0),
        saved_map: None,
        seed: 7,
    }
}

fn map(version: u64) -> NetworkMap {
    NetworkMap {
        version,
        mesh: "prod".into(),
        node: SelfView {
            site: "a".into(),
            name: "gw".into(),
            role: strait_proto::Role::Gateway,
            overlay_ip: "100.64.0.1".parse().unwrap(),
            overlay_cidr: "100.64.0.0/10".parse().unwrap(),
            accepted: vec![],
            refused: vec![],
            next_wg_public_key: None,
            fail_closed: vec![],
            translations: vec![],
            local_gateways: vec![],
        },
        peers: BTreeMap::new(),
        routes: BTreeMap::new(),
        access: Default::default(),
    }
}

fn peer(id: &str, kind: PeerKind) -> PeerView {
    PeerView {
        id: id.into(),
        site: "b".into(),
        name: "gw".into(),
        kind,
        role: None,
        wg_public_key: "P1".into(),
        next_wg_public_key: None,
        endpoints: vec![],
        allowed_ips: vec!["10.20.0.0/16".parse().unwrap()],
        overlay_ip: None,
        online: true,
        priority: 0,
    }
}

fn registered() -> SessionEvent {
    SessionEvent::Registered(Registered {
        overlay_ip: "100.64.0.1".parse().unwrap(),
        refused: vec![],
    })
}

/// A session and its clock.
struct Rig {
    s: Session,
    t0: Instant,
    now: Instant,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(settings)
    }

    fn with(f: impl FnOnce(Instant) -> Settings) -> Rig {
        let t0 = Instant::now();
        let s = Session::new(f(t0), t0).unwrap();
        Rig { s, t0, now: t0 }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.s.poll_action()).collect()
    }

    fn handle(&mut self, event: Event) -> Vec<Action> {
        self.s.handle(self.now, event);
        self.actions()
    }

    /// Moves the clock to `at` and runs what is due.
    fn at(&mut self, at: Instant) -> Vec<Action> {
        self.now = at;
        self.s.handle_timeout(at);
        self.actions()
    }

    /// Moves the clock by `d`, running every timeout on the way.
    fn advance(&mut self, d: Duration) -> Vec<Action> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(t) = self.s.poll_timeout().filter(|t| *t <= end) {
            out.extend(self.at(t.max(self.now)));
        }
        self.now = end;
        out
    }

    fn frame(&mut self, conn: ConnId, frame: SessionEvent) -> Vec<Action> {
        self.handle(Event::Frame { conn, frame })
    }

    fn connected(&mut self, conn: ConnId, serial: &str, left: Option<Duration>) -> Vec<Action> {
        self.handle(Event::Connected {
            conn,
            serial: serial.into(),
            coordinator_cert_left: left,
        })
    }

    /// Connects the first attempt and takes `Registered`: the session is up on the
    /// returned connection, with serial "S1".
    fn up(&mut self) -> ConnId {
        self.handle(Event::CertificateRenewed {
            serial: "S1".into(),
        });
        let conn = connect_of(&self.at(self.now)).expect("a connection attempt");
        self.connected(conn, "S1", Some(DAY));
        self.frame(conn, registered());
        assert_eq!(self.s.state(), State::Registered);
        conn
    }
}

fn connect_of(actions: &[Action]) -> Option<ConnId> {
    actions.iter().find_map(|a| match a {
        Action::Connect { conn, .. } => Some(*conn),
        _ => None,
    })
}

fn sent(actions: &[Action]) -> Vec<(ConnId, AgentEvent)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn, event } => Some((*conn, event.clone())),
            _ => None,
        })
        .collect()
}

fn over(actions: &[Action]) -> Option<(Option<ConnId>, String, EndReason, Duration)> {
    actions.iter().find_map(|a| match a {
        Action::Over {
            conn,
            coordinator,
            reason,
            retry_in,
        } => Some((*conn, coordinator.clone(), reason.clone(), *retry_in)),
        _ => None,
    })
}

#[test]
fn registration_connects_subscribes_and_reports_the_data_plane_at_once() {
    let mut r = Rig::new();
    assert_eq!(r.s.state(), State::Waiting);
    assert_eq!(
        r.s.poll_timeout(),
        Some(r.t0),
        "the first attempt is at once"
    );
    let actions = r.at(r.t0);
    assert_eq!(
        actions,
        vec![Action::Connect {
            conn: ConnId(1),
            coordinator: C1.into(),
            registration: registration(),
        }]
    );
    assert_eq!(r.s.state(), State::Connecting);
    assert_eq!(r.s.poll_timeout(), None, "connecting waits for the shell");

    // The data plane's reports before the session are kept and sent when it opens.
    let conflicts = vec![Refusal {
        prefix: "10.0.0.0/8".into(),
        reason: "main table".into(),
    }];
    assert!(r
        .handle(Event::RouteConflicts(conflicts.clone()))
        .is_empty());
    let actions = r.connected(ConnId(1), "S1", Some(DAY));
    assert_eq!(
        sent(&actions),
        vec![
            (ConnId(1), AgentEvent::RouteConflicts { conflicts }),
            (
                ConnId(1),
                AgentEvent::LinkReport {
                    peers: vec![],
                    access_drops: vec![],
                    bgp: None,
                }
            ),
        ]
    );
    assert_eq!(r.s.state(), State::Subscribed);
    assert_eq!(r.s.connection(), Some(ConnId(1)));

    let actions = r.frame(ConnId(1), registered());
    assert_eq!(actions, vec![Action::Registered { conn: ConnId(1) }]);
    assert_eq!(r.s.state(), State::Registered);

    // Later reports go out as they come.
    let actions = r.handle(Event::Links {
        peers: vec![],
        access_drops: vec![],
        bgp: None,
    });
    assert_eq!(sent(&actions).len(), 1);
}

#[test]
fn a_snapshot_is_published_and_acknowledged_and_a_delta_at_its_version_applies() {
    let mut r = Rig::new();
    let conn = r.up();
    let mut m = map(7);
    m.peers.insert("b/gw".into(), peer("b/gw", PeerKind::Agent));
    let actions = r.frame(conn, SessionEvent::Snapshot(m.clone()));
    assert_eq!(
        actions,
        vec![
            Action::Publish(Arc::new(m.clone())),
            Action::Send {
                conn,
                event: AgentEvent::Heartbeat { map_version: 7 }
            },
        ]
    );
    assert_eq!(r.s.map(), Some(&m));

    let mut next = m.clone();
    next.version = 8;
    next.peers.remove("b/gw");
    let delta = m.diff(&next);
    assert_eq!(delta.from_version, 7);
    let actions = r.frame(conn, SessionEvent::Delta(delta));
    assert_eq!(actions, vec![Action::Publish(Arc::new(next.clone()))]);
    assert_eq!(r.s.map(), Some(&next));
    assert_eq!(r.s.published().map(|m| m.version), Some(8));

    // A new connection says which version it holds.
    r.frame(
        conn,
        SessionEvent::Closing(ErrorBody {
            code: ErrorCode::Unavailable,
            message: "shutting down".into(),
        }),
    );
    let actions = r.advance(Duration::from_secs(60));
    match &actions[..] {
        [Action::Connect { registration, .. }] => {
            assert_eq!(registration.have_version, Some(8))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_delta_at_another_version_or_before_a_snapshot_ends_the_session_for_a_snapshot() {
    let mut r = Rig::new();
    let conn = r.up();
    let delta = MapDelta {
        from_version: 3,
        to_version: 4,
        node: None,
        upsert_peers: vec![],
        remove_peers: vec![],
        upsert_routes: vec![],
        remove_routes: vec![],
        access: None,
    };
    let actions = r.frame(conn, SessionEvent::Delta(delta.clone()));
    let (c, coordinator, reason, _) = over(&actions).unwrap();
    assert_eq!((c, coordinator.as_str()), (Some(conn), C1));
    assert_eq!(reason, EndReason::DeltaBeforeSnapshot);
    assert!(!actions.iter().any(|a| matches!(a, Action::Publish(_))));

    // The next session, on the next coordinator, takes a snapshot at 5 and a delta from 3.
    let actions = r.advance(Duration::from_secs(1));
    let conn = connect_of(&actions).unwrap();
    assert!(matches!(&actions[0], Action::Connect { coordinator, .. } if coordinator == C2));
    r.connected(conn, "S1", Some(DAY));
    r.frame(conn, registered());
    r.frame(conn, SessionEvent::Snapshot(map(5)));
    let actions = r.frame(conn, SessionEvent::Delta(delta));
    let (_, _, reason, _) = over(&actions).unwrap();
    assert_eq!(reason, EndReason::Gap(VersionGap { have: 5, from: 3 }));
    assert_eq!(
        reason.to_string(),
        "map delta from version 3 cannot apply to a map at version 5; a new snapshot is needed; reconnecting for a snapshot"
    );
    assert_eq!(r.s.state(), State::Waiting);
    // The map published stays: the data plane keeps it until the next snapshot.
    assert_eq!(r.s.published().map(|m| m.version), Some(5));
}

#[test]
fn heartbeats_carry_the_sessions_map_version_every_interval() {
    let mut r = Rig::new();
    let conn = r.up();
    let connected_at = r.now;
    let beats = |actions: &[Action]| {
        sent(actions)
            .into_iter()
            .filter_map(|(c, e)| match e {
                AgentEvent::Heartbeat { map_version } => Some((c, map_version)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(beats(&r.advance(HEARTBEAT - Duration::from_millis(1))).is_empty());
    assert_eq!(beats(&r.at(connected_at + HEARTBEAT)), vec![(conn, 0)]);
    r.frame(conn, SessionEvent::Snapshot(map(9)));
    assert!(beats(&r.advance(HEARTBEAT - Duration::from_millis(1))).is_empty());
    assert_eq!(beats(&r.advance(Duration::from_millis(1))), vec![(conn, 9)]);
    assert_eq!(beats(&r.advance(HEARTBEAT * 3)).len(), 3);
}

#[test]
fn commands_run_against_the_published_map_up_to_a_limit() {
    let mut r = Rig::with(|t0| Settings {
        saved_map: Some(Arc::new(map(4))),
        ..settings(t0)
    });
    let conn = r.up();
    let ping = |id| {
        SessionEvent::Command(Command {
            id,
            action: Request::Ping {
                peer: "b/gw".into(),
                count: 3,
                interval_ms: 200,
            },
        })
    };
    // Before any snapshot the saved map is the current one.
    let actions = r.frame(conn, ping(1));
    assert!(matches!(
        &actions[..],
        [Action::RunCommand { command, map: Some(m) }] if command.id == 1 && m.version == 4
    ));
    for id in 2..=MAX_COMMANDS as u64 {
        assert_eq!(r.frame(conn, ping(id)).len(), 1);
    }
    assert_eq!(r.s.running_commands(), MAX_COMMANDS);
    let refused = r.frame(conn, ping(9));
    assert_eq!(
        sent(&refused),
        vec![(
            conn,
            AgentEvent::Probe {
                id: 9,
                event: ProbeEvent::Failed {
                    message: "this node already runs 4 commands; try again later".into()
                }
            }
        )]
    );
    // Progress goes to the coordinator; an ended command frees its place.
    let progress = r.handle(Event::CommandProgress {
        id: 2,
        event: ProbeEvent::Done,
    });
    assert_eq!(
        sent(&progress),
        vec![(
            conn,
            AgentEvent::Probe {
                id: 2,
                event: ProbeEvent::Done
            }
        )]
    );
    r.handle(Event::CommandEnded { id: 2 });
    assert_eq!(r.s.running_commands(), MAX_COMMANDS - 1);
    assert!(matches!(
        &r.frame(conn, ping(10))[..],
        [Action::RunCommand { .. }]
    ));
    // A session's end stops every command.
    r.handle(Event::Ended { conn, error: None });
    assert_eq!(r.s.running_commands(), 0);
}

#[test]
fn closing_ends_the_session_with_the_coordinators_reason() {
    let mut r = Rig::new();
    let conn = r.up();
    let body = ErrorBody {
        code: ErrorCode::Revoked,
        message: "certificate revoked".into(),
    };
    let actions = r.frame(conn, SessionEvent::Closing(body.clone()));
    let (c, _, reason, retry_in) = over(&actions).unwrap();
    assert_eq!(c, Some(conn));
    assert_eq!(reason, EndReason::Closed(body));
    assert_eq!(
        reason.to_string(),
        "coordinator closed the session: certificate revoked (revoked)"
    );
    assert!(!reason.is_clean());
    assert!(retry_in >= Duration::from_millis(500));
    // Frames still queued from the closed connection change nothing.
    assert!(r.frame(conn, SessionEvent::Snapshot(map(3))).is_empty());
    assert_eq!(r.s.published(), None);

    // The stream finished by the coordinator is a clean end.
    let mut r = Rig::new();
    let conn = r.up();
    let (_, _, reason, _) = over(&r.handle(Event::Ended { conn, error: None })).unwrap();
    assert!(reason.is_clean());
}

/// The renewal's make-before-break: returns the rig registered on the second connection.
fn renewed_and_moved(r: &mut Rig, old: ConnId, serial: &str) -> ConnId {
    let actions = r.handle(Event::CertificateRenewed {
        serial: serial.into(),
    });
    let new = connect_of(&actions).expect("a second connection");
    assert_ne!(new, old);
    assert!(matches!(&actions[0], Action::Connect { coordinator, .. } if coordinator == C1));
    assert_eq!(r.s.state(), State::Moving(Move::Renewed));
    r.connected(new, serial, Some(DAY));
    let actions = r.frame(new, registered());
    assert_eq!(
        actions[..2],
        [
            Action::Close {
                conn: old,
                reason: "moved to a renewed certificate"
            },
            Action::Registered { conn: new },
        ]
    );
    assert_eq!(
        sent(&actions).len(),
        2,
        "the reports again, on the new session"
    );
    assert_eq!(r.s.connection(), Some(new));
    assert_eq!(r.s.state(), State::Registered);
    new
}

#[test]
fn a_renewed_certificate_moves_the_session_make_before_break() {
    let mut r = Rig::new();
    let old = r.up();
    r.frame(old, SessionEvent::Snapshot(map(3)));
    // The same serial again (the renewal task's first state) moves nothing.
    assert!(r
        .handle(Event::CertificateRenewed {
            serial: "S1".into()
        })
        .is_empty());
    let actions = r.handle(Event::CertificateRenewed {
        serial: "S2".into(),
    });
    let new = connect_of(&actions).unwrap();
    r.connected(new, "S2", Some(DAY));
    // Meanwhile the old session goes on: its deltas apply, its heartbeats go out...
    let mut m4 = map(3);
    m4.version = 4;
    let actions = r.frame(old, SessionEvent::Delta(map(3).diff(&m4)));
    assert_eq!(actions, vec![Action::Publish(Arc::new(m4))]);
    // ...and its end (the coordinator closes it as replaced) waits for the move.
    assert!(r
        .handle(Event::Ended {
            conn: old,
            error: Some("connection closed: replaced by a newer session".into())
        })
        .is_empty());
    let actions = r.frame(new, registered());
    assert_eq!(
        actions[..2],
        [
            Action::Close {
                conn: old,
                reason: "moved to a renewed certificate"
            },
            Action::Registered { conn: new },
        ]
    );
    assert!(over(&actions).is_none(), "the held end is moot");
    // The new session's snapshot follows; heartbeats go on the new connection, with the
    // map kept across the move until then.
    let beats = sent(&r.advance(HEARTBEAT));
    assert!(beats.contains(&(new, AgentEvent::Heartbeat { map_version: 4 })));
    assert!(beats.iter().all(|(c, _)| *c == new));
    assert!(r.frame(old, SessionEvent::Snapshot(map(1))).is_empty());

    // A second renewal moves it again.
    renewed_and_moved(&mut r, new, "S3");
}

#[test]
fn a_failed_move_keeps_the_session_unless_its_connection_ended() {
    // Refused on the new connection: the current session goes on.
    let mut r = Rig::new();
    let old = r.up();
    let new = connect_of(&r.handle(Event::CertificateRenewed {
        serial: "S2".into(),
    }))
    .unwrap();
    r.connected(new, "S2", Some(DAY));
    let body = ErrorBody {
        code: ErrorCode::Unavailable,
        message: "busy".into(),
    };
    let actions = r.frame(new, SessionEvent::Closing(body));
    assert_eq!(
        actions,
        vec![Action::Close {
            conn: new,
            reason: "session refused"
        }]
    );
    assert_eq!(r.s.state(), State::Registered);
    assert_eq!(r.s.connection(), Some(old));

    // No answer within the move's timeout: the same.
    let new = connect_of(&r.handle(Event::CertificateRenewed {
        serial: "S3".into(),
    }))
    .unwrap();
    r.connected(new, "S3", Some(DAY));
    let actions = r.advance(MOVE_TIMEOUT);
    assert!(actions.contains(&Action::Close {
        conn: new,
        reason: "no answer"
    }));
    assert!(over(&actions).is_none());
    assert_eq!(r.s.connection(), Some(old));

    // The old connection ended meanwhile and the move failed: the session is over, for
    // the reason the old connection gave.
    let new = connect_of(&r.handle(Event::CertificateRenewed {
        serial: "S4".into(),
    }))
    .unwrap();
    r.handle(Event::Ended {
        conn: old,
        error: Some("connection lost".into()),
    });
    let actions = r.handle(Event::ConnectFailed {
        conn: new,
        error: "timed out".into(),
    });
    let (c, _, reason, _) = over(&actions).unwrap();
    assert_eq!(c, Some(old));
    assert_eq!(reason, EndReason::Connection("connection lost".into()));
}

#[test]
fn the_coordinators_certificate_expiry_moves_the_session_or_ends_it() {
    let mut r = Rig::new();
    r.handle(Event::CertificateRenewed {
        serial: "S1".into(),
    });
    let old = connect_of(&r.at(r.t0)).unwrap();
    let left = Duration::from_secs(3600);
    r.connected(old, "S1", Some(left));
    r.frame(old, registered());
    let actions = r.advance(left - Duration::from_secs(1));
    assert!(connect_of(&actions).is_none());
    let actions = r.advance(Duration::from_secs(1));
    let new = connect_of(&actions).expect("a new connection at the expiry");
    assert_eq!(r.s.state(), State::Moving(Move::CoordinatorCertExpired));
    // The new connection presents the coordinator's renewed certificate.
    r.connected(new, "S1", Some(2 * left));
    let actions = r.frame(new, registered());
    assert_eq!(
        actions[0],
        Action::Close {
            conn: old,
            reason: "the coordinator's certificate expired"
        }
    );
    assert_eq!(r.s.connection(), Some(new));
    // The next move is at the new certificate's expiry, not before.
    assert!(connect_of(&r.advance(2 * left - Duration::from_secs(1))).is_none());
    let newer = connect_of(&r.advance(Duration::from_secs(1))).unwrap();

    // This time no connection opens: an expired certificate vouches for nothing.
    let actions = r.handle(Event::ConnectFailed {
        conn: newer,
        error: "invalid peer certificate: Expired".into(),
    });
    let (c, coordinator, reason, _) = over(&actions).unwrap();
    assert_eq!((c, coordinator.as_str()), (Some(new), C1));
    assert_eq!(
        reason,
        EndReason::CoordinatorCertExpired {
            coordinator: C1.into(),
            error: "invalid peer certificate: Expired".into()
        }
    );
    assert!(reason.to_string().contains("renews its certificate"));
}

#[test]
fn a_coordinator_expiry_during_a_renewal_move_makes_its_failure_end_the_session() {
    let mut r = Rig::new();
    r.handle(Event::CertificateRenewed {
        serial: "S1".into(),
    });
    let old = connect_of(&r.at(r.t0)).unwrap();
    r.connected(old, "S1", Some(Duration::from_secs(5)));
    r.frame(old, registered());
    let new = connect_of(&r.handle(Event::CertificateRenewed {
        serial: "S2".into(),
    }))
    .unwrap();
    let actions = r.advance(Duration::from_secs(5));
    assert!(connect_of(&actions).is_none(), "one move at a time");
    assert_eq!(r.s.state(), State::Moving(Move::CoordinatorCertExpired));
    let actions = r.handle(Event::ConnectFailed {
        conn: new,
        error: "refused".into(),
    });
    assert!(matches!(
        over(&actions),
        Some((_, _, EndReason::CoordinatorCertExpired { .. }, _))
    ));
}

#[test]
fn a_renewal_while_connecting_moves_the_session_once_registered() {
    let mut r = Rig::new();
    r.handle(Event::CertificateRenewed {
        serial: "S1".into(),
    });
    let conn = connect_of(&r.at(r.t0)).unwrap();
    r.handle(Event::CertificateRenewed {
        serial: "S2".into(),
    });
    // The connection presented S1, the certificate before: no second subscription
    // while the first is not registered (the coordinator would register both, in
    // either order, and keep the last).
    let actions = r.connected(conn, "S1", Some(DAY));
    assert!(connect_of(&actions).is_none(), "{actions:?}");
    assert_eq!(r.s.state(), State::Subscribed);
    let actions = r.frame(conn, registered());
    assert_eq!(actions[0], Action::Registered { conn });
    assert!(connect_of(&actions).is_some(), "{actions:?}");
    assert_eq!(r.s.state(), State::Moving(Move::Renewed));
}

/// Found by the mesh simulator: a renewal between `Connected` and `Registered` opened a
/// second subscription; the coordinator registered it first, then the first one (closing
/// the second as replaced), and the session adopted the second with its older snapshot,
/// publishing a map version lower than the one it had published.
#[test]
fn a_renewal_before_registered_waits_so_versions_never_go_back() {
    let mut r = Rig::new();
    r.handle(Event::CertificateRenewed {
        serial: "S1".into(),
    });
    let first = connect_of(&r.at(r.t0)).unwrap();
    r.connected(first, "S1", Some(DAY));
    assert!(connect_of(&r.handle(Event::CertificateRenewed {
        serial: "S2".into(),
    }))
    .is_none());
    r.frame(first, registered());
    let second = r.s.moving_conn().expect("the move starts once registered");
    let actions = r.frame(first, SessionEvent::Snapshot(map(72)));
    assert_eq!(actions[0], Action::Publish(Arc::new(map(72))));
    r.connected(second, "S2", Some(DAY));
    // The second registered after the first: its snapshot is at least as new.
    r.frame(second, registered());
    let actions = r.frame(second, SessionEvent::Snapshot(map(73)));
    assert_eq!(actions[0], Action::Publish(Arc::new(map(73))));
    assert_eq!(r.s.connection(), Some(second));
}

#[test]
fn a_key_rotation_announces_waits_for_the_map_then_switches() {
    let mut r = Rig::new();
    let conn = r.up();
    r.frame(conn, SessionEvent::Snapshot(map(1)));
    let actions = r.frame(
        conn,
        SessionEvent::Command(Command {
            id: 5,
            action: Request::RotateKey,
        }),
    );
    assert_eq!(
        sent(&actions),
        vec![(
            conn,
            AgentEvent::Probe {
                id: 5,
                event: ProbeEvent::Done
            }
        )]
    );
    // At once, not at the next tick.
    assert_eq!(r.s.poll_timeout(), Some(r.now));
    let actions = r.at(r.now);
    assert_eq!(actions, vec![Action::GenerateKey]);
    let actions = r.handle(Event::KeyGenerated {
        public: "K2".into(),
    });
    assert_eq!(
        sent(&actions),
        vec![(
            conn,
            AgentEvent::AnnounceKey {
                next_wg_public_key: "K2".into()
            }
        )]
    );
    // A second request is refused while this one runs.
    let actions = r.frame(
        conn,
        SessionEvent::Command(Command {
            id: 6,
            action: Request::RotateKey,
        }),
    );
    assert!(matches!(
        &sent(&actions)[0].1,
        AgentEvent::Probe {
            id: 6,
            event: ProbeEvent::Failed { .. }
        }
    ));
    // Announced once per connection, however many ticks.
    let actions = r.advance(Duration::from_secs(3));
    assert!(!sent(&actions)
        .iter()
        .any(|(_, e)| matches!(e, AgentEvent::AnnounceKey { .. })));

    // The coordinator recorded it: the own map names it.
    let mut m2 = map(2);
    m2.node.next_wg_public_key = Some("K2".into());
    r.frame(conn, SessionEvent::Delta(map(1).diff(&m2)));
    let actions = r.advance(DISTRIBUTION_DELAY - Duration::from_secs(1));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::SwitchKey { .. })));
    let actions = r.advance(Duration::from_secs(2));
    assert!(actions.contains(&Action::SwitchKey {
        public: "K2".into()
    }));
    let actions = r.handle(Event::KeySwitched {
        public: "K2".into(),
    });
    assert_eq!(
        sent(&actions),
        vec![(
            conn,
            AgentEvent::KeyInUse {
                wg_public_key: "K2".into()
            }
        )]
    );
    // The next connection registers the new key.
    assert_eq!(r.s.registration().wg_public_key, "K2");
}

#[test]
fn a_pending_key_is_announced_again_on_a_new_connection() {
    let mut r = Rig::new();
    let old = r.up();
    r.frame(
        old,
        SessionEvent::Command(Command {
            id: 1,
            action: Request::RotateKey,
        }),
    );
    r.at(r.now);
    r.handle(Event::KeyGenerated {
        public: "K2".into(),
    });
    let new = renewed_and_moved(&mut r, old, "S2");
    let actions = r.advance(ROTATION_TICK);
    assert!(sent(&actions).contains(&(
        new,
        AgentEvent::AnnounceKey {
            next_wg_public_key: "K2".into()
        }
    )));
}

#[test]
fn a_scheduled_rotation_waits_while_external_peers_use_the_key() {
    let mut r = Rig::with(|t0| Settings {
        rotation: KeyRotation::new(Some(DAY), DAY, t0),
        ..settings(t0)
    });
    let conn = r.up();
    let mut m = map(1);
    m.peers
        .insert("external/x".into(), peer("external/x", PeerKind::External));
    r.frame(conn, SessionEvent::Snapshot(m));
    let actions = r.advance(Duration::from_secs(5));
    assert!(!actions.contains(&Action::GenerateKey));

    // Without them, the due rotation starts.
    let mut r = Rig::with(|t0| Settings {
        rotation: KeyRotation::new(Some(DAY), DAY, t0),
        ..settings(t0)
    });
    let conn = r.up();
    r.frame(conn, SessionEvent::Snapshot(map(1)));
    let actions = r.advance(ROTATION_TICK);
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == Action::GenerateKey)
            .count(),
        1,
        "one key, however many ticks before it is reported"
    );
}

#[test]
fn backoff_doubles_to_a_cap_with_bounded_jitter() {
    assert_eq!(backoff(0, 0.0), Duration::from_millis(500));
    assert_eq!(backoff(2, 0.0), Duration::from_secs(2));
    assert_eq!(backoff(20, 0.0), Duration::from_secs(30));
    assert_eq!(backoff(20, 1.0), Duration::from_millis(37_500));
}

#[test]
fn failed_attempts_back_off_across_coordinators_and_a_long_session_resets_it() {
    let mut r = Rig::new();
    let mut delays = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..8 {
        let wait = r.s.poll_timeout().unwrap();
        let actions = r.at(wait);
        let Some(Action::Connect {
            conn, coordinator, ..
        }) = actions.first().cloned()
        else {
            panic!("{actions:?}")
        };
        targets.push(coordinator);
        let actions = r.handle(Event::ConnectFailed {
            conn,
            error: "timed out".into(),
        });
        let (c, _, reason, retry_in) = over(&actions).unwrap();
        assert_eq!(c, None);
        assert_eq!(reason, EndReason::Connection("timed out".into()));
        assert_eq!(r.s.poll_timeout(), Some(r.now + retry_in));
        delays.push(retry_in);
    }
    assert_eq!(targets, [C1, C2, C1, C2, C1, C2, C1, C2]);
    for (attempt, d) in delays.iter().enumerate() {
        let base = backoff(attempt as u32, 0.0);
        assert!(
            *d >= base && *d <= base.mul_f64(1.25),
            "attempt {attempt}: {d:?}"
        );
    }

    // A session that lasted starts the backoff over.
    let conn = connect_of(&r.at(r.s.poll_timeout().unwrap())).unwrap();
    r.connected(conn, "S1", Some(DAY));
    r.frame(conn, registered());
    r.advance(STABLE_SESSION + Duration::from_secs(1));
    let (_, _, _, retry_in) = over(&r.handle(Event::Ended {
        conn,
        error: Some("connection lost".into()),
    }))
    .unwrap();
    assert!(retry_in < Duration::from_millis(625), "{retry_in:?}");
}

#[test]
fn the_same_inputs_give_the_same_actions() {
    let run = || {
        let mut r = Rig::new();
        let mut all = Vec::new();
        for _ in 0..5 {
            let actions = r.at(r.s.poll_timeout().unwrap());
            let conn = connect_of(&actions).unwrap();
            all.extend(actions);
            let actions = r.handle(Event::ConnectFailed {
                conn,
                error: "refused".into(),
            });
            all.extend(actions);
        }
        all.into_iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn a_connection_the_session_no_longer_wants_is_closed() {
    let mut r = Rig::new();
    let conn = r.up();
    // A move whose session ended before its connection came up.
    let new = connect_of(&r.handle(Event::CertificateRenewed {
        serial: "S2".into(),
    }))
    .unwrap();
    let body = ErrorBody {
        code: ErrorCode::Revoked,
        message: "revoked".into(),
    };
    // A revocation during the move is held; the refused move then ends the session.
    r.frame(conn, SessionEvent::Closing(body.clone()));
    let actions = r.handle(Event::ConnectFailed {
        conn: new,
        error: "refused".into(),
    });
    assert_eq!(over(&actions).unwrap().2, EndReason::Closed(body));
    let late = ConnId(99);
    assert_eq!(
        r.connected(late, "S2", Some(DAY)),
        vec![Action::Close {
            conn: late,
            reason: "not needed"
        }]
    );
}
