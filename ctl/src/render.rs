//! `straitctl`'s output: tables for people (JSON for scripts is serde's), DOT for graphs,
//! and a probe's events as they come.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;

use strait_proto::access::{Action, PolicyView};
use strait_proto::msg::{
    EndpointKind, GraphView, LinkInfo, MeshStatus, NodeInfo, ResolveInfo, RouteInfo,
};
use strait_proto::probe::{mbit_per_s, ProbeEvent};

/// A plain text table with aligned columns.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn ago(unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if unix == 0 {
        return "never".into();
    }
    let d = now.saturating_sub(unix);
    format!("{}s ago", d)
}

fn until(unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if unix <= now {
        return "expired".into();
    }
    humantime::format_duration(Duration::from_secs(unix - now)).to_string()
}

pub fn render_status(s: &MeshStatus) -> String {
    let mut out = format!(
        "mesh {}  map version {}  pki {}  coordinator {}\nnodes {} ({} online)  revoked certificates {}  refused prefixes {}\n\n",
        s.mesh,
        s.map_version,
        s.pki,
        s.coordinator_version,
        s.nodes_total,
        s.nodes_online,
        s.revoked_certificates,
        s.refused_prefixes
    );
    let rows = s
        .sites
        .iter()
        .map(|site| {
            vec![
                site.name.clone(),
                site.cloud.clone(),
                site.region.clone(),
                local_global(&site.prefixes, &site.global_prefixes),
                format!("{}/{}", site.online, site.nodes),
                site.gateways.to_string(),
                if site.full_mesh {
                    "full-mesh"
                } else {
                    "gateways"
                }
                .to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SITE", "CLOUD", "REGION", "PREFIXES", "ONLINE", "GATEWAYS", "TOPOLOGY",
        ],
        rows,
    ));
    out
}

pub fn render_nodes(nodes: &[NodeInfo]) -> String {
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.site.clone(),
                n.name.clone(),
                n.role.to_string(),
                n.overlay_ip.to_string(),
                if n.online { "online" } else { "offline" }.to_string(),
                ago(n.last_seen),
                n.map_version.to_string(),
                until(n.cert_not_after),
                local_global(&n.prefixes, &n.global_prefixes),
                n.refused.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SITE",
            "NODE",
            "ROLE",
            "OVERLAY",
            "STATE",
            "LAST-SEEN",
            "MAP",
            "CERT-EXPIRES",
            "PREFIXES",
            "REFUSED",
        ],
        rows,
    )
}

pub fn render_routes(routes: &[RouteInfo]) -> String {
    let rows = routes
        .iter()
        .map(|r| {
            vec![
                r.prefix.clone(),
                r.global
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.site.clone(),
                r.node.clone(),
                r.status.clone(),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["PREFIX", "GLOBAL", "SITE", "NODE", "STATUS", "REASON"],
        rows,
    )
}

/// Prefixes, each with its global prefix when the site is translated:
/// `10.10.0.0/16=>10.200.0.0/16`.
pub fn local_global(local: &[IpNetwork], global: &[IpNetwork]) -> String {
    local
        .iter()
        .enumerate()
        .map(|(i, p)| match global.get(i) {
            Some(g) => format!("{p}=>{g}"),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `straitctl resolve`: one line per site the address belongs to.
pub fn render_resolved(address: IpAddr, matches: &[ResolveInfo]) -> String {
    if matches.is_empty() {
        return format!("{address}: no site's address (nor an overlay address)\n");
    }
    let rows = matches
        .iter()
        .map(|m| {
            vec![
                m.site.clone(),
                m.local.to_string(),
                m.global.to_string(),
                m.node.clone().unwrap_or_else(|| "-".into()),
                m.by.clone(),
            ]
        })
        .collect();
    let mut out = table(&["SITE", "LOCAL", "GLOBAL", "NODE", "BY"], rows);
    if matches.iter().filter(|m| m.by == "local").count() > 1 {
        out.push_str(
            "several sites use this address: from other sites, reach each by its GLOBAL address\n",
        );
    }
    out
}

pub fn render_links(links: &[LinkInfo]) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows = links
        .iter()
        .map(|l| {
            vec![
                l.a.clone(),
                l.b.clone(),
                l.kind.clone(),
                l.state.clone(),
                opt(l.path.clone()),
                opt(l.rtt_ms.map(|v| format!("{v:.1}ms"))),
                opt(l.jitter_ms.map(|v| format!("{v:.1}ms"))),
                opt(l.loss.map(|v| format!("{:.0}%", v * 100.0))),
                opt(l.mtu.map(|v| v.to_string())),
                opt(l.handshake_age_secs.map(|v| format!("{v}s ago"))),
                opt(l.tx_bytes.map(human_bytes)),
                opt(l.rx_bytes.map(human_bytes)),
                opt(l.throughput_mbps.map(human_rate)),
            ]
        })
        .collect();
    table(
        &[
            "A",
            "B",
            "KIND",
            "STATE",
            "PATH",
            "RTT",
            "JITTER",
            "LOSS",
            "MTU",
            "HANDSHAKE",
            "TX",
            "RX",
            "THROUGHPUT",
        ],
        rows,
    )
}

/// `straitctl gateways`: per site its gateways, whether each carries traffic (online with
/// tunnels up), bytes, BGP sessions and what each announces to its routers.
pub fn render_gateways(gateways: &[strait_proto::msg::GatewayInfo]) -> String {
    let mut sorted: Vec<&strait_proto::msg::GatewayInfo> = gateways.iter().collect();
    sorted.sort_by(|a, b| (&a.site, &a.node).cmp(&(&b.site, &b.node)));
    let rows = sorted
        .iter()
        .map(|g| {
            let carrying = g.online && g.tunnels_up > 0;
            let (bgp, announced) = match &g.bgp {
                None => ("-".to_string(), "-".to_string()),
                Some(b) => {
                    let sessions = b
                        .sessions
                        .iter()
                        .map(|s| {
                            let state = if s.state == "up" && s.info.starts_with("Established") {
                                "established".to_string()
                            } else {
                                format!("{} {}", s.state, s.info).trim().to_string()
                            };
                            format!("{} {state}", s.neighbor)
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    let mut ann = if b.announced.is_empty() {
                        "none".to_string()
                    } else {
                        b.announced.join(" ")
                    };
                    if !b.applied {
                        ann.push_str(" (BIRD has not taken the last config)");
                    }
                    (sessions, ann)
                }
            };
            vec![
                g.site.clone(),
                g.node.clone(),
                if g.priority == 0 { "active" } else { "standby" }.to_string(),
                if g.online { "online" } else { "offline" }.to_string(),
                if carrying { "yes" } else { "no" }.to_string(),
                format!("{}/{}", g.tunnels_up, g.tunnels),
                human_bytes(g.tx_bytes),
                human_bytes(g.rx_bytes),
                bgp,
                announced,
            ]
        })
        .collect();
    table(
        &[
            "SITE",
            "GATEWAY",
            "PRIORITY",
            "STATE",
            "CARRYING",
            "TUNNELS-UP",
            "TX",
            "RX",
            "BGP",
            "ANNOUNCED",
        ],
        rows,
    )
}

/// `straitctl policy`: the rules in order, then per tunnel node whether it has the current
/// policy and what it dropped.
pub fn render_policy(p: &PolicyView) -> String {
    let mut out = if p.rules.is_empty() && p.default == Action::Allow {
        "access policy: none (default allow: every site reaches every site)\n".to_string()
    } else {
        format!(
            "access policy: default {}, {} rule(s), first tried first; in force since map version {}\n",
            p.default.as_str(),
            p.rules.len(),
            p.since_version
        )
    };
    let join = |v: &[String]| v.join(",");
    if !p.rules.is_empty() {
        out.push('\n');
        let rows = p
            .rules
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.action.as_str().to_string(),
                    join(&r.from),
                    join(&r.to),
                    r.services
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        out.push_str(&table(&["RULE", "ACTION", "FROM", "TO", "PORTS"], rows));
    }
    if !p.nodes.is_empty() {
        out.push('\n');
        let rows = p
            .nodes
            .iter()
            .map(|n| {
                let map = if n.map_version < p.since_version {
                    format!("{} (previous policy)", n.map_version)
                } else {
                    n.map_version.to_string()
                };
                vec![
                    n.node.clone(),
                    if n.online { "online" } else { "offline" }.to_string(),
                    map,
                    n.rules.to_string(),
                    n.drops.iter().map(|d| d.packets).sum::<u64>().to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["NODE", "STATE", "MAP", "RULES", "DROPPED"], rows));
    }
    let drops: Vec<Vec<String>> = p
        .nodes
        .iter()
        .flat_map(|n| {
            n.drops.iter().map(|d| {
                vec![
                    n.node.clone(),
                    d.site.clone(),
                    d.reason.clone(),
                    d.packets.to_string(),
                ]
            })
        })
        .collect();
    if !drops.is_empty() {
        out.push_str("\ndropped packets (as each node last reported, every few seconds):\n");
        out.push_str(&table(&["NODE", "FROM-SITE", "REASON", "PACKETS"], drops));
    }
    out
}

/// Mbit/s as people read it: `940 Mbit/s`, `3.62 Gbit/s`.
/// `straitctl audit`: one line per entry, newest first.
pub fn render_audit(entries: &[strait_proto::msg::AuditEntry]) -> String {
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.at),
                )
                .to_string(),
                e.operator.clone(),
                e.from.clone(),
                e.request.clone(),
                if e.ok { "ok" } else { "refused" }.to_string(),
                e.result.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SEQ", "TIME", "OPERATOR", "FROM", "REQUEST", "RESULT", "DETAIL",
        ],
        rows,
    )
}

pub fn human_rate(mbps: f64) -> String {
    if mbps >= 1000.0 {
        format!("{:.2} Gbit/s", mbps / 1000.0)
    } else {
        format!("{mbps:.0} Mbit/s")
    }
}

/// How `straitctl probe` shows a probe's events: one line per reply or loss (like `ping`),
/// progress while a transfer runs, and a summary per path at the end.
#[derive(Debug, Default)]
pub struct ProbeView {
    paths: Vec<PathTally>,
    result: Option<(u64, u64)>,
}

#[derive(Debug)]
struct PathTally {
    kind: EndpointKind,
    address: SocketAddr,
    sent: u32,
    rtts_us: Vec<u64>,
}

fn kind_str(kind: EndpointKind) -> &'static str {
    kind.as_str()
}

impl ProbeView {
    /// The line to print for `event` from `node` toward `peer`, if any.
    pub fn line(&mut self, peer: &str, event: &ProbeEvent) -> Option<String> {
        match event {
            ProbeEvent::Pong {
                seq,
                kind,
                address,
                active,
                rtt_us,
            } => {
                let t = self.tally(*kind, *address);
                t.sent += 1;
                t.rtts_us.push(*rtt_us);
                Some(format!(
                    "pong from {peer} via {} {address}{} seq={seq} in {:.2} ms",
                    kind_str(*kind),
                    if *active { " (active)" } else { "" },
                    *rtt_us as f64 / 1000.0
                ))
            }
            ProbeEvent::Lost { seq, kind, address } => {
                self.tally(*kind, *address).sent += 1;
                Some(format!(
                    "no pong from {peer} via {} {address} seq={seq} (timed out)",
                    kind_str(*kind)
                ))
            }
            ProbeEvent::Progress { elapsed_ms, bytes } => Some(format!(
                "{:5.1} s  {:>10} sent  {:>12}",
                *elapsed_ms as f64 / 1000.0,
                human_bytes(*bytes),
                human_rate(mbit_per_s(*bytes, *elapsed_ms))
            )),
            ProbeEvent::Throughput { bytes, elapsed_ms } => {
                self.result = Some((*bytes, *elapsed_ms));
                None
            }
            ProbeEvent::Listening { .. } | ProbeEvent::Failed { .. } | ProbeEvent::Done => None,
        }
    }

    fn tally(&mut self, kind: EndpointKind, address: SocketAddr) -> &mut PathTally {
        let i = match self.paths.iter().position(|p| p.address == address) {
            Some(i) => i,
            None => {
                self.paths.push(PathTally {
                    kind,
                    address,
                    sent: 0,
                    rtts_us: Vec::new(),
                });
                self.paths.len() - 1
            }
        };
        &mut self.paths[i]
    }

    /// The closing lines: per path replies, loss and RTT min/avg/max; or the throughput.
    pub fn summary(&self, from: &str, to: &str) -> String {
        if let Some((bytes, elapsed_ms)) = self.result {
            return format!(
                "{from} -> {to}: {} through the tunnel ({} received in {:.2} s)\n",
                human_rate(mbit_per_s(bytes, elapsed_ms)),
                human_bytes(bytes),
                elapsed_ms as f64 / 1000.0
            );
        }
        let mut out = String::new();
        for p in &self.paths {
            let got = p.rtts_us.len() as u32;
            let loss = 100.0 * f64::from(p.sent - got) / f64::from(p.sent.max(1));
            out.push_str(&format!(
                "--- {from} -> {to} via {} {}: {} sent, {got} received, {loss:.0}% loss",
                kind_str(p.kind),
                p.address,
                p.sent
            ));
            if let (Some(min), Some(max)) = (p.rtts_us.iter().min(), p.rtts_us.iter().max()) {
                let avg = p.rtts_us.iter().sum::<u64>() as f64 / f64::from(got);
                out.push_str(&format!(
                    ", rtt min/avg/max {:.2}/{:.2}/{:.2} ms",
                    *min as f64 / 1000.0,
                    avg / 1000.0,
                    *max as f64 / 1000.0
                ));
            }
            out.push('\n');
        }
        out
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Graphviz DOT: sites as clusters, nodes inside, links as edges.
pub fn render_dot(g: &GraphView) -> String {
    // Names are RFC 1123 labels; only quotes could break the syntax.
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\\\""));
    let mut out = format!("graph {} {{\n  node [shape=box];\n", q(&g.mesh));
    for (i, site) in g.sites.iter().enumerate() {
        out.push_str(&format!(
            "  subgraph cluster_{i} {{\n    label={};\n",
            q(&if site.global_prefixes.is_empty() {
                format!("{} ({} {})", site.name, site.cloud, site.region)
            } else {
                format!(
                    "{} ({} {})\\n{}",
                    site.name,
                    site.cloud,
                    site.region,
                    local_global(&site.prefixes, &site.global_prefixes)
                )
            })
        ));
        for n in &site.nodes {
            let style = if n.online { "solid" } else { "dashed" };
            out.push_str(&format!(
                "    {} [label={}, style={style}];\n",
                q(&n.id),
                q(&format!("{}\\n{}", n.name, n.role))
            ));
        }
        out.push_str("  }\n");
    }
    for l in &g.links {
        let style = match (l.kind.as_str(), l.state.as_str()) {
            (_, "down") => "dotted",
            ("via-gateway", _) => "dashed",
            _ => "solid",
        };
        let mut label = l.kind.clone();
        if let Some(rtt) = l.rtt_ms {
            label.push_str(&format!("\\n{rtt:.1} ms"));
        }
        if let Some(loss) = l.loss {
            label.push_str(&format!(" {:.0}% loss", loss * 100.0));
        }
        out.push_str(&format!(
            "  {} -- {} [label={}, style={style}];\n",
            q(&l.a),
            q(&l.b),
            q(&label)
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_proto::msg::{GraphNode, GraphSite};

    #[test]
    fn the_policy_shows_rules_in_order_stale_nodes_and_drops() {
        use strait_proto::access::{AccessDrop, NodeDrops, RuleView, Service};
        let none = PolicyView {
            default: Action::Allow,
            rules: vec![],
            since_version: 3,
            nodes: vec![],
        };
        assert!(render_policy(&none).contains("none (default allow"));
        let p = PolicyView {
            default: Action::Deny,
            rules: vec![RuleView {
                name: "web".into(),
                action: Action::Allow,
                from: vec!["a".into(), "10.30.1.0/24".into()],
                to: vec!["b".into()],
                services: vec![
                    Service::Tcp {
                        first: 443,
                        last: 443,
                    },
                    Service::Icmp,
                ],
            }],
            since_version: 12,
            nodes: vec![
                NodeDrops {
                    node: "b/gw".into(),
                    online: true,
                    map_version: 12,
                    rules: 1,
                    drops: vec![
                        AccessDrop {
                            site: "a".into(),
                            reason: "default".into(),
                            packets: 7,
                        },
                        AccessDrop {
                            site: "c".into(),
                            reason: "malformed".into(),
                            packets: 1,
                        },
                    ],
                },
                NodeDrops {
                    node: "a/gw".into(),
                    online: false,
                    map_version: 11,
                    rules: 0,
                    drops: vec![],
                },
            ],
        };
        let text = render_policy(&p);
        assert!(text.contains("default deny, 1 rule(s)"), "{text}");
        assert!(
            text.contains("web   allow   a,10.30.1.0/24  b   tcp/443,icmp"),
            "{text}"
        );
        assert!(text.contains("b/gw  online   12"), "{text}");
        assert!(text.contains("11 (previous policy)"), "{text}");
        assert!(text.contains("b/gw  a          default    7"), "{text}");
    }

    #[test]
    fn routes_and_resolve_show_local_and_global_addresses() {
        let routes = render_routes(&[RouteInfo {
            prefix: "10.10.0.0/16".into(),
            site: "b".into(),
            node: "gw".into(),
            status: "accepted".into(),
            global: Some("10.129.0.0/16".parse().unwrap()),
            reason: None,
        }]);
        assert!(
            routes.starts_with("PREFIX        GLOBAL         SITE"),
            "{routes}"
        );
        assert!(
            routes.contains("10.10.0.0/16  10.129.0.0/16  b"),
            "{routes}"
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let m = |site: &str, global: &str| ResolveInfo {
            site: site.into(),
            local: ip("10.10.0.10"),
            global: ip(global),
            node: None,
            by: "local".into(),
        };
        let text = render_resolved(
            ip("10.10.0.10"),
            &[m("a", "10.128.0.10"), m("b", "10.129.0.10")],
        );
        assert!(
            text.contains("b     10.10.0.10  10.129.0.10  -     local"),
            "{text}"
        );
        assert!(text.contains("several sites use this address"), "{text}");
        assert!(render_resolved(ip("192.0.2.1"), &[]).contains("no site's address"));
        assert_eq!(
            local_global(
                &["10.10.0.0/16".parse().unwrap()],
                &["10.129.0.0/16".parse().unwrap()]
            ),
            "10.10.0.0/16=>10.129.0.0/16"
        );
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], vec![vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
    }

    #[test]
    fn dot_quotes_names_and_clusters_sites() {
        let g = GraphView {
            mesh: "prod".into(),
            sites: vec![GraphSite {
                name: "a".into(),
                cloud: "aws".into(),
                region: "r".into(),
                prefixes: vec!["10.10.0.0/16".parse().unwrap()],
                global_prefixes: vec!["10.200.0.0/16".parse().unwrap()],
                nodes: vec![GraphNode {
                    id: "a/gw".into(),
                    name: "gw".into(),
                    role: "gateway".into(),
                    online: true,
                }],
            }],
            links: vec![LinkInfo {
                a: "a/gw".into(),
                b: "b/gw".into(),
                kind: "tunnel".into(),
                state: "up".into(),
                path: Some("interconnect 192.0.2.1:51820".into()),
                rtt_ms: Some(12.5),
                jitter_ms: Some(0.4),
                loss: Some(0.0),
                mtu: Some(1500),
                handshake_age_secs: Some(3),
                tx_bytes: Some(2048),
                rx_bytes: Some(10),
                throughput_mbps: Some(3620.0),
                throughput_at: Some(1),
            }],
        };
        let dot = render_dot(&g);
        assert!(dot.starts_with("graph \"prod\" {"));
        assert!(dot.contains("subgraph cluster_0"));
        assert!(
            dot.contains("label=\"a (aws r)\\n10.10.0.0/16=>10.200.0.0/16\""),
            "{dot}"
        );
        assert!(dot.contains("\"a/gw\" -- \"b/gw\""));
        assert!(dot.contains("12.5 ms 0% loss"), "{dot}");
        let table = render_links(&g.links);
        assert!(
            table.contains(
                "interconnect 192.0.2.1:51820  12.5ms  0.4ms   0%    1500  3s ago     2.0 KiB  10 B  3.62 Gbit/s"
            ),
            "{table}"
        );
    }

    #[test]
    fn probe_view_prints_replies_losses_and_a_summary_per_path() {
        let ic: SocketAddr = "172.31.255.2:51820".parse().unwrap();
        let inet: SocketAddr = "203.0.113.10:51820".parse().unwrap();
        let mut v = ProbeView::default();
        let pong = |seq, rtt_us| ProbeEvent::Pong {
            seq,
            kind: EndpointKind::Interconnect,
            address: ic,
            active: true,
            rtt_us,
        };
        assert_eq!(
            v.line("b/gw", &pong(1, 400)).unwrap(),
            "pong from b/gw via interconnect 172.31.255.2:51820 (active) seq=1 in 0.40 ms"
        );
        v.line("b/gw", &pong(2, 600));
        let lost = ProbeEvent::Lost {
            seq: 1,
            kind: EndpointKind::Public,
            address: inet,
        };
        assert!(v.line("b/gw", &lost).unwrap().contains("no pong"));
        assert_eq!(
            v.summary("a/gw", "b/gw"),
            "--- a/gw -> b/gw via interconnect 172.31.255.2:51820: 2 sent, 2 received, 0% loss, rtt min/avg/max 0.40/0.50/0.60 ms\n\
             --- a/gw -> b/gw via public 203.0.113.10:51820: 1 sent, 0 received, 100% loss\n"
        );
        let mut t = ProbeView::default();
        let progress = ProbeEvent::Progress {
            elapsed_ms: 1000,
            bytes: 12_500_000,
        };
        assert!(t.line("b/gw", &progress).unwrap().contains("100 Mbit/s"));
        t.line(
            "b/gw",
            &ProbeEvent::Throughput {
                bytes: 500_000_000,
                elapsed_ms: 2000,
            },
        );
        assert_eq!(
            t.summary("a/gw", "b/gw"),
            "a/gw -> b/gw: 2.00 Gbit/s through the tunnel (476.8 MiB received in 2.00 s)\n"
        );
    }
}
