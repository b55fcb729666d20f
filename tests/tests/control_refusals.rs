//! Hostile and mistaken clients against a real coordinator: each is refused with a named
//! error while the coordinator keeps serving everyone else.

use std::time::Duration;

use strait_pki::ca::{BuiltinCa, Validity};
use strait_pki::tls::{client_config, quic_client_config, CertStore};
use strait_pki::{CertBundle, Identity, Role};
use strait_proto::msg::{EnrollRequest, ErrorCode, Request, Response};
use strait_proto::{client, ALPN};
use strait_tests::procs::{free_tcp_port, http_get, metric, Agent, Coordinator, Site};

const SITES: &[Site<'static>] = &[Site("aws-use1", "10.10.0.0/16")];

async fn connect(
    c: &Coordinator,
    certs: Option<CertBundle>,
    alpn: &[u8],
) -> anyhow::Result<quinn::Connection> {
    let op = CertBundle::load(&c.operator_dir())?;
    let tls = client_config(
        &op.ca,
        certs.map(|b| CertStore::new(b).unwrap()),
        "prod",
        &[Role::Coordinator],
        alpn,
    )?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    Ok(client::connect(
        &endpoint,
        c.addr,
        quic_client_config(tls)?,
        Duration::from_secs(5),
    )
    .await?)
}

async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Response> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let r = strait_proto::io::read::<Response, _>(&mut recv, 1 << 20).await?;
    r.ok_or_else(|| anyhow::anyhow!("no answer"))
}

fn assert_error(r: &Response, code: ErrorCode, needle: &str) {
    match r {
        Response::Error(e) => {
            assert_eq!(e.code, code, "{e}");
            assert!(e.message.contains(needle), "expected {needle:?} in {e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_and_others_still_served() {
    let metrics_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut c = Coordinator::init(SITES, &format!("metrics-listen = \"{metrics_addr}\"")).unwrap();
    c.start().unwrap();
    let operator = CertBundle::load(&c.operator_dir()).unwrap();

    // No client certificate: only enrollment is allowed.
    let anon = connect(&c, None, ALPN).await.unwrap();
    let r = client::call(&anon, &Request::Status, Duration::from_secs(5))
        .await
        .unwrap();
    assert_error(&r, ErrorCode::Unauthenticated, "needs a client certificate");
    let r = client::call(&anon, &Request::Nodes, Duration::from_secs(5))
        .await
        .unwrap();
    assert_error(&r, ErrorCode::Unauthenticated, "only enrollment");
    // ...and an anonymous peer may not send large frames.
    let mut big = vec![0u8; 4];
    big[..4].copy_from_slice(&(20_000u32).to_be_bytes());
    big.extend(std::iter::repeat_n(b' ', 20_000));
    assert_error(
        &raw_exchange(&anon, &big).await.unwrap(),
        ErrorCode::BadRequest,
        "exceeds the limit",
    );

    // Garbage and oversized frames from an authenticated operator.
    let op = connect(&c, Some(operator.clone()), ALPN).await.unwrap();
    let r = raw_exchange(&op, b"\x00\x00\x00\x05hello").await.unwrap();
    assert_error(&r, ErrorCode::BadRequest, "not a valid message");
    let r = raw_exchange(&op, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    assert_error(&r, ErrorCode::BadRequest, "exceeds the limit");
    let r = raw_exchange(&op, &[0, 0, 0, 100, b'{', b'"', b'v', b'"'])
        .await
        .unwrap();
    assert_error(&r, ErrorCode::BadRequest, "ended in the middle of a frame");
    let wrong_version = strait_proto::frame::encode(&Request::Status).unwrap();
    let body = String::from_utf8(wrong_version[4..].to_vec())
        .unwrap()
        .replace("\"v\":1", "\"v\":7");
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend(body.as_bytes());
    assert_error(
        &raw_exchange(&op, &framed).await.unwrap(),
        ErrorCode::BadRequest,
        "version 7",
    );

    // Wrong ALPN: the handshake fails.
    assert!(
        connect(&c, Some(operator.clone()), b"h3").await.is_err(),
        "wrong ALPN accepted"
    );

    // A certificate from a foreign CA (straitctl exits 3, "unreachable").
    let foreign = BuiltinCa::generate("prod").unwrap();
    let fake_op = foreign
        .issue(
            &Identity::service("prod", "admin", Role::Operator).unwrap(),
            Validity::for_lifetime(Duration::from_secs(600)),
        )
        .unwrap();
    let fake_dir = tempfile::tempdir().unwrap();
    let mut mixed = fake_op.clone();
    mixed.ca = operator.ca.clone(); // trusts the real coordinator, presents a foreign cert
    mixed.save(fake_dir.path()).unwrap();
    let out = c.ctl_with(fake_dir.path(), &["status"]).unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A valid agent certificate calling operator commands (exit 4).
    let token = c.token("aws-use1", "gateway").unwrap();
    let agent = Agent::start(c.addr, "aws-use1", "gw1", "gateway", &token, &[]).unwrap();
    strait_tests::procs::wait_for(Duration::from_secs(10), "the agent to enroll", || {
        agent.state().join("tls/cert.pem").exists().then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for args in [
        &["nodes"][..],
        &["revoke", "gw1"],
        &["token", "create", "--site", "aws-use1", "--role", "gateway"],
    ] {
        let out = c.ctl_with(&agent.state().join("tls"), args).unwrap();
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("operator certificate"));
    }

    // Guessing join tokens: an address gets 10 bad tokens, then waits.
    let mut guesses = Vec::new();
    for i in 0..13 {
        let guess = Request::Enroll(EnrollRequest {
            token: format!("strait1.guess{i}"),
            site: "aws-use1".into(),
            node: format!("n{i}"),
            role: Role::Gateway,
            csr_pem: String::new(),
        });
        let r = client::call(&anon, &guess, Duration::from_secs(5))
            .await
            .unwrap();
        match r {
            Response::Error(e) => guesses.push(e.code),
            other => panic!("a guessed token was accepted: {other:?}"),
        }
    }
    assert_eq!(guesses[..10], [ErrorCode::InvalidToken; 10], "{guesses:?}");
    assert_eq!(guesses[10..], [ErrorCode::RateLimited; 3], "{guesses:?}");

    // Through all of it the coordinator kept serving.
    let status = c.ctl_json(&["status"]).unwrap();
    assert_eq!(status["mesh"], "prod");
    let log = c.log_text();
    assert!(log.contains("refused: no client certificate"), "{log}");
    assert!(log.contains("refused: not an operator"), "{log}");
    assert!(log.contains("refused: bad request frame"), "{log}");

    // Each refusal is counted by reason.
    let text = http_get(metrics_addr, "/metrics").unwrap();
    let refused = |reason: &str| {
        metric(
            &text,
            &format!("strait_coordinator_refused_connections_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(refused("no-client-certificate"), 2.0, "{text}");
    assert_eq!(refused("bad-frame"), 5.0, "{text}");
    assert!(refused("tls-handshake") >= 1.0, "wrong ALPN: {text}");
    // The foreign CA is named like the mesh's: its certificate fails on the signature.
    assert!(refused("bad-signature") >= 1.0, "foreign CA: {text}");
    assert_eq!(refused("not-operator"), 3.0, "{text}");
    assert_eq!(refused("join-token"), 10.0, "{text}");
    assert_eq!(refused("rate-limited"), 3.0, "{text}");
}
