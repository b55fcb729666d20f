//! The agent's Prometheus metrics, read at scrape time from what the agent already keeps:
//! the data plane's latest link report (paths, bytes, handshakes), its route conflicts, its
//! IO counters and access policy drops, the current certificate and its renewal, and whether
//! a coordinator session is up. Nothing
//! here is on the packet path. Served by `strait_observe::http` at `metrics-listen`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use strait_pki::renewal::{RenewalCounts, RenewalState};
use strait_pki::tls::CertStore;
use strait_proto::msg::{BgpReport, PeerLink, Refusal};
use tokio::sync::watch;

use crate::dataplane::engine::ProbeRefusal;
use crate::dataplane::nexthops::GatewayReport;
use crate::dataplane::pump::Counters;

/// What the agent's metrics are read from.
pub struct AgentMetrics {
    links: watch::Receiver<Vec<PeerLink>>,
    conflicts: watch::Receiver<Vec<Refusal>>,
    counters: Option<Arc<Counters>>,
    certs: OnceLock<CertStore>,
    renewal: OnceLock<(watch::Receiver<RenewalState>, Arc<RenewalCounts>)>,
    bgp: OnceLock<watch::Receiver<Option<BgpReport>>>,
    member_gateways: OnceLock<watch::Receiver<Vec<GatewayReport>>>,
    session_up: AtomicBool,
    /// Unix seconds; 0 without a session.
    coordinator_cert_expiry: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    pub fn new(
        links: watch::Receiver<Vec<PeerLink>>,
        conflicts: watch::Receiver<Vec<Refusal>>,
        counters: Option<Arc<Counters>>,
    ) -> AgentMetrics {
        AgentMetrics {
            links,
            conflicts,
            counters,
            certs: OnceLock::new(),
            renewal: OnceLock::new(),
            bgp: OnceLock::new(),
            member_gateways: OnceLock::new(),
            session_up: AtomicBool::new(false),
            coordinator_cert_expiry: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The node's certificate store, once it has one (its expiry is exported).
    pub fn set_certs(&self, certs: CertStore) {
        let _ = self.certs.set(certs);
    }

    /// The certificate renewal task's state and counts (exported as
    /// `strait_cert_renewal_state`, `strait_cert_renewals_total` and
    /// `strait_cert_renewal_failures_total`).
    pub fn set_renewal(&self, state: watch::Receiver<RenewalState>, counts: Arc<RenewalCounts>) {
        let _ = self.renewal.set((state, counts));
    }

    /// A gateway's BGP side (exported as `strait_bgp_session_up`,
    /// `strait_bgp_announced_prefixes` and `strait_bgp_config_applied`).
    pub fn set_bgp(&self, bgp: watch::Receiver<Option<BgpReport>>) {
        let _ = self.bgp.set(bgp);
    }

    /// A member's view of its site's gateways (exported as
    /// `strait_member_gateway_answering` and `strait_member_gateway_routes`).
    pub fn set_member_gateways(&self, gateways: watch::Receiver<Vec<GatewayReport>>) {
        let _ = self.member_gateways.set(gateways);
    }

    /// Whether a session with a coordinator is up.
    pub fn set_session_up(&self, up: bool) {
        self.session_up.store(up, Ordering::Relaxed);
    }

    /// When the certificate the coordinator presented on the current session expires
    /// (`None`: no session).
    pub fn set_coordinator_cert_expiry(&self, not_after: Option<SystemTime>) {
        let secs = not_after.map_or(0, |t| unix(t) as u64);
        self.coordinator_cert_expiry.store(secs, Ordering::Relaxed);
    }

    /// A registry with these metrics.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(Shared(self.clone())));
        r
    }
}

#[derive(Debug)]
struct Shared(Arc<AgentMetrics>);

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One metric with a series per label set.
fn family<L: prometheus_client::encoding::EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: Vec<(L, f64)>,
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let enc = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(enc)?,
            _ => ConstGauge::new(value).encode(enc)?,
        }
    }
    Ok(())
}

type Labels = Vec<(&'static str, String)>;

impl Collector for Shared {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let links = m.links.borrow().clone();
        let mut rtt: Vec<(Labels, f64)> = Vec::new();
        let mut jitter = Vec::new();
        let mut loss = Vec::new();
        let mut active = Vec::new();
        let mut up = Vec::new();
        let mut mtu = Vec::new();
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        let mut handshake = Vec::new();
        for peer in &links {
            let p: Labels = vec![("peer", peer.peer.clone())];
            tx.push((p.clone(), peer.tx_bytes as f64));
            rx.push((p.clone(), peer.rx_bytes as f64));
            if let Some(age) = peer.handshake_age_secs {
                handshake.push((p.clone(), age as f64));
            }
            for path in &peer.paths {
                let l: Labels = vec![
                    ("peer", peer.peer.clone()),
                    ("path_kind", path.kind.as_str().to_string()),
                    ("address", path.address.to_string()),
                ];
                if let Some(us) = path.rtt_us {
                    rtt.push((l.clone(), us as f64 / 1e6));
                }
                jitter.push((l.clone(), path.jitter_us as f64 / 1e6));
                loss.push((l.clone(), path.loss));
                if let Some(m) = path.mtu {
                    mtu.push((l.clone(), f64::from(m)));
                }
                active.push((l.clone(), f64::from(u8::from(path.active))));
                up.push((l, f64::from(u8::from(path.health == "up"))));
            }
        }
        use MetricType::{Counter, Gauge};
        family(
            &mut e,
            "strait_path_rtt_seconds",
            "Smoothed round-trip time of a path, from probes",
            Gauge,
            rtt,
        )?;
        family(
            &mut e,
            "strait_path_jitter_seconds",
            "Jitter of a path (RFC 3550), from probes",
            Gauge,
            jitter,
        )?;
        family(
            &mut e,
            "strait_path_loss_ratio",
            "Fraction of the last 64 probes lost on a path",
            Gauge,
            loss,
        )?;
        family(
            &mut e,
            "strait_path_mtu_bytes",
            "Path MTU discovered on a path with sized probes (whole outer IP packets)",
            Gauge,
            mtu,
        )?;
        family(
            &mut e,
            "strait_path_active",
            "1 for the path the tunnel uses now",
            Gauge,
            active,
        )?;
        family(
            &mut e,
            "strait_path_up",
            "1 while a path is healthy (not degraded or down)",
            Gauge,
            up,
        )?;
        family(
            &mut e,
            "strait_peer_tx_bytes",
            "Bytes sent through the tunnel to a peer (this session)",
            Counter,
            tx,
        )?;
        family(
            &mut e,
            "strait_peer_rx_bytes",
            "Bytes received through the tunnel from a peer (this session)",
            Counter,
            rx,
        )?;
        family(
            &mut e,
            "strait_peer_handshake_age_seconds",
            "Time since the last WireGuard handshake with a peer",
            Gauge,
            handshake,
        )?;
        gauge(
            &mut e,
            "strait_peers",
            "Tunnels this node has",
            links.len() as f64,
        )?;
        let conflicts = m.conflicts.borrow().len();
        gauge(
            &mut e,
            "strait_route_conflicts",
            "Routes the kernel refused (overlapping a connected or foreign route)",
            conflicts as f64,
        )?;
        if let Some(c) = &m.counters {
            let series = |out: &std::sync::atomic::AtomicU64,
                          inn: &std::sync::atomic::AtomicU64| {
                vec![
                    (
                        vec![("direction", "outbound".to_string())],
                        Counters::get(out) as f64,
                    ),
                    (
                        vec![("direction", "inbound".to_string())],
                        Counters::get(inn) as f64,
                    ),
                ]
            };
            family(
                &mut e,
                "strait_dataplane_packets",
                "Packets from the TUN device (outbound) and datagrams from the network (inbound)",
                Counter,
                series(&c.tun_read_packets, &c.udp_recv_datagrams),
            )?;
            family(&mut e, "strait_dataplane_syscalls", "TUN reads (outbound) and UDP receives (inbound); packets per syscall show batching", Counter, series(&c.tun_reads, &c.udp_recvs))?;
            let rejected = ProbeRefusal::ALL
                .iter()
                .map(|why| {
                    (
                        vec![("reason", why.label().to_string())],
                        Counters::get(&c.probes_rejected[why.index()]) as f64,
                    )
                })
                .collect();
            family(
                &mut e,
                "strait_agent_probes_rejected",
                "Path probe datagrams dropped, by reason (unknown-sender, bad-mac, malformed, not-in-flight: a replayed, duplicated or late reply)",
                Counter,
                rejected,
            )?;
            family(
                &mut e,
                "strait_dataplane_too_big_packets",
                "Packets from the TUN device larger than their peer's path MTU carries (not sent)",
                Counter,
                vec![(Labels::new(), Counters::get(&c.too_big) as f64)],
            )?;
            family(
                &mut e,
                "strait_dataplane_too_big_icmp_errors",
                "ICMP fragmentation-needed / packet-too-big errors sent back for them (rate-limited)",
                Counter,
                vec![(Labels::new(), Counters::get(&c.too_big_errors) as f64)],
            )?;
            let access = c.access();
            family(
                &mut e,
                "strait_agent_access_dropped_packets",
                "Decrypted packets the access policy dropped, by the sending peer's site and reason (a rule's name, default, or malformed)",
                Counter,
                access
                    .drops
                    .iter()
                    .map(|d| {
                        let l: Labels = vec![("site", d.site.clone()), ("reason", d.reason.clone())];
                        (l, d.packets as f64)
                    })
                    .collect(),
            )?;
            gauge(
                &mut e,
                "strait_agent_access_rules",
                "Access policy rules this node enforces (0 with no policy or a bare default)",
                access.rules as f64,
            )?;
            gauge(
                &mut e,
                "strait_agent_access_flows",
                "Flows this node sent into its tunnels and tracks, so their replies pass the access policy",
                access.flows as f64,
            )?;
            counter(
                &mut e,
                "strait_agent_access_untracked_flows",
                "New flows not tracked because the flow table was full (their replies meet the rules alone)",
                access.untracked,
            )?;
        }
        if let Some(certs) = m.certs.get() {
            let b = certs.bundle();
            gauge(
                &mut e,
                "strait_cert_expiry_timestamp_seconds",
                "When this node's certificate expires (Unix time)",
                unix(b.not_after),
            )?;
        }
        let coordinator_expiry = m.coordinator_cert_expiry.load(Ordering::Relaxed);
        if coordinator_expiry > 0 {
            gauge(
                &mut e,
                "strait_coordinator_session_cert_expiry_timestamp_seconds",
                "When the certificate the coordinator presented on the current session expires (Unix time); the session moves to a new connection then",
                coordinator_expiry as f64,
            )?;
        }
        if let Some((state, counts)) = m.renewal.get() {
            let now = state.borrow().name();
            family(
                &mut e,
                "strait_cert_renewal_state",
                "1 for the certificate renewal state now: valid (renewal scheduled), retrying (renewal failed, the current certificate is kept) or expired",
                Gauge,
                ["valid", "retrying", "expired"]
                    .into_iter()
                    .map(|s| {
                        let l: Labels = vec![("state", s.to_string())];
                        (l, f64::from(u8::from(s == now)))
                    })
                    .collect(),
            )?;
            counter(
                &mut e,
                "strait_cert_renewals",
                "Certificates renewed since the agent started",
                counts.renewed(),
            )?;
            counter(
                &mut e,
                "strait_cert_renewal_failures",
                "Certificate renewal attempts that failed since the agent started (each retry counts)",
                counts.failed(),
            )?;
        }
        if let Some(report) = m.bgp.get().and_then(|b| b.borrow().clone()) {
            family(
                &mut e,
                "strait_bgp_session_up",
                "1 while the BGP session to a router is established (BIRD's view)",
                Gauge,
                report
                    .sessions
                    .iter()
                    .map(|s| {
                        let l: Labels = vec![("neighbor", s.neighbor.clone())];
                        (
                            l,
                            f64::from(u8::from(
                                s.state == "up" && s.info.starts_with("Established"),
                            )),
                        )
                    })
                    .collect(),
            )?;
            gauge(
                &mut e,
                "strait_bgp_announced_prefixes",
                "Prefixes of other sites this gateway announces to its routers now (those it has a path up to)",
                report.announced.len() as f64,
            )?;
            gauge(
                &mut e,
                "strait_bgp_config_applied",
                "1 when BIRD took the agent's last configuration",
                f64::from(u8::from(report.applied)),
            )?;
        }
        if let Some(gateways) = m.member_gateways.get() {
            let gateways = gateways.borrow().clone();
            let series = |f: &dyn Fn(&GatewayReport) -> f64| {
                gateways
                    .iter()
                    .map(|g| {
                        let l: Labels = vec![("gateway", g.id.clone())];
                        (l, f(g))
                    })
                    .collect::<Vec<_>>()
            };
            family(
                &mut e,
                "strait_member_gateway_answering",
                "On a member: 1 while this gateway of its site answers its carry queries",
                Gauge,
                series(&|g| f64::from(u8::from(g.answering))),
            )?;
            family(
                &mut e,
                "strait_member_gateway_routes",
                "On a member: its routes to other sites that go through this gateway of its site now",
                Gauge,
                series(&|g| g.routes as f64),
            )?;
        }
        gauge(
            &mut e,
            "strait_coordinator_session_up",
            "1 while a session with a coordinator is up",
            f64::from(u8::from(m.session_up.load(Ordering::Relaxed))),
        )?;
        gauge(
            &mut e,
            "strait_agent_uptime_seconds",
            "Time since the agent started",
            m.started.elapsed().as_secs_f64(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_proto::msg::{EndpointKind, PathFigures};

    #[test]
    fn link_reports_become_labelled_series() {
        let (links_tx, links) = watch::channel(Vec::new());
        let (_c, conflicts) = watch::channel(vec![Refusal {
            prefix: "10.0.0.0/8".into(),
            reason: "overlaps".into(),
        }]);
        let counters = Arc::new(Counters::default());
        counters.probes_rejected[ProbeRefusal::BadMac.index()]
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        *counters.access.lock().unwrap() = crate::dataplane::access::AccessReport {
            drops: vec![strait_proto::access::AccessDrop {
                site: "gcp-usc1".into(),
                reason: "no-ssh".into(),
                packets: 4,
            }],
            flows: 7,
            untracked: 1,
            rules: 2,
        };
        let m = Arc::new(AgentMetrics::new(links, conflicts, Some(counters)));
        let ca = strait_pki::ca::BuiltinCa::generate("prod").unwrap();
        let id = strait_pki::Identity::node("prod", "aws-use1", "gw", strait_pki::Role::Gateway)
            .unwrap();
        let lifetime = std::time::Duration::from_secs(3600);
        let bundle = ca
            .issue(&id, strait_pki::ca::Validity::for_lifetime(lifetime))
            .unwrap();
        let store = CertStore::new(bundle).unwrap();
        m.set_certs(store.clone());
        // A gateway with [bgp] (the dashboard's BGP panel queries these).
        let (_bgp_tx, bgp) = watch::channel(Some(BgpReport {
            sessions: vec![strait_proto::msg::BgpSession {
                neighbor: "10.10.0.1".into(),
                state: "up".into(),
                info: "Established".into(),
            }],
            announced: vec!["10.20.0.0/16".into()],
            applied: true,
        }));
        m.set_bgp(bgp);
        let (_g, gateways) = watch::channel(vec![GatewayReport {
            id: "aws-use1/gw".into(),
            answering: true,
            routes: 2,
        }]);
        m.set_member_gateways(gateways);
        let (_state_tx, state) = watch::channel(RenewalState::Retrying {
            serial: "01".into(),
            not_after: SystemTime::now(),
            attempts: 3,
            last_error: "unreachable".into(),
        });
        m.set_renewal(state, Arc::new(RenewalCounts::default()));
        let r = m.registry();
        let text = |r: &Registry| {
            let mut s = String::new();
            prometheus_client::encoding::text::encode(&mut s, r).unwrap();
            s
        };
        let before = text(&r);
        assert!(before.contains("strait_route_conflicts 1"), "{before}");
        assert!(!before.contains("strait_path_rtt_seconds"), "no paths yet");
        links_tx.send_replace(vec![PeerLink {
            peer: "gcp-usc1/gw".into(),
            endpoint: None,
            handshake_age_secs: Some(12),
            tx_bytes: 2048,
            rx_bytes: 10,
            paths: vec![PathFigures {
                address: "172.31.255.2:51820".parse().unwrap(),
                kind: EndpointKind::Interconnect,
                health: "up".into(),
                active: true,
                rtt_us: Some(1500),
                p50_us: None,
                p95_us: None,
                jitter_us: 250,
                loss: 0.25,
                mtu: Some(1500),
            }],
        }]);
        let after = text(&r);
        let labels =
            r#"{peer="gcp-usc1/gw",path_kind="interconnect",address="172.31.255.2:51820"}"#;
        for line in [
            format!("strait_path_rtt_seconds{labels} 0.0015"),
            format!("strait_path_loss_ratio{labels} 0.25"),
            format!("strait_path_mtu_bytes{labels} 1500"),
            format!("strait_path_active{labels} 1"),
            r#"strait_peer_tx_bytes_total{peer="gcp-usc1/gw"} 2048"#.to_string(),
            r#"strait_peer_handshake_age_seconds{peer="gcp-usc1/gw"} 12"#.to_string(),
            r#"strait_dataplane_packets_total{direction="inbound"} 0"#.to_string(),
            r#"strait_agent_probes_rejected_total{reason="bad-mac"} 3"#.to_string(),
            "strait_dataplane_too_big_packets_total{} 0".to_string(),
            r#"strait_agent_probes_rejected_total{reason="not-in-flight"} 0"#.to_string(),
            r#"strait_agent_access_dropped_packets_total{site="gcp-usc1",reason="no-ssh"} 4"#
                .to_string(),
            "strait_agent_access_rules 2".to_string(),
            "strait_agent_access_flows 7".to_string(),
            "strait_agent_access_untracked_flows_total 1".to_string(),
            r#"strait_cert_renewal_state{state="retrying"} 1"#.to_string(),
            r#"strait_cert_renewal_state{state="valid"} 0"#.to_string(),
            "strait_cert_renewal_failures_total 0".to_string(),
            "strait_cert_renewals_total 0".to_string(),
        ] {
            assert!(after.contains(&line), "missing {line} in\n{after}");
        }
        // Every agent metric the Grafana dashboard queries exists.
        let dashboard = include_str!("../../deploy/grafana/strait-dashboard.json");
        for name in metric_names(dashboard) {
            if !name.starts_with("strait_coordinator_") {
                assert!(
                    after.contains(&format!("\n{name}")),
                    "the dashboard queries {name}, which the agent does not export"
                );
            }
        }
    }

    #[test]
    fn a_members_gateways_become_series() {
        let (_l, links) = watch::channel(Vec::new());
        let (_c, conflicts) = watch::channel(Vec::new());
        let m = Arc::new(AgentMetrics::new(links, conflicts, None));
        let (_g, gateways) = watch::channel(vec![
            GatewayReport {
                id: "a/gw1".into(),
                answering: true,
                routes: 3,
            },
            GatewayReport {
                id: "a/gw2".into(),
                answering: false,
                routes: 0,
            },
        ]);
        m.set_member_gateways(gateways);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        for line in [
            "strait_member_gateway_answering{gateway=\"a/gw1\"} 1",
            "strait_member_gateway_answering{gateway=\"a/gw2\"} 0",
            "strait_member_gateway_routes{gateway=\"a/gw1\"} 3",
            "strait_member_gateway_routes{gateway=\"a/gw2\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn bgp_reports_become_series() {
        let (_l, links) = watch::channel(Vec::new());
        let (_c, conflicts) = watch::channel(Vec::new());
        let m = Arc::new(AgentMetrics::new(links, conflicts, None));
        let (_b, bgp) = watch::channel(Some(BgpReport {
            sessions: vec![
                strait_proto::msg::BgpSession {
                    neighbor: "10.10.1.1".into(),
                    state: "up".into(),
                    info: "Established".into(),
                },
                strait_proto::msg::BgpSession {
                    neighbor: "10.10.1.2".into(),
                    state: "start".into(),
                    info: "Active".into(),
                },
            ],
            announced: vec!["10.20.0.0/16".into(), "10.30.0.0/16".into()],
            applied: true,
        }));
        m.set_bgp(bgp);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        assert!(
            text.contains("strait_bgp_session_up{neighbor=\"10.10.1.1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("strait_bgp_session_up{neighbor=\"10.10.1.2\"} 0"),
            "{text}"
        );
        assert!(text.contains("strait_bgp_announced_prefixes 2"), "{text}");
        assert!(text.contains("strait_bgp_config_applied 1"), "{text}");
    }

    /// `strait_...` names in `text`.
    fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("strait_") && w.len() > "strait_".len())
            .map(str::to_string)
            .collect()
    }
}
