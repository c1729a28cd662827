//! Lock-free latency recording for millions of samples from thousands of client tasks.
//!
//! A log-linear histogram over microseconds (32 sub-buckets per power of two, so any
//! reported percentile is within about 3% of the true sample; the maximum is exact), plus
//! one histogram per second of the run keyed by when the change was written, for the
//! latency-over-time plot. Recording is a few relaxed atomic adds.
//!
//! An agent worker process records into its own series and ships what it recorded since
//! the last time ([`LatencySeries::drain`], sparse: only buckets that hold samples); the
//! parent adds that into its series ([`LatencySeries::absorb`]), so percentiles over all
//! workers are exact merges, not averages of percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below 2*SUB are exact; above, 32 buckets per power of two up to 2^63.
const BUCKETS: usize = (2 * SUB as usize) + (64 - SUB_BITS as usize - 1) * SUB as usize;

fn index(us: u64) -> usize {
    if us < 2 * SUB {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = us >> shift; // in [SUB, 2*SUB)
    (2 * SUB + u64::from(shift - 1) * SUB + (mantissa - SUB)) as usize
}

/// The midpoint of bucket `i`, microseconds.
fn value(i: usize) -> f64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i as f64;
    }
    let shift = (i - 2 * SUB) / SUB + 1;
    let mantissa = (i - 2 * SUB) % SUB + SUB;
    let low = mantissa << shift;
    low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
}

/// A concurrent histogram of durations.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(bucket) = self.buckets.get(index(us)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Moves every sample out: the non-empty buckets and the maximum.
    pub fn drain(&self) -> HistogramDelta {
        let mut buckets = Vec::new();
        for (i, b) in self.buckets.iter().enumerate() {
            if b.load(Ordering::Relaxed) > 0 {
                buckets.push((i as u32, b.swap(0, Ordering::Relaxed)));
            }
        }
        self.count.store(0, Ordering::Relaxed);
        HistogramDelta {
            buckets,
            max_us: self.max_us.swap(0, Ordering::Relaxed),
        }
    }

    /// Adds samples drained elsewhere.
    pub fn absorb(&self, delta: &HistogramDelta) {
        for (i, n) in &delta.buckets {
            if let Some(bucket) = self.buckets.get(*i as usize) {
                bucket.fetch_add(*n, Ordering::Relaxed);
                self.count.fetch_add(*n, Ordering::Relaxed);
            }
        }
        self.max_us.fetch_max(delta.max_us, Ordering::Relaxed);
    }

    /// The cumulative distribution: (latency ms, share of samples at or below it) at
    /// every non-empty bucket, ending at (max, 1.0).
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total = counts.iter().sum::<u64>() as f64;
        let max = self.max_us.load(Ordering::Relaxed) as f64 / 1000.0;
        let mut seen = 0;
        let mut points = Vec::new();
        for (i, c) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            seen += c;
            points.push(((value(i) / 1000.0).min(max), seen as f64 / total));
        }
        points
    }

    /// p50 / p99 / max in milliseconds.
    pub fn percentiles(&self) -> Percentiles {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Percentiles::default();
        }
        let at = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return value(i) / 1000.0;
                }
            }
            0.0
        };
        let max = self.max_us.load(Ordering::Relaxed) as f64 / 1000.0;
        Percentiles {
            count: total,
            p50: at(0.5).min(max),
            p99: at(0.99).min(max),
            max,
        }
    }
}

/// p50 / p99 / max of a sample, milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Maximum, ms.
    pub max: f64,
}

/// Samples moved out of a [`Histogram`]: (bucket, count) of non-empty buckets.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HistogramDelta {
    /// Non-empty buckets.
    pub buckets: Vec<(u32, u64)>,
    /// The largest sample, microseconds.
    pub max_us: u64,
}

/// Samples moved out of a [`LatencySeries`]: the per-second deltas that hold samples
/// (the whole-run histogram is their sum).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SeriesDelta {
    /// (second, its samples).
    pub seconds: Vec<(u32, HistogramDelta)>,
}

impl SeriesDelta {
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }
}

/// A whole-run histogram and one per second (by write time).
pub struct LatencySeries {
    /// Every sample.
    pub total: Histogram,
    seconds: Vec<Histogram>,
}

/// One second of the latency-over-time series.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct SecondPoint {
    /// Seconds since the scenario started (when the changes were written).
    pub t: f64,
    /// Percentiles of changes written in that second.
    pub latency_ms: Percentiles,
}

impl LatencySeries {
    /// Room for `seconds` of per-second histograms (later samples land in the last).
    pub fn new(seconds: usize) -> LatencySeries {
        LatencySeries {
            total: Histogram::default(),
            seconds: (0..seconds.max(1)).map(|_| Histogram::default()).collect(),
        }
    }

    /// Records a sample for a change written `written_at` after the scenario began.
    pub fn record(&self, written_at: Duration, latency: Duration) {
        self.total.record(latency);
        let slot = (written_at.as_secs() as usize).min(self.seconds.len() - 1);
        if let Some(h) = self.seconds.get(slot) {
            h.record(latency);
        }
    }

    /// How many seconds the series holds.
    pub fn seconds(&self) -> usize {
        self.seconds.len()
    }

    /// Moves every sample out (see [`SeriesDelta`]); the whole-run histogram is emptied too.
    pub fn drain(&self) -> SeriesDelta {
        let seconds = self
            .seconds
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count() > 0)
            .map(|(i, h)| (i as u32, h.drain()))
            .collect();
        self.total.drain();
        SeriesDelta { seconds }
    }

    /// Adds samples drained elsewhere (with the same epoch).
    pub fn absorb(&self, delta: &SeriesDelta) {
        for (second, h) in &delta.seconds {
            self.total.absorb(h);
            if let Some(slot) = self.seconds.get(*second as usize) {
                slot.absorb(h);
            }
        }
    }

    /// The per-second points that hold samples.
    pub fn points(&self) -> Vec<SecondPoint> {
        self.seconds
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count() > 0)
            .map(|(i, h)| SecondPoint {
                t: i as f64,
                latency_ms: h.percentiles(),
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for us in [
            0u64, 1, 63, 64, 65, 100, 1_000, 12_345, 1_000_000, 99_999_999,
        ] {
            let i = index(us);
            assert!(i >= last && i < BUCKETS, "{us} -> {i}");
            last = i;
            let v = value(i);
            assert!(
                (v - us as f64).abs() <= (us as f64) * 0.04 + 1.0,
                "{us} ~ {v}"
            );
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_of_a_uniform_sample() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p = h.percentiles();
        assert_eq!(p.count, 100);
        assert!((p.p50 - 50.0).abs() < 2.0, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 3.0, "{p:?}");
        assert_eq!(p.max, 100.0);
        assert_eq!(Histogram::default().percentiles(), Percentiles::default());
    }

    #[test]
    fn series_groups_by_write_second() {
        let s = LatencySeries::new(3);
        s.record(Duration::from_millis(100), Duration::from_millis(5));
        s.record(Duration::from_secs(10), Duration::from_millis(7));
        let points = s.points();
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].t, 2.0);
        assert_eq!(s.total.count(), 2);
    }

    #[test]
    fn drained_series_merge_exactly() {
        let (a, b, merged) = (
            LatencySeries::new(4),
            LatencySeries::new(4),
            LatencySeries::new(4),
        );
        for ms in 1..=50u64 {
            a.record(Duration::from_secs(ms % 3), Duration::from_millis(ms));
            b.record(Duration::from_secs(1), Duration::from_millis(ms + 50));
        }
        merged.absorb(&a.drain());
        merged.absorb(&b.drain());
        assert_eq!(a.total.count(), 0, "drained");
        assert!(a.drain().is_empty());
        let p = merged.total.percentiles();
        assert_eq!(p.count, 100);
        assert_eq!(p.max, 100.0);
        assert!((p.p50 - 50.0).abs() < 2.0, "{p:?}");
        assert_eq!(merged.points().len(), 3);
        let cdf = merged.total.cdf();
        assert_eq!(cdf.last().map(|c| c.1), Some(1.0));
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
    }
}
