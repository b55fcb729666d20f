//! The signals that stop both binaries.

/// Completes at the first SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes, `docker stop`).
/// Without a SIGTERM handler (it could not be installed) only SIGINT stops.
pub async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C (SIGINT) stops this process");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
