//! Observability and process plumbing shared by the agent and the coordinator: one HTTP
//! listener serving `/metrics` (Prometheus text format, from a `prometheus-client`
//! registry), `/healthz` (the process answers) and `/readyz` (the component says it is
//! ready, or why not); the log output; the shutdown signals.
//!
//! - [`http`]: the listener, bounded in connections, request size and time; a request is
//!   answered by the pure [`http::answer`].
//! - [`Readiness`]: what `/readyz` reports, set by the component.
//! - [`logging`]: the log output (text or JSON on stderr, `RUST_LOG`).
//! - [`signal`]: the signals that stop a process.

pub mod http;
pub mod logging;
pub mod signal;

use std::sync::Mutex;

/// Whether the component is ready to do its job, and if not, why.
#[derive(Debug)]
pub struct Readiness(Mutex<Option<String>>);

impl Readiness {
    /// Not ready yet, for `reason`.
    pub fn new(reason: &str) -> Readiness {
        Readiness(Mutex::new(Some(reason.to_string())))
    }

    pub fn set_ready(&self) {
        *self.lock() = None;
    }

    pub fn set_not_ready(&self, reason: &str) {
        *self.lock() = Some(reason.to_string());
    }

    /// `Ok` when ready, else the reason.
    pub fn state(&self) -> Result<(), String> {
        match &*self.lock() {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
