//! The coordinator's Prometheus metrics. Counters and the fan-out histogram are updated
//! where things happen (connections, requests, sessions); the rest is set when it changes.
//! Served by `strait_observe::http` at `metrics-listen`.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type ByLabel = Family<Vec<(&'static str, String)>, Counter>;

/// Why a connection or request was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake failed for another reason than those below (wrong ALPN, bad
    /// signature...).
    Handshake,
    /// The client certificate has expired.
    ExpiredCertificate,
    /// The client certificate is not valid yet.
    NotYetValidCertificate,
    /// The client certificate is not issued by the mesh CA.
    UnknownCa,
    /// A signature in the client's certificate or handshake does not verify (a foreign CA
    /// with the mesh CA's name, a certificate without its key).
    BadSignature,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The coordinator holds `limits.max-connections` connections.
    TooManyConnections,
    /// The source holds `limits.max-connections-per-address` connections.
    TooManyFromAddress,
    /// A connection without a certificate outlived `limits.anonymous-lifetime`.
    AnonymousLifetime,
    /// A node registered a WireGuard key that another node or external peer holds.
    DuplicateKey,
    /// The certificate names no usable identity.
    BadIdentity,
    OtherMesh,
    Revoked,
    /// A request that needs a certificate came without one.
    Unauthenticated,
    /// An operator command from a node or coordinator certificate.
    NotOperator,
    /// An operator certificate whose role is below what the request needs.
    OperatorRole,
    BadFrame,
    /// Registration refused (identity, site or prefix rules).
    Registration,
    /// A join token was refused.
    Token,
    /// Too many bad join tokens from one address.
    RateLimited,
}

impl Refusal {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Handshake => "tls-handshake",
            Refusal::ExpiredCertificate => "expired-certificate",
            Refusal::NotYetValidCertificate => "not-yet-valid-certificate",
            Refusal::UnknownCa => "unknown-ca",
            Refusal::BadSignature => "bad-signature",
            Refusal::HandshakeTimeout => "handshake-timeout",
            Refusal::TooManyConnections => "too-many-connections",
            Refusal::TooManyFromAddress => "too-many-connections-per-address",
            Refusal::AnonymousLifetime => "anonymous-lifetime",
            Refusal::DuplicateKey => "duplicate-wg-key",
            Refusal::BadIdentity => "bad-identity",
            Refusal::OtherMesh => "other-mesh",
            Refusal::Revoked => "revoked",
            Refusal::Unauthenticated => "no-client-certificate",
            Refusal::NotOperator => "not-operator",
            Refusal::OperatorRole => "operator-role",
            Refusal::BadFrame => "bad-frame",
            Refusal::Registration => "registration",
            Refusal::Token => "join-token",
            Refusal::RateLimited => "rate-limited",
        }
    }
}

/// Every metric the coordinator exports.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    pub agents_connected: Gauge,
    /// Connections open (handshaking or established), as admitted by `connlimit`.
    pub connections: Gauge,
    /// TLS handshakes in progress.
    pub handshakes: Gauge,
    /// Connection attempts asked to prove their address (a QUIC Retry) because
    /// many handshakes were in progress.
    pub address_validations: Counter,
    pub map_version: Gauge,
    pub nodes_online: Gauge,
    pub nodes_total: Gauge,
    /// Time from a map change to its delta being written on each session.
    pub fanout: Histogram,
    refused: ByLabel,
    enrollments: ByLabel,
    requests: ByLabel,
    refused_prefixes: ByLabel,
    pub cert_expiry: Gauge<f64, AtomicU64>,
    /// 1 for this coordinator's certificate renewal state now (`valid`, `retrying`,
    /// `expired`), 0 for the others.
    cert_renewal_state: Family<Vec<(&'static str, String)>, Gauge>,
    cert_renewals: Counter,
    cert_renewal_failures: Counter,
    /// Reloads of a shared store after another coordinator wrote to it.
    pub store_reloads: Counter,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        // 1 ms to ~16 s.
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15);
        CoordinatorMetrics {
            agents_connected: Gauge::default(),
            connections: Gauge::default(),
            handshakes: Gauge::default(),
            address_validations: Counter::default(),
            map_version: Gauge::default(),
            nodes_online: Gauge::default(),
            nodes_total: Gauge::default(),
            fanout: Histogram::new(buckets),
            refused: ByLabel::default(),
            enrollments: ByLabel::default(),
            requests: ByLabel::default(),
            refused_prefixes: ByLabel::default(),
            cert_expiry: Gauge::default(),
            cert_renewal_state: Family::default(),
            cert_renewals: Counter::default(),
            cert_renewal_failures: Counter::default(),
            store_reloads: Counter::default(),
        }
    }
}

impl CoordinatorMetrics {
    /// This coordinator's certificate renewal: the state now and the totals so far.
    pub fn own_renewal(&self, state: &'static str, renewed: u64, failed: u64) {
        for s in ["valid", "retrying", "expired"] {
            self.cert_renewal_state
                .get_or_create(&vec![("state", s.to_string())])
                .set(i64::from(s == state));
        }
        self.cert_renewals
            .inc_by(renewed.saturating_sub(self.cert_renewals.get()));
        self.cert_renewal_failures
            .inc_by(failed.saturating_sub(self.cert_renewal_failures.get()));
    }

    pub fn refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&vec![("reason", why.label().to_string())])
            .inc();
    }

    pub fn enrollment(&self, ok: bool) {
        let result = if ok { "enrolled" } else { "refused" };
        self.enrollments
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// A request of `kind` (`Request::kind`) was received.
    pub fn request(&self, kind: &'static str) {
        self.requests
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// An advertised prefix was refused at registration; `reason` is a
    /// [`Conflict`](crate::policy::Conflict) label (a fixed set, never the prefix).
    pub fn refused_prefix(&self, reason: &'static str) {
        self.refused_prefixes
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// A registry exporting these metrics (they stay shared with `self`).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("strait_coordinator");
        r.register(
            "agents_connected",
            "Agents with a session on this coordinator",
            self.agents_connected.clone(),
        );
        r.register(
            "connections",
            "Connections open (handshakes included)",
            self.connections.clone(),
        );
        r.register(
            "handshakes",
            "TLS handshakes in progress",
            self.handshakes.clone(),
        );
        r.register(
            "address_validations",
            "Connection attempts asked to prove their source address (QUIC Retry) because many handshakes were in progress",
            self.address_validations.clone(),
        );
        r.register(
            "map_version",
            "Current network map version",
            self.map_version.clone(),
        );
        r.register(
            "nodes_online",
            "Registered nodes seen recently",
            self.nodes_online.clone(),
        );
        r.register("nodes", "Registered nodes", self.nodes_total.clone());
        r.register(
            "fanout_seconds",
            "Time from a map change to its delta written on an agent's session",
            self.fanout.clone(),
        );
        r.register(
            "refused_connections",
            "Connections and requests refused, by reason",
            self.refused.clone(),
        );
        r.register(
            "enrollments",
            "Enrollments with a join token, by result",
            self.enrollments.clone(),
        );
        r.register(
            "requests",
            "Requests received, by kind",
            self.requests.clone(),
        );
        r.register(
            "refused_prefixes",
            "Advertised prefixes refused at registration (each time a node registers), by kind of conflict",
            self.refused_prefixes.clone(),
        );
        r.register(
            "store_reloads",
            "Registry reloads after another coordinator changed the shared store",
            self.store_reloads.clone(),
        );
        r.register(
            "cert_expiry_timestamp_seconds",
            "When this coordinator's certificate expires (Unix time)",
            self.cert_expiry.clone(),
        );
        r.register(
            "cert_renewal_state",
            "1 for this coordinator's certificate renewal state now: valid (renewal scheduled), retrying (renewal failed, the current certificate is kept) or expired",
            self.cert_renewal_state.clone(),
        );
        r.register(
            "cert_renewals",
            "This coordinator's certificates renewed and swapped in",
            self.cert_renewals.clone(),
        );
        r.register(
            "cert_renewal_failures",
            "Failed renewal attempts of this coordinator's certificate (each retry counts)",
            self.cert_renewal_failures.clone(),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carry_their_reason() {
        let m = CoordinatorMetrics::default();
        m.refused(Refusal::OtherMesh);
        m.refused(Refusal::OtherMesh);
        m.enrollment(true);
        m.refused_prefix("default-route");
        m.fanout.observe(0.004);
        m.agents_connected.set(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        for line in [
            r#"strait_coordinator_refused_connections_total{reason="other-mesh"} 2"#,
            r#"strait_coordinator_enrollments_total{result="enrolled"} 1"#,
            "strait_coordinator_agents_connected 3",
            r#"strait_coordinator_refused_prefixes_total{reason="default-route"} 1"#,
            "strait_coordinator_fanout_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Every coordinator metric the Grafana dashboard queries exists.
        m.enrollment(false);
        m.cert_expiry.set(1.0);
        m.own_renewal("retrying", 2, 3);
        m.own_renewal("valid", 3, 3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        let dashboard = include_str!("../../deploy/grafana/strait-dashboard.json");
        let names: std::collections::BTreeSet<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("strait_coordinator_"))
            .collect();
        assert!(!names.is_empty());
        for name in names {
            assert!(
                text.contains(&format!("\n{name}")),
                "the dashboard queries {name}, which the coordinator does not export"
            );
        }
        // Its own renewal: the state now, and totals that follow the renewal task's counts.
        for line in [
            r#"strait_coordinator_cert_renewal_state{state="valid"} 1"#,
            r#"strait_coordinator_cert_renewal_state{state="retrying"} 0"#,
            r#"strait_coordinator_cert_renewal_state{state="expired"} 0"#,
            "strait_coordinator_cert_renewals_total 3",
            "strait_coordinator_cert_renewal_failures_total 3",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
