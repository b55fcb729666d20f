//! Wire types shared by the coordinator, agents and `straitctl`.

/// ALPN protocol id of the Strait control protocol, version 1.
pub const ALPN: &[u8] = b"strait/1";
