//! The coordinator's core: the registry of nodes, tokens and revocations, and the network
//! map each node gets. A pure state machine: every method takes `now` (Unix seconds) and
//! returns the store operations that persist its change; it does no IO and reads no clock.
//!
//! - `registry`: the mutations (tokens and enrollment, registration, liveness, key
//!   rotation, revocation);
//! - `views`: the maps ([`Views`], [`NodeView`] and their deltas), rebuilt at each version;
//!   `changes` says which nodes a new version concerns;
//! - `reports`: operators' views (status, nodes, routes, links, graph) and probe pairs;
//! - `external`: external peers (their views and wg-quick configuration);
//! - `access`: the access policy in force and the drops nodes report.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::Ipv4Network;
use strait_pki::token::{TokenBook, TokenError};
use strait_proto::msg::ErrorCode;

use crate::config::{Config, SiteConfig};
use crate::globals::Globals;

mod access;
mod changes;
mod external;
mod registry;
mod reports;
mod views;
pub use crate::records::{
    IssuedCert, NodeKey, NodeRecord, Persisted, Presence, Revocation, StoreOp,
};
pub use changes::Changes;
pub use registry::check_key_free;
pub use views::{NodeView, Views};

/// Two nodes with a tunnel between them, both online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePair {
    pub a: NodeKey,
    pub b: NodeKey,
    pub a_id: String,
    pub b_id: String,
    pub a_overlay: Ipv4Addr,
    pub b_overlay: Ipv4Addr,
}

/// Why the core refused something. Each maps to a wire error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    #[error("site {0:?} is not declared in the coordinator config; add a [[sites]] entry or fix the node's site")]
    UnknownSite(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("no node {0:?}; `straitctl nodes` lists them")]
    NoSuchNode(String),
    #[error("node name {name:?} exists in several sites ({sites}); write it as <site>/{name}")]
    AmbiguousNode { name: String, sites: String },
    #[error("the overlay CIDR {0} is exhausted; configure a larger overlay-cidr")]
    OverlayExhausted(Ipv4Network),
    #[error("{0} may not register as a node: only gateways and members have sites")]
    NotANode(String),
    #[error("WireGuard public key {0:?} is not 32 bytes of base64")]
    BadPublicKey(String),
    #[error("{a} and {b} have no tunnel between them (members reach other sites through their gateway); probe two gateways, or nodes of full-mesh sites")]
    NoTunnel { a: String, b: String },
    #[error("node {0} is offline; `straitctl nodes` shows when it was last seen")]
    Offline(String),
    #[error("WireGuard public key {key} already belongs to {owner}; every node needs its own key: remove wg.key from this node's state directory so a new one is made (or, if this machine replaces {owner}, `straitctl revoke {owner}` first)")]
    KeyInUse { key: String, owner: String },
    #[error("node name {node} belongs to {holder}; a name belongs to one identity: choose another node name, or if this machine replaces it, `straitctl revoke {node}` first")]
    NameTaken { node: String, holder: String },
    /// The connection's certificate was revoked after the connection was accepted.
    #[error("certificate serial {serial} was revoked; enroll this node again with a new join token (straitctl token create)")]
    Revoked { serial: String },
}

impl CoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::Token(_) => ErrorCode::InvalidToken,
            CoreError::NoSuchNode(_) => ErrorCode::NotFound,
            CoreError::OverlayExhausted(_) => ErrorCode::Internal,
            CoreError::NotANode(_) | CoreError::KeyInUse { .. } | CoreError::NameTaken { .. } => {
                ErrorCode::PermissionDenied
            }
            CoreError::Offline(_) => ErrorCode::Unavailable,
            CoreError::Revoked { .. } => ErrorCode::Revoked,
            CoreError::UnknownSite(_)
            | CoreError::AmbiguousNode { .. }
            | CoreError::BadPublicKey(_)
            | CoreError::NoTunnel { .. } => ErrorCode::BadRequest,
        }
    }
}

/// The registry and its maps.
#[derive(Debug)]
pub struct Mesh {
    config: Arc<Config>,
    nodes: BTreeMap<NodeKey, NodeRecord>,
    tokens: TokenBook,
    revoked: BTreeMap<String, Revocation>,
    issued: BTreeMap<String, IssuedCert>,
    version: u64,
    views: Arc<Views>,
    /// The access policy (`[policy]`, or the last one reloaded), and what nodes dropped.
    access: access::AccessState,
    /// The global prefixes of translated sites (a function of `config`).
    globals: Arc<Globals>,
}

impl Mesh {
    pub fn new(config: Arc<Config>, persisted: Persisted) -> Mesh {
        let mut tokens = TokenBook::default();
        for t in persisted.tokens {
            tokens.insert(t);
        }
        let mut mesh = Mesh {
            views: Arc::new(Views::default()),
            nodes: persisted.nodes.into_iter().map(|n| (n.key(), n)).collect(),
            tokens,
            revoked: persisted
                .revocations
                .into_iter()
                .map(|r| (r.serial.clone(), r))
                .collect(),
            issued: persisted
                .issued
                .into_iter()
                .map(|c| (c.serial.clone(), c))
                .collect(),
            access: access::AccessState::new(&config, persisted.version),
            globals: Arc::new(Globals::of(&config)),
            version: persisted.version,
            config,
        };
        mesh.rebuild_views();
        mesh
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The global prefixes of translated sites.
    pub fn globals(&self) -> &Globals {
        &self.globals
    }

    pub fn node(&self, key: &NodeKey) -> Option<&NodeRecord> {
        self.nodes.get(key)
    }

    fn bump(&mut self, ops: &mut Vec<StoreOp>) {
        self.version += 1;
        ops.push(StoreOp::SetVersion(self.version));
        self.rebuild_views();
    }

    fn site_config(&self, site: &str) -> Result<&SiteConfig, CoreError> {
        self.config
            .site(site)
            .ok_or_else(|| CoreError::UnknownSite(site.to_string()))
    }
}

#[cfg(test)]
mod tests;
