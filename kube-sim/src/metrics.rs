//! Request and traffic counters for tests and the load test (plain atomics, no registry).
//!
//! Counters only grow; `open_watches` goes up and down. Byte counts are response *body*
//! bytes (JSON), which is what a fan-out proxy saves the API server from sending.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Live counters, shared by the HTTP handlers and the handle.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Every HTTP request served.
    pub requests: AtomicU64,
    /// LIST requests (collection GET without watch).
    pub list_requests: AtomicU64,
    /// LIST requests that carried a `continue` token.
    pub continue_requests: AtomicU64,
    /// WATCH requests.
    pub watch_requests: AtomicU64,
    /// Watch streams currently open.
    pub open_watches: AtomicI64,
    /// Mutating requests (POST, PUT, PATCH, DELETE).
    pub write_requests: AtomicU64,
    /// Response body bytes of all responses, watch streams included.
    pub response_bytes: AtomicU64,
    /// Response body bytes written on watch streams.
    pub watch_bytes: AtomicU64,
    /// Watch events written (bookmarks and errors included).
    pub watch_events: AtomicU64,
    /// Requests answered with an injected failure (see [`crate::faults`]).
    pub faults_injected: AtomicU64,
    /// Times every open watch was cut through [`crate::faults::Faults::cut_watches`].
    pub watch_cuts: AtomicU64,
    /// Watches refused because they start beyond the current resourceVersion (504).
    pub too_large_versions: AtomicU64,
    /// Request bodies refused: undecodable, too large, unsupported media type, invalid
    /// or failing patch, unknown fields under Strict validation.
    pub rejected_bodies: AtomicU64,
    /// Woken on every change, so tests can await a condition instead of polling.
    changed: tokio::sync::Notify,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// See [`Metrics::requests`].
    pub requests: u64,
    /// See [`Metrics::list_requests`].
    pub list_requests: u64,
    /// See [`Metrics::continue_requests`].
    pub continue_requests: u64,
    /// See [`Metrics::watch_requests`].
    pub watch_requests: u64,
    /// See [`Metrics::open_watches`].
    pub open_watches: i64,
    /// See [`Metrics::write_requests`].
    pub write_requests: u64,
    /// See [`Metrics::response_bytes`].
    pub response_bytes: u64,
    /// See [`Metrics::watch_bytes`].
    pub watch_bytes: u64,
    /// See [`Metrics::watch_events`].
    pub watch_events: u64,
    /// See [`Metrics::faults_injected`].
    pub faults_injected: u64,
    /// See [`Metrics::watch_cuts`].
    pub watch_cuts: u64,
    /// See [`Metrics::too_large_versions`].
    pub too_large_versions: u64,
    /// See [`Metrics::rejected_bodies`].
    pub rejected_bodies: u64,
}

impl Metrics {
    /// Reads every counter (each read is atomic; the set is not a single snapshot).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests: r(&self.requests),
            list_requests: r(&self.list_requests),
            continue_requests: r(&self.continue_requests),
            watch_requests: r(&self.watch_requests),
            open_watches: self.open_watches.load(Ordering::Relaxed),
            write_requests: r(&self.write_requests),
            response_bytes: r(&self.response_bytes),
            watch_bytes: r(&self.watch_bytes),
            watch_events: r(&self.watch_events),
            faults_injected: r(&self.faults_injected),
            watch_cuts: r(&self.watch_cuts),
            too_large_versions: r(&self.too_large_versions),
            rejected_bodies: r(&self.rejected_bodies),
        }
    }

    /// Waits until `done` holds for a snapshot (checked now and after every change).
    pub async fn wait_until(&self, done: impl Fn(&MetricsSnapshot) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before checking, so a change between the check and the await wakes us.
            changed.as_mut().enable();
            if done(&self.snapshot()) {
                return;
            }
            changed.await;
        }
    }

    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// A watch stream opened (+1) or closed (-1).
    pub(crate) fn watch_opened(&self, delta: i64) {
        self.open_watches.fetch_add(delta, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}
