//! Coordinator HA on one PostgreSQL database (a real server the test starts, see
//! `strait_tests::postgres`): two coordinator processes serve one mesh, control-plane-only
//! agents on loopback connect to either, changes made through one reach agents of the
//! other within a second, tokens stay single-use and overlay addresses unique across both,
//! and agents fail over when their coordinator stops or dies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_tests::postgres::Postgres;
use strait_tests::procs::{wait_for, Agent, Coordinator, Site, TWO_SITES};

const SITES: &[Site<'static>] = TWO_SITES;

/// The most a change made through one coordinator may take to reach an agent of the other.
const PROPAGATION: Duration = Duration::from_secs(1);

/// Two coordinators of one mesh on database `strait` of `pg`, both started.
fn two_coordinators(pg: &Postgres, secrets: &Path) -> (Coordinator, Coordinator) {
    let url = pg.create_database("strait").unwrap();
    let url_file = secrets.join("db-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let store = format!(
        "[store]\nkind = \"postgres\"\nurl-file = {:?}\npoll-interval = \"200ms\"\n",
        url_file.display().to_string()
    );
    let mut a = Coordinator::init(SITES, &store).unwrap();
    let mut b = a.replica().unwrap();
    a.start().unwrap();
    b.start().unwrap();
    (a, b)
}

fn nodes(c: &Coordinator) -> Vec<Value> {
    c.ctl_json(&["nodes"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn status_version(c: &Coordinator) -> Option<u64> {
    c.ctl_json(&["status"]).ok()?.get("map-version")?.as_u64()
}

fn id(n: &Value) -> String {
    format!(
        "{}/{}",
        n["site"].as_str().unwrap_or_default(),
        n["name"].as_str().unwrap_or_default()
    )
}

/// `site/name` -> overlay IP, as coordinator `c` lists them.
fn overlay_ips(c: &Coordinator) -> BTreeMap<String, String> {
    nodes(c)
        .iter()
        .map(|n| (id(n), n["overlay-ip"].as_str().unwrap_or_default().into()))
        .collect()
}

fn peers(a: &Agent) -> BTreeSet<String> {
    a.saved_map()
        .and_then(|m| m["peers"].as_object().map(|p| p.keys().cloned().collect()))
        .unwrap_or_default()
}

/// How many times the agent registered with the coordinator at `addr`.
fn registrations(a: &Agent, addr: SocketAddr) -> usize {
    let needle = format!("coordinator={addr}");
    a.proc
        .log_text()
        .lines()
        .filter(|l| l.contains(" registered") && l.contains(&needle))
        .count()
}

/// Starts a gateway of `site` named `node` enrolling with `token`, talking to `coordinators`
/// in that order.
fn gateway(
    coordinators: &[SocketAddr],
    site: &str,
    node: &str,
    token: &str,
    prefix: &str,
) -> Agent {
    let others: Vec<String> = coordinators[1..].iter().map(|c| c.to_string()).collect();
    let mut extra = vec![
        "--prefix",
        prefix,
        "--endpoint",
        "public=198.51.100.7:51820",
    ];
    for o in &others {
        extra.extend(["--coordinator", o.as_str()]);
    }
    Agent::start(coordinators[0], site, node, "gateway", token, &extra).unwrap()
}

fn member(coordinators: &[SocketAddr], site: &str, node: &str, token: &str) -> Agent {
    let others: Vec<String> = coordinators[1..].iter().map(|c| c.to_string()).collect();
    let mut extra = vec!["--endpoint", "private=10.10.0.9:51820"];
    for o in &others {
        extra.extend(["--coordinator", o.as_str()]);
    }
    Agent::start(coordinators[0], site, node, "member", token, &extra).unwrap()
}

/// Waits until both coordinators list the same `n` nodes, all online and holding the same
/// map version, and every agent in `agents` saved that version.
fn converged(a: &Coordinator, b: &Coordinator, agents: &[&Agent], n: usize) -> u64 {
    wait_for(
        Duration::from_secs(30),
        "both coordinators to converge",
        || {
            let v = status_version(a)?;
            (status_version(b)? == v).then_some(())?;
            for c in [a, b] {
                let ns = nodes(c);
                let ok = ns.len() == n
                    && ns
                        .iter()
                        .all(|x| x["online"] == true && x["map-version"] == v);
                ok.then_some(())?;
            }
            agents
                .iter()
                .all(|g| g.map_version() == Some(v))
                .then_some(v)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nA: {:?} {:?}\nB: {:?} {:?}\ncoordinator A log:\n{}\ncoordinator B log:\n{}",
            status_version(a),
            nodes(a),
            status_version(b),
            nodes(b),
            a.log_text(),
            b.log_text()
        )
    })
}

/// Polls (every 5 ms) until `f` holds; returns how long it took.
fn time_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn revoke(c: &Coordinator, node: &str) {
    let out = c.ctl(&["revoke", node]).unwrap();
    assert!(
        out.status.success(),
        "revoke {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gateway `site/gw2` registers through `via` (listening on `addr`): how long until it is
/// in `watcher`'s map after its own registration, and how long after `straitctl revoke`
/// through `via` started until it is out of that map.
fn propagation(
    via: &Coordinator,
    addr: SocketAddr,
    site: &str,
    prefix: &str,
    watcher: &Agent,
) -> (Duration, Duration) {
    let id = format!("{site}/gw2");
    let gw = gateway(
        &[addr],
        site,
        "gw2",
        &via.token(site, "gateway").unwrap(),
        prefix,
    );
    wait_for(Duration::from_secs(20), &format!("{id} registered"), || {
        gw.map_version()
    })
    .unwrap();
    let joined = time_until(Duration::from_secs(5), &format!("{id} in the map"), || {
        peers(watcher).contains(&id)
    });
    let start = Instant::now();
    revoke(via, &id);
    time_until(
        Duration::from_secs(5),
        &format!("{id} out of the map"),
        || !peers(watcher).contains(&id),
    );
    (joined, start.elapsed())
}

#[test]
fn two_coordinators_on_one_postgres_serve_one_mesh() {
    let pg = Postgres::start().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let (mut a, mut b) = two_coordinators(&pg, secrets.path());
    let (pa, pb) = (a.addr, b.addr);

    // A gateway on each coordinator. The gcp gateway's token comes from A but is redeemed
    // through B (at once: before B's next poll, B finds it by checking the store).
    let x = gateway(
        &[pa, pb],
        "aws-use1",
        "gw1",
        &a.token("aws-use1", "gateway").unwrap(),
        "10.10.0.0/16",
    );
    let y = gateway(
        &[pb, pa],
        "gcp-usc1",
        "gw1",
        &a.token("gcp-usc1", "gateway").unwrap(),
        "10.20.0.0/16",
    );
    let v1 = converged(&a, &b, &[&x, &y], 2);
    assert_eq!(registrations(&x, pa), 1, "{}", x.proc.log_text());
    assert_eq!(registrations(&y, pb), 1, "{}", y.proc.log_text());
    assert!(peers(&x).contains("gcp-usc1/gw1") && peers(&y).contains("aws-use1/gw1"));
    assert_eq!(overlay_ips(&a), overlay_ips(&b));

    // A -> B and B -> A: a gateway registering through one coordinator appears in the map of
    // the other's agent; revoking it through the first removes it from that map, each within
    // a second.
    let (joined, revoked_ab) = propagation(&a, pa, "aws-use1", "10.10.0.0/16", &y);
    eprintln!(
        "A -> B: registration through A in B's agent's map {joined:?} after the new node's own; \
         revocation through A out of B's agent's map {revoked_ab:?} after `straitctl revoke` started"
    );
    assert!(joined < PROPAGATION, "registration A -> B took {joined:?}");
    assert!(
        revoked_ab < PROPAGATION,
        "revocation A -> B took {revoked_ab:?}"
    );
    let (joined, revoked_ba) = propagation(&b, pb, "gcp-usc1", "10.20.0.0/16", &x);
    eprintln!("B -> A: registration {joined:?}, revocation {revoked_ba:?} (straitctl included)");
    assert!(joined < PROPAGATION, "registration B -> A took {joined:?}");
    assert!(
        revoked_ba < PROPAGATION,
        "revocation B -> A took {revoked_ba:?}"
    );
    // The revoked gateway cannot come back through the other coordinator either.
    let out = a.ctl(&["nodes"]).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("gw2"));

    // One token, redeemed through both coordinators at once: exactly one enrollment.
    let token = a.token("aws-use1", "member").unwrap();
    let mut m1 = member(&[pa, pb], "aws-use1", "m1", &token);
    let mut m2 = member(&[pb, pa], "aws-use1", "m2", &token);
    let outcome = wait_for(
        Duration::from_secs(20),
        "one enrollment, one refusal",
        || {
            let done = |m: &mut Agent| {
                if m.map_version().is_some() {
                    Some(true)
                } else if m.proc.exited().is_some() {
                    Some(false)
                } else {
                    None
                }
            };
            Some((done(&mut m1)?, done(&mut m2)?))
        },
    )
    .unwrap();
    assert!(
        outcome == (true, false) || outcome == (false, true),
        "{outcome:?}\nm1:\n{}\nm2:\n{}",
        m1.proc.log_text(),
        m2.proc.log_text()
    );
    let refused = if outcome.0 { &m2 } else { &m1 };
    assert!(
        refused.proc.log_text().contains("enrollment refused"),
        "{}",
        refused.proc.log_text()
    );
    eprintln!(
        "one token through both coordinators at once: {} enrolled, the other refused",
        if outcome.0 {
            "m1 (via A)"
        } else {
            "m2 (via B)"
        }
    );
    let enrolled = if outcome.0 { m1 } else { m2 };

    // Six members registering at once, three through each coordinator: distinct overlay
    // addresses, the same on both.
    let tokens: Vec<String> = (0..6)
        .map(|i| {
            let c = if i % 2 == 0 { &a } else { &b };
            c.token("gcp-usc1", "member").unwrap()
        })
        .collect();
    let members: Vec<Agent> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let order = if i % 2 == 0 { [pa, pb] } else { [pb, pa] };
            member(&order, "gcp-usc1", &format!("app{i}"), t)
        })
        .collect();
    let mut all: Vec<&Agent> = vec![&x, &y, &enrolled];
    all.extend(members.iter());
    converged(&a, &b, &all, 9);
    let ips = overlay_ips(&a);
    assert_eq!(ips, overlay_ips(&b));
    let distinct: BTreeSet<&String> = ips.values().collect();
    assert_eq!(distinct.len(), 9, "overlay addresses collide: {ips:?}");

    // Revoking through A a node whose session is on B: B ends the session, and neither
    // coordinator lets the node back in.
    let app1 = &members[1];
    assert!(registrations(app1, pb) > 0);
    revoke(&a, "gcp-usc1/app1");
    wait_for(Duration::from_secs(10), "app1 told and refused", || {
        let log = app1.proc.log_text();
        (log.contains("this node was revoked") && log.contains("certificate revoked")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", app1.proc.log_text()));
    // It tries the next coordinator (A) after B: refused there too, or at B.
    assert!([&a, &b]
        .iter()
        .any(|c| c.log_text().contains("refused: revoked certificate")));
    for c in [&a, &b] {
        assert!(!overlay_ips(c).contains_key("gcp-usc1/app1"));
    }

    // A stops (SIGTERM): its agents move to B.
    let on_a: Vec<&Agent> = all
        .iter()
        .copied()
        .filter(|g| registrations(g, pa) > 0)
        .collect();
    assert!(on_a.len() >= 4, "x, three members (and m1 if it won)");
    let before: Vec<usize> = on_a.iter().map(|g| registrations(g, pb)).collect();
    let start = Instant::now();
    a.proc.as_mut().unwrap().stop();
    let stopped = start.elapsed();
    time_until(
        Duration::from_secs(20),
        "A's agents registered with B",
        || {
            on_a.iter()
                .zip(&before)
                .all(|(g, n)| registrations(g, pb) > *n)
        },
    );
    let moved = start.elapsed();
    eprintln!(
        "A stopped (SIGTERM; exited after {stopped:?}): its {} agents registered with B {moved:?} after the signal",
        on_a.len()
    );
    assert!(moved < Duration::from_secs(5), "failover took {moved:?}");
    // B serves the agents that moved: revoking one of them through B cuts it off.
    let app2 = &members[2];
    assert!(registrations(app2, pa) > 0 && registrations(app2, pb) > 0);
    let start = Instant::now();
    revoke(&b, "gcp-usc1/app2");
    let answered = start.elapsed();
    // Told on its session, or its connection closed as revoked (whichever comes first).
    time_until(Duration::from_secs(5), "app2 cut off", || {
        let log = app2.proc.log_text();
        log.contains("this node was revoked") || log.contains("certificate revoked")
    });
    let cut = start.elapsed();
    eprintln!(
        "after the failover, an agent that moved from A and was revoked through B was cut off {cut:?} later (straitctl answered in {answered:?})"
    );
    assert!(cut < PROPAGATION, "{cut:?}");

    // A comes back with everything B did; then B dies (SIGKILL): agents move to A once
    // their QUIC connection to B times out.
    a.start().unwrap();
    assert_eq!(overlay_ips(&a), overlay_ips(&b));
    assert_eq!(status_version(&a), status_version(&b));
    let on_b: Vec<&Agent> = [&x, &y].into_iter().collect();
    let before: Vec<usize> = on_b.iter().map(|g| registrations(g, pa)).collect();
    b.proc.as_mut().unwrap().kill();
    let moved = time_until(
        Duration::from_secs(60),
        "B's agents registered with A",
        || {
            on_b.iter()
                .zip(&before)
                .all(|(g, n)| registrations(g, pa) > *n)
        },
    );
    eprintln!("B killed (SIGKILL): x and y registered with A {moved:?} later");
    // The agents' QUIC idle timeout (10 s) plus a reconnect.
    assert!(moved < Duration::from_secs(15), "failover took {moved:?}");
    let v = wait_for(Duration::from_secs(10), "x and y online on A", || {
        let ns = nodes(&a);
        let v = status_version(&a)?;
        ns.iter()
            .filter(|n| n["role"] == "gateway")
            .all(|n| n["online"] == true)
            .then_some(v)
    })
    .unwrap();
    wait_for(Duration::from_secs(5), "x and y on A's version", || {
        (x.map_version() >= Some(v) && y.map_version() >= Some(v)).then_some(())
    })
    .unwrap();
    assert!(peers(&x).contains("gcp-usc1/gw1") && peers(&y).contains("aws-use1/gw1"));
    assert!(v > v1, "map versions only grow across coordinators");
}

#[test]
fn coordinators_ride_out_a_database_outage() {
    let mut pg = Postgres::start().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let (a, b) = two_coordinators(&pg, secrets.path());
    let (pa, pb) = (a.addr, b.addr);
    let x = gateway(
        &[pa, pb],
        "aws-use1",
        "gw1",
        &a.token("aws-use1", "gateway").unwrap(),
        "10.10.0.0/16",
    );
    let y = gateway(
        &[pb, pa],
        "gcp-usc1",
        "gw1",
        &b.token("gcp-usc1", "gateway").unwrap(),
        "10.20.0.0/16",
    );
    let v = converged(&a, &b, &[&x, &y], 2);

    // The database goes away: both coordinators keep serving what they have and refuse
    // changes; the agents keep their sessions.
    pg.stop();
    std::thread::sleep(Duration::from_secs(1));
    for c in [&a, &b] {
        assert_eq!(status_version(c), Some(v), "reads are served from memory");
        let out = c
            .ctl(&["token", "create", "--site", "aws-use1", "--role", "gateway"])
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("could not persist"),
            "{err}"
        );
    }
    assert_eq!((registrations(&x, pa), registrations(&y, pb)), (1, 1));

    // It comes back (same data, same port): changes work again through either coordinator
    // and reach the other's agents.
    pg.launch().unwrap();
    let back = Instant::now();
    let token = wait_for(Duration::from_secs(15), "a token through A", || {
        a.token("aws-use1", "gateway").ok()
    })
    .unwrap();
    eprintln!("database back: A writes again after {:?}", back.elapsed());
    let gw2 = gateway(&[pa], "aws-use1", "gw2", &token, "10.10.0.0/16");
    wait_for(Duration::from_secs(20), "aws-use1/gw2 registered", || {
        gw2.map_version()
    })
    .unwrap();
    let joined = time_until(Duration::from_secs(5), "gw2 in y's map", || {
        peers(&y).contains("aws-use1/gw2")
    });
    eprintln!("after the outage, a registration through A reached B's agent in {joined:?}");
    assert!(joined < PROPAGATION);
    let v2 = converged(&a, &b, &[&x, &y, &gw2], 3);
    assert!(v2 > v);
    assert_eq!((registrations(&x, pa), registrations(&y, pb)), (1, 1));
}
