//! The WireGuard data plane's pure parts: the cryptokey routing table and the one wrapper
//! around boringtun's `Tunn`. The IO shell (TUN device, UDP socket, netlink) builds on them.

pub mod engine;
pub mod lpm;
pub mod netlink;
pub mod routes;
pub mod tunnel;
