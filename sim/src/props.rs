//! What must hold. Safety properties are checked after every step (and some as events
//! happen); convergence once the mesh is quiet, within a bound.
//!
//! - **versions-grow**: the map versions a node publishes never decrease, across restarts
//!   (checked at each publish).
//! - **fail-closed**: every running agent's route plan (`routes::desired(map, true, &Default::default())`) holds
//!   an `unreachable` route for every prefix the configuration gives to other sites and
//!   external peers, and for the overlay, whatever the nodes' states.
//! - **one-site-per-prefix**: in every running agent's plan (its peers from
//!   `peers::peer_specs`, its routes via its gateway), a destination leads to one site,
//!   never its own, inside what the configuration gives that site; overlapping
//!   destinations of different sites never meet; and across online agents a prefix
//!   leads to the same site.
//! - **revocation**: [`REVOCATION_BOUND`] after a revocation, the node is in no online
//!   agent's map (as a peer or a gateway) and is not online itself; a revoked certificate
//!   never registers again (checked at each registration).
//! - **convergence**: once partitions heal and the coordinator is up, within
//!   [`CONVERGENCE_BOUND`] every agent that should be online is registered and holds
//!   exactly the registry's map of it, and the registry's online flags match.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use ipnetwork::IpNetwork;
use strait_agent::dataplane::peers::peer_specs;
use strait_agent::dataplane::routes::{desired, Route, Via};
use strait_agent::session::State;
use strait_coordinator::config::Config;
use strait_proto::map::NetworkMap;

use crate::agent::Node;
use crate::world::World;

/// A revoked node is out of every online map this long after its revocation: the delta
/// goes out at once; a frame is delayed by at most latency plus four retransmissions
/// (about 6 s), and an agent cut off from the coordinator stops being online after its
/// 10 s idle timeout.
pub const REVOCATION_BOUND: Duration = Duration::from_secs(20);
/// How long a quiet mesh may take to converge: an agent may be waiting out its longest
/// backoff (37.5 s), versions settle within 10 s, a silent node goes offline 15 s after its
/// last heartbeat, and a key rotation takes 5 s to switch.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(90);

/// A property that failed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

/// The safety properties, now.
pub fn safety(w: &World) -> Result<(), Violation> {
    if let Some(v) = w.violations.first() {
        return Err(v.clone());
    }
    let config = &w.coord.config;
    let mut global: BTreeMap<IpNetwork, (String, String)> = BTreeMap::new();
    for node in &w.nodes {
        let Some(map) = node.published() else {
            continue;
        };
        fail_closed(config, node, map)?;
        let carried = routing(config, node, map)?;
        if !node.online() {
            continue;
        }
        for (prefix, site, _) in carried {
            if contains(config.overlay_cidr, prefix) {
                continue;
            }
            match global.get(&prefix) {
                Some((other, by)) if *other != site => {
                    return Err(Violation {
                        property: "one-site-per-prefix",
                        detail: format!(
                            "{prefix} leads to site {site} for {} but to site {other} for {by}",
                            node.id()
                        ),
                    })
                }
                _ => {
                    global.insert(prefix, (site, node.id()));
                }
            }
        }
    }
    revocation(w)
}

/// Every prefix of the rest of the mesh has its `unreachable` twin in `node`'s plan.
fn fail_closed(config: &Config, node: &Node, map: &NetworkMap) -> Result<(), Violation> {
    let plan = desired(map, true, &Default::default());
    let expected = config
        .sites
        .iter()
        .filter(|s| s.name != node.site)
        .flat_map(|s| s.prefixes.iter().copied())
        .chain(
            config
                .external_peers
                .iter()
                .filter(|e| e.site != node.site)
                .flat_map(|e| e.prefixes.iter().copied()),
        )
        .chain([config.overlay_cidr]);
    for prefix in expected {
        let twin = Route {
            prefix: normalize(prefix),
            via: Via::Unreachable,
            mtu: None,
        };
        if !plan.contains(&twin) {
            return Err(Violation {
                property: "fail-closed",
                detail: format!(
                    "{}'s route plan (map v{}) has no unreachable route for {prefix}: traffic for it could leave unencrypted",
                    node.id(),
                    map.version
                ),
            });
        }
    }
    Ok(())
}

/// The destinations of `node`'s plan, each with the site it leads to and through whom;
/// checked as the module says.
fn routing(
    config: &Config,
    node: &Node,
    map: &NetworkMap,
) -> Result<Vec<(IpNetwork, String, String)>, Violation> {
    let fail = |detail: String| Violation {
        property: "one-site-per-prefix",
        detail: format!("{} (map v{}): {detail}", node.id(), map.version),
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut carried: Vec<(IpNetwork, String, String)> = Vec::new();
    for spec in peer_specs(map, None) {
        let key = b64.encode(spec.public_key);
        let Some(peer) = map.peers.values().find(|p| p.wg_public_key == key) else {
            return Err(fail(format!("a tunnel with key {key} that is no peer's")));
        };
        for p in &spec.allowed_ips {
            carried.push((normalize(*p), peer.site.clone(), peer.id.clone()));
        }
    }
    for r in map.routes.values() {
        if r.site != "overlay" {
            carried.push((normalize(r.prefix), r.site.clone(), r.via.clone()));
        }
    }
    for route in desired(map, true, &Default::default()) {
        if route.via == Via::Unreachable {
            continue;
        }
        let sites: BTreeSet<&String> = carried
            .iter()
            .filter(|c| c.0 == route.prefix)
            .map(|c| &c.1)
            .collect();
        if sites.len() > 1 {
            return Err(fail(format!(
                "{} is routed to sites {sites:?}",
                route.prefix
            )));
        }
    }
    for (i, (p, site, by)) in carried.iter().enumerate() {
        if *site == node.site {
            return Err(fail(format!("{p} is routed through {by}, of its own site")));
        }
        let in_overlay = contains(config.overlay_cidr, *p);
        if !in_overlay && !owns(config, site, *p) {
            return Err(fail(format!("{p} is routed to site {site} (through {by}), which the configuration does not give it")));
        }
        for (q, other, by2) in &carried[i + 1..] {
            let both_overlay = in_overlay && contains(config.overlay_cidr, *q);
            if overlaps(*p, *q) && (site != other || both_overlay && by != by2) {
                return Err(fail(format!(
                    "{p} (site {site}, through {by}) and {q} (site {other}, through {by2}) overlap"
                )));
            }
        }
    }
    Ok(carried)
}

/// Whether the configuration gives `prefix` to `site` (its prefixes or its external
/// peers').
fn owns(config: &Config, site: &str, prefix: IpNetwork) -> bool {
    let declared = config
        .sites
        .iter()
        .filter(|s| s.name == site)
        .flat_map(|s| s.prefixes.iter());
    let external = config
        .external_peers
        .iter()
        .filter(|e| e.site == site)
        .flat_map(|e| e.prefixes.iter());
    declared.chain(external).any(|own| contains(*own, prefix))
}

fn revocation(w: &World) -> Result<(), Violation> {
    for revoked in w.nodes.iter() {
        let Some(at) = revoked.revoked_at else {
            continue;
        };
        if w.now.saturating_sub(at) <= REVOCATION_BOUND {
            continue;
        }
        let id = revoked.id();
        if revoked.online() {
            return Err(Violation {
                property: "revocation",
                detail: format!(
                    "{id} is still online {} s after its revocation",
                    (w.now - at).as_secs()
                ),
            });
        }
        for node in w.nodes.iter().filter(|n| n.online()) {
            let Some(map) = node.published() else {
                continue;
            };
            let as_peer = map.peers.contains_key(&id);
            let as_gateway = map.routes.values().any(|r| r.via == id);
            if as_peer || as_gateway {
                return Err(Violation {
                    property: "revocation",
                    detail: format!(
                        "{id} was revoked {} s ago but is still in {}'s map v{} ({})",
                        (w.now - at).as_secs(),
                        node.id(),
                        map.version,
                        if as_peer {
                            "as a peer"
                        } else {
                            "as its gateway"
                        }
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Convergence: `Ok` once every node that should be online is registered with exactly the
/// registry's map, and the registry's online flags match; else why not.
pub fn converged(w: &World) -> Result<(), String> {
    let Some(mesh) = w.coord.mesh() else {
        return Err("the coordinator is down".into());
    };
    let now = w.sys(w.now);
    for node in &w.nodes {
        let Some(cert) = &node.cert else { continue };
        if node.revoked_at.is_some() || node.refused.is_some() {
            continue;
        }
        // A certificate expiring about now leaves the node's state open either way.
        let left = cert.not_after.duration_since(now).unwrap_or_default();
        let expired = cert.not_after <= now;
        if !expired && left < Duration::from_secs(120) {
            continue;
        }
        let id = node.id();
        let should = node.process.is_some() && !expired;
        let record = mesh.node(&node.key());
        if !should {
            if record.is_some_and(|r| r.online) {
                return Err(format!("{id} is down but the registry has it online"));
            }
            continue;
        }
        let state = node.session().map(|s| s.state());
        if state != Some(State::Registered) {
            return Err(format!("{id}'s session is {state:?}"));
        }
        if !record.is_some_and(|r| r.online) {
            return Err(format!(
                "{id} is up but the registry has it offline or unknown"
            ));
        }
        let expected = mesh.map_for(&node.key());
        let published = node.published().map(|m| &**m);
        if published != expected.as_ref() {
            return Err(format!(
                "{id} holds map v{:?}, the registry's is v{:?}{}",
                published.map(|m| m.version),
                expected.as_ref().map(|m| m.version),
                if published.map(|m| m.version) == expected.as_ref().map(|m| m.version) {
                    " (same version, different content)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

fn normalize(p: IpNetwork) -> IpNetwork {
    IpNetwork::new(p.network(), p.prefix()).unwrap_or(p)
}

fn contains(outer: IpNetwork, inner: IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && outer.prefix() <= inner.prefix()
        && outer.contains(inner.network())
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}
