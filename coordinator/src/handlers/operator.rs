//! Operators' commands: join tokens, revocation, the targets of a key rotation and of a
//! probe, and the read-only views. Who may send each is decided first
//! ([`super::admission`]); the state-changing ones are audited by the caller
//! ([`crate::audit::entry`]).

use std::time::{Duration, SystemTime};

use strait_pki::Role;
use strait_proto::msg::{ErrorBody, ErrorCode, Request, Response, TokenCreated};
use strait_proto::probe::ProbeRequest;

use super::pki::signer;
use super::{core_err, random, unix, Entropy, Pki};
use crate::mesh::{Mesh, NodeKey, ProbePair, StoreOp};

/// Audit entries one `straitctl audit` may ask for.
pub const MAX_AUDIT_ENTRIES: u32 = 1000;

/// A join token for a new node of `role` in `site`, valid for `ttl_secs`.
#[allow(clippy::too_many_arguments)]
pub fn create_token(
    mesh: &mut Mesh,
    pki: &dyn Pki,
    site: &str,
    role: Role,
    ttl_secs: u64,
    now: SystemTime,
    rng: &mut dyn Entropy,
) -> Result<(TokenCreated, Vec<StoreOp>), ErrorBody> {
    let ca = signer(pki, "creating join tokens")?;
    let (token, record, ops) = mesh
        .create_token(
            site,
            role,
            Duration::from_secs(ttl_secs),
            unix(now),
            ca.fingerprint(),
            random(rng),
        )
        .map_err(core_err)?;
    let created = TokenCreated {
        token: token.to_string(),
        id: record.id,
        site: record.site,
        role: record.role,
        expires_at: record.expires_at,
    };
    Ok((created, ops))
}

/// A node revoked: every certificate it was issued, and it leaves the registry (and so
/// every map). The caller closes the node's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub node: NodeKey,
    pub serials: Vec<String>,
}

impl Revoked {
    /// `site/node`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.node.0, self.node.1)
    }

    pub fn response(&self) -> Response {
        Response::Revoked {
            node: self.id(),
            serials: self.serials.clone(),
        }
    }
}

/// Revokes `node` (`site/name`, or a name unique in the mesh).
pub fn revoke(
    mesh: &mut Mesh,
    node: &str,
    now: SystemTime,
) -> Result<(Revoked, Vec<StoreOp>), ErrorBody> {
    let key = mesh.resolve(node).map_err(core_err)?;
    let (serials, ops) = mesh.revoke(&key, unix(now));
    Ok((Revoked { node: key, serials }, ops))
}

/// The node a key rotation is asked of; the caller hands it the command on its session.
pub fn rotate_key_target(mesh: &Mesh, node: &str) -> Result<NodeKey, ErrorBody> {
    mesh.resolve(node).map_err(core_err)
}

/// The two nodes a probe runs between: the request within its bounds, both nodes online
/// with a tunnel between them.
pub fn probe_pair(mesh: &Mesh, req: &ProbeRequest) -> Result<ProbePair, ErrorBody> {
    req.validate()
        .map_err(|message| ErrorBody::new(ErrorCode::BadRequest, message))?;
    mesh.probe_pair(&req.from, &req.to).map_err(core_err)
}

/// The answer to a read-only request, or `None` for the others.
pub fn view(mesh: &Mesh, pki: &dyn Pki, request: &Request) -> Option<Response> {
    Some(match request {
        Request::Status => Response::Status(mesh.status(pki.name())),
        Request::Nodes => Response::Nodes {
            nodes: mesh.nodes(),
        },
        Request::Routes => Response::Routes {
            routes: mesh.routes(),
        },
        Request::Links => Response::Links {
            links: mesh.links(),
        },
        Request::Gateways => Response::Gateways {
            gateways: mesh.gateways(),
        },
        Request::Graph => Response::Graph(mesh.graph()),
        Request::Policy => Response::Policy(mesh.policy_view()),
        Request::Resolve { address } => Response::Resolved {
            address: *address,
            matches: mesh.resolve_address(*address),
        },
        Request::ExternalPeerConfig { name } => match mesh.external_peer_config(name) {
            Ok(config) => Response::ExternalPeerConfig { config },
            Err(e) => Response::Error(core_err(e)),
        },
        _ => return None,
    })
}

/// How many audit entries a request for `limit` gets.
pub fn audit_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_AUDIT_ENTRIES)
}

#[cfg(test)]
mod tests;
