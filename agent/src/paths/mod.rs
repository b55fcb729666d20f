//! Path probing and selection: every peer can be reached over several underlays
//! (interconnect, private, public); the agent probes each, keeps figures per path and
//! chooses the one traffic uses.
//!
//! - [`probe`]: the authenticated probe datagram (format, key derivation, MAC).
//! - [`stats`]: RTT, jitter, loss and percentiles of one path (pure).
//! - [`ping`]: probes sent on demand for an operator, apart from the selection's.
//! - [`pmtu`]: path MTU discovery per path with sized probes (pure state machine).
//! - [`select`]: health with hysteresis and the choice of the active path (pure state
//!   machine fed with probe outcomes and time).
//! - [`carry`]: the authenticated query a member asks its site's gateways with (which of
//!   these prefixes can you carry now?) and their answer (format, MAC).

pub mod carry;
pub mod ping;
pub mod pmtu;
pub mod probe;
pub mod select;
pub mod stats;
