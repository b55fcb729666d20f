//! Where a node's WireGuard socket can be reached, and over what kind of underlay. Shared by
//! registrations ([`crate::msg`]), network maps ([`crate::map`]) and probe reports
//! ([`crate::probe`]), so it depends on none of them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The kind of underlay a node endpoint sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    /// A dedicated link (Megaport, Equinix, Direct Connect, Interconnect).
    Interconnect,
    /// An address reachable inside the site or over private peering.
    Private,
    /// An address on the public internet.
    Public,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Interconnect => "interconnect",
            EndpointKind::Private => "private",
            EndpointKind::Public => "public",
        }
    }
}

/// Where a node's WireGuard socket can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoint {
    pub address: SocketAddr,
    pub kind: EndpointKind,
    /// Relative cost weight (lower is preferred among paths of equal kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u32>,
}
