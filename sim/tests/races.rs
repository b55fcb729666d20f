//! Races the simulator found, replayed on purpose: the network is made slow so the window
//! is wide, and the operation lands inside it.

use std::time::Duration;

use strait_sim::net::{Conditions, Ev};
use strait_sim::ops::{Kind, Op, Step};
use strait_sim::props;
use strait_sim::world::World;
use strait_sim::SITES;

fn slow_world() -> World {
    let mut w = World::new(1, SITES, false, None);
    w.cond = Conditions {
        latency: (300, 300),
        loss: 0.0,
    };
    let enroll = Step {
        op: Op::Enroll {
            site: 0,
            kind: Kind::Gateway,
            prefixes: vec![0],
        },
        after: Duration::ZERO,
    };
    w.step(0, &enroll).unwrap();
    w
}

/// Runs `w` in 10 ms steps until `until` holds (at most `limit` of virtual time).
fn run_until(w: &mut World, limit: Duration, until: impl Fn(&World) -> bool) {
    let end = w.now + limit;
    while !until(w) {
        assert!(w.now < end, "the moment never came");
        let next = w.now + Duration::from_millis(10);
        w.run_until(next).unwrap();
    }
}

#[test]
fn a_revocation_between_handshake_and_subscription_is_not_undone() {
    let mut w = slow_world();
    // The node's session connection is accepted (the transport checked its certificate),
    // its subscription still on the way.
    run_until(&mut w, Duration::from_secs(10), |w| {
        w.conns
            .values()
            .any(|c| c.node == 0 && c.established && !c.subscribed)
    });
    w.revoke(0);
    w.run_until(w.now + Duration::from_secs(30)).unwrap();
    props::safety(&w).unwrap();
    assert!(!w.nodes[0].online());
    let key = w.nodes[0].key();
    assert!(
        w.coord.mesh().unwrap().node(&key).is_none(),
        "the revoked node is back"
    );
}

#[test]
fn a_revocation_while_a_renewal_is_on_its_way_is_not_undone() {
    let mut w = slow_world();
    run_until(&mut w, Duration::from_secs(10), |w| w.nodes[0].online());
    let serial = w.nodes[0].cert.as_ref().unwrap().serial.clone();
    // The renewal's connection is accepted; its request is on the way.
    run_until(&mut w, Duration::from_secs(20 * 60), |w| {
        w.queue.pending().any(|e| {
            matches!(
                e,
                Ev::Request {
                    node: 0,
                    accepted: true,
                    ..
                }
            )
        })
    });
    w.revoke(0);
    w.run_until(w.now + Duration::from_secs(30)).unwrap();
    props::safety(&w).unwrap();
    assert_eq!(
        w.nodes[0].cert.as_ref().unwrap().serial,
        serial,
        "a revoked node got a new certificate"
    );
    assert!(!w.nodes[0].online());
}
