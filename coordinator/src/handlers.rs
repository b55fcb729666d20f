//! The coordinator's request handlers as functions of state: what each request does to the
//! registry ([`Mesh`]) and what it is answered, with time, the PKI and randomness passed
//! in. No QUIC, no tokio, no clock, no store: the shell (`crate::server`) reads the request,
//! calls a handler under the registry lock, persists the [`StoreOp`]s it returns and sends
//! the answer; a simulation calls the same functions over an in-memory network.
//!
//! The shape of a handler that changes the registry:
//!
//! ```text
//! fn(&mut Mesh, &dyn Pki, request..., now: SystemTime, &mut dyn Entropy)
//!     -> Result<(Answer, Vec<StoreOp>), ErrorBody>
//! ```
//!
//! `Ok` holds what to answer once the ops are stored (in order); `Err` is a refusal,
//! which changes nothing. With a shared store the shell may run a handler again on fresh
//! state (another coordinator wrote first), so a handler must not keep anything outside
//! the `Mesh` it was given: limits and metrics are the caller's, from what the handler
//! returned ([`certs::bad_token`] decides on a refused join token).
//!
//! - [`admission`]: who may send which request (certificate, operator role).
//! - [`certs`]: enrollment with a join token, renewal, operator certificates.
//! - [`operator`]: join tokens, revocation, key rotation and probe targets, the read-only
//!   views, the audit log's bounds.
//! - [`session`]: an agent's session: registration, its snapshot, the update a new
//!   version brings, the events it reports.

pub mod admission;
pub mod certs;
pub mod operator;
mod pki;
pub mod session;

use std::time::{SystemTime, UNIX_EPOCH};

use strait_proto::msg::{ErrorBody, ErrorCode, Response};

use crate::mesh::CoreError;
#[cfg(doc)]
use crate::mesh::{Mesh, StoreOp};
pub use pki::{signer, Pki, SignError, Signed, Signer, VaultMode};

/// Where handlers get random bytes: join tokens' ids and secrets, certificate serials.
pub trait Entropy {
    fn fill(&mut self, bytes: &mut [u8]);
}

/// The operating system's CSPRNG: what a serving coordinator uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, bytes: &mut [u8]) {
        // SystemRandom fails only without an OS entropy source, where nothing secure runs.
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), bytes)
            .expect("the OS random number generator is unavailable");
    }
}

/// Bytes from a seed (splitmix64): the same seed gives the same tokens and serials, so a
/// test or a simulated mesh replays exactly. Predictable: never for a serving coordinator.
#[derive(Debug, Clone)]
pub struct SeededEntropy(u64);

impl SeededEntropy {
    pub fn new(seed: u64) -> SeededEntropy {
        SeededEntropy(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// `N` bytes from `rng`.
pub(crate) fn random<const N: usize>(rng: &mut dyn Entropy) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill(&mut out);
    out
}

/// Unix seconds of `t` (0 before the epoch), the registry's unit of time.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The wire form of a refusal by the core.
pub fn core_err(e: CoreError) -> ErrorBody {
    ErrorBody::new(e.code(), e.to_string())
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorBody::new(code, message))
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_replays_and_seeds_differ() {
        let draw = |seed| {
            let mut rng = SeededEntropy::new(seed);
            (random::<22>(&mut rng), random::<16>(&mut rng))
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let (a, b) = draw(7);
        assert_ne!(a[..16], b[..], "successive draws differ");
    }
}
