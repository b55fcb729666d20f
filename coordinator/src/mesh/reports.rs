//! What operators see (status, nodes, routes, links, the graph) and the pairs a probe may
//! run between: read-only views of the registry and the agents' live reports.

use std::net::IpAddr;
use strait_pki::Role;
use strait_proto::msg::{
    EndpointKind, GraphNode, GraphSite, GraphView, LinkInfo, MeshStatus, NodeInfo, ResolveInfo,
    RouteInfo, SiteInfo,
};

use super::{CoreError, Mesh, NodeKey, NodeRecord, ProbePair};

impl Mesh {
    /// Two online nodes with a tunnel between them, for a probe from `from` to `to`.
    pub fn probe_pair(&self, from: &str, to: &str) -> Result<ProbePair, CoreError> {
        let a = self.resolve(from)?;
        let b = self.resolve(to)?;
        let get = |k: &NodeKey| {
            self.nodes
                .get(k)
                .ok_or_else(|| CoreError::NoSuchNode(format!("{}/{}", k.0, k.1)))
        };
        let (na, nb) = (get(&a)?, get(&b)?);
        if !self.peers_of(na).iter().any(|p| p.key() == b) {
            return Err(CoreError::NoTunnel {
                a: na.id(),
                b: nb.id(),
            });
        }
        for n in [na, nb] {
            if !n.online {
                return Err(CoreError::Offline(n.id()));
            }
        }
        Ok(ProbePair {
            a_id: na.id(),
            b_id: nb.id(),
            a_overlay: na.overlay_ip,
            b_overlay: nb.overlay_ip,
            a,
            b,
        })
    }

    /// Registered nodes, and how many of them are online.
    pub fn node_counts(&self) -> (usize, usize) {
        let online = self.nodes.values().filter(|n| n.online).count();
        (self.nodes.len(), online)
    }

    /// Every pair of online nodes with a tunnel between them, ordered.
    pub fn tunnel_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for n in self.nodes.values().filter(|n| n.online) {
            for p in self.peers_of(n) {
                if p.online && n.id() < p.id() {
                    pairs.push((n.id(), p.id()));
                }
            }
        }
        pairs.sort();
        pairs
    }

    // ---- operator views ----

    pub fn status(&self, pki: &str) -> MeshStatus {
        let sites = self
            .config
            .sites
            .iter()
            .map(|s| {
                let nodes: Vec<&NodeRecord> =
                    self.nodes.values().filter(|n| n.site == s.name).collect();
                SiteInfo {
                    name: s.name.clone(),
                    cloud: s.cloud.clone(),
                    region: s.region.clone(),
                    prefixes: s.prefixes.clone(),
                    global_prefixes: self
                        .globals
                        .pairs(&s.name)
                        .iter()
                        .map(|t| t.global)
                        .collect(),
                    full_mesh: s.full_mesh,
                    nodes: nodes.len(),
                    online: nodes.iter().filter(|n| n.online).count(),
                    gateways: nodes.iter().filter(|n| n.role == Role::Gateway).count(),
                }
            })
            .collect();
        MeshStatus {
            mesh: self.config.mesh.clone(),
            map_version: self.version,
            pki: pki.to_string(),
            coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
            nodes_total: self.nodes.len(),
            nodes_online: self.nodes.values().filter(|n| n.online).count(),
            revoked_certificates: self.revoked.len(),
            refused_prefixes: self.nodes.values().map(|n| n.refused.len()).sum(),
            sites,
        }
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|n| NodeInfo {
                site: n.site.clone(),
                name: n.name.clone(),
                role: n.role,
                overlay_ip: n.overlay_ip,
                wg_public_key: n.wg_public_key.clone(),
                next_wg_public_key: n.next_wg_public_key.clone(),
                endpoints: n.endpoints.clone(),
                prefixes: n.accepted.clone(),
                global_prefixes: if self.globals.is_translated(&n.site) {
                    n.accepted
                        .iter()
                        .map(|p| self.globals.to_mesh(&n.site, *p))
                        .collect()
                } else {
                    Vec::new()
                },
                refused: n.refused.clone(),
                route_conflicts: n.route_conflicts.clone(),
                agent_version: n.agent_version.clone(),
                online: n.online,
                last_seen: n.last_seen,
                cert_not_after: n.cert_not_after,
                cert_serial: n.cert_serial.clone(),
                map_version: n.map_version,
            })
            .collect()
    }

    pub fn routes(&self) -> Vec<RouteInfo> {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            let entry = |prefix: String, status: &str, reason: Option<String>| RouteInfo {
                prefix,
                site: n.site.clone(),
                node: n.name.clone(),
                status: status.to_string(),
                global: None,
                reason,
            };
            out.extend(n.accepted.iter().map(|p| {
                RouteInfo {
                    global: self
                        .globals
                        .is_translated(&n.site)
                        .then(|| self.globals.to_mesh(&n.site, *p)),
                    ..entry(p.to_string(), "accepted", None)
                }
            }));
            out.extend(
                n.refused
                    .iter()
                    .map(|r| entry(r.prefix.clone(), "refused", Some(r.reason.clone()))),
            );
            out.extend(
                n.route_conflicts
                    .iter()
                    .map(|r| entry(r.prefix.clone(), "conflict", Some(r.reason.clone()))),
            );
        }
        out
    }

    pub fn links(&self) -> Vec<LinkInfo> {
        let mut links = Vec::new();
        for n in self.nodes.values() {
            for p in self.peers_of(n) {
                if n.id() < p.id() {
                    links.push(link(n, p, "tunnel"));
                }
            }
            if !self.tunnel_capable(n) {
                if let Some(gw) = self.site_gateway(&n.site) {
                    links.push(link(n, gw, "via-gateway"));
                }
            }
        }
        links
    }

    /// Every gateway, by site and name: priority, online, its tunnels with a path up and
    /// bytes (its agent's last link report), its BGP side.
    pub fn gateways(&self) -> Vec<strait_proto::msg::GatewayInfo> {
        self.nodes
            .values()
            .filter(|n| n.role == Role::Gateway)
            .map(|n| strait_proto::msg::GatewayInfo {
                site: n.site.clone(),
                node: n.name.clone(),
                priority: n.priority,
                online: n.online,
                tunnels_up: n
                    .links
                    .iter()
                    .filter(|l| l.paths.iter().any(|p| p.health == "up"))
                    .count(),
                tunnels: n.links.len(),
                tx_bytes: n.links.iter().map(|l| l.tx_bytes).sum(),
                rx_bytes: n.links.iter().map(|l| l.rx_bytes).sum(),
                bgp: n.bgp.clone(),
            })
            .collect()
    }

    pub fn graph(&self) -> GraphView {
        GraphView {
            mesh: self.config.mesh.clone(),
            sites: self
                .config
                .sites
                .iter()
                .map(|s| GraphSite {
                    name: s.name.clone(),
                    cloud: s.cloud.clone(),
                    region: s.region.clone(),
                    prefixes: s.prefixes.clone(),
                    global_prefixes: self
                        .globals
                        .pairs(&s.name)
                        .iter()
                        .map(|t| t.global)
                        .collect(),
                    nodes: self
                        .nodes
                        .values()
                        .filter(|n| n.site == s.name)
                        .map(|n| GraphNode {
                            id: n.id(),
                            name: n.name.clone(),
                            role: n.role.to_string(),
                            online: n.online,
                        })
                        .collect(),
                })
                .collect(),
            links: self.links(),
        }
    }
}

impl Mesh {
    /// Which site, and which node, `addr` belongs to: by a global address of a translated
    /// site, a real address of one site or of several (overlapping sites), or an overlay
    /// address.
    pub fn resolve_address(&self, addr: IpAddr) -> Vec<ResolveInfo> {
        let mut out: Vec<ResolveInfo> = self
            .globals
            .resolve(&self.config.sites, addr)
            .into_iter()
            .map(|r| {
                // The node whose accepted prefix holds it most specifically (online first).
                let node = self
                    .nodes
                    .values()
                    .filter(|n| n.site == r.site)
                    .flat_map(|n| n.accepted.iter().map(move |p| (p, n)))
                    .filter(|(p, _)| p.contains(r.local))
                    .max_by_key(|(p, n)| (p.prefix(), n.online, std::cmp::Reverse(n.name.clone())))
                    .map(|(_, n)| n.id());
                ResolveInfo {
                    by: if r.global == addr && r.local != addr {
                        "global"
                    } else {
                        "local"
                    }
                    .into(),
                    site: r.site,
                    local: r.local,
                    global: r.global,
                    node,
                }
            })
            .collect();
        for n in self
            .nodes
            .values()
            .filter(|n| IpAddr::V4(n.overlay_ip) == addr)
        {
            out.push(ResolveInfo {
                site: n.site.clone(),
                local: addr,
                global: addr,
                node: Some(n.id()),
                by: "overlay".into(),
            });
        }
        out
    }
}

fn link(a: &NodeRecord, b: &NodeRecord, kind: &str) -> LinkInfo {
    let b_id = b.id();
    let report = a.links.iter().find(|l| l.peer == b_id);
    let active = report.and_then(|r| r.paths.iter().find(|p| p.active));
    let ms = |us: u64| us as f64 / 1000.0;
    // The most recent throughput measured in either direction.
    let throughput = [a.throughput.get(&b_id), b.throughput.get(&a.id())]
        .into_iter()
        .flatten()
        .max_by_key(|(_, at)| *at)
        .copied();
    LinkInfo {
        a: a.id(),
        b: b_id,
        kind: kind.to_string(),
        state: if a.online && b.online { "up" } else { "down" }.to_string(),
        path: active
            .map(|p| format!("{} {}", kind_name(p.kind), p.address))
            .or_else(|| report.and_then(|r| r.endpoint).map(|e| format!("- {e}"))),
        rtt_ms: active.and_then(|p| p.rtt_us).map(ms),
        jitter_ms: active.map(|p| ms(p.jitter_us)),
        loss: active.map(|p| p.loss),
        mtu: active.and_then(|p| p.mtu),
        handshake_age_secs: report.and_then(|r| r.handshake_age_secs),
        tx_bytes: report.map(|r| r.tx_bytes),
        rx_bytes: report.map(|r| r.rx_bytes),
        throughput_mbps: throughput.map(|(mbps, _)| mbps),
        throughput_at: throughput.map(|(_, at)| at),
    }
}

fn kind_name(kind: EndpointKind) -> &'static str {
    match kind {
        EndpointKind::Interconnect => "interconnect",
        EndpointKind::Private => "private",
        EndpointKind::Public => "public",
    }
}
