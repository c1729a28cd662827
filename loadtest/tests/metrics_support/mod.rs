//! The metrics of a test process, read through the debugging recorder (nextest runs each
//! test in its own process, so each test owns the recorder): counters and gauges by name
//! and first label value. Shared by `fanout.rs` and the hostile-client tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The process's metrics. The debugging recorder resets counters and gauges on every
/// snapshot, so values are accumulated here.
pub struct Metrics {
    snapshotter: Snapshotter,
    seen: HashMap<(String, String), f64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(&self.seen).finish()
    }
}

impl Metrics {
    /// Installs the recorder for this test process.
    pub fn install() -> Metrics {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::set_global_recorder(recorder).expect("one recorder per test process");
        Metrics {
            snapshotter,
            seen: HashMap::new(),
        }
    }

    fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let label = key
                .key()
                .labels()
                .next()
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let delta = match value {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => continue,
            };
            *self
                .seen
                .entry((key.key().name().to_string(), label))
                .or_default() += delta;
        }
    }

    /// A counter or gauge (by its first label value, "" for none) now.
    pub fn get(&mut self, name: &str, label: &str) -> f64 {
        self.refresh();
        self.seen
            .get(&(name.to_string(), label.to_string()))
            .copied()
            .unwrap_or(0.0)
    }

    /// `typha_connections_dropped_total{reason}` now.
    pub fn dropped(&mut self, reason: &str) -> u64 {
        self.get("typha_connections_dropped_total", reason) as u64
    }

    /// `typha_connections_open` now.
    pub fn open(&mut self) -> u64 {
        self.get("typha_connections_open", "") as u64
    }
}
