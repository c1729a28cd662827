//! [`test_logs`]: tracing output routed to the test harness's captured output.

/// Sends `tracing` events to the test's captured output, filtered by `RUST_LOG`. The
/// first call in a process installs the subscriber; later calls (other tests in the same
/// binary) find it installed and do nothing.
pub fn test_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}
