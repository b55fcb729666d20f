//! An agent's session, the coordinator's side: the node registers (with the identity of
//! its certificate), gets `Registered` and a snapshot of its map, then a delta whenever a
//! new version changes its map (or, once versions settle, moves only its version), and
//! reports heartbeats, route conflicts, links and key rotation steps.

use std::time::SystemTime;

use strait_pki::Identity;
use strait_proto::map::{MapDelta, NetworkMap};
use strait_proto::msg::{AgentEvent, ErrorBody, ErrorCode, Registered, Registration};

use super::{core_err, unix};
use crate::mesh::{CoreError, Mesh, NodeKey, NodeView, StoreOp, Views};
use crate::metrics::Refusal;

/// The registry key of the node `identity` names (`(site, name)`).
pub fn node_key(identity: &Identity) -> NodeKey {
    (
        identity.site().unwrap_or_default().to_string(),
        identity.name().to_string(),
    )
}

/// Registers (or re-registers) the node `identity` names, connected with the certificate
/// `serial` valid until `not_after` (Unix seconds).
pub fn register(
    mesh: &mut Mesh,
    identity: &Identity,
    reg: &Registration,
    serial: &str,
    not_after: u64,
    now: SystemTime,
) -> Result<(Registered, Vec<StoreOp>), CoreError> {
    mesh.register(identity, reg, serial, not_after, unix(now))
}

/// How a refused registration is counted.
pub fn registration_refusal(e: &CoreError) -> Refusal {
    match e {
        CoreError::KeyInUse { .. } => Refusal::DuplicateKey,
        CoreError::Revoked { .. } => Refusal::Revoked,
        _ => Refusal::Registration,
    }
}

/// The node's part of `views` and its map, sent once registered; `None` if it is not
/// registered (it was removed meanwhile).
pub fn snapshot(views: &Views, key: &NodeKey) -> Option<(NodeView, NetworkMap)> {
    let view = views.view(key)?;
    let map = view.to_map(views.mesh());
    Some((view, map))
}

/// What a session sends when `views` are published, holding `current`.
// Lives only until the session has written it; boxing the delta buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Update {
    /// Nothing: the version is not newer, or only the version moved and versions are not
    /// settling (it goes out with the node's next change, or once they settle).
    Nothing,
    /// The delta to `next`, which the session then holds. `version_only`: the node's map
    /// is unchanged but for its version.
    Send {
        delta: MapDelta,
        next: NodeView,
        version_only: bool,
    },
    /// The node left the registry (revoked or removed): the session ends with this reason.
    Removed(ErrorBody),
}

/// The update a session holding `current` sends for `views`. `settling`: versions have
/// settled (see [`crate::fanout`]), so a version-only change goes out too.
pub fn update(current: &NodeView, views: &Views, key: &NodeKey, settling: bool) -> Update {
    let Some(next) = views.view(key) else {
        return Update::Removed(ErrorBody::new(
            ErrorCode::Revoked,
            "this node was removed from the mesh",
        ));
    };
    if next.version <= current.version {
        return Update::Nothing;
    }
    let delta = current.delta(&next);
    let version_only = delta.is_empty();
    if version_only && !settling {
        return Update::Nothing;
    }
    Update::Send {
        delta,
        next,
        version_only,
    }
}

/// What the node `key` reported on its session. Probe events are not the registry's: the
/// caller relays them to the operator who asked (this returns no ops for them).
pub fn agent_event(
    mesh: &mut Mesh,
    key: &NodeKey,
    event: &AgentEvent,
    now: SystemTime,
) -> Result<Vec<StoreOp>, ErrorBody> {
    Ok(match event {
        AgentEvent::Heartbeat { map_version } => mesh.heartbeat(key, *map_version, unix(now)),
        AgentEvent::RouteConflicts { conflicts } => mesh.report_conflicts(key, conflicts.clone()),
        AgentEvent::AnnounceKey { next_wg_public_key } => mesh
            .announce_key(key, next_wg_public_key)
            .map_err(core_err)?,
        AgentEvent::KeyInUse { wg_public_key } => {
            mesh.key_in_use(key, wg_public_key).map_err(core_err)?
        }
        AgentEvent::LinkReport {
            peers,
            access_drops,
            bgp,
        } => {
            // Live figures: never stored, no map change.
            mesh.report_links(key, peers.clone(), bgp.clone());
            mesh.report_access_drops(key, access_drops.clone());
            Vec::new()
        }
        AgentEvent::Probe { .. } => Vec::new(),
    })
}

#[cfg(test)]
mod tests;
