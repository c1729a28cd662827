//! Refusing and closing connections before a session exists: the counted, logged
//! `typha_connections_dropped_total{reason}` of the accept path, and the watchdog that
//! closes a connection which carries no `Sync` stream.
//!
//! Why: a peer that completes TCP (or TLS) and then does nothing would otherwise hold a
//! connection slot for ever (hyper waits for the HTTP/2 preface without a deadline, and
//! an HTTP/2 connection without streams answers keepalive pings happily), and a flood of
//! refused connections must not turn into a flood of log lines.
//!
//! Invariants: every refusal is counted, whatever the log budget; at most
//! [`LOG_BURST`] refusal lines are written per second, and the next line written says how
//! many were left out; the label set is closed (`&'static str` reasons only).

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::{ConnStats, KillSwitch};

/// A TLS (or plaintext) connection opened no `Sync` stream within the handshake timeout,
/// or stayed without one that long after its last stream ended.
pub const NO_STREAM_TIMEOUT: &str = "no_stream_timeout";
/// Refused at accept: the connection limit was reached.
pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
/// Refused: the connection already carries the maximum number of `Sync` streams.
pub const TOO_MANY_STREAMS: &str = "too_many_streams";

/// Refusal log lines allowed per second (the metric counts every refusal).
pub const LOG_BURST: u64 = 20;

/// Counts a refused or closed connection and logs why, within the log budget. `detail`
/// is the underlying error, if any.
pub(super) fn drop_connection(
    stats: &ConnStats,
    addr: Option<SocketAddr>,
    reason: &'static str,
    detail: Option<&dyn Display>,
) {
    stats.refuse(reason);
    let Some(suppressed) = LOG_BUDGET.take() else {
        return;
    };
    match detail {
        Some(error) => tracing::info!(
            peer = ?addr,
            reason,
            %error,
            suppressed,
            "connection dropped before a session"
        ),
        None => {
            tracing::info!(peer = ?addr, reason, suppressed, "connection dropped before a session")
        }
    }
}

/// A per-second allowance of log lines shared by every refusal.
struct LogBudget {
    second: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

static LOG_BUDGET: LogBudget = LogBudget {
    second: AtomicU64::new(0),
    used: AtomicU64::new(0),
    suppressed: AtomicU64::new(0),
};

impl LogBudget {
    /// `Some(lines left out since the last line)` when a line may be written now.
    /// Races between threads at a second boundary only shift a line or two.
    fn take(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
        if self.second.swap(now, Ordering::AcqRel) != now {
            self.used.store(0, Ordering::Release);
        }
        if self.used.fetch_add(1, Ordering::AcqRel) < LOG_BURST {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

/// Closes the connection (through `kill`) when it has no `Sync` stream open for `limit`:
/// first after the handshake, then after each time its last stream ended. Returns when
/// the connection closes (`closed`) or is killed.
pub(super) async fn close_when_idle(
    stats: ConnStats,
    mut streams: watch::Receiver<usize>,
    limit: Duration,
    kill: KillSwitch,
    closed: CancellationToken,
    addr: Option<SocketAddr>,
) {
    loop {
        let idle = tokio::select! {
            _ = closed.cancelled() => return,
            _ = kill.killed() => return,
            idle = streams.wait_for(|open| *open == 0) => idle.is_ok(),
        };
        if !idle {
            return;
        }
        let started = tokio::select! {
            _ = closed.cancelled() => return,
            _ = kill.killed() => return,
            started = tokio::time::timeout(limit, streams.wait_for(|open| *open > 0)) => started,
        };
        match started {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return,
            Err(_) => {
                drop_connection(&stats, addr, NO_STREAM_TIMEOUT, None);
                kill.kill();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::conn::OpenStreams;

    /// The idle watchdog of a connection whose streams are `streams` (10 s limit), its
    /// kill switch and its closed signal.
    fn watchdog(
        streams: &OpenStreams,
    ) -> (tokio::task::JoinHandle<()>, KillSwitch, CancellationToken) {
        let (kill, closed) = (KillSwitch::default(), CancellationToken::new());
        let task = tokio::spawn(close_when_idle(
            ConnStats::new(),
            streams.subscribe(),
            Duration::from_secs(10),
            kill.clone(),
            closed.clone(),
            None,
        ));
        (task, kill, closed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_streams_is_killed_after_the_limit() {
        let streams = OpenStreams::new(ConnStats::new());
        let (watchdog, kill, _closed) = watchdog(&streams);
        watchdog.await.unwrap();
        assert!(kill.is_killed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_keeps_the_connection_then_idleness_closes_it() {
        let streams = OpenStreams::new(ConnStats::new());
        let stream = streams.try_open(1).unwrap();
        assert!(streams.try_open(1).is_none(), "limit of one stream");
        let (watchdog, kill, _closed) = watchdog(&streams);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!kill.is_killed(), "a connection with a stream stays");
        drop(stream);
        assert_eq!(streams.count(), 0);
        watchdog.await.unwrap();
        assert!(kill.is_killed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_ends_the_watchdog_without_killing() {
        let streams = OpenStreams::new(ConnStats::new());
        let (watchdog, kill, closed) = watchdog(&streams);
        closed.cancel();
        watchdog.await.unwrap();
        assert!(!kill.is_killed());
    }

    #[test]
    fn the_log_budget_allows_a_burst_then_counts_the_rest() {
        let budget = LogBudget {
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        };
        let allowed = (0..LOG_BURST * 3)
            .filter(|_| budget.take().is_some())
            .count() as u64;
        // A second boundary in the middle allows at most one more burst.
        assert!((LOG_BURST..=LOG_BURST * 2).contains(&allowed), "{allowed}");
        assert!(budget.suppressed.load(Ordering::Acquire) >= LOG_BURST);
    }
}
