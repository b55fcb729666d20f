use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a certificate holder may do in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A node that terminates tunnels for its site and forwards for hosts without an agent.
    Gateway,
    /// A node that reaches other sites through its site's gateway.
    Member,
    /// The control plane.
    Coordinator,
    /// A person or script running `straitctl`.
    Operator,
}

/// A role name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected one of gateway, member, coordinator, operator")]
pub struct UnknownRole(pub String);

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Gateway,
        Role::Member,
        Role::Coordinator,
        Role::Operator,
    ];

    /// The singular name used in configs, tokens and SPIFFE ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Member => "member",
            Role::Coordinator => "coordinator",
            Role::Operator => "operator",
        }
    }

    /// The DNS label that groups this role's certificate names.
    pub fn group_label(self) -> &'static str {
        match self {
            Role::Gateway => "gateways",
            Role::Member => "members",
            Role::Coordinator => "coordinators",
            Role::Operator => "operators",
        }
    }

    /// Gateways and members belong to a site; coordinators and operators do not.
    pub fn has_site(self) -> bool {
        matches!(self, Role::Gateway | Role::Member)
    }

    pub fn from_group_label(label: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.group_label() == label)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// What an operator certificate may do (its "role" in `straitctl operator create --role`).
/// Ordered: each level may do everything the levels below it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperatorRole {
    /// Read-only commands: status, nodes, routes, links, graph, policy, audit.
    Viewer,
    /// Also join tokens, probes and WireGuard key rotation.
    Operator,
    /// Also revocation, external peers' configs and operator certificates.
    Admin,
}

/// An operator role name that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operator role {0:?}: expected one of viewer, operator, admin")]
pub struct UnknownOperatorRole(pub String);

impl OperatorRole {
    pub const ALL: [OperatorRole; 3] = [
        OperatorRole::Viewer,
        OperatorRole::Operator,
        OperatorRole::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Operator => "operator",
            OperatorRole::Admin => "admin",
        }
    }
}

impl fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OperatorRole {
    type Err = UnknownOperatorRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OperatorRole::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownOperatorRole(s.to_string()))
    }
}
