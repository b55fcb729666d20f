//! Certificates: enrollment with a join token (the flow "join token -> certificate"),
//! renewal of a node's certificate, and operator certificates. The CA decides every
//! identity from the join token or the authenticated connection; a CSR only proves
//! possession of its key.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use strait_pki::token::JoinToken;
use strait_pki::{Identity, OperatorRole};
use strait_proto::msg::{EnrollRequest, ErrorBody, ErrorCode, Response};

use super::pki::{signer, validity};
use super::{core_err, random, Entropy, Pki, Signed};
use crate::connlimit;
use crate::mesh::{CoreError, IssuedCert, Mesh, StoreOp};
use crate::metrics::Refusal;
use crate::ratelimit::FailureLimiter;

/// Bad join tokens an address may present at once, then one more per
/// [`ENROLL_FAILURE_EVERY`] (a mistyped token is fine; guessing is not).
pub const ENROLL_FAILURE_BURST: u32 = 10;
pub const ENROLL_FAILURE_EVERY: Duration = Duration::from_secs(6);
/// Addresses whose bad tokens are remembered at once.
pub const ENROLL_FAILURE_ADDRESSES: usize = 100_000;

/// The longest life of an operator certificate made by `straitctl operator create`.
pub const MAX_OPERATOR_LIFETIME: Duration = crate::init::OPERATOR_LIFETIME;

/// The limiter of bad join tokens per address that [`bad_token`] consults.
pub fn enroll_failure_limiter() -> FailureLimiter {
    FailureLimiter::new(
        ENROLL_FAILURE_BURST,
        ENROLL_FAILURE_EVERY,
        ENROLL_FAILURE_ADDRESSES,
    )
}

/// A certificate a handler issued, with the CA that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub identity: Identity,
    pub cert: Signed,
    pub ca_pem: String,
}

impl Issued {
    /// The answer to an enrollment.
    pub fn enrolled(&self) -> Response {
        Response::Enrolled {
            cert_pem: self.cert.cert_pem.clone(),
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// The answer to a renewal.
    pub fn renewed(&self) -> Response {
        Response::Renewed {
            cert_pem: self.cert.cert_pem.clone(),
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// The answer to `straitctl operator create`.
    pub fn operator_created(&self) -> Response {
        Response::OperatorCreated {
            cert_pem: self.cert.cert_pem.clone(),
            ca_pem: self.ca_pem.clone(),
            identity: self.identity.dns_name(),
            serial: self.cert.serial.clone(),
            expires_at: self.cert.not_after,
        }
    }
}

/// An enrollment request checked before it touches the registry: the token parses, the
/// identity it asks for is well formed, and this coordinator signs.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub token: JoinToken,
    pub identity: Identity,
    pub request: EnrollRequest,
}

/// Checks `req` against what needs no registry. A token that does not parse is refused
/// `invalid-token` (pass it to [`bad_token`]).
pub fn check_enrollment(
    pki: &dyn Pki,
    mesh: &str,
    req: &EnrollRequest,
) -> Result<Enrollment, ErrorBody> {
    signer(pki, "enrollment with a join token")?;
    let token: JoinToken = req
        .token
        .parse()
        .map_err(|e: strait_pki::token::TokenError| {
            ErrorBody::new(ErrorCode::InvalidToken, e.to_string())
        })?;
    let identity = Identity::node(mesh, &req.site, &req.node, req.role)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
    Ok(Enrollment {
        token,
        identity,
        request: req.clone(),
    })
}

/// Enrolls a node: the token is checked and used up, the node's name must be free (see
/// [`Mesh::check_enrollment`]), its CSR is signed for the identity the token grants, and
/// the certificate is recorded (revoking the node revokes it). Token refusals are
/// `invalid-token` (pass them to [`bad_token`]).
pub fn enroll(
    mesh: &mut Mesh,
    pki: &dyn Pki,
    e: &Enrollment,
    now: SystemTime,
    rng: &mut dyn Entropy,
) -> Result<(Issued, Vec<StoreOp>), ErrorBody> {
    let ca = signer(pki, "enrollment with a join token")?;
    let req = &e.request;
    let unix_now = super::unix(now);
    mesh.check_enrollment(&e.token, &req.site, &req.node, req.role, unix_now)
        .map_err(core_err)?;
    let lifetime = mesh.config().pki.agent_cert_lifetime;
    let cert = ca.sign_csr(
        &req.csr_pem,
        &e.identity,
        validity(now, lifetime),
        random(rng),
    )?;
    let issued = IssuedCert {
        serial: cert.serial.clone(),
        site: req.site.clone(),
        name: req.node.clone(),
        not_after: cert.not_after,
    };
    let ops = mesh
        .complete_enrollment(&e.token, &req.site, req.role, issued, unix_now)
        .map_err(core_err)?;
    Ok((
        Issued {
            identity: e.identity.clone(),
            cert,
            ca_pem: ca.ca_pem().to_string(),
        },
        ops,
    ))
}

/// A refused join token, as answered and counted.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRefused {
    pub response: Response,
    /// `join-token`, or `rate-limited` once the address is over its limit.
    pub refusal: Refusal,
    /// The address the failure counted against (an IPv4 address or IPv6 /64).
    pub from: IpAddr,
}

/// A join token from `from` was refused with `error`. A valid token is always accepted,
/// whoever shares its address (agents behind one NAT address must not be locked out by a
/// neighbour); bad tokens count per address, and past [`ENROLL_FAILURE_BURST`] the answer
/// is `rate-limited`. Guessing stays infeasible without a hold-back: a token's secret is
/// 128 random bits.
pub fn bad_token(
    limiter: &mut FailureLimiter,
    from: IpAddr,
    error: ErrorBody,
    now: Instant,
) -> TokenRefused {
    // One host holds a whole IPv6 /64.
    let from = connlimit::source(from);
    let held = limiter.check(from, now);
    limiter.failed(from, now);
    match held {
        Ok(()) => TokenRefused {
            response: Response::Error(error),
            refusal: Refusal::Token,
            from,
        },
        Err(wait) => TokenRefused {
            response: super::error(
                ErrorCode::RateLimited,
                format!(
                    "{}; {from} presented too many bad join tokens: more are refused as rate-limited for {} s (a valid token is always accepted)",
                    error.message,
                    wait.as_secs().max(1)
                ),
            ),
            refusal: Refusal::RateLimited,
            from,
        },
    }
}

/// Renews the certificate of a node connected as `identity` with the certificate `serial`,
/// from a fresh CSR. A revoked serial is refused: the transport checks it when a
/// connection is accepted, but a revocation may come while the connection is open, and a
/// new certificate would undo it (found by the mesh simulator).
#[allow(clippy::too_many_arguments)]
pub fn renew(
    mesh: &mut Mesh,
    pki: &dyn Pki,
    identity: &Identity,
    serial: &str,
    csr_pem: &str,
    now: SystemTime,
    rng: &mut dyn Entropy,
) -> Result<(Issued, Vec<StoreOp>), ErrorBody> {
    let ca = signer(pki, "renewal through the coordinator")?;
    if !identity.role().has_site() {
        return Err(ErrorBody::new(
            ErrorCode::PermissionDenied,
            format!("{identity} cannot renew through the coordinator"),
        ));
    }
    if mesh.is_revoked(serial) {
        return Err(core_err(CoreError::Revoked {
            serial: serial.to_string(),
        }));
    }
    let lifetime = mesh.config().pki.agent_cert_lifetime;
    let cert = ca.sign_csr(csr_pem, identity, validity(now, lifetime), random(rng))?;
    let op = mesh.record_issued(IssuedCert {
        serial: cert.serial.clone(),
        site: identity.site().unwrap_or_default().to_string(),
        name: identity.name().to_string(),
        not_after: cert.not_after,
    });
    Ok((
        Issued {
            identity: identity.clone(),
            cert,
            ca_pem: ca.ca_pem().to_string(),
        },
        vec![op],
    ))
}

/// An operator certificate for `name` with `role`, signed from the operator's CSR (the key
/// never leaves the operator's machine). Nothing is stored.
#[allow(clippy::too_many_arguments)]
pub fn create_operator(
    mesh: &Mesh,
    pki: &dyn Pki,
    name: &str,
    role: OperatorRole,
    csr_pem: &str,
    ttl_secs: u64,
    now: SystemTime,
    rng: &mut dyn Entropy,
) -> Result<Issued, ErrorBody> {
    let ca = signer(pki, "creating operator certificates")?;
    let lifetime = Duration::from_secs(ttl_secs);
    if lifetime < Duration::from_secs(60) || lifetime > MAX_OPERATOR_LIFETIME {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "--ttl {ttl_secs}s: an operator certificate lasts from 1m to {}",
                humantime::format_duration(MAX_OPERATOR_LIFETIME)
            ),
        ));
    }
    let identity = Identity::operator(&mesh.config().mesh, name, role)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
    let cert = ca.sign_csr(csr_pem, &identity, validity(now, lifetime), random(rng))?;
    Ok(Issued {
        identity,
        cert,
        ca_pem: ca.ca_pem().to_string(),
    })
}

#[cfg(test)]
mod tests;
