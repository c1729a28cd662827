//! Graceful shutdown: on SIGTERM a replica stops being ready, closes its listener, then
//! tells its clients `Goodbye(SHUTDOWN)` a few at a time so they reconnect to the other
//! replicas gradually instead of all at once (a thundering herd of snapshots), and exits.
//!
//! The goodbyes are spread evenly over `duration` (fit it inside the pod's
//! terminationGracePeriodSeconds), but never more than `max_interval` apart, so a replica
//! with few clients does not wait the whole duration. The orchestration (readiness, the
//! listener, the final stop) is [`crate::app::Running::drain`]; this module is the pacing.
//!
//! Invariants: every session registered before the last goodbye is told exactly once;
//! the pacing is computed once, from the sessions present when draining starts (sessions
//! that arrive later, from handshakes already in flight, are told at the same pace).

use std::time::Duration;

use tokio::time::Instant;
use typha_proto::pb::GoodbyeReason;

use crate::server::Sessions;

/// Tuning for graceful shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    /// Spread the goodbyes over this long.
    pub duration: Duration,
    /// Most time between two goodbyes.
    pub max_interval: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            duration: Duration::from_secs(25),
            max_interval: Duration::from_secs(1),
        }
    }
}

impl DrainConfig {
    /// The pause between two goodbyes when `clients` must be told.
    pub fn interval(&self, clients: usize) -> Duration {
        let clients = u32::try_from(clients.max(1)).unwrap_or(u32::MAX);
        (self.duration / clients).min(self.max_interval)
    }
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Goodbyes sent.
    pub goodbyes: usize,
    /// Sessions still open when the drain gave up waiting for them to end.
    pub lingering: usize,
}

/// Tells every live session goodbye(SHUTDOWN) at the configured pace, then waits for the
/// sessions to end, at most until `config.duration` has passed since the start (or one
/// `max_interval` after the last goodbye, whichever is later).
pub async fn drain_sessions(sessions: &Sessions, config: &DrainConfig) -> DrainReport {
    let started = Instant::now();
    let counter = metrics::counter!("typha_shutdown_goodbyes_total");
    let interval = config.interval(sessions.counts().staying);
    tracing::info!(
        clients = sessions.counts().staying,
        ?interval,
        "draining: telling clients goodbye"
    );
    let mut report = DrainReport::default();
    while sessions.tell_newest(GoodbyeReason::Shutdown) {
        counter.increment(1);
        report.goodbyes += 1;
        if sessions.counts().staying > 0 {
            tokio::time::sleep(interval).await;
        }
    }
    let deadline = (started + config.duration).max(Instant::now() + config.max_interval);
    let ended = tokio::time::timeout_at(deadline, sessions.wait_for(|c| c.open == 0)).await;
    if ended.is_err() {
        report.lingering = sessions.counts().open;
        tracing::warn!(
            lingering = report.lingering,
            "sessions still open after the drain"
        );
    }
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn interval_spreads_over_the_duration_up_to_the_cap() {
        let config = DrainConfig {
            duration: Duration::from_secs(20),
            max_interval: Duration::from_secs(1),
        };
        assert_eq!(config.interval(100), Duration::from_millis(200));
        assert_eq!(config.interval(5), Duration::from_secs(1));
        assert_eq!(config.interval(0), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn every_session_is_told_once_at_the_pace() {
        let sessions = Sessions::new();
        let mut held: Vec<_> = (0..4).map(|_| Some(sessions.register())).collect();
        let config = DrainConfig {
            duration: Duration::from_secs(2),
            max_interval: Duration::from_secs(1),
        };
        let drain = tokio::spawn({
            let sessions = sessions.clone();
            async move { drain_sessions(&sessions, &config).await }
        });
        let started = Instant::now();
        // Each told session ends (drops its registration) as a real one would.
        for told in 1..=4 {
            sessions.wait_for(|c| c.staying == 4 - told).await;
            let (_, farewell) = held[4 - told].take().unwrap();
            assert_eq!(*farewell.borrow(), Some(GoodbyeReason::Shutdown));
            // 2 s over 4 clients: at least 500 ms apart (on the paused clock).
            assert!(Instant::now() - started >= Duration::from_millis(500) * (told as u32 - 1));
        }
        let report = drain.await.unwrap();
        assert_eq!(
            report,
            DrainReport {
                goodbyes: 4,
                lingering: 0
            }
        );
    }
}
