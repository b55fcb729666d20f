//! Trust boundaries, tried as a hostile user would with the CLI and a join token or
//! certificate of their own (no root: the control plane on loopback, `--dataplane none`).
//! Each test is the regression test of a defect that was found that way.

use std::time::Duration;

use serde_json::Value;
use strait_pki::ca::{BuiltinCa, Validity};
use strait_pki::{Identity, Role};
use strait_tests::procs::{wait_for, Agent, Coordinator, Site};

const SITES: &[Site<'static>] = &[Site("aws-use1", "10.10.0.0/16")];

fn node<'a>(nodes: &'a Value, id: &str) -> Option<&'a Value> {
    nodes
        .as_array()?
        .iter()
        .find(|n| format!("{}/{}", n["site"], n["name"]).replace('"', "") == id)
}

/// A member token cannot enroll a node under a gateway's name, and a member certificate
/// naming the gateway (as a too-permissive Vault role could issue) cannot register in its
/// place: the gateway keeps its role, overlay address and session.
#[test]
fn a_node_name_belongs_to_one_identity() {
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let token = c.token("aws-use1", "gateway").unwrap();
    let gateway = Agent::start(
        c.addr,
        "aws-use1",
        "gw1",
        "gateway",
        &token,
        &[
            "--prefix",
            "10.10.0.0/16",
            "--endpoint",
            "private=10.10.0.5:51820",
        ],
    )
    .unwrap();
    let before = wait_for(Duration::from_secs(20), "the gateway to register", || {
        let nodes = c.ctl_json(&["nodes"]).ok()?;
        node(&nodes, "aws-use1/gw1")
            .filter(|n| n["online"] == true)
            .cloned()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_text()));
    assert_eq!(before["role"], "gateway", "{before}");

    // 1. Enrollment with a member token under the gateway's name: refused, named.
    let member_token = c.token("aws-use1", "member").unwrap();
    let mut impostor = Agent::start(
        c.addr,
        "aws-use1",
        "gw1",
        "member",
        &member_token,
        &["--endpoint", "private=10.10.0.66:51820"],
    )
    .unwrap();
    let status = wait_for(Duration::from_secs(20), "the impostor to give up", || {
        impostor.proc.exited()
    })
    .unwrap();
    assert!(!status.success());
    let log = impostor.proc.log_text();
    assert!(
        log.contains("aws-use1/gw1 belongs to the registered gateway aws-use1/gw1")
            && log.contains("straitctl revoke aws-use1/gw1"),
        "{log}"
    );

    // 2. A certificate for member aws-use1/gw1 made outside enrollment: its registration
    // is refused and the gateway's session is not replaced.
    let ca = BuiltinCa::load(&c.state(), "prod").unwrap();
    let identity = Identity::node("prod", "aws-use1", "gw1", Role::Member).unwrap();
    let bundle = ca
        .issue(&identity, Validity::for_lifetime(Duration::from_secs(3600)))
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("strait-agent-")
        .tempdir()
        .unwrap();
    let tls = dir.path().join("state/tls");
    std::fs::create_dir_all(&tls).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.path().join("state"), tls.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
    bundle.save(&tls).unwrap();
    let vault_like = Agent::run(
        dir,
        c.addr,
        "aws-use1",
        "gw1",
        "member",
        "",
        &["--endpoint", "private=10.10.0.67:51820"],
    )
    .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the registration to be refused",
        || {
            vault_like
                .proc
                .log_text()
                .contains("this certificate names a member")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vault_like.proc.log_text()));
    // Several refused attempts later the gateway is still the one registered, online.
    std::thread::sleep(Duration::from_secs(2));
    let nodes = c.ctl_json(&["nodes"]).unwrap();
    let after = node(&nodes, "aws-use1/gw1").unwrap();
    assert_eq!(after["role"], "gateway", "{after}");
    assert_eq!(after["online"], true, "{after}");
    assert_eq!(after["overlay-ip"], before["overlay-ip"], "{after}");
    let log = c.log_text();
    assert!(!log.contains("replaced by a newer session"), "{log}");
    drop(vault_like);
    drop(gateway);
}

/// Bad join tokens from one address do not hold back a valid one from the same address
/// (agents behind one NAT address, a cluster's egress, share it with whoever sends them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_from_an_address_do_not_lock_out_a_valid_one() {
    use strait_pki::tls::{enrollment_client_config, quic_client_config};
    use strait_proto::msg::{EnrollRequest, ErrorCode, Request, Response};
    use strait_proto::{client, ALPN};

    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let ca = BuiltinCa::load(&c.state(), "prod").unwrap();
    let tls = enrollment_client_config(ca.fingerprint(), "prod", ALPN).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = client::connect(
        &endpoint,
        c.addr,
        quic_client_config(tls).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut codes = Vec::new();
    for i in 0..15 {
        let guess = Request::Enroll(EnrollRequest {
            token: format!("strait1.guess{i}"),
            site: "aws-use1".into(),
            node: format!("n{i}"),
            role: Role::Gateway,
            csr_pem: String::new(),
        });
        match client::call(&conn, &guess, Duration::from_secs(5))
            .await
            .unwrap()
        {
            Response::Error(e) => codes.push(e.code),
            other => panic!("a guessed token was accepted: {other:?}"),
        }
    }
    assert!(
        codes.ends_with(&[ErrorCode::RateLimited; 5]),
        "the address is over its limit for bad tokens: {codes:?}"
    );
    // An honest agent from the same address enrolls at once with its valid token.
    let token = c.token("aws-use1", "gateway").unwrap();
    let mut agent = Agent::start(
        c.addr,
        "aws-use1",
        "gw1",
        "gateway",
        &token,
        &[
            "--prefix",
            "10.10.0.0/16",
            "--endpoint",
            "private=10.10.0.5:51820",
        ],
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the agent to enroll", || {
        if let Some(status) = agent.proc.exited() {
            panic!("agent exited ({status}):\n{}", agent.proc.log_text());
        }
        agent.state().join("tls/cert.pem").exists().then_some(())
    })
    .unwrap();
    let log = agent.proc.log_text();
    assert!(!log.contains("too many bad join tokens"), "{log}");
}

/// Refused handshakes are counted each, but logged at WARN at most every 10 s (with the
/// count since the last such line) and otherwise at DEBUG: a flood of attempts must not
/// flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_logged_at_warn_at_most_every_10_s() {
    use strait_pki::tls::{enrollment_client_config, quic_client_config};
    use strait_proto::client;
    use strait_tests::procs::{free_tcp_port, http_get, metric};

    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut c = Coordinator::init(SITES, &format!("metrics-listen = \"{metrics}\"")).unwrap();
    c.start().unwrap();
    let ca = BuiltinCa::load(&c.state(), "prod").unwrap();
    // A client speaking another protocol: every handshake fails (no common ALPN).
    let tls = enrollment_client_config(ca.fingerprint(), "prod", b"not-strait").unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    const ATTEMPTS: usize = 20;
    for _ in 0..ATTEMPTS {
        let r = client::connect(
            &endpoint,
            c.addr,
            quic_client_config(tls.clone()).unwrap(),
            Duration::from_secs(5),
        )
        .await;
        assert!(r.is_err(), "a handshake without Strait's ALPN succeeded");
    }
    let text = wait_for(
        Duration::from_secs(10),
        "the refusals to be counted",
        || {
            let text = http_get(metrics, "/metrics").ok()?;
            let n = metric(
                &text,
                "strait_coordinator_refused_connections_total{reason=\"tls-handshake\"}",
            )?;
            (n >= ATTEMPTS as f64).then_some(text)
        },
    )
    .unwrap();
    assert!(text.contains("tls-handshake"));
    let log = c.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refus") && l.split_whitespace().nth(1) != Some("DEBUG"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for {ATTEMPTS} refusals:\n{log}");
    assert!(
        lines[0].contains(" WARN ") && lines[0].contains("reason=\"tls-handshake\""),
        "{log}"
    );
}

/// `strait-coordinator init` refused for overlapping sites writes nothing, so the corrected
/// command succeeds (it used to leave the CA and operator credentials behind, and the re-run
/// refused: "already holds a mesh CA").
#[test]
fn a_refused_init_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let init = |second: &str| {
        std::process::Command::new(strait_tests::procs::bin("strait-coordinator"))
            .arg("init")
            .arg("--state-dir")
            .arg(&state)
            .args(["--mesh", "prod", "--listen", "127.0.0.1:7443"])
            .args(["--site", "aws-use1:aws:us-east-1:10.10.0.0/16"])
            .args(["--site", second])
            .output()
            .unwrap()
    };
    let out = init("gcp-usc1:gcp:us-central1:10.10.0.0/17");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("overlap") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "init left files"
    );
    let out = init("gcp-usc1:gcp:us-central1:10.20.0.0/16");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state.join("ca.key").exists());
}

/// The agent trusts no file another local user could have written: a state directory
/// others may write into is refused and left as it was (anything in it may have been
/// planted), one others may only read is tightened to 0700, and a `wg.key` or certificate
/// owned by another user is refused before anything is used (a planted key would let its
/// author read the node's tunnel traffic). Root is needed to give files to another user.
#[test]
fn the_agent_refuses_state_another_user_could_have_written() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let set_mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let args = ["--endpoint", "private=10.10.0.9:51820"];
    let agent_in = |dir: tempfile::TempDir, token: &str| {
        Agent::run(dir, c.addr, "aws-use1", "m1", "member", token, &args).unwrap()
    };
    let refused = |mut agent: Agent, what: &str| -> tempfile::TempDir {
        let status = wait_for(Duration::from_secs(10), "the agent to refuse", || {
            agent.proc.exited()
        })
        .unwrap_or_else(|e| panic!("{e}: {}", agent.proc.log_text()));
        let log = agent.proc.log_text();
        assert!(!status.success(), "{what}: the agent ran:\n{log}");
        assert!(log.contains("key `state-dir`"), "{what}:\n{log}");
        assert!(!log.contains("registered"), "{what}: registered:\n{log}");
        let Agent { dir, .. } = agent;
        dir
    };

    // 1. A pre-created world-writable state directory: refused, untouched.
    let dir = tempfile::Builder::new()
        .prefix("strait-agent-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    set_mode(&state, 0o777);
    let token = c.token("aws-use1", "member").unwrap();
    let dir = refused(agent_in(dir, &token), "world-writable state dir");
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(
        log.contains("writable by its group or others (mode 0777)"),
        "{log}"
    );
    assert!(log.contains("chmod 700"), "{log}");
    assert_eq!(mode(&state), 0o777, "a refused directory was changed");

    // 2. A wg.key planted by another user (mode 0600, so only its owner tells): refused.
    set_mode(&state, 0o700);
    let key = state.join("wg.key");
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    set_mode(&key, 0o600);
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    let dir = refused(agent_in(dir, &token), "wg.key of another user");
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(log.contains("wg.key: owned by uid 65534"), "{log}");

    // 3. Without the planted key, a directory others may only read is tightened, and the
    //    agent joins (the token was not used by the refused attempts).
    std::fs::remove_file(&key).unwrap();
    set_mode(&state, 0o755);
    let agent = agent_in(dir, &token);
    wait_for(Duration::from_secs(20), "the agent to register", || {
        agent.proc.log_text().contains("registered").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", agent.proc.log_text()));
    assert_eq!(mode(&state), 0o700);
    assert!(agent.proc.log_text().contains("set to mode 0700"));

    // 4. Its certificate replaced by another user's file: refused at the next start.
    let Agent { mut proc, dir, .. } = agent;
    proc.stop();
    drop(proc);
    let cert = state.join("tls/cert.pem");
    std::os::unix::fs::chown(&cert, Some(65534), None).unwrap();
    let dir = refused(agent_in(dir, ""), "certificate of another user");
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(log.contains("cert.pem: owned by uid 65534"), "{log}");
}

/// Operator certificates carry a role, every command is refused to the roles below it,
/// and every state-changing request (refused ones too) lands in the audit log: who, from
/// where, what, with what result; the log survives a restart.
#[test]
fn operator_roles_are_enforced_per_command_and_changes_are_audited() {
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, role: &str| {
        let out = dir.path().join(name);
        let o = c
            .ctl(&[
                "operator",
                "create",
                name,
                "--role",
                role,
                "--out",
                out.to_str().unwrap(),
            ])
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{name}.{role}.operators")));
        out
    };
    let viewer = make("vic", "viewer");
    let operator = make("otto", "operator");
    let admin = c.operator_dir();
    // (args, the lowest role allowed)
    let commands: &[(&[&str], &str)] = &[
        (&["status"], "viewer"),
        (&["nodes"], "viewer"),
        (&["routes"], "viewer"),
        (&["links"], "viewer"),
        (&["graph"], "viewer"),
        (&["policy"], "viewer"),
        (&["audit"], "viewer"),
        (
            &["token", "create", "--site", "aws-use1", "--role", "member"],
            "operator",
        ),
        (&["rotate-key", "aws-use1/none"], "operator"),
        (
            &["probe", "aws-use1/a", "aws-use1/b", "-n", "1"],
            "operator",
        ),
        (&["revoke", "aws-use1/none"], "admin"),
        (&["external-peer", "config", "none"], "admin"),
        (
            &[
                "operator", "create", "x", "--role", "viewer", "--out", "OUT",
            ],
            "admin",
        ),
    ];
    let rank = |r: &str| {
        ["viewer", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    for (args, lowest) in commands {
        for (role, tls) in [
            ("viewer", &viewer),
            ("operator", &operator),
            ("admin", &admin),
        ] {
            // A directory of its own for each `operator create`, inside the test's.
            let fresh = dir.path().join(format!("out-{role}"));
            let args: Vec<&str> = args
                .iter()
                .map(|a| {
                    if *a == "OUT" {
                        fresh.to_str().unwrap()
                    } else {
                        a
                    }
                })
                .collect();
            let out = c.ctl_with(tls, &args).unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if rank(role) < rank(lowest) {
                assert_eq!(out.status.code(), Some(4), "{role} {args:?}: {err}");
                assert!(
                    err.contains(&format!(
                        "needs an operator certificate with the {lowest} role"
                    )),
                    "{role} {args:?}: {err}"
                );
            } else {
                // Allowed: it succeeds or fails for its own reasons, never for the role.
                assert_ne!(out.status.code(), Some(4), "{role} {args:?}: {err}");
            }
        }
    }

    // The audit log: state-changing requests only, refused ones included, newest first.
    let entries = c.ctl_json(&["audit", "-n", "100"]).unwrap();
    let entries = entries.as_array().unwrap();
    let lines: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["operator"].as_str().unwrap().split('.').next().unwrap(),
                e["request"].as_str().unwrap(),
                if e["ok"] == true { "ok" } else { "refused" }
            )
        })
        .collect();
    let want_in_order = [
        "admin operator create vic --role viewer --ttl 2592000s ok",
        "admin operator create otto --role operator --ttl 2592000s ok",
        "vic token create --site aws-use1 --role member --ttl 3600s refused",
        "otto token create --site aws-use1 --role member --ttl 3600s ok",
        "admin token create --site aws-use1 --role member --ttl 3600s ok",
        "vic rotate-key aws-use1/none refused",
        "otto rotate-key aws-use1/none refused",
        "vic revoke aws-use1/none refused",
        "otto revoke aws-use1/none refused",
        "admin revoke aws-use1/none refused",
        "vic operator create x --role viewer --ttl 2592000s refused",
    ];
    let mut oldest_first: Vec<&String> = lines.iter().rev().collect();
    oldest_first.retain(|l| want_in_order.contains(&l.as_str()));
    assert_eq!(
        oldest_first,
        want_in_order,
        "audit log:\n{}",
        lines.join("\n")
    );
    assert!(!lines
        .iter()
        .any(|l| l.contains("status") || l.contains("nodes")));
    let token = entries
        .iter()
        .find(|e| e["request"].as_str().unwrap().starts_with("token create") && e["ok"] == true)
        .unwrap();
    assert!(
        token["result"].as_str().unwrap().starts_with("token "),
        "{token}"
    );
    assert!(
        !token.to_string().contains("strait1."),
        "a token in the audit log: {token}"
    );
    assert!(
        token["from"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{token}"
    );
    let refused = entries.iter().find(|e| e["ok"] == false).unwrap();
    assert!(
        refused["result"]
            .as_str()
            .unwrap()
            .contains("permission-denied")
            || refused["result"].as_str().unwrap().contains("not-found"),
        "{refused}"
    );
    // ...as structured log lines...
    let log = c.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("strait::audit") && l.contains("revoke aws-use1/none")),
        "{log}"
    );
    // ...kept across a restart.
    c.proc.as_mut().unwrap().stop();
    c.start().unwrap();
    let again = c.ctl_json(&["audit", "-n", "100"]).unwrap();
    assert_eq!(again.as_array().unwrap().len(), entries.len());
}
