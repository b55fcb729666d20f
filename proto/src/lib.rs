//! Strait's wire protocol, shared by the coordinator, agents and `straitctl`.
//!
//! - [`frame`]: length-prefixed frames with a maximum size, and a decoder that never panics
//!   and never buffers more than one frame, whatever the input.
//! - [`msg`]: the versioned messages carried in frames.
//! - [`map`]: network maps (what one node needs to know), their deltas and how to apply them.
//! - [`probe`]: probes operators ask agents to run (live RTT per path, throughput).
//! - [`access`]: the inter-site access policy a node enforces, and what it dropped.
//! - [`endpoint`]: where a node can be reached (used by messages, maps and probes alike).

pub mod access;
#[cfg(feature = "io")]
pub mod client;
pub mod endpoint;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "io")]
pub mod io;
pub mod map;
pub mod msg;
pub mod probe;
mod role;

pub use role::{OperatorRole, Role};

/// ALPN protocol id of the Strait control protocol, version 1.
pub const ALPN: &[u8] = b"strait/1";

/// The message version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
