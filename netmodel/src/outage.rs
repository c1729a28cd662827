//! Logs an unreachable API server by its state changes, not by its retries: one line
//! when a watch starts failing ("down"), one every [`STILL_DOWN_EVERY`] while it keeps
//! failing ("still down", with the failure count), one when it answers again ("back",
//! with how long it was down). Each retry in between is a debug line and a counted
//! metric, so a long outage costs a few log lines instead of one per backoff step.
//!
//! [`Outage`] is a pure state machine over instants (tested with a paused clock);
//! [`report`] turns its [`Change`]s into log lines and the `typha_upstream_api_reachable`
//! gauge.

use std::time::Duration;

use tokio::time::Instant;

/// How often a continuing outage is logged again.
pub const STILL_DOWN_EVERY: Duration = Duration::from_secs(5 * 60);

/// One resource's reachability.
#[derive(Debug)]
pub struct Outage {
    every: Duration,
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    last_report: Instant,
    failures: u64,
}

/// A state change worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The first failure after success (or at start).
    Down,
    /// Still failing, `for_` after the first failure, `failures` attempts so far.
    StillDown {
        /// Time since the first failure.
        for_: Duration,
        /// Failed attempts so far.
        failures: u64,
    },
    /// Answering again after `after`, `failures` failed attempts.
    Back {
        /// How long it was down.
        after: Duration,
        /// Failed attempts during the outage.
        failures: u64,
    },
}

impl Default for Outage {
    fn default() -> Self {
        Outage::new(STILL_DOWN_EVERY)
    }
}

impl Outage {
    /// Reachable; a continuing outage is reported every `every`.
    pub fn new(every: Duration) -> Outage {
        Outage { every, down: None }
    }

    /// An attempt failed at `now`: `Down` on the first, `StillDown` once per `every`.
    pub fn failure(&mut self, now: Instant) -> Option<Change> {
        let Some(down) = &mut self.down else {
            self.down = Some(Down {
                since: now,
                last_report: now,
                failures: 1,
            });
            return Some(Change::Down);
        };
        down.failures += 1;
        if now.saturating_duration_since(down.last_report) < self.every {
            return None;
        }
        down.last_report = now;
        Some(Change::StillDown {
            for_: now.saturating_duration_since(down.since),
            failures: down.failures,
        })
    }

    /// An attempt succeeded at `now`: `Back` if it was down.
    pub fn success(&mut self, now: Instant) -> Option<Change> {
        let down = self.down.take()?;
        Some(Change::Back {
            after: now.saturating_duration_since(down.since),
            failures: down.failures,
        })
    }

    /// Whether the last attempt failed.
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }
}

/// Logs `change` for `resource` (with the error that caused it, if any) and sets
/// `typha_upstream_api_reachable{resource}`.
pub fn report(resource: &'static str, change: Change, error: Option<&dyn std::fmt::Display>) {
    let error = error.map(ToString::to_string).unwrap_or_default();
    match change {
        Change::Down => {
            metrics::gauge!("typha_upstream_api_reachable", "resource" => resource).set(0.0);
            tracing::warn!(resource, %error, "API server unreachable; retrying with backoff");
        }
        Change::StillDown { for_, failures } => {
            let for_ = humanize(for_);
            tracing::warn!(resource, %error, %for_, failures, "API server still unreachable");
        }
        Change::Back { after, failures } => {
            metrics::gauge!("typha_upstream_api_reachable", "resource" => resource).set(1.0);
            let after = humanize(after);
            tracing::info!(resource, %after, failures, "API server reachable again");
        }
    }
}

/// Whole seconds, e.g. `5m 3s`.
fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m {s}s"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn down_still_down_every_interval_then_back() {
        let mut outage = Outage::new(Duration::from_secs(300));
        assert_eq!(outage.success(Instant::now()), None, "up stays quiet");
        assert_eq!(outage.failure(Instant::now()), Some(Change::Down));
        assert!(outage.is_down());
        // Retries every 30 s for 12 minutes: two "still down" lines, at 5 and 10 min.
        let mut changes = Vec::new();
        for _ in 0..24 {
            tokio::time::advance(Duration::from_secs(30)).await;
            changes.extend(outage.failure(Instant::now()));
        }
        assert_eq!(
            changes,
            [
                Change::StillDown {
                    for_: Duration::from_secs(300),
                    failures: 11
                },
                Change::StillDown {
                    for_: Duration::from_secs(600),
                    failures: 21
                },
            ]
        );
        assert_eq!(
            outage.success(Instant::now()),
            Some(Change::Back {
                after: Duration::from_secs(720),
                failures: 25
            })
        );
        assert_eq!(outage.success(Instant::now()), None);
        assert_eq!(outage.failure(Instant::now()), Some(Change::Down), "again");
        assert_eq!(humanize(Duration::from_secs(303)), "5m 3s");
    }
}
