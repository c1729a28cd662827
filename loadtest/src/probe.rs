//! Stamps and their detection: how propagation latency is measured across processes.
//!
//! Every churn write carries a stamp, the nanoseconds since the probe's epoch at which
//! it was sent: a pod label `lt-stamp`, or a policy podSelector `lt-stamp` (deletions are
//! looked up by pod name, registered just before the DELETE is sent). Clients detect
//! stamps in what they apply and record `now - stamp`. The epoch is a reading of the
//! host's CLOCK_MONOTONIC, which every process on the host shares: the agent worker
//! processes ([`crate::worker`]) get the parent's epoch at start and time stamps against
//! the same clock, so no coordination is needed per change. Deletions are forwarded to
//! them as they are registered ([`Probe::subscribe_deletions`]); a deletion observed
//! before its registration arrived is kept pending and timed when it does. The
//! measured span starts before the API accepted the write, so it slightly overstates
//! "accepted -> applied" by the write's own round trip (reported separately).
//!
//! A barrier (label `lt-barrier` on the pod `lt-barrier`) is written after churn; a
//! client has converged once it applied the latest barrier and is in sync.
//!
//! Against a real cluster churn writes service accounts instead of pods: typha turns
//! them into Profiles `ksa.<ns>.<name>` whose labels carry the service account's with a
//! `pcsa.` prefix, so the same marks are found there (a deletion under the service
//! account's own name, as the writer registered it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use tokio::sync::{Notify, mpsc};
use typha_proto::{Kind, Update, Value};

use crate::latency::LatencySeries;

/// The label (and policy podSelector key) carrying a stamp.
pub const STAMP_LABEL: &str = "lt-stamp";
/// The label carrying the barrier number.
pub const BARRIER_LABEL: &str = "lt-barrier";
/// The pod whose label is the barrier.
pub const BARRIER_POD: &str = "lt-barrier";

/// What one applied change tells the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A stamped change (nanoseconds since the epoch when written).
    Stamp(u64),
    /// The barrier reached this number.
    Barrier(u64),
    /// A pod's endpoint was deleted (its name, to look up the stamp).
    Deleted(String),
}

/// Nanoseconds of the host's CLOCK_MONOTONIC (the same clock in every process).
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// What the probe knows of a deleted pod.
enum Deletion {
    /// Its registration arrived: the deletion's stamp.
    Stamped(u64),
    /// Observed before its registration arrived: (when observed, slow), timed when it does.
    Seen(Vec<(Duration, bool)>),
}

/// Shared by the writer and every client of a scenario (in a worker process: by its
/// agents, with the parent's epoch).
pub struct Probe {
    epoch_ns: u64,
    /// Latency of normal clients.
    pub normal: LatencySeries,
    /// Latency of deliberately slow clients (slow scenario).
    pub slow: LatencySeries,
    /// One map under one lock: a registration and an observation of the same pod never
    /// miss each other.
    deletions: Mutex<HashMap<String, Deletion>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<(String, u64)>>>,
    /// Woken whenever a client reaches a barrier.
    pub barrier_reached: Notify,
    /// Signalled (one permit) whenever a client's barrier or in-sync state changed.
    pub changed: Notify,
}

impl Probe {
    /// A probe whose per-second series hold `seconds` seconds, its epoch now.
    pub fn new(seconds: usize) -> Arc<Probe> {
        Probe::with_epoch(monotonic_ns(), seconds)
    }

    /// A probe with another process's epoch ([`Probe::epoch_ns`]).
    pub fn with_epoch(epoch_ns: u64, seconds: usize) -> Arc<Probe> {
        Arc::new(Probe {
            epoch_ns,
            normal: LatencySeries::new(seconds),
            slow: LatencySeries::new(seconds),
            deletions: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(Vec::new()),
            barrier_reached: Notify::new(),
            changed: Notify::new(),
        })
    }

    /// The epoch: CLOCK_MONOTONIC nanoseconds.
    pub fn epoch_ns(&self) -> u64 {
        self.epoch_ns
    }

    /// The per-second series' length.
    pub fn seconds(&self) -> usize {
        self.normal.seconds()
    }

    /// Time since the epoch.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(monotonic_ns().saturating_sub(self.epoch_ns))
    }

    /// A stamp for a write about to be sent.
    pub fn stamp(&self) -> u64 {
        monotonic_ns().saturating_sub(self.epoch_ns)
    }

    /// Registers the deletion of `pod` and returns its stamp (forwarded to every
    /// subscriber).
    pub fn stamp_delete(&self, pod: &str) -> u64 {
        let stamp = self.stamp();
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.retain(|s| s.send((pod.to_string(), stamp)).is_ok());
        }
        self.register_delete(pod, stamp);
        stamp
    }

    /// Every deletion registered from now on, as (pod, stamp).
    pub fn subscribe_deletions(&self) -> mpsc::UnboundedReceiver<(String, u64)> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.push(tx);
        }
        rx
    }

    /// Registers the deletion of `pod` stamped `stamp` elsewhere (a worker learns them
    /// from the parent); times the observations that were waiting for it.
    pub fn register_delete(&self, pod: &str, stamp: u64) {
        let previous = match self.deletions.lock() {
            Ok(mut deletions) => deletions.insert(pod.to_string(), Deletion::Stamped(stamp)),
            Err(_) => None,
        };
        if let Some(Deletion::Seen(waiting)) = previous {
            for (seen, slow) in waiting {
                self.record(stamp, seen, slow);
            }
        }
    }

    /// Records that a client applied the change stamped `stamp` just now.
    pub fn observe(&self, stamp: u64, slow: bool) {
        self.record(stamp, self.elapsed(), slow);
    }

    fn record(&self, stamp: u64, seen: Duration, slow: bool) {
        let written = Duration::from_nanos(stamp);
        let latency = seen.saturating_sub(written);
        let series = if slow { &self.slow } else { &self.normal };
        series.record(written, latency);
    }

    /// The stamp of `pod`'s deletion, or `None` after keeping this observation until
    /// its registration arrives.
    fn deletion_stamp(&self, pod: &str, slow: bool) -> Option<u64> {
        let mut deletions = self.deletions.lock().ok()?;
        match deletions.get_mut(pod) {
            Some(Deletion::Stamped(stamp)) => return Some(*stamp),
            Some(Deletion::Seen(waiting)) => waiting.push((self.elapsed(), slow)),
            None => {
                let seen = vec![(self.elapsed(), slow)];
                deletions.insert(pod.to_string(), Deletion::Seen(seen));
            }
        }
        None
    }

    /// Records a mark; returns the barrier number if it was one.
    pub fn observe_mark(&self, mark: &Mark, slow: bool) -> Option<u64> {
        match mark {
            Mark::Stamp(stamp) => self.observe(*stamp, slow),
            Mark::Deleted(pod) => {
                if let Some(stamp) = self.deletion_stamp(pod, slow) {
                    self.observe(stamp, slow);
                }
            }
            Mark::Barrier(n) => return Some(*n),
        }
        None
    }
}

/// How typha prefixes a service account's labels in its Profile.
const SA_LABEL_PREFIX: &str = "pcsa.";

/// The service account of a Profile name `ksa.<ns>.<sa>` (namespaces hold no dots).
fn service_account(profile: &str) -> Option<&str> {
    profile
        .strip_prefix("ksa.")?
        .split_once('.')
        .map(|(_, sa)| sa)
}

/// The digits that follow `key` in `text` (`lt-stamp == '123'` -> 123).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let digits: String = rest[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The mark an applied model update carries, if any.
pub fn mark_of(update: &Update) -> Option<Mark> {
    match (&update.value, update.key.kind()) {
        (Some(Value::WorkloadEndpoint(wep)), _) => {
            if let Some(n) = wep.labels.get(BARRIER_LABEL) {
                return n.parse().ok().map(Mark::Barrier);
            }
            wep.labels
                .get(STAMP_LABEL)
                .and_then(|s| s.parse().ok())
                .map(Mark::Stamp)
        }
        (Some(Value::Policy(policy)), _) => {
            number_after(&policy.selector, STAMP_LABEL).map(Mark::Stamp)
        }
        (None, Kind::WorkloadEndpoint) if update.key.name().starts_with("lt-") => {
            Some(Mark::Deleted(update.key.name().to_string()))
        }
        (Some(Value::Profile(profile)), _) => {
            let label = |name: &str| profile.labels.get(&format!("{SA_LABEL_PREFIX}{name}"));
            if let Some(n) = label(BARRIER_LABEL) {
                return n.parse().ok().map(Mark::Barrier);
            }
            label(STAMP_LABEL)
                .and_then(|s| s.parse().ok())
                .map(Mark::Stamp)
        }
        (None, Kind::Profile) => service_account(update.key.name())
            .filter(|sa| sa.starts_with("lt-"))
            .map(|sa| Mark::Deleted(sa.to_string())),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use typha_proto::{Key, pb};

    fn wep(name: &str, labels: &[(&str, &str)]) -> Update {
        let value = pb::WorkloadEndpoint {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        Update::new(
            Key::new(Kind::WorkloadEndpoint, "ns-0", name).unwrap(),
            Some(Value::WorkloadEndpoint(value)),
        )
        .unwrap()
    }

    /// A stamp, a barrier and no mark on objects `object` builds (from a name and
    /// labels), and the deletion of `gone` (the object of the pod `lt-7`).
    fn assert_marks_of(object: impl Fn(&str, &[(&str, &str)]) -> Update, gone: Key) {
        let stamped = object("lt-1", &[(STAMP_LABEL, "42")]);
        assert_eq!(mark_of(&stamped), Some(Mark::Stamp(42)));
        let barrier = object(BARRIER_POD, &[(BARRIER_LABEL, "3")]);
        assert_eq!(mark_of(&barrier), Some(Mark::Barrier(3)));
        assert_eq!(mark_of(&object("other", &[("app", "x")])), None);
        let deleted = mark_of(&Update::delete(gone));
        assert_eq!(deleted, Some(Mark::Deleted("lt-7".into())));
    }

    #[test]
    fn marks_are_found_in_endpoints_policies_and_deletions() {
        let gone = Key::new(Kind::WorkloadEndpoint, "ns-0", "lt-7").unwrap();
        assert_marks_of(wep, gone);
        let policy = pb::Policy {
            selector: "projectcalico.org/namespace == 'ns-0' && lt-stamp == '977'".into(),
            ..Default::default()
        };
        let update = Update::new(
            Key::new(Kind::K8sNetworkPolicy, "ns-0", "knp.default.lt-policy").unwrap(),
            Some(Value::Policy(policy)),
        )
        .unwrap();
        assert_eq!(mark_of(&update), Some(Mark::Stamp(977)));
    }

    #[test]
    fn marks_are_found_in_service_account_profiles() {
        let profile = |name: &str, labels: &[(&str, &str)]| {
            let value = pb::Profile {
                labels: labels
                    .iter()
                    .map(|(k, v)| (format!("pcsa.{k}"), v.to_string()))
                    .collect(),
            };
            Update::new(
                Key::cluster(Kind::Profile, format!("ksa.loadtest.{name}")).unwrap(),
                Some(Value::Profile(value)),
            )
            .unwrap()
        };
        assert_marks_of(
            profile,
            Key::cluster(Kind::Profile, "ksa.loadtest.lt-7").unwrap(),
        );
        let namespace = Update::delete(Key::cluster(Kind::Profile, "kns.lt-x").unwrap());
        assert_eq!(mark_of(&namespace), None);
    }

    #[test]
    fn deletions_are_timed_from_their_registration() {
        let probe = Probe::new(10);
        probe.stamp_delete("lt-1");
        assert_eq!(
            probe.observe_mark(&Mark::Deleted("lt-1".into()), false),
            None
        );
        assert_eq!(
            probe.observe_mark(&Mark::Deleted("lt-2".into()), false),
            None
        );
        assert_eq!(probe.normal.total.count(), 1);
        assert_eq!(probe.observe_mark(&Mark::Barrier(5), true), Some(5));
        // lt-2's registration arrives after its observation (a worker's order).
        probe.register_delete("lt-2", probe.stamp());
        assert_eq!(probe.normal.total.count(), 2);
    }

    #[test]
    fn deletions_reach_subscribers_and_share_the_epoch() {
        let parent = Probe::new(10);
        let mut rx = parent.subscribe_deletions();
        let stamp = parent.stamp_delete("lt-3");
        assert_eq!(rx.try_recv().unwrap(), ("lt-3".to_string(), stamp));
        let worker = Probe::with_epoch(parent.epoch_ns(), 10);
        assert!(worker.stamp() >= stamp, "one clock: later in the worker");
    }
}
