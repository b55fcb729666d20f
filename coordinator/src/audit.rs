//! The audit trail and operator roles (pure): whether an operator certificate may send a
//! request ([`authorize`]), and the entry the append-only audit log keeps of every
//! state-changing request, refused ones included ([`entry`]). `server.rs` writes the
//! entries to the store and logs each as a structured line (target `strait::audit`).

use strait_pki::{Identity, OperatorRole};
use strait_proto::msg::{AuditEntry, ErrorBody, ErrorCode, Request, Response};

/// Why an authenticated client may not send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Not an operator certificate at all.
    NotOperator,
    /// An operator whose role is below what the request needs.
    Role {
        have: OperatorRole,
        need: OperatorRole,
    },
}

/// Whether `identity` may send `request` (see [`Request::required_role`]).
pub fn authorize(identity: &Identity, request: &Request) -> Result<(), Denied> {
    let Some(need) = request.required_role() else {
        return Ok(());
    };
    match identity.operator_role() {
        None => Err(Denied::NotOperator),
        Some(have) if have < need => Err(Denied::Role { have, need }),
        Some(_) => Ok(()),
    }
}

impl Denied {
    /// The answer to the client: what was refused and what to do.
    pub fn body(&self, kind: &str, identity: &Identity) -> ErrorBody {
        let message = match self {
            Denied::NotOperator => format!(
                "{kind} is an operator command, but this certificate names {identity}; use an operator certificate"
            ),
            Denied::Role { have, need } => format!(
                "{kind} needs an operator certificate with the {need} role or above; this one ({identity}) has {have}: ask an admin for one (`straitctl operator create NAME --role {need}`)"
            ),
        };
        ErrorBody::new(ErrorCode::PermissionDenied, message)
    }
}

/// Who sent a request, as the audit log records it.
pub struct Actor<'a> {
    pub identity: &'a Identity,
    pub serial: &'a str,
    pub from: std::net::SocketAddr,
}

/// The audit entry for `request` answered with `response`, if the request changes state.
pub fn entry(
    coordinator: &str,
    actor: &Actor<'_>,
    request: &Request,
    response: &Response,
    now: u64,
) -> Option<AuditEntry> {
    let summary = request.audit_summary()?;
    let (ok, result) = outcome(response);
    Some(AuditEntry {
        seq: 0,
        at: now,
        coordinator: coordinator.to_string(),
        operator: actor.identity.dns_name(),
        serial: actor.serial.to_string(),
        from: actor.from.to_string(),
        request: summary,
        ok,
        result,
    })
}

/// What came of a request, in words (never a secret: a join token's id, not the token).
fn outcome(response: &Response) -> (bool, String) {
    match response {
        Response::Error(e) => (false, e.to_string()),
        Response::Token(t) => (
            true,
            format!(
                "token {} for a {} in {}, expires at {}",
                t.id, t.role, t.site, t.expires_at
            ),
        ),
        Response::Revoked { node, serials } => (
            true,
            format!("revoked {node}: certificates {}", serials.join(", ")),
        ),
        Response::KeyRotation { node } => (true, format!("{node} is rotating its key")),
        Response::OperatorCreated {
            identity,
            serial,
            expires_at,
            ..
        } => (
            true,
            format!("certificate {serial} for {identity}, expires at {expires_at}"),
        ),
        other => (true, format!("{other:?}").chars().take(200).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_pki::Role;

    fn op(access: OperatorRole) -> Identity {
        Identity::operator("prod", "alice", access).unwrap()
    }

    #[test]
    fn each_request_needs_its_role() {
        let token = Request::CreateToken {
            site: "a".into(),
            role: Role::Member,
            ttl_secs: 60,
        };
        let revoke = Request::Revoke {
            node: "a/gw".into(),
        };
        assert_eq!(
            authorize(&op(OperatorRole::Viewer), &Request::Nodes),
            Ok(())
        );
        assert_eq!(
            authorize(&op(OperatorRole::Viewer), &token),
            Err(Denied::Role {
                have: OperatorRole::Viewer,
                need: OperatorRole::Operator
            })
        );
        assert_eq!(authorize(&op(OperatorRole::Operator), &token), Ok(()));
        assert!(authorize(&op(OperatorRole::Operator), &revoke).is_err());
        assert_eq!(authorize(&op(OperatorRole::Admin), &revoke), Ok(()));
        // Certificates from before roles are an admin's.
        let legacy = Identity::service("prod", "ops", Role::Operator).unwrap();
        assert_eq!(authorize(&legacy, &revoke), Ok(()));
        let gw = Identity::node("prod", "a", "gw", Role::Gateway).unwrap();
        assert_eq!(authorize(&gw, &Request::Nodes), Err(Denied::NotOperator));
        assert_eq!(
            authorize(
                &gw,
                &Request::Renew {
                    csr_pem: String::new()
                }
            ),
            Ok(())
        );
        let body = Denied::Role {
            have: OperatorRole::Viewer,
            need: OperatorRole::Admin,
        }
        .body("revoke", &op(OperatorRole::Viewer));
        assert!(body.message.contains("--role admin"), "{body}");
    }

    #[test]
    fn state_changes_are_audited_with_their_outcome_and_no_secret() {
        let id = op(OperatorRole::Operator);
        let actor = Actor {
            identity: &id,
            serial: "0a",
            from: "192.0.2.7:4000".parse().unwrap(),
        };
        assert!(entry("c1", &actor, &Request::Nodes, &Response::ProbeDone, 5).is_none());
        let token = Request::CreateToken {
            site: "a".into(),
            role: Role::Member,
            ttl_secs: 600,
        };
        let created = Response::Token(strait_proto::msg::TokenCreated {
            token: "strait1.secret".into(),
            id: "abc".into(),
            site: "a".into(),
            role: Role::Member,
            expires_at: 605,
        });
        let e = entry("c1", &actor, &token, &created, 5).unwrap();
        assert_eq!(e.request, "token create --site a --role member --ttl 600s");
        assert!(e.ok && e.result.contains("token abc"), "{e:?}");
        assert!(!format!("{e:?}").contains("secret"), "{e:?}");
        assert_eq!(e.operator, "alice.operator.operators.prod.strait.internal");
        let refused = Response::Error(ErrorBody::new(ErrorCode::PermissionDenied, "no"));
        let e = entry(
            "c1",
            &actor,
            &Request::Revoke { node: "x".into() },
            &refused,
            6,
        )
        .unwrap();
        assert!(!e.ok && e.result.contains("permission-denied"), "{e:?}");
    }
}
