//! The Strait node agent.
//!
//! - [`config`]: `agent.toml` plus flags and `STRAIT_*` variables, validated at start.
//! - [`wgkey`]: the node's WireGuard key (generated here, 0600, never sent or logged).
//! - [`enroll`]: the first certificate, from a join token and a CSR.
//! - [`control`]: the session with the coordinator: register, apply maps, heartbeat,
//!   reconnect; the last map is kept in the state directory.

pub mod config;
pub mod control;
pub mod dataplane;
pub mod enroll;
pub mod paths;
pub mod wgkey;
