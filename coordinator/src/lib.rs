//! The Strait coordinator: the mesh's source of truth (`straitctl` is the `strait-ctl`
//! crate).
//!
//! - [`config`]: `coordinator.toml`, validated at start.
//! - [`checkconfig`]: `strait-coordinator check-config`, the same without serving.
//! - [`mesh`]: the pure core: registry, tokens, revocations, per-node network maps.
//! - [`fanout`]: the current map version and waking only the sessions it concerns.
//! - [`policy`], [`overlay`]: prefix policy and overlay address allocation (pure).
//! - [`access`]: the inter-site access policy (`[policy]`), validated and compiled per site
//!   (pure).
//! - [`probes`]: operators' probes relayed to agents, scheduled throughput probes.
//! - [`metrics`]: Prometheus metrics (served at `metrics-listen`).
//! - [`ratelimit`]: failed-attempt limits per client address (join tokens; pure).
//! - [`connlimit`]: connections admitted per source address and in total (pure).
//! - [`handshake`]: which refusal a failed handshake counts as (pure).
//! - [`store`]: persistence behind a trait; SQLite is the embedded default.

pub mod access;
pub mod audit;
pub mod checkconfig;
pub mod config;
pub mod connlimit;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod globals;
pub mod handlers;
pub mod handshake;
pub mod init;
pub mod mesh;
pub mod metrics;
pub mod overlay;
pub mod policy;
pub mod prefix;
pub mod probes;
pub mod ratelimit;
pub mod records;
pub mod renew_own;
pub mod server;
pub mod store;
