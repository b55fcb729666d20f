//! Probes an operator asks for (`straitctl probe A B`): the coordinator hands agents
//! [`Command`]s on their session streams and relays the [`ProbeEvent`]s they send back to
//! the operator's stream, as they come.
//!
//! - Live RTT: agent A sends authenticated probes to B on every path, `count` rounds at
//!   `interval_ms`, and reports each reply (or its loss) per path.
//! - Throughput: B opens a one-shot TCP listener on its overlay address that accepts only A's
//!   overlay address presenting a nonce; A sends through the tunnel for `secs` seconds,
//!   reporting progress each second, and B's received byte count is the result.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::endpoint::EndpointKind;

/// Longest throughput transfer an operator may ask for.
pub const MAX_THROUGHPUT_SECS: u32 = 30;
/// Most RTT rounds in one probe.
pub const MAX_PING_COUNT: u32 = 100;
/// Shortest interval between RTT rounds.
pub const MIN_PING_INTERVAL_MS: u64 = 10;

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProbeRequest {
    /// `site/node` (or a unique node name) that probes.
    pub from: String,
    /// `site/node` (or a unique node name) probed; must be a tunnel peer of `from`.
    pub to: String,
    /// RTT rounds (each sends one probe on every path).
    pub count: u32,
    pub interval_ms: u64,
    /// Run a throughput transfer of this many seconds instead of RTT rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_secs: Option<u32>,
}

impl ProbeRequest {
    /// Checks the request's bounds; the error says which value is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(secs) = self.throughput_secs {
            if secs == 0 || secs > MAX_THROUGHPUT_SECS {
                return Err(format!(
                    "throughput duration {secs} s is out of range; use 1 to {MAX_THROUGHPUT_SECS} s"
                ));
            }
        } else {
            if self.count == 0 || self.count > MAX_PING_COUNT {
                return Err(format!(
                    "count {} is out of range; use 1 to {MAX_PING_COUNT}",
                    self.count
                ));
            }
            if !(MIN_PING_INTERVAL_MS..=60_000).contains(&self.interval_ms) {
                return Err(format!(
                    "interval {} ms is out of range; use {MIN_PING_INTERVAL_MS} ms to 60 s",
                    self.interval_ms
                ));
            }
        }
        Ok(())
    }
}

/// Coordinator -> agent: something to run for an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Command {
    /// Chosen by the coordinator; the agent's events carry it back.
    pub id: u64,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Action {
    /// Probe every path to `peer` (`site/node`) `count` times.
    Ping {
        peer: String,
        count: u32,
        interval_ms: u64,
    },
    /// Accept one TCP connection on this node's overlay address from `from` presenting
    /// `nonce`, count what it sends for at most `secs` (+ slack), answer the count.
    ThroughputListen {
        from: Ipv4Addr,
        nonce: String,
        secs: u32,
    },
    /// Connect to `to` through the tunnel, present `nonce`, send for `secs`.
    ThroughputSend {
        to: SocketAddr,
        nonce: String,
        secs: u32,
    },
    /// Start a WireGuard key rotation now; answered with `Done` once the new key is
    /// announced (or `Failed`).
    RotateKey,
}

/// Agent -> coordinator -> operator: what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum ProbeEvent {
    /// A reply on one path.
    Pong {
        seq: u32,
        kind: EndpointKind,
        address: SocketAddr,
        /// Whether this path carries the tunnel now.
        active: bool,
        rtt_us: u64,
    },
    /// No reply on one path within the timeout.
    Lost {
        seq: u32,
        kind: EndpointKind,
        address: SocketAddr,
    },
    /// The listener is ready (throughput, receiving side).
    Listening { port: u16 },
    /// Bytes sent so far (throughput, sending side).
    Progress { elapsed_ms: u64, bytes: u64 },
    /// What the receiving side counted, over how long the sender sent.
    Throughput { bytes: u64, elapsed_ms: u64 },
    /// The command could not run; the message says why.
    Failed { message: String },
    /// The command finished (the last event of a command).
    Done,
}

impl ProbeEvent {
    /// Whether no further event follows for this command.
    pub fn is_final(&self) -> bool {
        matches!(self, ProbeEvent::Done | ProbeEvent::Failed { .. })
    }
}

/// Megabits per second for `bytes` over `elapsed_ms`.
pub fn mbit_per_s(bytes: u64, elapsed_ms: u64) -> f64 {
    if elapsed_ms == 0 {
        return 0.0;
    }
    bytes as f64 * 8.0 / (elapsed_ms as f64 / 1000.0) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(count: u32, interval_ms: u64) -> ProbeRequest {
        ProbeRequest {
            from: "a/gw".into(),
            to: "b/gw".into(),
            count,
            interval_ms,
            throughput_secs: None,
        }
    }

    #[test]
    fn bounds_are_checked_and_named() {
        assert!(ping(4, 1000).validate().is_ok());
        assert!(ping(0, 1000).validate().unwrap_err().contains("count 0"));
        assert!(ping(4, 1).validate().unwrap_err().contains("interval 1 ms"));
        let mut t = ping(0, 0);
        t.throughput_secs = Some(5);
        assert!(t.validate().is_ok());
        t.throughput_secs = Some(31);
        assert!(t.validate().unwrap_err().contains("31 s"));
    }

    #[test]
    fn rates_are_in_megabits() {
        assert_eq!(mbit_per_s(125_000_000, 1000), 1000.0);
        assert_eq!(mbit_per_s(1, 0), 0.0);
    }
}
