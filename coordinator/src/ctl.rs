//! `straitctl`'s client and its output: tables for people, JSON for scripts, DOT for graphs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use strait_pki::tls::{client_config, quic_client_config, CertStore};
use strait_pki::{CertBundle, Role};
use strait_proto::client::{self, ClientError};
use strait_proto::msg::{
    ErrorCode, GraphView, LinkInfo, MeshStatus, NodeInfo, Request, Response, RouteInfo,
};
use strait_proto::ALPN;

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: i32 = 0;
    /// The coordinator refused the request for another reason.
    pub const FAILED: i32 = 1;
    /// Bad command line (clap's code).
    pub const USAGE: i32 = 2;
    /// No connection: address, network, TLS or certificate problem.
    pub const UNREACHABLE: i32 = 3;
    /// The certificate may not do this (or none was presented).
    pub const DENIED: i32 = 4;
    /// The named node, site or peer does not exist.
    pub const NOT_FOUND: i32 = 5;
    /// The request was invalid (bad site, ttl, token...).
    pub const INVALID: i32 = 6;
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CtlError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

fn fail(code: i32, message: impl Into<String>) -> anyhow::Error {
    CtlError {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error from [`request`].
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.downcast_ref::<CtlError>()
        .map(|c| c.code)
        .unwrap_or(exit::FAILED)
}

/// Sends one request to the coordinator at `addr`, authenticating with the operator
/// certificate in `tls_dir` (`cert.pem`, `key.pem`, `ca.pem`).
pub async fn request(
    addr: &str,
    tls_dir: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response> {
    let bundle = CertBundle::load(tls_dir).map_err(|e| {
        fail(
            exit::UNREACHABLE,
            format!(
                "no usable operator certificate in {} ({e}); pass --tls-dir (init writes <state-dir>/operator) or set STRAIT_TLS_DIR",
                tls_dir.display()
            ),
        )
    })?;
    if bundle.identity.role() != Role::Operator {
        eprintln!(
            "warning: {} holds a {} certificate, not an operator one; the coordinator will refuse operator commands",
            tls_dir.display(),
            bundle.identity.role()
        );
    }
    let mesh = bundle.identity.mesh().to_string();
    let cas = bundle.ca.clone();
    let store = CertStore::new(bundle)?;
    let tls = client_config(&cas, Some(store), &mesh, &[Role::Coordinator], ALPN)?;
    let addr = resolve(addr).await?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .context("wildcard address")?;
    let endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
    let conn = client::connect(&endpoint, addr, quic_client_config(tls)?, timeout)
        .await
        .map_err(|e| fail(exit::UNREACHABLE, e.to_string()))?;
    let response = client::call(&conn, req, timeout).await.map_err(|e| match e {
        ClientError::Connection(c) => fail(
            exit::UNREACHABLE,
            format!("the coordinator closed the connection: {c} (is the certificate from this mesh's CA, unexpired and not revoked?)"),
        ),
        other => fail(exit::UNREACHABLE, other.to_string()),
    })?;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    match response {
        Response::Error(e) => {
            let code = match e.code {
                ErrorCode::Unauthenticated | ErrorCode::PermissionDenied | ErrorCode::Revoked => {
                    exit::DENIED
                }
                ErrorCode::NotFound => exit::NOT_FOUND,
                ErrorCode::BadRequest | ErrorCode::InvalidToken => exit::INVALID,
                ErrorCode::Unsupported | ErrorCode::Internal => exit::FAILED,
            };
            Err(fail(code, format!("coordinator refused: {e}")))
        }
        ok => Ok(ok),
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(addr).await.map_err(|e| {
        fail(
            exit::UNREACHABLE,
            format!("cannot resolve coordinator address {addr:?} ({e}); write host:port, e.g. 203.0.113.10:7443"),
        )
    })?;
    addrs.next().ok_or_else(|| {
        fail(
            exit::UNREACHABLE,
            format!("{addr:?} resolves to no address"),
        )
    })
}

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
                site.prefixes
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
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
                n.prefixes
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
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
                r.site.clone(),
                r.node.clone(),
                r.status.clone(),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["PREFIX", "SITE", "NODE", "STATUS", "REASON"], rows)
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
                opt(l.handshake_age_secs.map(|v| format!("{v}s ago"))),
                opt(l.tx_bytes.map(human_bytes)),
                opt(l.rx_bytes.map(human_bytes)),
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
            "HANDSHAKE",
            "TX",
            "RX",
        ],
        rows,
    )
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
            q(&format!("{} ({} {})", site.name, site.cloud, site.region))
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
                handshake_age_secs: Some(3),
                tx_bytes: Some(2048),
                rx_bytes: Some(10),
            }],
        };
        let dot = render_dot(&g);
        assert!(dot.starts_with("graph \"prod\" {"));
        assert!(dot.contains("subgraph cluster_0"));
        assert!(dot.contains("\"a/gw\" -- \"b/gw\""));
        assert!(dot.contains("12.5 ms 0% loss"), "{dot}");
        let table = render_links(&g.links);
        assert!(
            table.contains(
                "interconnect 192.0.2.1:51820  12.5ms  0.4ms   0%    3s ago     2.0 KiB  10 B"
            ),
            "{table}"
        );
    }
}
