//! Shared harnesses for Strait's integration tests (see `tests/tests/`).

pub mod background;
pub mod container;
pub mod flows;
pub mod impair;
pub mod kernel;
pub mod lab;
pub mod netns;
pub mod postgres;
pub mod procs;
pub mod quic;
pub mod rustyvault;
pub mod traffic;

/// Installs a test log subscriber once (RUST_LOG controls it; default warn).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
