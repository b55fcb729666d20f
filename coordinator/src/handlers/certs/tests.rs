use std::net::IpAddr;

use strait_pki::material::{parse_certs, CertInfo};
use strait_pki::{OperatorRole, Role};

use super::*;
use crate::handlers::operator::create_token;
use crate::handlers::testing::{at, ca, config, csr, enroll_request, gateway, mesh};
use crate::handlers::{unix, SeededEntropy, VaultMode};

/// A join token for a gateway of `site`, as `straitctl token create` makes it.
fn token(mesh: &mut Mesh, site: &str, rng: &mut SeededEntropy) -> String {
    create_token(mesh, ca(), site, Role::Gateway, 600, at(0), rng)
        .unwrap()
        .0
        .token
}

fn cert_info(pem: &str) -> CertInfo {
    CertInfo::parse(&parse_certs("leaf", pem).unwrap()[0]).unwrap()
}

/// Runs both steps of an enrollment.
fn enroll_with(
    mesh: &mut Mesh,
    pki: &dyn Pki,
    req: &EnrollRequest,
    now: SystemTime,
    rng: &mut dyn Entropy,
) -> Result<(Issued, Vec<StoreOp>), ErrorBody> {
    let e = check_enrollment(pki, "prod", req)?;
    enroll(mesh, pki, &e, now, rng)
}

#[test]
fn a_join_token_gets_a_certificate_for_the_identity_it_grants_once() {
    let mut mesh = mesh();
    let mut rng = SeededEntropy::new(1);
    let token = token(&mut mesh, "a", &mut rng);
    let req = enroll_request(&token, "a", "gw1");
    let (issued, ops) = enroll_with(&mut mesh, ca(), &req, at(5), &mut rng).unwrap();
    assert_eq!(issued.identity, gateway("a", "gw1"));
    assert_eq!(issued.ca_pem, ca().cert_pem());
    let info = cert_info(&issued.cert.cert_pem);
    assert_eq!(info.identity.unwrap(), gateway("a", "gw1"));
    assert_eq!(info.serial, issued.cert.serial);
    let lifetime = config().pki.agent_cert_lifetime.as_secs();
    assert_eq!(issued.cert.not_after, unix(at(5)) + lifetime);
    // The token is used up and the certificate recorded (so revoking the node revokes it).
    assert!(
        matches!(&ops[..], [StoreOp::PutToken(t), StoreOp::PutIssued(c)]
        if t.used_by.is_some() && c.serial == issued.cert.serial && c.name == "gw1")
    );
    assert!(matches!(issued.enrolled(), Response::Enrolled { .. }));

    let again = enroll_request(&token, "a", "gw2");
    let e = enroll_with(&mut mesh, ca(), &again, at(6), &mut rng).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidToken);
    assert!(e.message.contains("already used"), "{e}");
}

#[test]
fn the_serial_comes_from_the_entropy_given() {
    let serial = |seed| {
        let mut mesh = mesh();
        let mut rng = SeededEntropy::new(seed);
        let token = token(&mut mesh, "a", &mut rng);
        let req = enroll_request(&token, "a", "gw1");
        enroll_with(&mut mesh, ca(), &req, at(5), &mut rng)
            .unwrap()
            .0
            .cert
            .serial
    };
    assert_eq!(serial(3), serial(3));
    assert_ne!(serial(3), serial(4));
}

#[test]
fn enrollments_are_refused_with_the_reason() {
    let mut mesh = mesh();
    let mut rng = SeededEntropy::new(2);
    let token = token(&mut mesh, "a", &mut rng);

    // A token that does not parse, before the registry is consulted.
    let e =
        check_enrollment(ca(), "prod", &enroll_request("strait1.nope", "a", "gw1")).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidToken);
    // A node name that is no DNS label.
    let e = check_enrollment(ca(), "prod", &enroll_request(&token, "a", "Gw_1")).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    // With Vault's PKI, nodes enroll with Vault.
    let e = check_enrollment(&VaultMode, "prod", &enroll_request(&token, "a", "gw1")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unsupported);
    assert!(e.message.contains("Vault"), "{e}");
    // Another site than the token's.
    let e = enroll_with(
        &mut mesh,
        ca(),
        &enroll_request(&token, "b", "gw1"),
        at(1),
        &mut rng,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidToken);
    assert!(e.message.contains("--site b"), "{e}");
    // Expired.
    let e = enroll_with(
        &mut mesh,
        ca(),
        &enroll_request(&token, "a", "gw1"),
        at(601),
        &mut rng,
    )
    .unwrap_err();
    assert!(e.message.contains("expired"), "{e}");
    // A CSR that is no CSR: refused, and the token is not used up.
    let mut bad = enroll_request(&token, "a", "gw1");
    bad.csr_pem = "garbage".into();
    let e = enroll_with(&mut mesh, ca(), &bad, at(1), &mut rng).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    enroll_with(
        &mut mesh,
        ca(),
        &enroll_request(&token, "a", "gw1"),
        at(2),
        &mut rng,
    )
    .unwrap();
}

#[test]
fn a_name_belongs_to_one_identity_until_revoked() {
    let mut mesh = mesh();
    let mut rng = SeededEntropy::new(3);
    let first = token(&mut mesh, "a", &mut rng);
    enroll_with(
        &mut mesh,
        ca(),
        &enroll_request(&first, "a", "gw1"),
        at(1),
        &mut rng,
    )
    .unwrap();
    let second = token(&mut mesh, "a", &mut rng);
    let e = enroll_with(
        &mut mesh,
        ca(),
        &enroll_request(&second, "a", "gw1"),
        at(2),
        &mut rng,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(e.message.contains("straitctl revoke a/gw1"), "{e}");
    crate::handlers::operator::revoke(&mut mesh, "a/gw1", at(3)).unwrap();
    enroll_with(
        &mut mesh,
        ca(),
        &enroll_request(&second, "a", "gw1"),
        at(4),
        &mut rng,
    )
    .unwrap();
}

#[test]
fn bad_tokens_are_rate_limited_per_address_never_good_ones() {
    let mut limiter = enroll_failure_limiter();
    let now = Instant::now();
    let from: IpAddr = "192.0.2.7".parse().unwrap();
    let bad = || ErrorBody::new(ErrorCode::InvalidToken, "join token x is not known");
    for _ in 0..ENROLL_FAILURE_BURST {
        let r = bad_token(&mut limiter, from, bad(), now);
        assert_eq!(r.refusal, Refusal::Token);
        assert_eq!(r.response, Response::Error(bad()));
    }
    let r = bad_token(&mut limiter, from, bad(), now);
    assert_eq!(r.refusal, Refusal::RateLimited);
    let Response::Error(e) = &r.response else {
        panic!("{:?}", r.response)
    };
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(
        e.message
            .starts_with("join token x is not known; 192.0.2.7 presented too many")
            && e.message.contains("for 6 s"),
        "{e}"
    );
    // Another address is not held back; one bad token more is allowed per interval.
    let other: IpAddr = "192.0.2.8".parse().unwrap();
    assert_eq!(
        bad_token(&mut limiter, other, bad(), now).refusal,
        Refusal::Token
    );
    let later = now + ENROLL_FAILURE_EVERY;
    assert_eq!(
        bad_token(&mut limiter, from, bad(), later).refusal,
        Refusal::Token
    );
    // Addresses of one IPv6 /64 count as one.
    for i in 0..ENROLL_FAILURE_BURST {
        let a: IpAddr = format!("2001:db8::{i}").parse().unwrap();
        bad_token(&mut limiter, a, bad(), now);
    }
    let r = bad_token(&mut limiter, "2001:db8::ffff".parse().unwrap(), bad(), now);
    assert_eq!(r.refusal, Refusal::RateLimited);
    assert_eq!(r.from, "2001:db8::".parse::<IpAddr>().unwrap());
}

#[test]
fn nodes_renew_their_own_identity_and_nobody_else_does() {
    let mut mesh = mesh();
    let mut rng = SeededEntropy::new(4);
    let gw = gateway("b", "gw9");
    let (issued, ops) = renew(&mut mesh, ca(), &gw, "01", &csr(), at(0), &mut rng).unwrap();
    assert_eq!(cert_info(&issued.cert.cert_pem).identity.unwrap(), gw);
    assert!(matches!(&ops[..], [StoreOp::PutIssued(c)] if c.serial == issued.cert.serial));
    assert!(matches!(issued.renewed(), Response::Renewed { .. }));

    let operator = Identity::operator("prod", "alice", OperatorRole::Admin).unwrap();
    let e = renew(&mut mesh, ca(), &operator, "01", &csr(), at(0), &mut rng).unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let e = renew(&mut mesh, &VaultMode, &gw, "01", &csr(), at(0), &mut rng).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unsupported);
    let e = renew(&mut mesh, ca(), &gw, "01", "garbage", at(0), &mut rng).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
}

/// Found by the mesh simulator: a connection accepted before its certificate was revoked
/// could renew after, and the new certificate (a serial never revoked) would undo the
/// revocation.
#[test]
fn a_revoked_certificate_renews_nothing_even_on_an_open_connection() {
    let mut mesh = mesh();
    let mut rng = SeededEntropy::new(6);
    let gw = gateway("b", "gw9");
    let (issued, _) = renew(&mut mesh, ca(), &gw, "01", &csr(), at(0), &mut rng).unwrap();
    let serial = issued.cert.serial;
    mesh.revoke(&("b".to_string(), "gw9".to_string()), 100);
    assert!(mesh.is_revoked(&serial));
    let e = renew(&mut mesh, ca(), &gw, &serial, &csr(), at(1), &mut rng).unwrap_err();
    assert_eq!(e.code, ErrorCode::Revoked);
    assert!(e.message.contains(&serial), "{e}");
}

#[test]
fn operator_certificates_carry_the_role_within_their_lifetime_bounds() {
    let mesh = mesh();
    let mut rng = SeededEntropy::new(5);
    let create = |name: &str, ttl, pki: &dyn Pki, rng: &mut SeededEntropy| {
        create_operator(
            &mesh,
            pki,
            name,
            OperatorRole::Viewer,
            &csr(),
            ttl,
            at(0),
            rng,
        )
    };
    let issued = create("bob", 3600, ca(), &mut rng).unwrap();
    let want = Identity::operator("prod", "bob", OperatorRole::Viewer).unwrap();
    assert_eq!(cert_info(&issued.cert.cert_pem).identity.unwrap(), want);
    let Response::OperatorCreated {
        identity,
        expires_at,
        serial,
        ..
    } = issued.operator_created()
    else {
        panic!()
    };
    assert_eq!(identity, want.dns_name());
    assert_eq!((expires_at, serial), (unix(at(3600)), issued.cert.serial));

    for ttl in [59, MAX_OPERATOR_LIFETIME.as_secs() + 1] {
        let e = create("bob", ttl, ca(), &mut rng).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("--ttl"), "{e}");
    }
    assert_eq!(
        create("Bob!", 3600, ca(), &mut rng).unwrap_err().code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        create("bob", 3600, &VaultMode, &mut rng).unwrap_err().code,
        ErrorCode::Unsupported
    );
}
