//! Signal handling shared by both binaries: SIGTERM and SIGINT start the same drain.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or SIGINT: both binaries drain the same way.
pub async fn stop_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: stopping"),
    }
    token.cancel();
}
