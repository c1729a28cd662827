//! Breadcrumbs: one applied batch, encoded once as the `DeltaBatch` frame every client
//! following the cache is sent, plus what lagging clients and rebases need from it.
//!
//! A breadcrumb's per-key updates are slices of its own frame, not the state's entry
//! bytes: a breadcrumb outliving the value it carried (the key was changed again) then
//! keeps nothing alive but its frame, which the log's byte bound already counts.
//!
//! Invariants: within one breadcrumb each key appears once; `updates[i].1` is exactly the
//! `i`-th encoded `KeyValue` of `frame`.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::mem::size_of;
use std::sync::Arc;

use bytes::Bytes;
use typha_proto::frame::{self, GrpcFrame};
use typha_proto::{Digest, Key, Revision, Update, VersionVector};

use crate::entry::key_heap_bytes;
use crate::versions::CrumbVersions;

/// One applied batch: the delta from `from` to `revision`, encoded once.
#[derive(Debug)]
pub struct Breadcrumb {
    /// The revision before the batch.
    pub from: Revision,
    /// The revision after the batch.
    pub revision: Revision,
    /// The state digest after the batch.
    pub digest: Digest,
    /// Each changed key once, with its encoded `KeyValue` (no value = delete): exactly
    /// the bytes the digest hashed, sliced from `frame` (no copy of their own).
    pub updates: Vec<(Key, Bytes)>,
    /// The `ServerMessage{deltas}` frame carrying `updates`, shared by every client.
    pub frame: Bytes,
    /// `frame` as a gRPC message (length prefix, then the frame: `frame` is a slice of
    /// this one buffer), written as it is into every client's HTTP/2 stream.
    pub wire: Bytes,
    /// The resourceVersions the batch stands for (cross-replica resume).
    pub versions: CrumbVersions,
    /// When the batch was applied: the hub publishes it right after, so a server measures
    /// its fan-out latency from here.
    pub applied_at: std::time::Instant,
}

impl Breadcrumb {
    /// The breadcrumb of a batch that changed `changed` (key, encoded `KeyValue`), in
    /// that order: encodes the frame, then points the updates into it.
    pub(crate) fn new(
        from: Revision,
        revision: Revision,
        digest: Digest,
        changed: Vec<(Key, Bytes)>,
        versions: CrumbVersions,
    ) -> Breadcrumb {
        let sliced = frame::delta_batch_sliced(
            from,
            revision,
            changed.iter().map(|(_, encoded)| encoded),
            digest,
            &versions.advanced.to_pb(),
        );
        let updates = changed
            .into_iter()
            .zip(sliced.updates)
            .map(|((key, _), slice)| (key, slice))
            .collect();
        Breadcrumb {
            from,
            revision,
            digest,
            updates,
            frame: sliced.frame,
            wire: sliced.wire,
            versions,
            applied_at: std::time::Instant::now(),
        }
    }

    /// The bytes this breadcrumb counts against `max_log_bytes`: its frame's size (the
    /// updates and the frame are slices of the wire message; its prefix is not counted).
    pub fn encoded_len(&self) -> usize {
        self.frame.len()
    }

    /// What this breadcrumb holds by the cache's own accounting: the frame, and the
    /// update list with its keys.
    pub fn held_bytes(&self) -> usize {
        self.frame.len()
            + self
                .updates
                .iter()
                .map(|(key, _)| size_of::<(Key, Bytes)>() + key_heap_bytes(key))
                .sum::<usize>()
    }
}

/// A batch reduced to the last update per key, in the order of those last updates.
pub(crate) struct LastPerKey {
    /// The surviving updates.
    pub updates: Vec<Update>,
    /// How many updates a later one of the same key superseded.
    pub superseded: u64,
}

/// Reduces `updates` to the last update per key.
pub(crate) fn last_per_key(updates: Vec<Update>) -> LastPerKey {
    if updates.len() < 2 {
        return LastPerKey {
            updates,
            superseded: 0,
        };
    }
    let mut last: HashMap<&Key, usize> = HashMap::with_capacity(updates.len());
    for (i, update) in updates.iter().enumerate() {
        last.insert(&update.key, i);
    }
    if last.len() == updates.len() {
        return LastPerKey {
            updates,
            superseded: 0,
        };
    }
    let keep: Vec<bool> = updates
        .iter()
        .enumerate()
        .map(|(i, u)| last.get(&u.key) == Some(&i))
        .collect();
    let total = updates.len();
    let updates: Vec<Update> = updates
        .into_iter()
        .zip(keep)
        .filter_map(|(u, keep)| keep.then_some(u))
        .collect();
    let superseded = (total - updates.len()) as u64;
    LastPerKey {
        updates,
        superseded,
    }
}

/// One `DeltaBatch` frame covering `crumbs[0].from ..= crumbs.last().revision` with the
/// latest encoded `KeyValue` per key (deleted then re-added: the last value; added then
/// deleted: a delete, which a client holding no such key treats as a no-op) and the last
/// crumb's digest. `crumbs` must be contiguous, as
/// [`SnapshotCache::deltas_since`](crate::SnapshotCache::deltas_since) returns them.
/// Per-client work, only for lagging clients; `None` for no crumbs. Encoded after its
/// gRPC prefix, so a server writes it without another copy.
pub fn coalesce(crumbs: &[Arc<Breadcrumb>]) -> Option<GrpcFrame> {
    let (first, last) = (crumbs.first()?, crumbs.last()?);
    if crumbs.len() == 1 {
        return Some(GrpcFrame {
            wire: first.wire.clone(),
            frame: first.frame.clone(),
        });
    }
    let mut latest: Vec<&Bytes> = Vec::new();
    let mut slot: HashMap<&Key, usize> = HashMap::new();
    let mut advanced = VersionVector::new();
    for crumb in crumbs {
        for (resource, version) in crumb.versions.advanced.iter() {
            // Later crumbs replace earlier entries: normally they only rise, but after
            // a datastore restore they go down, and the client must follow.
            advanced.set(resource, version);
        }
    }
    for (key, encoded) in crumbs.iter().flat_map(|c| c.updates.iter()) {
        match slot.entry(key) {
            MapEntry::Occupied(at) => latest[*at.get()] = encoded,
            MapEntry::Vacant(at) => {
                at.insert(latest.len());
                latest.push(encoded);
            }
        }
    }
    Some(frame::delta_batch_grpc(
        first.from,
        last.revision,
        latest.iter().copied(),
        last.digest,
        &advanced.to_pb(),
    ))
}
