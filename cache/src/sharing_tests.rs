//! Tests that the cache keeps one copy of each byte: breadcrumb updates are slices of
//! their frame, a raw snapshot shares the entries' bytes, the initial list's breadcrumbs
//! are not kept without `history_before_sync`, and the cache's own accounting follows
//! what it holds. Structural (pointers and counts), no allocator involved;
//! typha/tests/memory_budget.rs counts the live heap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;

use super::tests::{decode_snapshot, node, state_of, wep};
use super::*;

/// Whether `part` lies inside `whole`'s buffer (a slice, not a copy).
fn within(part: &Bytes, whole: &Bytes) -> bool {
    let (start, end) = (
        whole.as_ptr() as usize,
        whole.as_ptr() as usize + whole.len(),
    );
    let at = part.as_ptr() as usize;
    !part.is_empty() && at >= start && at + part.len() <= end
}

fn batch(range: std::ops::Range<usize>, version: &str) -> Vec<Update> {
    range
        .map(|i| wep(&format!("ns{}", i % 3), &format!("pod-{i}"), version))
        .collect()
}

#[test]
fn breadcrumb_updates_are_slices_of_its_frame_not_of_the_entries() {
    let mut cache = SnapshotCache::new(CacheConfig::default());
    let crumb = cache.apply(batch(0..20, "1")).unwrap();
    assert_eq!(crumb.updates.len(), 20);
    for (key, encoded) in &crumb.updates {
        assert!(within(encoded, &crumb.frame), "{key:?} copied");
        let held = &cache.entries[key].encoded;
        assert_eq!(encoded, held);
        assert!(!within(held, &crumb.frame), "the entry owns its bytes");
    }
    // A delete's encoding is sliced too.
    let gone = Update::delete(crumb.updates[0].0.clone());
    let crumb = cache.apply([gone]).unwrap();
    assert!(within(&crumb.updates[0].1, &crumb.frame));
}

#[test]
fn a_raw_snapshot_shares_the_entries_bytes() {
    let mut cache = SnapshotCache::new(CacheConfig {
        chunk_raw_bytes: 500,
        ..CacheConfig::default()
    });
    cache.apply(batch(0..30, "1")).unwrap();
    let raw = cache.build_snapshot();
    assert!(raw.chunks.len() > 1);
    let shared: Vec<&Bytes> = raw.chunks.iter().flat_map(|c| c.entries()).collect();
    let held: Vec<&Bytes> = cache.entries.values().map(|e| &e.encoded).collect();
    assert_eq!(shared.len(), held.len());
    for (s, h) in shared.iter().zip(&held) {
        assert_eq!(s.as_ptr(), h.as_ptr(), "a snapshot entry is the held bytes");
    }
    for chunk in &raw.chunks {
        assert_eq!(chunk.encode().len(), chunk.len());
    }
    assert_eq!(
        decode_snapshot(&compress(&raw, 1).unwrap()),
        state_of(&cache)
    );
}

#[test]
fn without_history_before_sync_only_the_newest_crumb_is_kept_until_in_sync() {
    let mut cache = SnapshotCache::new(CacheConfig {
        history_before_sync: false,
        ..CacheConfig::default()
    });
    for i in 0..5 {
        cache.apply(batch(i * 10..i * 10 + 10, "1")).unwrap();
        assert_eq!(cache.stats().log_batches, 1, "batch {i}");
    }
    assert!(matches!(
        cache.deltas_since(Revision(3)),
        DeltasSince::Expired
    ));
    assert!(cache.covers(Revision(4)) && cache.covers(Revision(5)));
    cache.mark_in_sync();
    for i in 5..8 {
        cache.apply(batch(i * 10..i * 10 + 10, "1")).unwrap();
    }
    assert_eq!(
        cache.stats().log_batches,
        4,
        "history from the in-sync mark on"
    );
    let DeltasSince::Crumbs(crumbs) = cache.deltas_since(Revision(5)) else {
        panic!("a client at the in-sync revision catches up from the log")
    };
    assert_eq!(crumbs.len(), 3);

    // The default keeps the history (harnesses and tests read it without a mark).
    let mut keeping = SnapshotCache::new(CacheConfig::default());
    for i in 0..5 {
        keeping.apply(batch(i * 10..i * 10 + 10, "1")).unwrap();
    }
    assert_eq!(keeping.stats().log_batches, 5);
}

#[test]
fn held_bytes_follow_entries_and_log() {
    let mut cache = SnapshotCache::new(CacheConfig {
        max_log_batches: 2,
        ..CacheConfig::default()
    });
    assert_eq!(cache.held_bytes(), 0);
    cache.apply(batch(0..10, "1")).unwrap();
    cache.apply(batch(0..10, "2")).unwrap();
    cache.apply([node("n1", "10.0.0.1")]).unwrap();
    cache
        .apply([Update::delete(wep("ns0", "pod-0", "2").key)])
        .unwrap();
    let entries: usize = cache.entries.iter().map(|(k, e)| e.held_bytes(k)).sum();
    let log: usize = cache.log.iter().map(|c| c.held_bytes()).sum();
    assert_eq!(cache.held_bytes(), entries + log);
    let encoded: usize = cache.entries.values().map(|e| e.encoded.len()).sum();
    assert!(entries > encoded && log > 0);
}
