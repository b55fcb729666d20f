//! Who may send which request. Identity comes from the connection's certificate, never
//! from the request: without a certificate only enrollment is allowed; operator commands
//! need an operator certificate whose role reaches [`Request::required_role`]
//! ([`crate::audit::authorize`]).

use strait_pki::Identity;
use strait_proto::msg::{ErrorBody, ErrorCode, Request};

use crate::audit::{self, Denied};
use crate::metrics::Refusal;

/// Who a request is answered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted<'a> {
    /// An enrollment, which needs no certificate (the join token is the credential).
    Enrollment,
    /// Anything else, from the identity its certificate names.
    Identity(&'a Identity),
}

/// A request refused before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The `reason` counted in `strait_coordinator_refused_connections_total`.
    pub refusal: Refusal,
    /// For the log line.
    pub reason: &'static str,
    pub error: ErrorBody,
    /// Whether the audit log records it: an operator certificate asked for something its
    /// role may not do.
    pub audit: bool,
}

/// Whether `request`, from a connection whose certificate names `identity` (or that has
/// none), may run.
pub fn admit<'a>(
    identity: Option<&'a Identity>,
    request: &Request,
) -> Result<Admitted<'a>, Refused> {
    let kind = request.kind();
    let identity = match (identity, request) {
        (_, Request::Enroll(_)) => return Ok(Admitted::Enrollment),
        (Some(id), _) => id,
        (None, _) => {
            return Err(Refused {
                refusal: Refusal::Unauthenticated,
                reason: "no client certificate",
                error: ErrorBody::new(
                    ErrorCode::Unauthenticated,
                    format!("{kind} needs a client certificate; without one only enrollment with a join token is allowed"),
                ),
                audit: false,
            })
        }
    };
    match audit::authorize(identity, request) {
        Ok(()) => Ok(Admitted::Identity(identity)),
        Err(denied) => {
            let (refusal, reason) = match denied {
                Denied::NotOperator => (Refusal::NotOperator, "not an operator"),
                Denied::Role { .. } => (Refusal::OperatorRole, "operator role too low"),
            };
            Err(Refused {
                refusal,
                reason,
                error: denied.body(kind, identity),
                audit: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_pki::{OperatorRole, Role};

    #[test]
    fn enrollment_needs_no_certificate_and_the_rest_does() {
        let enroll = Request::Enroll(crate::handlers::testing::enroll_request("", "a", "n"));
        assert_eq!(admit(None, &enroll), Ok(Admitted::Enrollment));
        let gw = Identity::node("prod", "a", "gw", Role::Gateway).unwrap();
        assert_eq!(admit(Some(&gw), &enroll), Ok(Admitted::Enrollment));
        let renew = Request::Renew {
            csr_pem: String::new(),
        };
        let refused = admit(None, &renew).unwrap_err();
        assert_eq!(refused.refusal, Refusal::Unauthenticated);
        assert_eq!(refused.error.code, ErrorCode::Unauthenticated);
        assert!(
            refused.error.message.contains("only enrollment"),
            "{}",
            refused.error
        );
        assert!(!refused.audit);
        assert_eq!(admit(Some(&gw), &renew), Ok(Admitted::Identity(&gw)));
    }

    #[test]
    fn operator_commands_need_an_operator_of_the_role() {
        let gw = Identity::node("prod", "a", "gw", Role::Gateway).unwrap();
        let refused = admit(Some(&gw), &Request::Nodes).unwrap_err();
        assert_eq!(
            (refused.refusal, refused.error.code, refused.audit),
            (Refusal::NotOperator, ErrorCode::PermissionDenied, true)
        );
        let viewer = Identity::operator("prod", "v", OperatorRole::Viewer).unwrap();
        assert_eq!(
            admit(Some(&viewer), &Request::Nodes),
            Ok(Admitted::Identity(&viewer))
        );
        let revoke = Request::Revoke {
            node: "a/gw".into(),
        };
        let refused = admit(Some(&viewer), &revoke).unwrap_err();
        assert_eq!(refused.refusal, Refusal::OperatorRole);
        assert!(
            refused.error.message.contains("--role admin"),
            "{}",
            refused.error
        );
        let admin = Identity::operator("prod", "root", OperatorRole::Admin).unwrap();
        assert!(admit(Some(&admin), &revoke).is_ok());
    }
}
