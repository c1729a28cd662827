//! Fan-out latency: the time from a batch being published by the hub to its frame being
//! handed to a client's HTTP/2 stream (`typha_fanout_latency_seconds`, one sample per
//! client per shared batch frame).
//!
//! Why this shape: every client receives the same `Bytes` for a batch (the breadcrumb's
//! pre-encoded frame), so the frame's data pointer identifies the batch without decoding
//! anything and without touching the session. [`Arrivals`] follows the hub's revisions
//! and stamps each new breadcrumb; each stream's body ([`super::outbound`]) looks every
//! breadcrumb up through its [`FanoutClock`] as it hands the breadcrumb to HTTP/2. A
//! frame whose batch was not stamped yet (its stream woke before the follower) is
//! stamped on the spot, so every batch is measured. Coalesced batches, snapshots and pings are not shared breadcrumbs
//! and are not measured.
//!
//! Invariant: [`Arrivals`] holds the breadcrumbs it indexes (bounded, oldest evicted), so
//! an indexed address cannot be reused by another allocation while it is indexed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use typha_proto::Revision;

use crate::hub::Hub;
use snapshot_cache::{Breadcrumb, DeltasSince};

/// Breadcrumbs indexed at most; older ones are no longer measured.
const MAX_INDEXED: usize = 4096;

#[derive(Default)]
struct Index {
    arrived: HashMap<usize, Instant>,
    order: VecDeque<Arc<Breadcrumb>>,
    /// The newest revision indexed.
    seen: Revision,
}

/// When each recent breadcrumb was published, keyed by its frame's address.
#[derive(Clone)]
pub(crate) struct Arrivals {
    hub: Hub,
    index: Arc<RwLock<Index>>,
}

impl Arrivals {
    /// Indexes breadcrumbs from `hub`'s current revision on.
    pub(crate) fn new(hub: Hub) -> Arrivals {
        let index = Index {
            seen: hub.revision(),
            ..Index::default()
        };
        Arrivals {
            hub,
            index: Arc::new(RwLock::new(index)),
        }
    }

    /// Indexes the breadcrumbs published since the last call, stamped `now`.
    fn refresh(&self, now: Instant) {
        if self.hub.revision() <= self.index.read().seen {
            return;
        }
        let mut index = self.index.write();
        match self.hub.deltas_since(index.seen) {
            DeltasSince::Crumbs(crumbs) => {
                if let Some(last) = crumbs.last() {
                    index.seen = last.revision;
                }
                for crumb in crumbs {
                    index.arrived.insert(crumb.frame.as_ptr() as usize, now);
                    index.order.push_back(crumb);
                }
                while index.order.len() > MAX_INDEXED {
                    if let Some(old) = index.order.pop_front() {
                        index.arrived.remove(&(old.frame.as_ptr() as usize));
                    }
                }
            }
            // Behind the history (only if this process starves): start over from here.
            DeltasSince::Expired => index.seen = self.hub.revision(),
            DeltasSince::UpToDate => {}
        }
    }

    fn lookup(&self, frame: &Bytes) -> Option<Instant> {
        self.index
            .read()
            .arrived
            .get(&(frame.as_ptr() as usize))
            .copied()
    }

    /// When `frame`'s breadcrumb was published, if it is one. A frame of a batch the
    /// follower has not indexed yet (its session woke first) is indexed now, so every
    /// batch is measured; that first client's sample is then slightly low.
    fn arrived(&self, frame: &Bytes) -> Option<Instant> {
        self.lookup(frame).or_else(|| {
            self.refresh(Instant::now());
            self.lookup(frame)
        })
    }

    /// Follows the hub's revisions until `shutdown`, stamping every new breadcrumb.
    pub(crate) async fn follow(self, shutdown: CancellationToken) {
        let mut revisions = self.hub.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = revisions.changed() => if changed.is_err() { return },
            }
            self.refresh(Instant::now());
        }
    }
}

/// Records the fan-out latency of the shared frames a stream's body hands to HTTP/2.
#[derive(Clone)]
pub(crate) struct FanoutClock {
    arrivals: Arrivals,
    latency: metrics::Histogram,
}

impl FanoutClock {
    pub(crate) fn new(arrivals: Arrivals) -> Self {
        FanoutClock {
            arrivals,
            latency: metrics::histogram!("typha_fanout_latency_seconds"),
        }
    }

    /// A breadcrumb's `frame` was handed to a client's HTTP/2 stream now.
    pub(crate) fn handed(&self, frame: &Bytes) {
        if let Some(arrived) = self.arrivals.arrived(frame) {
            self.latency.record(arrived.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::fixtures::node;
    use crate::hub::HubConfig;

    #[test]
    fn shared_frames_are_found_and_others_are_not() {
        let hub = Hub::new(HubConfig::default());
        let arrivals = Arrivals::new(hub.clone());
        let crumb = hub.apply(vec![node("a")]).unwrap();
        // Not indexed by a follower yet: found (and indexed) on first sight.
        assert!(arrivals.arrived(&crumb.frame.clone()).is_some());
        assert!(arrivals.lookup(&crumb.frame).is_some());
        assert!(
            arrivals
                .arrived(&Bytes::from(crumb.frame.to_vec()))
                .is_none()
        );
    }

    #[test]
    fn the_index_is_bounded() {
        let hub = Hub::new(HubConfig::default());
        let arrivals = Arrivals::new(hub.clone());
        let first = hub.apply(vec![node("n0")]).unwrap();
        arrivals.refresh(Instant::now());
        for i in 1..=MAX_INDEXED {
            hub.apply(vec![node(&format!("n{i}"))]).unwrap();
            arrivals.refresh(Instant::now());
        }
        assert!(arrivals.lookup(&first.frame).is_none());
        assert_eq!(arrivals.index.read().arrived.len(), MAX_INDEXED);
    }
}
