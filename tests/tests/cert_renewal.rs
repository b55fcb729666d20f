//! Certificate renewal end to end with 60 s certificates and real processes: the built-in CA
//! (the coordinator renews agents and itself) and RustyVault.
//!
//! What must hold: every certificate is renewed (new serial, files 0600) long before it
//! expires; an agent moves its control session to the renewed certificate before the old
//! one expires (make-before-break; the coordinator ends a session whose certificate
//! expired), so the session never drops; the tunnel keeps carrying traffic; a CA that cannot
//! be reached leaves the current certificate in use and says so (WARN log, metrics) until it
//! answers again or the certificate expires (ERROR log saying what to do).
//!
//! The first test runs in network namespaces it creates (root needed; nothing is added to
//! the root namespace):
//!
//! ```text
//!                   +------------------ rinet (router) ------------------+
//!                   | a0 192.0.2.1     c0 198.51.100.1    b0 203.0.113.1 |
//!                   +----+-------------------+-------------------+------+
//!                        |                   |                   |
//!          rgwa 192.0.2.10 (up0)    rcoord 198.51.100.10    rgwb 203.0.113.10 (up0)
//!          gateway aws-use1         (coordinator, CA)       gateway gcp-usc1
//!          lan0 10.10.0.1/24                                lan0 10.20.0.1/24
//!                |                                                 |
//!          rwla 10.10.0.10 (workload)                       rwlb 10.20.0.10 (workload)
//! ```
//!
//! The others run the control plane only, on loopback, among them one where only the
//! coordinator's certificate is short-lived: the agent must move its session off it when it
//! expires.
//!
//! The four scenarios mostly wait for certificates to reach their renewal time or expire
//! (about 20 s of CPU in two minutes), so this file has its own `main` that runs them all at
//! once, each on its own thread: libtest runs as many tests at a time as the machine has
//! cores, which on a 2-core CI machine made the file take 187 s instead of 124 s. It
//! reports like libtest (`test NAME ... ok|FAILED`, a panic's message and the processes'
//! logs on stderr), takes name filters as arguments and exits non-zero if any failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use strait_pki::CertBundle;
use strait_tests::netns::{in_netns, uplink, Netns};
use strait_tests::procs::{
    free_tcp_port, http_get, metric, wait_for, Agent, Coordinator, Site, TWO_SITES,
};
use strait_tests::rustyvault::{vault_coordinator, RustyVault};

/// The certificate in `<state>/tls`, after checking that its files are mode 0600.
fn cert_in(state: &Path) -> CertBundle {
    let tls = state.join("tls");
    for f in ["cert.pem", "key.pem"] {
        let path = tls.join(f);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
    CertBundle::load(&tls).unwrap()
}

/// Sets the built-in CA's agent and coordinator certificate lifetimes to 60 s.
fn short_lifetimes(c: &Coordinator) {
    let cfg = c.state().join("coordinator.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    for key in [
        "agent-cert-lifetime = \"24h\"",
        "coordinator-cert-lifetime = \"720h\"",
    ] {
        assert!(text.contains(key), "{key} missing in\n{text}");
    }
    let text = text
        .replace(
            "agent-cert-lifetime = \"24h\"",
            "agent-cert-lifetime = \"60s\"",
        )
        .replace(
            "coordinator-cert-lifetime = \"720h\"",
            "coordinator-cert-lifetime = \"60s\"",
        );
    std::fs::write(&cfg, text).unwrap();
}

/// Seconds from now until `t` (negative once passed).
fn secs_until(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// One sample of an agent's metrics.
fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn renewal_state(text: &str) -> &'static str {
    renewal_state_of(text, "strait_cert_renewal_state")
}

/// The coordinator's record of `site/name` (`straitctl nodes`).
fn node(c: &Coordinator, id: &str) -> Option<Value> {
    let nodes = c.ctl_json(&["nodes"]).ok()?;
    nodes.as_array()?.iter().find_map(|n| {
        (format!("{}/{}", n["site"].as_str()?, n["name"].as_str()?) == id).then(|| n.clone())
    })
}

/// Pings `to` from namespace `ns` every 10 ms for `secs` seconds: (sent, received, longest
/// time between two replies in seconds).
fn ping_for(ns: &str, to: &str, secs: u32) -> (u32, u32, f64) {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-D", "-i", "0.01", "-W", "1", "-w",
        ])
        .arg(secs.to_string())
        .arg(to)
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text}"));
    let nums: Vec<u32> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let stamps: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = stamps.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (nums[0], nums[1], gap)
}

fn builtin_ca_renews_every_certificate_while_sessions_and_the_tunnel_stay_up() {
    let test_start = Instant::now();
    let inet = Netns::new("rinet");
    let coord = Netns::new("rcoord");
    let gwa = Netns::new("rgwa");
    let gwb = Netns::new("rgwb");
    let wla = Netns::new("rwla");
    let wlb = Netns::new("rwlb");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    uplink(&gwa, "lan0", &wla, "eth0", "10.10.0", "10");
    uplink(&gwb, "lan0", &wlb, "eth0", "10.20.0", "10");

    let addr: SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let mut c = Coordinator::init(TWO_SITES, "").unwrap();
    short_lifetimes(&c);
    c.move_to(&coord.name, addr).unwrap();
    c.start().unwrap();
    // `init` issued a 30-day certificate; with a 60 s lifetime it is replaced at start.
    let c0 = cert_in(&c.state());
    assert!(
        secs_until(c0.not_after) <= 60.0,
        "coordinator certificate valid for {:.0} s more",
        secs_until(c0.not_after)
    );
    assert!(c
        .log_text()
        .contains("coordinator certificate replaced: it was valid for longer"));

    let start = |ns: &Netns, site: &str, node: &str, prefix: &str, public: &str| {
        let token = c.token(site, "gateway").unwrap();
        Agent::start_in_netns(
            &ns.name,
            addr,
            site,
            node,
            "gateway",
            &token,
            &[
                "--prefix",
                prefix,
                "--endpoint",
                &format!("public={public}:51820"),
                "--metrics-listen",
                &format!("{public}:9464"),
            ],
        )
        .unwrap()
    };
    let a = start(&gwa, "aws-use1", "gwa", "10.10.0.0/16", "192.0.2.10");
    let b = start(&gwb, "gcp-usc1", "gwb", "10.20.0.0/16", "203.0.113.10");
    wait_for(
        Duration::from_secs(20),
        "workload A to reach workload B",
        || (wla.ping_flow("10.20.0.10", 1).1 == 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), b.proc.log_text()));
    let scrape = |ns: &Netns, ip: &str| {
        let addr: SocketAddr = format!("{ip}:9464").parse().unwrap();
        in_netns(ns, move || http_get(addr, "/metrics").ok())
    };
    let agents = [(&a, &gwa, "192.0.2.10"), (&b, &gwb, "203.0.113.10")];
    let first: Vec<CertBundle> = agents.iter().map(|(x, _, _)| cert_in(&x.state())).collect();
    for cert in &first {
        assert!(secs_until(cert.not_after) <= 60.0);
    }

    // Traffic through the tunnel for the whole test: renewals, the old certificates'
    // expiry, the CA (coordinator) away and back.
    let wla_name = wla.name.clone();
    let ping = std::thread::spawn(move || ping_for(&wla_name, "10.20.0.10", 95));
    let began = Instant::now();

    // Phase 1: until every certificate was renewed and the agents' first certificates have
    // expired, each agent's session must be up at every sample.
    let mut samples = 0;
    let mut down = Vec::new();
    let expired_by = first.iter().map(|c| c.not_after).max().unwrap() + Duration::from_secs(3);
    loop {
        assert!(
            began.elapsed() < Duration::from_secs(90),
            "certificates not all renewed within 90 s\n{}\n{}\n{}",
            a.proc.log_text(),
            b.proc.log_text(),
            c.log_text()
        );
        for (x, ns, ip) in agents {
            let text = scrape(ns, ip).unwrap_or_default();
            samples += 1;
            if metric(&text, "strait_coordinator_session_up") != Some(1.0) {
                down.push(format!("{}/{} at {:?}", x.site, x.node, began.elapsed()));
            }
        }
        let renewed = agents
            .iter()
            .zip(&first)
            .all(|((x, _, _), f)| cert_in(&x.state()).serial != f.serial)
            && cert_in(&c.state()).serial != c0.serial;
        if renewed && SystemTime::now() > expired_by {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        down.is_empty(),
        "sessions down in {} of {samples} samples: {down:?}",
        down.len()
    );
    eprintln!(
        "phase 1: {samples} samples, all sessions up, {:.0} s",
        began.elapsed().as_secs_f64()
    );
    assert!(!c
        .log_text()
        .contains("session closed: its certificate expired"));
    for ((x, ns, ip), f) in agents.iter().zip(&first) {
        let log = x.proc.log_text();
        let moves = log
            .matches("moved the session to the renewed certificate")
            .count();
        assert!(moves >= 1, "no session move in\n{log}");
        assert!(
            !log.contains("session failed") && !log.contains("session ended"),
            "{log}"
        );
        let now = cert_in(&x.state());
        assert_eq!(now.identity, f.identity);
        let id = format!("{}/{}", x.site, x.node);
        // The coordinator knows the renewed certificate: the session moved to it.
        let record = node(&c, &id).unwrap();
        assert_eq!(record["online"], true, "{record}");
        assert_eq!(
            record["cert-serial"].as_str(),
            Some(now.serial.as_str()),
            "{record}"
        );
        let text = scrape(ns, ip).unwrap();
        assert_eq!(renewal_state(&text), "valid");
        assert!(value(&text, "strait_cert_renewals_total") >= 1.0, "{text}");
        assert_eq!(value(&text, "strait_cert_renewal_failures_total"), 0.0);
        let expiry = value(&text, "strait_cert_expiry_timestamp_seconds");
        let want = now
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert!(
            (expiry - want.as_secs_f64()).abs() <= 1.0 || cert_in(&x.state()).serial != now.serial
        );
        eprintln!(
            "{id}: {moves} session moves, serial {} -> {}",
            f.serial, now.serial
        );
        assert_eq!(
            x.saved_map().unwrap()["peers"].as_object().unwrap().len(),
            1
        );
    }

    // Phase 2: the coordinator (the CA) stops. Renewal fails, the current certificate stays,
    // and it shows; the tunnel carries on.
    c.proc.as_mut().unwrap().stop();
    let stopped = Instant::now();
    let kept: Vec<CertBundle> = agents.iter().map(|(x, _, _)| cert_in(&x.state())).collect();
    for ((x, ns, ip), k) in agents.iter().zip(&kept) {
        let text = wait_for(Duration::from_secs(45), "a failed renewal to show", || {
            scrape(ns, ip).filter(|t| renewal_state(t) == "retrying")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", x.proc.log_text()));
        assert!(value(&text, "strait_cert_renewal_failures_total") >= 1.0);
        assert_eq!(value(&text, "strait_coordinator_session_up"), 0.0);
        assert_eq!(
            cert_in(&x.state()).serial,
            k.serial,
            "the certificate was kept"
        );
        assert!(secs_until(k.not_after) > 0.0, "still valid");
        let log = x.proc.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("certificate renewal failed; keeping the current certificate"))
            .unwrap_or_else(|| panic!("no WARN line in\n{log}"));
        let until = humantime::format_rfc3339_seconds(k.not_after).to_string();
        for part in [
            "WARN",
            "renewal through the coordinator failed: 198.51.100.10:7443",
            &format!("valid_until={until}"),
            "next_attempt_in=",
        ] {
            assert!(line.contains(part), "{part:?} missing in {line}");
        }
    }
    eprintln!(
        "phase 2: both agents report the failure {:.1} s after the coordinator stopped",
        stopped.elapsed().as_secs_f64()
    );

    // Phase 3: the coordinator comes back before the certificates expire; renewal succeeds.
    c.start().unwrap();
    let back = Instant::now();
    for ((x, ns, ip), k) in agents.iter().zip(&kept) {
        let text = wait_for(
            Duration::from_secs(40),
            "renewal and the session after the coordinator came back",
            || {
                scrape(ns, ip).filter(|t| {
                    renewal_state(t) == "valid"
                        && metric(t, "strait_coordinator_session_up") == Some(1.0)
                        && cert_in(&x.state()).serial != k.serial
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", x.proc.log_text(), c.log_text()));
        assert!(value(&text, "strait_cert_renewals_total") >= 2.0);
    }
    eprintln!(
        "phase 3: renewed and sessions up {:.1} s after the coordinator came back",
        back.elapsed().as_secs_f64()
    );

    let (sent, received, gap) = ping.join().unwrap();
    eprintln!("ping through the tunnel: {sent} sent, {received} received, longest gap {gap:.3} s");
    assert!(sent > 2000, "{sent} pings sent");
    // Renewal does not touch the data plane (WireGuard keys are not certificates): nothing
    // should be lost. One second of slack (100 pings, 1 %) for a CI machine that stalls the
    // userspace tunnel; anything more is a real interruption.
    assert!(
        sent - received <= sent / 100 && gap < 1.0,
        "{} of {sent} pings lost, longest gap {gap:.3} s",
        sent - received
    );
    // The background ping ran over all three phases.
    assert!(began.elapsed() >= Duration::from_secs(95));
    eprintln!("test took {:.0} s", test_start.elapsed().as_secs_f64());
}

/// The coordinator's certificate lives 60 s (the agents' 24 h): a session must not outlive
/// the certificate the coordinator authenticated it with. The agent moves the session to a
/// new connection (make-before-break), whose handshake checks the coordinator's renewed
/// certificate, and the session stays up throughout.
fn sessions_move_off_an_expired_coordinator_certificate() {
    let coordinator_metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut c = Coordinator::init(
        &[Site("aws-use1", "10.10.0.0/16")],
        &format!("metrics-listen = \"{coordinator_metrics}\"\n"),
    )
    .unwrap();
    let cfg = c.state().join("coordinator.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let key = "coordinator-cert-lifetime = \"720h\"";
    assert!(text.contains(key), "{key} missing in\n{text}");
    std::fs::write(
        &cfg,
        text.replace(key, "coordinator-cert-lifetime = \"60s\""),
    )
    .unwrap();
    c.start().unwrap();
    let (agent, metrics) = member_with_session(&c);
    let scrape = || http_get(metrics, "/metrics").ok();
    let agent_cert = cert_in(&agent.state());
    assert!(secs_until(agent_cert.not_after) > 3600.0);

    // Sample every second until the session moved twice, for at most 150 s: every sample
    // must show the session up on a coordinator certificate that has not expired (TLS
    // counts whole seconds; 2 s of slack for the move itself).
    let began = Instant::now();
    let mut seen: Vec<f64> = Vec::new();
    let (mut samples, mut problems) = (0, Vec::new());
    while seen.len() < 3 {
        assert!(
            began.elapsed() < Duration::from_secs(150),
            "the session moved {} times in 150 s (coordinator certificates {seen:?}); {problems:?}\n{}\n{}",
            seen.len().saturating_sub(1),
            agent.proc.log_text(),
            c.log_text()
        );
        let text = scrape().unwrap_or_default();
        samples += 1;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        match metric(
            &text,
            "strait_coordinator_session_cert_expiry_timestamp_seconds",
        ) {
            Some(expiry) => {
                if now > expiry + 2.0 {
                    problems.push(format!(
                        "session on a coordinator certificate expired {:.1} s ago",
                        now - expiry
                    ));
                }
                if seen.last() != Some(&expiry) {
                    seen.push(expiry);
                }
            }
            None => problems.push(format!(
                "no coordinator certificate at {:?}",
                began.elapsed()
            )),
        }
        if metric(&text, "strait_coordinator_session_up") != Some(1.0) {
            problems.push(format!("session down at {:?}", began.elapsed()));
        }
        assert!(
            problems.len() < 3,
            "{problems:?} (coordinator certificates {seen:?})\n{}",
            agent.proc.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "coordinator certificates seen by the session: {seen:?}; {samples} samples in {:?}",
        began.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{problems:?}\n{}",
        agent.proc.log_text()
    );
    assert!(
        seen.windows(2).all(|w| w[1] > w[0]),
        "each move must reach a later certificate: {seen:?}"
    );
    let log = agent.proc.log_text();
    assert!(
        log.matches("moved the session to a connection with the coordinator's current certificate")
            .count()
            >= 2,
        "{log}"
    );
    // The agent's own certificate was never renewed for it: the moves are the coordinator
    // certificate's doing.
    assert_eq!(cert_in(&agent.state()).serial, agent_cert.serial);

    // The coordinator's own renewal is visible in its metrics: renewed, valid; and when it
    // cannot save a renewed certificate (its tls directory gone), retrying with a WARN
    // saying what to check, then valid again once it can.
    let coordinator_scrape = || http_get(coordinator_metrics, "/metrics").ok();
    let text = coordinator_scrape().unwrap();
    assert!(
        value(&text, "strait_coordinator_cert_renewals_total") >= 2.0,
        "{text}"
    );
    assert_eq!(
        renewal_state_of(&text, "strait_coordinator_cert_renewal_state"),
        "valid"
    );
    let tls = c.state().join("tls");
    let away = c.state().join("tls.away");
    std::fs::rename(&tls, &away).unwrap();
    let text = wait_for(
        Duration::from_secs(60),
        "the coordinator's renewal to fail",
        || {
            coordinator_scrape().filter(|t| {
                renewal_state_of(t, "strait_coordinator_cert_renewal_state") == "retrying"
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_text()));
    assert!(value(&text, "strait_coordinator_cert_renewal_failures_total") >= 1.0);
    let renewed_before = value(&text, "strait_coordinator_cert_renewals_total");
    std::fs::rename(&away, &tls).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the coordinator's renewal to recover",
        || {
            coordinator_scrape().filter(|t| {
                renewal_state_of(t, "strait_coordinator_cert_renewal_state") == "valid"
                    && value(t, "strait_coordinator_cert_renewals_total") > renewed_before
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_text()));
    let log = c.log_text();
    let path = tls.join("cert.pem").display().to_string();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("certificate renewal failed; keeping the current certificate")
            && l.contains(&format!("could not write {path}"))
            && l.contains("check the directory exists and is writable")),
        "no WARN naming {path} and what to check in\n{log}"
    );
}

/// Member `m1` of site aws-use1 with metrics on a free port, once its session is up.
fn member_with_session(c: &Coordinator) -> (Agent, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let flags = ["--metrics-listen".to_string(), metrics.to_string()];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let token = c.token("aws-use1", "member").unwrap();
    let agent = Agent::start(c.addr, "aws-use1", "m1", "member", &token, &flags).unwrap();
    wait_for(Duration::from_secs(20), "the session", || {
        http_get(metrics, "/metrics")
            .ok()
            .filter(|t| metric(t, "strait_coordinator_session_up") == Some(1.0))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.proc.log_text()));
    (agent, metrics)
}

/// The renewal state a `*_cert_renewal_state{state}` family shows as 1.
fn renewal_state_of(text: &str, family: &str) -> &'static str {
    ["valid", "retrying", "expired"]
        .into_iter()
        .find(|s| metric(text, &format!("{family}{{state=\"{s}\"}}")) == Some(1.0))
        .unwrap_or_else(|| panic!("no {family} in\n{text}"))
}

fn builtin_ca_expiry_is_a_clear_error_and_re_enrollment_recovers() {
    let test_start = Instant::now();
    let mut c = Coordinator::init(&[Site("aws-use1", "10.10.0.0/16")], "").unwrap();
    short_lifetimes(&c);
    c.start().unwrap();
    let (agent, metrics) = member_with_session(&c);
    let scrape = || http_get(metrics, "/metrics").ok();
    // Restarts of this agent keep its metrics address.
    let flags = ["--metrics-listen".to_string(), metrics.to_string()];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let first = cert_in(&agent.state());

    // The CA goes away before the first renewal and stays away past expiry.
    c.proc.as_mut().unwrap().stop();
    wait_for(Duration::from_secs(50), "renewal to fail", || {
        scrape().filter(|t| renewal_state(t) == "retrying")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.proc.log_text()));
    let text = wait_for(
        Duration::from_secs(secs_until(first.not_after).max(0.0) as u64 + 15),
        "the expired state",
        || scrape().filter(|t| renewal_state(t) == "expired"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.proc.log_text()));
    assert!(SystemTime::now() >= first.not_after);
    assert!(value(&text, "strait_cert_renewal_failures_total") >= 2.0);
    assert_eq!(value(&text, "strait_cert_renewals_total"), 0.0);
    assert_eq!(cert_in(&agent.state()).serial, first.serial);
    let log = agent.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("certificate expired without being renewed"))
        .unwrap_or_else(|| panic!("no expiry line in\n{log}"));
    let at = humantime::format_rfc3339_seconds(first.not_after).to_string();
    for part in [
        "ERROR",
        &format!("expired_at={at}"),
        "cannot do: enroll this node again",
        "straitctl token create --site aws-use1 --role member",
        "renewal through the coordinator failed",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }

    // The coordinator back: the expired certificate opens nothing (a restarted agent tries
    // at once, and says what to do). X.509 validity includes the second of `not_after`
    // (TLS checks in whole seconds): wait until it is past for certain.
    let past = first.not_after + Duration::from_secs(2);
    if let Ok(d) = past.duration_since(SystemTime::now()) {
        std::thread::sleep(d);
    }
    c.start().unwrap();
    let Agent { proc, dir, .. } = agent;
    drop(proc);
    let agent = Agent::launch(dir, None, c.addr, "aws-use1", "m1", "member", "", &flags).unwrap();
    wait_for(
        Duration::from_secs(20),
        "the restarted agent to report expiry",
        || {
            agent
                .proc
                .log_text()
                .contains("certificate expired without being renewed")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.proc.log_text(), c.log_text()));
    let log = agent.proc.log_text();
    assert!(
        log.contains("this node's certificate expired and cannot renew through the coordinator"),
        "{log}"
    );
    assert!(!log.contains("registered"), "{log}");
    assert!(
        // Refused handshakes are logged at WARN at most every 10 s (each at DEBUG).
        c.log_text().contains("refusing connection attempts"),
        "{}",
        c.log_text()
    );

    // What the error says to do works: remove the TLS directory, enroll with a new token.
    let Agent { proc, dir, .. } = agent;
    drop(proc);
    std::fs::remove_dir_all(dir.path().join("state/tls")).unwrap();
    let token = c.token("aws-use1", "member").unwrap();
    let agent = Agent::launch(
        dir, None, c.addr, "aws-use1", "m1", "member", &token, &flags,
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "the re-enrolled session", || {
        scrape().filter(|t| {
            metric(t, "strait_coordinator_session_up") == Some(1.0) && renewal_state(t) == "valid"
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.proc.log_text(), c.log_text()));
    assert_ne!(cert_in(&agent.state()).serial, first.serial);
    eprintln!("test took {:.0} s", test_start.elapsed().as_secs_f64());
}

/// A TCP forwarder to `target` that can be cut: then it closes every connection and its
/// listening socket, so new connections are refused (Vault unreachable for one agent only).
struct Cuttable {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cuttable {
    fn start(target: SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, cs) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            // Ends when cut (the listener is dropped with it); polls every 20 ms.
            while o.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        let Ok(outbound) =
                            TcpStream::connect_timeout(&target, Duration::from_secs(2))
                        else {
                            continue;
                        };
                        inbound.set_nonblocking(false).unwrap();
                        let mut list = cs.lock().unwrap();
                        list.push(inbound.try_clone().unwrap());
                        list.push(outbound.try_clone().unwrap());
                        for (mut from, mut to) in [
                            (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                            (outbound, inbound),
                        ] {
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 16384];
                                while let Ok(n) = from.read(&mut buf) {
                                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Cuttable { addr, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Cuttable {
    /// Ends the forwarder's threads, also when the test fails before cutting it.
    fn drop(&mut self) {
        self.cut();
    }
}

fn vault_renewal_survives_an_outage_and_an_expired_certificate_ends_the_session() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(vault_renewal());
}

async fn vault_renewal() {
    let test_start = Instant::now();
    let mut vault = RustyVault::start()
        .await
        .expect("RustyVault must run for this test");
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("secret-id");
    let mut c = vault_coordinator(&vault, &secret_file).await.unwrap();
    c.start().unwrap();

    // Gateways A and B reach Vault directly, C through a forwarder the test cuts.
    let vault_addr: SocketAddr = vault.addr.trim_start_matches("http://").parse().unwrap();
    let forwarder = Cuttable::start(vault_addr);
    let secret = secret_file.display().to_string();
    let start = |site: &str, node: &str, vault_url: &str, prefix: Option<&str>| {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let listen = metrics.to_string();
        let mut args = vec![
            "--vault-address",
            vault_url,
            "--vault-role",
            "strait-gateway",
            "--vault-auth",
            "approle",
            "--vault-role-id",
            vault.role_id.as_str(),
            "--vault-secret-id-file",
            secret.as_str(),
            "--vault-cert-ttl",
            "60s",
            "--endpoint",
            "public=198.51.100.7:51820",
            "--metrics-listen",
            listen.as_str(),
        ];
        if let Some(p) = prefix {
            args.extend(["--prefix", p]);
        }
        let agent = Agent::start(c.addr, site, node, "gateway", "", &args).unwrap();
        (agent, metrics)
    };
    let (a, am) = start("aws-use1", "gwa", &vault.addr, Some("10.10.0.0/16"));
    let (b, bm) = start("gcp-usc1", "gwb", &vault.addr, Some("10.20.0.0/16"));
    let c_url = format!("http://{}", forwarder.addr);
    let (cc, cm) = start("aws-use1", "gwc", &c_url, None);
    let scrape = |m: SocketAddr| http_get(m, "/metrics").ok();
    for (x, m) in [(&a, am), (&b, bm), (&cc, cm)] {
        wait_for(Duration::from_secs(20), "the session", || {
            scrape(m).filter(|t| metric(t, "strait_coordinator_session_up") == Some(1.0))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", x.proc.log_text(), c.log_text()));
    }
    forwarder.cut();
    let began = Instant::now();
    let first: Vec<CertBundle> = [&a, &b, &cc].iter().map(|x| cert_in(&x.state())).collect();
    let (a0, b0, c0) = (&first[0], &first[1], &first[2]);
    for f in &first {
        assert!(
            secs_until(f.not_after) <= 61.0,
            "{:.0}",
            secs_until(f.not_after)
        );
    }

    // Phase 1, Vault up for A and B, away for C: A and B renew and move their sessions; C
    // keeps its certificate until it expires, then the coordinator ends its session.
    let mut down = Vec::new();
    let mut samples = 0;
    let ab = [(&a, am, a0), (&b, bm, b0)];
    let c_expired = loop {
        assert!(
            began.elapsed() < Duration::from_secs(90),
            "phase 1 did not finish\n{}\n{}",
            cc.proc.log_text(),
            c.log_text()
        );
        for (x, m, _) in ab {
            samples += 1;
            if scrape(m).and_then(|t| metric(&t, "strait_coordinator_session_up")) != Some(1.0) {
                down.push(format!("{} at {:?}", x.node, began.elapsed()));
            }
        }
        let renewed = ab
            .iter()
            .all(|(x, _, f)| cert_in(&x.state()).serial != f.serial);
        let c_state = scrape(cm).filter(|t| renewal_state(t) == "expired");
        if renewed && SystemTime::now() > a0.not_after.max(b0.not_after) + Duration::from_secs(2) {
            if let Some(t) = c_state {
                break t;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        down.is_empty(),
        "A/B sessions down in {} of {samples} samples: {down:?}",
        down.len()
    );
    for (x, m, f) in ab {
        let log = x.proc.log_text();
        assert!(
            log.contains("moved the session to the renewed certificate"),
            "{log}"
        );
        let text = scrape(m).unwrap();
        assert!(value(&text, "strait_cert_renewals_total") >= 1.0);
        let now = cert_in(&x.state());
        assert_ne!(now.serial, f.serial);
        let record = node(&c, &format!("{}/{}", x.site, x.node)).unwrap();
        assert_eq!(
            record["cert-serial"].as_str(),
            Some(now.serial.as_str()),
            "{record}"
        );
    }
    // C: kept, visible, then expired with a clear error, and its session was ended.
    assert_eq!(cert_in(&cc.state()).serial, c0.serial);
    assert!(value(&c_expired, "strait_cert_renewal_failures_total") >= 2.0);
    let log = cc.proc.log_text();
    let warn = log
        .lines()
        .find(|l| l.contains("certificate renewal failed; keeping the current certificate"))
        .unwrap_or_else(|| panic!("no WARN in\n{log}"));
    assert!(warn.contains("could not reach Vault at"), "{warn}");
    let error = log
        .lines()
        .find(|l| l.contains("certificate expired without being renewed"))
        .unwrap_or_else(|| panic!("no ERROR in\n{log}"));
    for part in ["ERROR", "make Vault reachable at", "expired_at="] {
        assert!(error.contains(part), "{part:?} missing in {error}");
    }
    let c_session = wait_for(Duration::from_secs(5), "C's session to end", || {
        scrape(cm).filter(|t| metric(t, "strait_coordinator_session_up") == Some(0.0))
    });
    assert!(c_session.is_ok(), "{}", cc.proc.log_text());
    let coord_log = c.log_text();
    assert!(
        coord_log
            .lines()
            .any(|l| l.contains("session closed: its certificate expired") && l.contains("gwc")),
        "{coord_log}"
    );
    assert!(
        !coord_log
            .lines()
            .any(|l| l.contains("session closed: its certificate expired") && !l.contains("gwc")),
        "{coord_log}"
    );
    eprintln!(
        "phase 1: {samples} samples of A/B sessions, all up; C expired and was closed, {:.0} s",
        began.elapsed().as_secs_f64()
    );

    // Phase 2: Vault stops. A and B fail to renew, keep their certificates, and say so.
    vault.stop();
    let kept: Vec<CertBundle> = ab.iter().map(|(x, _, _)| cert_in(&x.state())).collect();
    for ((x, m, _), k) in ab.iter().zip(&kept) {
        let text = wait_for(Duration::from_secs(40), "a failed renewal", || {
            scrape(*m).filter(|t| renewal_state(t) == "retrying")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", x.proc.log_text()));
        assert!(value(&text, "strait_cert_renewal_failures_total") >= 1.0);
        assert_eq!(value(&text, "strait_coordinator_session_up"), 1.0);
        assert_eq!(cert_in(&x.state()).serial, k.serial);
        assert!(secs_until(k.not_after) > 0.0);
    }
    let failed_at = Instant::now();

    // Phase 3: Vault back; A and B renew before their certificates expire.
    vault.restart().await.expect("RustyVault restarts");
    for ((x, m, _), k) in ab.iter().zip(&kept) {
        wait_for(
            Duration::from_secs(30),
            "renewal after Vault came back",
            || {
                scrape(*m).filter(|t| {
                    renewal_state(t) == "valid" && cert_in(&x.state()).serial != k.serial
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", x.proc.log_text(), vault.server_log()));
        assert!(SystemTime::now() < k.not_after + Duration::from_secs(1));
        let text = scrape(*m).unwrap();
        assert!(value(&text, "strait_cert_renewals_total") >= 2.0);
        assert_eq!(value(&text, "strait_coordinator_session_up"), 1.0);
    }
    eprintln!(
        "phase 3: renewed {:.1} s after the failures were seen",
        failed_at.elapsed().as_secs_f64()
    );
    eprintln!("test took {:.0} s", test_start.elapsed().as_secs_f64());
}

type Scenario = (&'static str, fn());

fn main() {
    let scenarios: [Scenario; 4] = [
        (
            "builtin_ca_renews_every_certificate_while_sessions_and_the_tunnel_stay_up",
            builtin_ca_renews_every_certificate_while_sessions_and_the_tunnel_stay_up,
        ),
        (
            "sessions_move_off_an_expired_coordinator_certificate",
            sessions_move_off_an_expired_coordinator_certificate,
        ),
        (
            "builtin_ca_expiry_is_a_clear_error_and_re_enrollment_recovers",
            builtin_ca_expiry_is_a_clear_error_and_re_enrollment_recovers,
        ),
        (
            "vault_renewal_survives_an_outage_and_an_expired_certificate_ends_the_session",
            vault_renewal_survives_an_outage_and_an_expired_certificate_ends_the_session,
        ),
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &scenarios {
            println!("{name}: test");
        }
        return;
    }
    // Like libtest: arguments that are not options are name filters (substrings).
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let chosen: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests (at once)", chosen.len());
    let began = Instant::now();
    let running: Vec<_> = chosen
        .into_iter()
        .map(|(name, run)| {
            let thread = std::thread::Builder::new()
                .name(name.to_string())
                .spawn(run)
                .expect("a thread for the scenario");
            (name, thread)
        })
        .collect();
    let mut failed = Vec::new();
    let mut passed = 0;
    for (name, thread) in running {
        if thread.join().is_ok() {
            println!("test {name} ... ok");
            passed += 1;
        } else {
            println!("test {name} ... FAILED");
            failed.push(name);
        }
    }
    let result = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {result}. {passed} passed; {} failed; finished in {:.2}s\n",
        failed.len(),
        began.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failures:\n    {}", failed.join("\n    "));
        std::process::exit(101);
    }
}
