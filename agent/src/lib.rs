//! The Strait node agent.
//!
//! - [`config`]: `agent.toml` plus flags and `STRAIT_*` variables, validated at start.
//! - [`checkconfig`]: `strait-agent check-config`, the same validation without starting.
//! - [`wgkey`]: the node's WireGuard key (generated here, 0600, never sent or logged).
//! - [`keyrotation`]: when to rotate that key, and the steps of a rotation.
//! - [`enroll`]: the first certificate, from a join token and a CSR.
//! - [`session`]: the session with the coordinator as a pure state machine: register,
//!   apply maps, heartbeat, admit commands, rotate the key, move to a renewed certificate,
//!   reconnect with backoff.
//! - [`control`]: its IO shell (QUIC, timers, tasks); the last map is kept in the state
//!   directory.
//! - [`commands`]: probes an operator asks for through the coordinator (RTT per path,
//!   throughput transfers).
//! - [`dataplane`]: the WireGuard engine, its IO and the kernel's routes.
//! - [`paths`]: path probing and selection.
//! - [`metrics`]: Prometheus metrics read at scrape time.

pub mod bgp;
pub mod checkconfig;
pub mod commands;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod enroll;
#[doc(hidden)]
pub mod fuzzing;
pub mod keyrotation;
pub mod metrics;
pub mod paths;
pub mod session;
pub mod wgkey;
