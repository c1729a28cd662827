//! The live sessions of one server, and a way to tell one of them goodbye.
//!
//! Why: load spreading and graceful drain both have to pick live clients and ask them,
//! one at a time, to leave; the session task itself decides how to say it (it owns the
//! outgoing queue). Each session holds a [`Registration`] for as long as its task runs,
//! plus the receiving end of its farewell channel.
//!
//! Invariants: a session appears here from its `Sync` call until its task ends (the
//! registration is dropped when the task returns, never before); a session is told at
//! most once; `staying` counts the sessions not yet told, which is what rebalancing
//! compares with its target (a told session may take a moment to end, and must not be
//! counted twice). Sessions are picked newest first (see [`Sessions::tell_newest`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use typha_proto::pb::GoodbyeReason;

/// The receiving end a session watches: `Some(reason)` once it must say goodbye.
pub type Farewell = watch::Receiver<Option<GoodbyeReason>>;

/// Session counts, published after every change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Sessions whose task is running.
    pub open: usize,
    /// Open sessions not yet told goodbye.
    pub staying: usize,
}

struct Entry {
    farewell: watch::Sender<Option<GoodbyeReason>>,
    told: bool,
}

struct Inner {
    /// Keyed by registration order: the last entry is the newest session.
    entries: Mutex<BTreeMap<u64, Entry>>,
    next_id: Mutex<u64>,
    counts: watch::Sender<SessionCounts>,
}

impl Inner {
    /// Recounts and publishes; call with the entries lock held so counts stay ordered.
    fn publish(&self, entries: &BTreeMap<u64, Entry>) {
        let counts = SessionCounts {
            open: entries.len(),
            staying: entries.values().filter(|e| !e.told).count(),
        };
        self.counts.send_replace(counts);
    }
}

/// A cheap, clonable handle to the registry of live sessions.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new()
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("counts", &self.counts())
            .finish()
    }
}

/// Held by a session task; dropping it removes the session from the registry.
pub struct Registration {
    id: u64,
    inner: Arc<Inner>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.inner.entries.lock();
        entries.remove(&self.id);
        self.inner.publish(&entries);
    }
}

impl Sessions {
    /// An empty registry.
    pub fn new() -> Sessions {
        let (counts, _) = watch::channel(SessionCounts::default());
        Sessions {
            inner: Arc::new(Inner {
                entries: Mutex::new(BTreeMap::new()),
                next_id: Mutex::new(0),
                counts,
            }),
        }
    }

    /// Adds a session; it must keep the registration until its task ends and watch the
    /// farewell receiver.
    pub fn register(&self) -> (Registration, Farewell) {
        let id = {
            let mut next = self.inner.next_id.lock();
            *next += 1;
            *next
        };
        let (farewell, rx) = watch::channel(None);
        let mut entries = self.inner.entries.lock();
        entries.insert(
            id,
            Entry {
                farewell,
                told: false,
            },
        );
        self.inner.publish(&entries);
        (
            Registration {
                id,
                inner: self.inner.clone(),
            },
            rx,
        )
    }

    /// The current counts.
    pub fn counts(&self) -> SessionCounts {
        *self.inner.counts.borrow()
    }

    /// A receiver of the counts, notified after every change.
    pub fn watch(&self) -> watch::Receiver<SessionCounts> {
        self.inner.counts.subscribe()
    }

    /// Waits until the counts satisfy `done` (checked now and after every change).
    pub async fn wait_for(&self, done: impl Fn(&SessionCounts) -> bool) {
        let mut rx = self.watch();
        // An Err means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|counts| done(counts)).await;
    }

    /// Tells the most recently registered session that has not been told yet to say
    /// goodbye with `reason`; false when every session has been told already.
    ///
    /// Newest first: a client that just arrived is the one that took this replica over
    /// its target (it may have been shed by another replica a moment ago), while the
    /// long-lived sessions are where spreading already placed them; shedding the newest
    /// moves the fewest settled clients. Draining tells everyone, so the order only
    /// matters for rebalancing.
    pub fn tell_newest(&self, reason: GoodbyeReason) -> bool {
        let mut entries = self.inner.entries.lock();
        let Some(entry) = entries.values_mut().rev().find(|e| !e.told) else {
            return false;
        };
        entry.told = true;
        entry.farewell.send_replace(Some(reason));
        self.inner.publish(&entries);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn newest_is_told_first_and_once() {
        let sessions = Sessions::new();
        let (r1, f1) = sessions.register();
        let (_r2, f2) = sessions.register();
        assert_eq!(
            sessions.counts(),
            SessionCounts {
                open: 2,
                staying: 2
            }
        );
        assert!(sessions.tell_newest(GoodbyeReason::Rebalance));
        assert_eq!(*f2.borrow(), Some(GoodbyeReason::Rebalance));
        assert_eq!(*f1.borrow(), None);
        assert_eq!(sessions.counts().staying, 1);
        assert!(sessions.tell_newest(GoodbyeReason::Shutdown));
        assert_eq!(*f1.borrow(), Some(GoodbyeReason::Shutdown));
        assert!(!sessions.tell_newest(GoodbyeReason::Shutdown));
        drop(r1);
        assert_eq!(
            sessions.counts(),
            SessionCounts {
                open: 1,
                staying: 0
            }
        );
    }
}
