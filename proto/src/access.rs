//! Inter-site access policy: which sources may open traffic to which destinations, by
//! protocol and port.
//!
//! The coordinator compiles its `[policy]` into one [`AccessPolicy`] per site, holding only
//! the rules whose destinations lie in that site, and ships it in the map of every node of
//! the site that terminates tunnels. The node that decrypts a packet enforces it (so a site
//! cannot reach what it was not granted by rewriting its own routes or map). Rules are tried
//! in order, the first that matches decides; a packet no rule matches gets `default`.
//! Replies to flows the receiving node itself sent are recognised by the agent (see the
//! agent's `dataplane::access`), not by rules.

use std::fmt;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// What a rule, or the default, does with a packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// A protocol and port range a rule covers: `any` (every protocol), `icmp` (ICMP and
/// ICMPv6, every type), `tcp` or `udp` (every port), `tcp/443`, `udp/8000-8100`. For TCP
/// and UDP the range is the destination port of the packet the rule judges (the port the
/// flow was opened to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Service {
    Any,
    Icmp,
    Tcp { first: u16, last: u16 },
    Udp { first: u16, last: u16 },
}

/// A service that does not parse; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a service: write \"tcp/443\", \"udp/8000-8100\", \"tcp\" (every port), \"icmp\" or \"any\"")]
pub struct BadService(pub String);

impl FromStr for Service {
    type Err = BadService;

    fn from_str(s: &str) -> Result<Service, BadService> {
        let bad = || BadService(s.to_string());
        let (proto, ports) = match s.split_once('/') {
            Some((p, ports)) => (p, Some(ports)),
            None => (s, None),
        };
        let range = |ports: Option<&str>| -> Result<(u16, u16), BadService> {
            let Some(ports) = ports else {
                return Ok((0, u16::MAX));
            };
            let (first, last) = match ports.split_once('-') {
                Some((a, b)) => (a, b),
                None => (ports, ports),
            };
            let port = |p: &str| -> Result<u16, BadService> {
                // Digits only (`u16::from_str` takes a leading `+`).
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                p.parse().map_err(|_| bad())
            };
            let (first, last) = (port(first)?, port(last)?);
            if first > last {
                return Err(bad());
            }
            Ok((first, last))
        };
        match proto {
            "any" if ports.is_none() => Ok(Service::Any),
            "icmp" if ports.is_none() => Ok(Service::Icmp),
            "tcp" => {
                let (first, last) = range(ports)?;
                Ok(Service::Tcp { first, last })
            }
            "udp" => {
                let (first, last) = range(ports)?;
                Ok(Service::Udp { first, last })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = |f: &mut fmt::Formatter<'_>, proto: &str, first: u16, last: u16| {
            if (first, last) == (0, u16::MAX) {
                write!(f, "{proto}")
            } else if first == last {
                write!(f, "{proto}/{first}")
            } else {
                write!(f, "{proto}/{first}-{last}")
            }
        };
        match *self {
            Service::Any => write!(f, "any"),
            Service::Icmp => write!(f, "icmp"),
            Service::Tcp { first, last } => ports(f, "tcp", first, last),
            Service::Udp { first, last } => ports(f, "udp", first, last),
        }
    }
}

impl TryFrom<String> for Service {
    type Error = BadService;
    fn try_from(s: String) -> Result<Service, BadService> {
        s.parse()
    }
}

impl From<Service> for String {
    fn from(s: Service) -> String {
        s.to_string()
    }
}

/// Where a rule's traffic comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Every address the site's peers carry (their prefixes and overlay addresses): the
    /// receiving node knows them from its peers' allowed IPs, which decryption enforces.
    Site(String),
    /// Inner source addresses inside this prefix.
    Prefix(IpNetwork),
}

/// One rule, as shipped to the nodes of one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AccessRule {
    /// Its name in counters and `straitctl policy`: the config's `name`, else `rule-<n>`
    /// (n: its place in `[[policy.rules]]`, from 1).
    pub name: String,
    pub action: Action,
    pub from: Vec<Source>,
    /// Destination prefixes in this site (the site's prefixes when the rule names the site).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<IpNetwork>,
    /// The rule names this node's site, so the node's own overlay address is a destination
    /// too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub to_node: bool,
    pub services: Vec<Service>,
}

/// The part of the mesh's policy that one site enforces. The default (no rules, allow) is
/// the mesh without a policy: every site reaches every site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AccessPolicy {
    #[serde(default)]
    pub default: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AccessRule>,
}

impl AccessPolicy {
    /// Whether every packet passes (no policy configured).
    pub fn allows_all(&self) -> bool {
        self.default == Action::Allow && self.rules.is_empty()
    }
}

/// The drop reason of packets no rule matched while the default is `deny`.
pub const DEFAULT_REASON: &str = "default";
/// The drop reason of packets whose headers could not be read far enough to judge them.
pub const MALFORMED_REASON: &str = "malformed";

/// Packets a node dropped for the policy since it started: one line per sending site and
/// reason (a rule's name, [`DEFAULT_REASON`] or [`MALFORMED_REASON`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AccessDrop {
    /// The site of the peer the packet came from.
    pub site: String,
    pub reason: String,
    pub packets: u64,
}

/// `straitctl policy`: the configured policy and what each node dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyView {
    pub default: Action,
    pub rules: Vec<RuleView>,
    /// The map version that carried the current policy first; a node whose map is older
    /// still enforces the previous one.
    pub since_version: u64,
    /// Every node that terminates tunnels, by id.
    pub nodes: Vec<NodeDrops>,
}

/// One configured rule as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RuleView {
    pub name: String,
    pub action: Action,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub services: Vec<Service>,
}

/// What one node enforces and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeDrops {
    /// `site/node`.
    pub node: String,
    pub online: bool,
    /// The map version the node acknowledged last.
    pub map_version: u64,
    /// Rules shipped to it (those whose destinations lie in its site).
    pub rules: usize,
    /// As last reported by the node (with its link report, every few seconds).
    pub drops: Vec<AccessDrop>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_parse_print_and_refuse() {
        for (text, want, printed) in [
            ("any", Service::Any, "any"),
            ("icmp", Service::Icmp, "icmp"),
            (
                "tcp",
                Service::Tcp {
                    first: 0,
                    last: 65535,
                },
                "tcp",
            ),
            (
                "tcp/0-65535",
                Service::Tcp {
                    first: 0,
                    last: 65535,
                },
                "tcp",
            ),
            (
                "tcp/443",
                Service::Tcp {
                    first: 443,
                    last: 443,
                },
                "tcp/443",
            ),
            (
                "udp/8000-8100",
                Service::Udp {
                    first: 8000,
                    last: 8100,
                },
                "udp/8000-8100",
            ),
        ] {
            let got: Service = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), printed);
            let json = serde_json::to_string(&got).unwrap();
            assert_eq!(serde_json::from_str::<Service>(&json).unwrap(), got);
        }
        for bad in [
            "",
            "tcp/",
            "tcp/x",
            "tcp/70000",
            "tcp/10-5",
            "tcp/+5",
            "icmp/3",
            "any/1",
            "sctp/1",
            "TCP/443",
            "tcp/ 443",
            "tcp/1-2-3",
            "tcp/000001",
        ] {
            let e = bad.parse::<Service>().unwrap_err().to_string();
            assert!(e.contains("tcp/443"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_absent_policy_allows_all_and_policies_survive_json() {
        let empty: AccessPolicy = serde_json::from_str("{}").unwrap();
        assert!(empty.allows_all());
        let p = AccessPolicy {
            default: Action::Deny,
            rules: vec![AccessRule {
                name: "web".into(),
                action: Action::Allow,
                from: vec![
                    Source::Site("a".into()),
                    Source::Prefix("10.30.1.0/24".parse().unwrap()),
                ],
                to: vec!["10.20.0.0/16".parse().unwrap()],
                to_node: true,
                services: vec![
                    Service::Tcp {
                        first: 443,
                        last: 443,
                    },
                    Service::Icmp,
                ],
            }],
        };
        assert!(!p.allows_all());
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"tcp/443\""), "{json}");
        assert_eq!(serde_json::from_str::<AccessPolicy>(&json).unwrap(), p);
    }
}
