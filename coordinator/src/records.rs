//! What the registry keeps and the store persists: nodes, revocations, issued certificates,
//! and the operations that change them. Plain data shared by [`crate::mesh`] (which makes
//! the changes) and [`crate::store`] (which writes them), so neither depends on the other.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use strait_pki::token::TokenRecord;
use strait_pki::Role;
use strait_proto::msg::{Endpoint, PeerLink, Refusal};

/// A node as the registry keeps it (and the store persists it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeRecord {
    pub site: String,
    pub name: String,
    pub role: Role,
    pub overlay_ip: Ipv4Addr,
    pub wg_public_key: String,
    pub endpoints: Vec<Endpoint>,
    pub advertised: Vec<IpNetwork>,
    pub accepted: Vec<IpNetwork>,
    pub refused: Vec<Refusal>,
    #[serde(default)]
    pub route_conflicts: Vec<Refusal>,
    pub agent_version: String,
    pub last_seen: u64,
    pub online: bool,
    pub cert_serial: String,
    pub cert_not_after: u64,
    #[serde(default)]
    pub map_version: u64,
    /// The WireGuard key the node announced for its next rotation (handed to its peers
    /// before the node switches to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_wg_public_key: Option<String>,
    /// Gateway priority among its site's gateways (0 active, 1 standby).
    #[serde(default)]
    pub priority: u8,
    /// The agent's last link report (live health, not persisted).
    #[serde(skip)]
    pub links: Vec<PeerLink>,
    /// A gateway's BGP side from its last link report (live, not persisted).
    #[serde(skip)]
    pub bgp: Option<strait_proto::msg::BgpReport>,
    /// The last throughput measured from this node to each peer (`site/node` ->
    /// (Mbit/s, Unix seconds)); live, not persisted.
    #[serde(skip)]
    pub throughput: BTreeMap<String, (f64, u64)>,
}

impl NodeRecord {
    pub fn key(&self) -> NodeKey {
        (self.site.clone(), self.name.clone())
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.site, self.name)
    }
}

/// `(site, node name)`.
pub type NodeKey = (String, String);

/// A revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Revocation {
    pub serial: String,
    pub site: String,
    pub name: String,
    pub revoked_at: u64,
    pub not_after: u64,
}

/// A certificate this coordinator issued (so revoking a node revokes all of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IssuedCert {
    pub serial: String,
    pub site: String,
    pub name: String,
    pub not_after: u64,
}

/// One write to the store. The core returns these; the shell applies them in order.
// Store ops live only between a change and its write; boxing the node buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    PutNode(NodeRecord),
    DeleteNode { site: String, name: String },
    PutToken(TokenRecord),
    PutRevocation(Revocation),
    PutIssued(IssuedCert),
    SetVersion(u64),
}

/// When a coordinator last heard from a node whose session it holds. Coordinators sharing a
/// store exchange these so each knows which nodes are alive without a store write (and a
/// new map version) per heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub site: String,
    pub name: String,
    /// Unix seconds of the last heartbeat.
    pub last_seen: u64,
    /// The map version the node acknowledged last.
    pub map_version: u64,
}

/// Everything the store holds, as loaded at start.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    pub nodes: Vec<NodeRecord>,
    pub tokens: Vec<TokenRecord>,
    pub revocations: Vec<Revocation>,
    pub issued: Vec<IssuedCert>,
    pub version: u64,
}
