//! Messages. Every exchange runs on its own QUIC bidirectional stream:
//!
//! - one-shot requests (enrollment, renewal, operator commands): the client sends one
//!   [`Request`], the coordinator answers one [`Response`] and closes the stream;
//! - an agent's session: the agent sends [`Request::Subscribe`], the coordinator answers
//!   with [`SessionEvent`]s for as long as the connection lives (registration result, a map
//!   snapshot, then deltas), and the agent sends [`AgentEvent`]s (heartbeats) on the same
//!   stream.
//!
//! Identity never travels in messages: the coordinator takes it from the client
//! certificate. Fields such as `site` in [`EnrollRequest`] are what the node *asks* for and
//! are checked against the join token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::access::{AccessDrop, PolicyView};
use crate::map::{MapDelta, NetworkMap};
// Defined beside the maps and probes that use them too; named here as before.
pub use crate::endpoint::{Endpoint, EndpointKind};
pub use crate::map::Refusal;
use crate::probe::{Command, ProbeEvent, ProbeRequest};
use crate::{OperatorRole, Role};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Request {
    /// Unauthenticated: a join token and a CSR for a new node certificate.
    Enroll(EnrollRequest),
    /// Renew this connection's certificate from a fresh CSR (built-in CA).
    Renew {
        csr_pem: String,
    },
    /// Register this node and open its map session.
    Subscribe(Registration),
    // Operator commands.
    Status,
    Nodes,
    Routes,
    Links,
    /// Every site's gateways: priority, health, traffic, BGP.
    Gateways,
    Graph,
    CreateToken {
        site: String,
        role: Role,
        ttl_secs: u64,
    },
    Revoke {
        node: String,
    },
    ExternalPeerConfig {
        name: String,
    },
    /// Live RTT per path, or a throughput transfer, between two tunnel peers. Answered
    /// with [`Response::Probe`] events as they happen, then [`Response::ProbeDone`].
    Probe(ProbeRequest),
    /// Rotate `node`'s WireGuard key now (the node must be connected to this coordinator).
    RotateKey {
        node: String,
    },
    /// The inter-site access policy and what each node dropped (read-only).
    Policy,
    /// A certificate for operator `name` with `role`, from a CSR made on the operator's
    /// machine (built-in CA; admin only).
    CreateOperator {
        name: String,
        role: OperatorRole,
        csr_pem: String,
        ttl_secs: u64,
    },
    /// The audit log, newest first: at most `limit` entries, older than `before` (a
    /// sequence number) when given.
    Audit {
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
    },
    /// Which site (and node) an address belongs to, by its global or real address.
    Resolve {
        address: IpAddr,
    },
}

impl Request {
    /// Whether only operators may send this request.
    pub fn is_operator_command(&self) -> bool {
        self.required_role().is_some()
    }

    /// The role an operator certificate needs for this request (`None`: not an operator
    /// command). The one place that says which role may do what.
    pub fn required_role(&self) -> Option<OperatorRole> {
        match self {
            Request::Enroll(_) | Request::Renew { .. } | Request::Subscribe(_) => None,
            Request::Status
            | Request::Nodes
            | Request::Routes
            | Request::Links
            | Request::Gateways
            | Request::Graph
            | Request::Policy
            | Request::Resolve { .. }
            | Request::Audit { .. } => Some(OperatorRole::Viewer),
            Request::CreateToken { .. } | Request::Probe(_) | Request::RotateKey { .. } => {
                Some(OperatorRole::Operator)
            }
            Request::Revoke { .. }
            | Request::ExternalPeerConfig { .. }
            | Request::CreateOperator { .. } => Some(OperatorRole::Admin),
        }
    }

    /// What the audit log records of this request, if it changes the mesh's state: the
    /// command with its arguments, never a secret (a CSR is left out; a token is created
    /// here, never sent).
    pub fn audit_summary(&self) -> Option<String> {
        match self {
            Request::CreateToken {
                site,
                role,
                ttl_secs,
            } => Some(format!(
                "token create --site {site} --role {role} --ttl {ttl_secs}s"
            )),
            Request::Revoke { node } => Some(format!("revoke {node}")),
            Request::RotateKey { node } => Some(format!("rotate-key {node}")),
            Request::CreateOperator {
                name,
                role,
                ttl_secs,
                ..
            } => Some(format!(
                "operator create {name} --role {role} --ttl {ttl_secs}s"
            )),
            _ => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Enroll(_) => "enroll",
            Request::Renew { .. } => "renew",
            Request::Subscribe(_) => "subscribe",
            Request::Status => "status",
            Request::Nodes => "nodes",
            Request::Routes => "routes",
            Request::Links => "links",
            Request::Gateways => "gateways",
            Request::Graph => "graph",
            Request::CreateToken { .. } => "token-create",
            Request::Revoke { .. } => "revoke",
            Request::ExternalPeerConfig { .. } => "external-peer-config",
            Request::Probe(_) => "probe",
            Request::RotateKey { .. } => "rotate-key",
            Request::Policy => "policy",
            Request::CreateOperator { .. } => "operator-create",
            Request::Audit { .. } => "audit",
            Request::Resolve { .. } => "resolve",
        }
    }
}

/// A new node asking for its first certificate.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EnrollRequest {
    pub token: String,
    pub site: String,
    pub node: String,
    pub role: Role,
    pub csr_pem: String,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"[redacted]")
            .field("site", &self.site)
            .field("node", &self.node)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What an agent tells the coordinator about itself when it subscribes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Registration {
    /// Base64 WireGuard public key.
    pub wg_public_key: String,
    pub endpoints: Vec<Endpoint>,
    /// Prefixes this node carries traffic for (gateways: the site's VPC CIDRs).
    pub prefixes: Vec<IpNetwork>,
    pub agent_version: String,
    /// The map version the agent already holds (from its state dir), if any.
    #[serde(default)]
    pub have_version: Option<u64>,
    /// Among the gateways of its site, lower is preferred: 0 active (the default), 1
    /// standby (carries traffic only while no active gateway is reachable).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// Coordinator -> agent on a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SessionEvent {
    Registered(Registered),
    Snapshot(NetworkMap),
    Delta(MapDelta),
    /// The session ends (revocation, shutdown); the stream closes after this.
    Closing(ErrorBody),
    /// Something an operator asked this node to run (`straitctl probe`).
    Command(Command),
}

/// Agent -> coordinator on a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AgentEvent {
    Heartbeat {
        map_version: u64,
    },
    /// Routes the agent refused to install (data plane), with reasons.
    RouteConflicts {
        conflicts: Vec<Refusal>,
    },
    /// The data plane's view of each tunnel: paths and their figures, traffic, handshake;
    /// and the packets the access policy dropped so far (absent from older agents).
    LinkReport {
        peers: Vec<PeerLink>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        access_drops: Vec<AccessDrop>,
        /// A gateway's BGP sessions to its site's routers (absent without `[bgp]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bgp: Option<BgpReport>,
    },
    /// What happened while running a [`Command`].
    Probe {
        id: u64,
        event: ProbeEvent,
    },
    /// Key rotation, step 1: the key this node will use next (public half). The
    /// coordinator hands it to the node's peers before the node uses it.
    AnnounceKey {
        next_wg_public_key: String,
    },
    /// Key rotation, step 2: the node now uses its announced key.
    KeyInUse {
        wg_public_key: String,
    },
}

/// One tunnel as its agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PeerLink {
    /// `site/node` of the peer.
    pub peer: String,
    /// Where WireGuard sends now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the last handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_age_secs: Option<u64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Every probed path.
    #[serde(default)]
    pub paths: Vec<PathFigures>,
}

/// One path's figures from probing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PathFigures {
    pub address: SocketAddr,
    pub kind: EndpointKind,
    /// `unknown`, `up`, `degraded` or `down`.
    pub health: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_us: Option<u64>,
    pub jitter_us: u64,
    /// Fraction of recent probes lost (0-1).
    pub loss: f64,
    /// The path MTU discovered (whole outer IP packets); absent until known, and from
    /// agents without path MTU discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Registered {
    pub overlay_ip: Ipv4Addr,
    /// Advertised prefixes the coordinator refused, each with the reason.
    pub refused: Vec<Refusal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Response {
    Enrolled {
        cert_pem: String,
        ca_pem: String,
    },
    Renewed {
        cert_pem: String,
        ca_pem: String,
    },
    Status(MeshStatus),
    Nodes {
        nodes: Vec<NodeInfo>,
    },
    Routes {
        routes: Vec<RouteInfo>,
    },
    Links {
        links: Vec<LinkInfo>,
    },
    Gateways {
        gateways: Vec<GatewayInfo>,
    },
    Graph(GraphView),
    /// What [`Request::Resolve`] found: one entry per site the address belongs to (several
    /// for a real address of overlapping sites), none if it is no site's.
    Resolved {
        address: IpAddr,
        matches: Vec<ResolveInfo>,
    },
    Token(TokenCreated),
    Revoked {
        node: String,
        serials: Vec<String>,
    },
    ExternalPeerConfig {
        config: String,
    },
    /// One event of a running probe; `node` is the agent that reported it.
    Probe {
        node: String,
        event: ProbeEvent,
    },
    /// The probe is over.
    ProbeDone,
    /// The node has started rotating its WireGuard key.
    KeyRotation {
        node: String,
    },
    /// An operator certificate (its key stayed with the operator).
    OperatorCreated {
        cert_pem: String,
        ca_pem: String,
        identity: String,
        serial: String,
        expires_at: u64,
    },
    Audit {
        entries: Vec<AuditEntry>,
    },
    Policy(PolicyView),
    Error(ErrorBody),
}

/// Why a request failed: a stable code for scripts and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// No client certificate, and the request is not enrollment.
    Unauthenticated,
    /// The certificate's role may not do this.
    PermissionDenied,
    /// The join token was refused.
    InvalidToken,
    /// The certificate was revoked.
    Revoked,
    NotFound,
    BadRequest,
    /// The coordinator cannot do this in its PKI mode (e.g. enrollment with Vault).
    Unsupported,
    /// The node or service needed is not reachable now (offline, no session).
    Unavailable,
    /// Too many failed attempts from this client; the message says when to retry.
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission-denied",
            ErrorCode::InvalidToken => "invalid-token",
            ErrorCode::Revoked => "revoked",
            ErrorCode::NotFound => "not-found",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TokenCreated {
    pub token: String,
    pub id: String,
    pub site: String,
    pub role: Role,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MeshStatus {
    pub mesh: String,
    pub map_version: u64,
    pub pki: String,
    pub coordinator_version: String,
    pub nodes_total: usize,
    pub nodes_online: usize,
    pub revoked_certificates: usize,
    pub refused_prefixes: usize,
    pub sites: Vec<SiteInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SiteInfo {
    pub name: String,
    pub cloud: String,
    pub region: String,
    pub prefixes: Vec<IpNetwork>,
    /// The addresses the rest of the mesh reaches the site by, paired with `prefixes`
    /// (empty: the site's own addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_prefixes: Vec<IpNetwork>,
    pub full_mesh: bool,
    pub nodes: usize,
    pub online: usize,
    pub gateways: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeInfo {
    pub site: String,
    pub name: String,
    pub role: Role,
    pub overlay_ip: Ipv4Addr,
    pub wg_public_key: String,
    /// Announced for the next key rotation, not yet in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_wg_public_key: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub prefixes: Vec<IpNetwork>,
    /// `prefixes` as the rest of the mesh reaches them, when the site is translated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_prefixes: Vec<IpNetwork>,
    pub refused: Vec<Refusal>,
    pub route_conflicts: Vec<Refusal>,
    pub agent_version: String,
    pub online: bool,
    /// Unix seconds.
    pub last_seen: u64,
    /// Unix seconds.
    pub cert_not_after: u64,
    pub cert_serial: String,
    /// The map version the agent last acknowledged.
    pub map_version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RouteInfo {
    pub prefix: String,
    pub site: String,
    pub node: String,
    /// `accepted`, `refused` (by the coordinator) or `conflict` (by the node's kernel).
    pub status: String,
    /// An accepted prefix of a translated site: the global prefix the mesh routes for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A gateway's BGP side as its agent reports it (BIRD's view).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BgpReport {
    pub sessions: Vec<BgpSession>,
    /// Prefixes of other sites announced to the routers now.
    pub announced: Vec<String>,
    /// Whether BIRD took the last configuration.
    pub applied: bool,
}

/// One BGP session of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BgpSession {
    pub neighbor: String,
    /// BIRD's protocol state (`up`, `start`, ...).
    pub state: String,
    /// BIRD's info (`Established`, `Active`, an error...).
    pub info: String,
}

/// One gateway of a site, for `straitctl gateways`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GatewayInfo {
    pub site: String,
    pub node: String,
    /// 0 active, 1 standby.
    pub priority: u8,
    pub online: bool,
    /// Tunnels with a path up, of all its tunnels (its agent's last report).
    pub tunnels_up: usize,
    pub tunnels: usize,
    /// Bytes sent and received over all its tunnels (counters since its agent started).
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Its BGP side, when it has `[bgp]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LinkInfo {
    /// `site/node` of one end.
    pub a: String,
    /// `site/node` of the other end, or `external/<name>`.
    pub b: String,
    /// `tunnel` (WireGuard peers) or `via-gateway` (a member routed through its gateway).
    pub kind: String,
    /// `up` when both ends are online, `down` otherwise.
    pub state: String,
    /// Tunnels: the path in use as `a` reports it (`kind address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Tunnels: smoothed RTT, jitter and loss of that path, in ms and fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Tunnels: the MTU discovered on that path (whole outer IP packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Tunnels: seconds since the last handshake, bytes sent and received by `a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_age_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    /// The last throughput measured from `a` to `b` (Mbit/s) and when (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_mbps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GraphView {
    pub mesh: String,
    pub sites: Vec<GraphSite>,
    pub links: Vec<LinkInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GraphSite {
    pub name: String,
    pub cloud: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<IpNetwork>,
    /// Paired with `prefixes` when the site is translated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_prefixes: Vec<IpNetwork>,
    pub nodes: Vec<GraphNode>,
}

/// One site an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ResolveInfo {
    pub site: String,
    /// The address inside the site (what its hosts use).
    pub local: IpAddr,
    /// The address the rest of the mesh uses (equal to `local` for an untranslated site).
    pub global: IpAddr,
    /// The node that carries it (`site/node`: the accepted prefix that contains it, or the
    /// node whose overlay address it is), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `global` (asked by its global address), `local` (by its real address) or `overlay`.
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GraphNode {
    pub id: String,
    pub name: String,
    pub role: String,
    pub online: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn requests_round_trip_through_frames() {
        let reqs = vec![
            Request::Status,
            Request::CreateToken {
                site: "aws-use1".into(),
                role: Role::Gateway,
                ttl_secs: 600,
            },
            Request::Subscribe(Registration {
                wg_public_key: "k".into(),
                endpoints: vec![Endpoint {
                    address: "192.0.2.1:51820".parse().unwrap(),
                    kind: EndpointKind::Public,
                    cost: None,
                }],
                prefixes: vec!["10.1.0.0/16".parse().unwrap()],
                agent_version: "0.1.0".into(),
                have_version: Some(3),
                priority: 0,
            }),
        ];
        for r in reqs {
            let bytes = frame::encode(&r).unwrap();
            let back: Request = frame::decode(&bytes[4..]).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn enroll_debug_hides_the_token() {
        let e = EnrollRequest {
            token: "strait1.secret".into(),
            site: "s".into(),
            node: "n".into(),
            role: Role::Member,
            csr_pem: String::new(),
        };
        assert!(!format!("{e:?}").contains("secret"));
    }

    #[test]
    fn operator_commands_are_classified() {
        assert!(Request::Status.is_operator_command());
        assert!(Request::Revoke { node: "x".into() }.is_operator_command());
        assert!(!Request::Renew {
            csr_pem: String::new()
        }
        .is_operator_command());
    }
}

/// QUIC application close codes.
pub mod close {
    /// Orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The peer's certificate was revoked.
    pub const REVOKED: u32 = 0x10;
    /// The peer's certificate names another mesh or no usable identity.
    pub const BAD_IDENTITY: u32 = 0x11;
    /// The peer broke the protocol (e.g. an oversized or garbage frame on a session).
    pub const PROTOCOL: u32 = 0x12;
    /// The connection reached a limit of the coordinator's (e.g. how long a connection
    /// without a certificate may stay open).
    pub const LIMIT: u32 = 0x13;
    /// The certificate the connection was opened with expired (sessions outlive no
    /// certificate; an agent moves its session to a renewed one before).
    pub const CERT_EXPIRED: u32 = 0x14;
}

/// One state-changing operator request as the audit log keeps it (append-only, in the
/// store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuditEntry {
    /// Assigned by the store, increasing.
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// The coordinator that handled it.
    pub coordinator: String,
    /// The operator certificate's identity (`alice.admin.operators.<mesh>...`), serial and
    /// the address it came from.
    pub operator: String,
    pub serial: String,
    pub from: String,
    /// The command and its arguments (see [`Request::audit_summary`]).
    pub request: String,
    pub ok: bool,
    /// What came of it: what was done, or the error.
    pub result: String,
}
