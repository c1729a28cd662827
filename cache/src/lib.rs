//! The snapshot cache: the one state every client shares, plus an ordered, bounded log of
//! the delta batches ("breadcrumbs") that led to it.
//!
//! It is a pure data structure: no I/O, no timers, no metrics registry, no runtime. The
//! owner applies a batch of updates and gets back the breadcrumb of the new revision.
//!
//! Every frame is encoded once and shared as [`Bytes`]: each entry keeps only its encoded
//! `KeyValue` (the exact bytes its digest contribution hashes; no decoded value, see
//! [`entry`]), a breadcrumb keeps its `DeltaBatch` frame (its updates are slices of it),
//! and a snapshot is a concatenation of held entries, never a re-encoding. Per-client
//! work is only [`coalesce`] for clients that lag.
//!
//! Memory: the state costs its encoded bytes plus the keys (about 500 bytes per entry
//! by [`SnapshotCache::held_bytes`] at 150,000 kube-sim pods; typha/tests/memory_budget.rs
//! holds the live heap to a budget);
//! the log at most `max_log_bytes` of frames. With `history_before_sync` off (typha),
//! breadcrumbs applied before [`SnapshotCache::mark_in_sync`] are not kept beyond the
//! newest: no client can be behind a state it was never served, and the initial list
//! would otherwise keep a second copy of the state as frames.
//!
//! The state is a `BTreeMap` rather than a `HashMap`, on measurement (benches/snapshot.rs,
//! 150k endpoints): key order puts the pods of one workload next to each other in a
//! snapshot, so their shared labels, profiles and ports compress against each other
//! (14:1 instead of 5:1 at zstd level 1, and compression twice as fast), snapshots and
//! `iter` are deterministic, and there is no rehash pause as the state grows. Applying
//! costs about the same.
//!
//! Invariants:
//! - `revision` grows by exactly one per breadcrumb: per batch that changed the state,
//!   and per progress batch whose version advances clients lack (an empty breadcrumb);
//!   any other batch that changes nothing leaves revision, digest and log untouched;
//! - `digest` always equals the sum of `EntryHash::of(encoded)` over held entries;
//! - the log's breadcrumbs are contiguous (`log[i].revision == log[i + 1].from`), the
//!   newest ends at `revision`, and the log is empty only while `revision` is 0;
//! - the log is trimmed from the oldest end to its bounds, always keeping the newest crumb;
//! - within one breadcrumb each key appears once;
//! - version bookkeeping (resourceVersions per breadcrumb, the current vector and the
//!   history's floor, for cross-replica resume) follows the rules of [`versions`].

mod crumb;
mod entry;
mod snapshot;
pub mod versions;

#[cfg(test)]
mod props;
#[cfg(test)]
mod resume_props;
#[cfg(test)]
mod sharing_tests;
#[cfg(test)]
mod tests;

use std::collections::btree_map::Entry as StateEntry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use typha_proto::{Digest, Key, Revision, Update, Value, VersionVector, frame};

pub use crumb::{Breadcrumb, coalesce};
pub use snapshot::{EncodedSnapshot, RawChunk, RawSnapshot, compress};
pub use versions::{CrumbVersions, RebaseRefusal, ResourceMark, Touch};

use crumb::last_per_key;
use entry::{Entry, encode_key_value};
use versions::Ledger;

/// Bounds and tuning of a [`SnapshotCache`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// At most this many breadcrumbs are kept (the newest is always kept).
    pub max_log_batches: usize,
    /// The breadcrumbs' frames take at most this many bytes (the newest is always kept).
    pub max_log_bytes: usize,
    /// Raw (uncompressed) `SnapshotEntries` bytes per snapshot chunk; an entry larger
    /// than this gets a chunk of its own.
    pub chunk_raw_bytes: usize,
    /// zstd level for snapshot chunks. 1: level 3 gains 2% in size for ~30% more time
    /// (benches/snapshot.rs).
    pub zstd_level: i32,
    /// Keep breadcrumbs applied before [`SnapshotCache::mark_in_sync`] (bounded as
    /// usual). Off, only the newest is kept until then: right for a server that serves
    /// no client before it is in sync (typha), and it keeps the initial list from
    /// holding a second copy of the state as frames.
    pub history_before_sync: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_log_batches: 10_000,
            max_log_bytes: 64 << 20,
            chunk_raw_bytes: 1 << 20,
            zstd_level: 1,
            history_before_sync: true,
        }
    }
}

/// What went wrong building an encoded snapshot.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// zstd failed (context allocation or compression). Not retryable with the same input.
    #[error("zstd compression: {0}")]
    Compress(#[from] std::io::Error),
    /// The snapshot has more chunks than `SnapshotChunk.count` can carry; raise
    /// `chunk_raw_bytes`. Not retryable.
    #[error("snapshot has {0} chunks, more than u32::MAX")]
    TooManyChunks(usize),
}

/// Plain counters of a cache's life, for the owner to export as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Batches that changed the state (one revision each).
    pub batches_applied: u64,
    /// Updates that changed the state (each in exactly one breadcrumb).
    pub updates_applied: u64,
    /// Updates received that changed nothing: same value as held, delete of an absent
    /// key, or superseded by a later update of the same key in the same batch.
    pub noop_updates_dropped: u64,
    /// `DeltaBatch` frames encoded by [`SnapshotCache::apply`] (one per breadcrumb).
    pub delta_frames_encoded: u64,
    /// Calls of [`SnapshotCache::build_snapshot`].
    pub snapshots_built: u64,
    /// Breadcrumbs in the log now.
    pub log_batches: u64,
    /// Sum of the log's frame sizes now.
    pub log_bytes: u64,
}

/// The answer of [`SnapshotCache::deltas_since`].
#[derive(Debug)]
pub enum DeltasSince {
    /// `since` is the current revision: nothing to send.
    UpToDate,
    /// The breadcrumbs after `since`, oldest first, contiguous, ending at the current
    /// revision.
    Crumbs(Vec<Arc<Breadcrumb>>),
    /// `since` is older than the log's start, or newer than the current revision: the
    /// client needs a snapshot.
    Expired,
}

/// The answer of [`SnapshotCache::rebase`]: what moves a client that followed another
/// replica to this cache's current state.
#[derive(Debug)]
pub struct Rebase {
    /// One `DeltaBatch` frame (`from_revision == revision`) with the current value, or
    /// deletion, of every key a relevant breadcrumb touched, the full version vector and
    /// the digest.
    pub frame: Bytes,
    /// `frame` after its gRPC prefix (`frame` is a slice of it), written as it is.
    pub wire: Bytes,
    /// The revision the client is at once it applied the frame.
    pub revision: Revision,
    /// How many keys the frame carries.
    pub keys: usize,
}

/// The shared state and its history (see the module docs).
#[derive(Debug)]
pub struct SnapshotCache {
    config: CacheConfig,
    epoch: String,
    revision: Revision,
    digest: Digest,
    entries: BTreeMap<Key, Entry>,
    /// The entries' [`Entry::held_bytes`], summed.
    entries_bytes: usize,
    log: VecDeque<Arc<Breadcrumb>>,
    log_bytes: usize,
    /// The log's [`Breadcrumb::held_bytes`], summed.
    log_held: usize,
    stats: CacheStats,
    ledger: Ledger,
    /// Atomic so that building a snapshot needs only `&self` (a read lock) and the cache
    /// stays `Sync`.
    snapshots_built: AtomicU64,
}

impl SnapshotCache {
    /// An empty cache at revision 0 with a fresh random epoch.
    pub fn new(config: CacheConfig) -> Self {
        SnapshotCache {
            config,
            epoch: format!("{:016x}", rand::random::<u64>()),
            revision: Revision(0),
            digest: Digest::EMPTY,
            entries: BTreeMap::new(),
            entries_bytes: 0,
            log: VecDeque::new(),
            log_bytes: 0,
            log_held: 0,
            stats: CacheStats::default(),
            ledger: Ledger::default(),
            snapshots_built: AtomicU64::new(0),
        }
    }

    /// The identity of this cache's history; revisions only compare within one epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The current revision: the number of batches that changed the state.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The digest of the whole current state.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The number of keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value held for `key`, decoded from the held bytes (the cache keeps no decoded
    /// values; for tests and diagnostics).
    pub fn get(&self, key: &Key) -> Option<Value> {
        self.entries.get(key)?.value()
    }

    /// Every held (key, value) in key order, each value decoded from the held bytes (for
    /// tests and diagnostics).
    pub fn iter(&self) -> impl Iterator<Item = (&Key, Value)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| Some((k, e.value()?)))
    }

    /// The bytes the cache holds by its own accounting: per entry its map slot, key
    /// strings and encoded bytes; per breadcrumb in the log its frame and update list.
    /// Allocator overhead and map nodes are not counted (tests/memory_budget.rs holds
    /// the allocator's count to a budget too).
    pub fn held_bytes(&self) -> usize {
        self.entries_bytes + self.log_held
    }

    /// The current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            snapshots_built: self.snapshots_built.load(Ordering::Relaxed),
            log_batches: self.log.len() as u64,
            log_bytes: self.log_bytes as u64,
            ..self.stats
        }
    }

    /// Applies a batch without resourceVersions (tests, harnesses, local mode): if it
    /// changes anything, cross-replica resume is off for good. See [`Self::apply_marked`].
    pub fn apply(&mut self, updates: impl IntoIterator<Item = Update>) -> Option<Arc<Breadcrumb>> {
        self.apply_marked(updates, &[])
    }

    /// Applies a batch. Within a batch the last update per key wins. Updates that do not
    /// change the state (same value as held, delete of an absent key) are dropped and
    /// counted. `marks` say which resourceVersions the batch stands for (one per API
    /// resource it touched; they advance the version vector even when nothing changed);
    /// a marked batch must change each key at most once (else cross-replica resume is
    /// switched off: the value in between would be missing from the history).
    /// Returns `None` when nothing changed (revision unchanged), else the new
    /// breadcrumb, already appended to the log.
    pub fn apply_marked(
        &mut self,
        updates: impl IntoIterator<Item = Update>,
        marks: &[ResourceMark],
    ) -> Option<Arc<Breadcrumb>> {
        self.apply_upstream(updates, marks, false)
    }

    /// [`Self::apply_marked`] for a batch that may hold bookmarks (`progress`): when it
    /// changes nothing but advances versions no breadcrumb carries yet, it still makes a
    /// breadcrumb (no updates, a new revision, the same digest) so that clients' version
    /// vectors follow (see [`versions`]).
    pub fn apply_upstream(
        &mut self,
        updates: impl IntoIterator<Item = Update>,
        marks: &[ResourceMark],
        progress: bool,
    ) -> Option<Arc<Breadcrumb>> {
        let batch = last_per_key(updates.into_iter().collect());
        self.stats.noop_updates_dropped += batch.superseded;
        if batch.superseded > 0 && !marks.is_empty() {
            // A key changed twice in one versioned batch: its value in between is gone
            // from the history, so versions can no longer prove what a client lacks.
            self.ledger.disable();
        }
        let mut changed = Vec::with_capacity(batch.updates.len());
        for Update { key, value } in batch.updates {
            match self.change(&key, value) {
                Some(encoded) => changed.push((key, encoded)),
                None => self.stats.noop_updates_dropped += 1,
            }
        }
        let versions = self.ledger.record(marks, !changed.is_empty(), progress)?;
        let from = self.revision;
        self.revision = from.next();
        self.stats.batches_applied += 1;
        self.stats.updates_applied += changed.len() as u64;
        self.stats.delta_frames_encoded += 1;
        let crumb = Arc::new(Breadcrumb::new(
            from,
            self.revision,
            self.digest,
            changed,
            versions,
        ));
        self.log_bytes += crumb.encoded_len();
        self.log_held += crumb.held_bytes();
        self.log.push_back(Arc::clone(&crumb));
        self.trim_log();
        Some(crumb)
    }

    /// Applies one update to the entries and the digest; the encoded `KeyValue` when it
    /// changed the state, `None` for a no-op. An unchanged value is recognised by its
    /// encoding (the held bytes are the only copy of the value; a relist of 150k
    /// unchanged objects pays one encode each).
    fn change(&mut self, key: &Key, value: Option<Value>) -> Option<Bytes> {
        let Some(value) = value else {
            let old = self.entries.remove(key)?;
            self.entries_bytes -= old.held_bytes(key);
            self.digest.remove(old.hash);
            return Some(encode_key_value(key, None));
        };
        let new = Entry::new(key, &value);
        let encoded = new.encoded.clone();
        let added = new.held_bytes(key);
        match self.entries.entry(key.clone()) {
            StateEntry::Occupied(mut held) => {
                if held.get().encoded == new.encoded {
                    return None;
                }
                self.digest.replace(held.get().hash, new.hash);
                let old = held.insert(new);
                self.entries_bytes -= old.held_bytes(key);
            }
            StateEntry::Vacant(slot) => {
                self.digest.add(new.hash);
                slot.insert(new);
            }
        }
        self.entries_bytes += added;
        Some(encoded)
    }

    /// Drops the oldest breadcrumbs while the log is over a bound (one breadcrumb
    /// before the in-sync mark without `history_before_sync`), keeping the newest.
    fn trim_log(&mut self) {
        let max_batches = if self.config.history_before_sync || self.ledger.base().is_some() {
            self.config.max_log_batches
        } else {
            1
        };
        while self.log.len() > 1
            && (self.log.len() > max_batches || self.log_bytes > self.config.max_log_bytes)
        {
            if let Some(old) = self.log.pop_front() {
                self.log_bytes -= old.encoded_len();
                self.log_held -= old.held_bytes();
                self.ledger.evicted(old.from, &old.versions);
            }
        }
    }

    /// The breadcrumbs after `since`, in order.
    pub fn deltas_since(&self, since: Revision) -> DeltasSince {
        if since == self.revision {
            return DeltasSince::UpToDate;
        }
        let Some(oldest) = self.log.front().filter(|_| self.covers(since)) else {
            return DeltasSince::Expired;
        };
        // Contiguous log: the crumb starting at `since` sits `since - oldest.from` in.
        let skip = usize::try_from(since.0 - oldest.from.0).unwrap_or(usize::MAX);
        DeltasSince::Crumbs(self.log.iter().skip(skip).cloned().collect())
    }

    /// Whether a client at `since` can catch up from the history (it is current, or every
    /// batch after it is still in the log): [`Self::deltas_since`] would not answer
    /// `Expired`. O(1), without collecting the crumbs.
    pub fn covers(&self, since: Revision) -> bool {
        since == self.revision
            || (since < self.revision
                && self.log.front().is_some_and(|oldest| since >= oldest.from))
    }

    /// The current version vector (every resource's changes up to it are in the state).
    pub fn versions(&self) -> &VersionVector {
        self.ledger.current()
    }

    /// The vector at the oldest point the history covers for cross-replica resumes, and
    /// the resources whose floor is unknown (see [`versions`]).
    pub fn version_floor(&self) -> (&VersionVector, &std::collections::BTreeSet<String>) {
        self.ledger.floor()
    }

    /// The upstream is in sync: the state now is the base from which the history serves
    /// cross-replica resumes. Only the first call counts.
    pub fn mark_in_sync(&mut self) {
        self.ledger.set_base(self.revision);
    }

    /// Whether a client at version vector `client` could be rebased here now (see
    /// [`Self::rebase`]), without building anything.
    pub fn can_rebase(&self, client: &VersionVector) -> Result<(), RebaseRefusal> {
        self.ledger.check(client)
    }

    /// Brings a client that followed another replica, at version vector `client`, to
    /// the current state: one batch with the current value (or deletion) of every key
    /// touched by a breadcrumb relevant to it (see [`CrumbVersions::relevant_to`]).
    /// Refused when the history cannot prove that suffices.
    pub fn rebase(&self, client: &VersionVector) -> Result<Rebase, RebaseRefusal> {
        self.ledger.check(client)?;
        let base = self.ledger.base().unwrap_or(self.revision);
        let mut touched: std::collections::BTreeSet<&Key> = std::collections::BTreeSet::new();
        for crumb in self.log.iter().filter(|c| c.from >= base) {
            if crumb.versions.relevant_to(client) {
                touched.extend(crumb.updates.iter().map(|(key, _)| key));
            }
        }
        let updates: Vec<Bytes> = touched
            .iter()
            .map(|key| match self.entries.get(*key) {
                Some(entry) => entry.encoded.clone(),
                None => encode_key_value(key, None),
            })
            .collect();
        let frame::GrpcFrame { wire, frame } = frame::delta_batch_grpc(
            self.revision,
            self.revision,
            &updates,
            self.digest,
            &self.ledger.current().to_pb(),
        );
        Ok(Rebase {
            frame,
            wire,
            revision: self.revision,
            keys: updates.len(),
        })
    }

    /// The whole state at the current revision, as raw (uncompressed) chunks of at most
    /// `chunk_raw_bytes` each (always at least one chunk, empty for an empty state).
    pub fn build_snapshot(&self) -> RawSnapshot {
        self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        RawSnapshot::build(
            self.revision,
            self.digest,
            self.ledger.current().clone(),
            self.entries.values().map(|e| &e.encoded),
            self.config.chunk_raw_bytes,
        )
    }
}
