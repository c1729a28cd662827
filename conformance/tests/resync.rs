//! Conformance through the wire, part 3: falling behind the history. A client that stops
//! reading while the server publishes more batches than its history keeps is told
//! `Goodbye(RESYNC)` once it reads again, after which the stream ends with status OK;
//! a new sync without a resume position then brings it to the server's state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use conformance::pb::{self, Kind};
use conformance::{ConformanceError, SyncStream, hello};
use support::{ALL, World, batches_until, pod, within};

/// Batches the server keeps (`--history-batches`).
const HISTORY: usize = 4;
/// Pods written while the laggard does not read. Each batch frame is a few KiB (the
/// labels below), so the laggard's 64 KiB receive window, typha's per-stream send buffer
/// and its 16-frame queue hold far fewer than this, and the history far fewer still.
const WRITES: usize = 400;
/// The HTTP/2 receive window of the laggard's connection and stream (the protocol's
/// initial value).
const WINDOW: u32 = 65_535;

/// Pod `i` with 40 labels of 60 pseudo-random hex digits each (so that compression does
/// not shrink its batch much).
fn big_pod(i: usize) -> serde_json::Value {
    let mut object = pod("ns-0", &format!("big-{i}"), "node-00000", "10.0.0.250");
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let labels = object["metadata"]["labels"].as_object_mut().unwrap();
    for l in 0..40 {
        let mut value = String::with_capacity(60);
        while value.len() < 60 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            value.push_str(&format!("{state:016x}"));
        }
        value.truncate(60);
        labels.insert(format!("l{l:02}"), value.into());
    }
    object
}

#[tokio::test]
async fn a_client_behind_the_history_is_told_resync_and_a_new_sync_brings_it_back() {
    let world = World::start("resync").await;
    let history = HISTORY.to_string();
    let typha = world
        .typha("typha-a", &["--history-batches", &history])
        .await;

    let channel = conformance::connect_with_window(typha.grpc, world.tls(), Some(WINDOW))
        .await
        .unwrap();
    let stream = SyncStream::open(&channel).await.unwrap();
    let mut laggard = within(stream.sync(hello("laggard", 2, &ALL), None))
        .await
        .unwrap();
    // Reads every batch, so that each write below is a batch of its own.
    let mut reader = typha.sync(&world, hello("reader", 2, &ALL), None).await;

    for i in 0..WRITES {
        world.put(big_pod(i));
        let name = format!("big-{i}");
        batches_until(&mut reader, |m| {
            m.get(Kind::WorkloadEndpoint, "ns-0", &name).is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("the reader at write {i}: {e}\n{}", typha.log_tail()));
    }

    // The laggard reads again: what was queued for it, then the goodbye.
    let mut applied = 0;
    let reason = loop {
        match within(laggard.stream.next_batch(&mut laggard.mirror)).await {
            Ok(_) => applied += 1,
            Err(ConformanceError::Goodbye(reason, _)) => break reason,
            Err(other) => panic!("after {applied} batches: {other}\n{}", typha.log_tail()),
        }
    };
    assert_eq!(
        reason,
        pb::GoodbyeReason::Resync as i32,
        "the goodbye's reason"
    );
    assert!(
        applied < WRITES,
        "the laggard got all {applied} batches: it was never behind the history"
    );
    assert!(
        matches!(
            within(laggard.stream.next_message()).await,
            Err(ConformanceError::Ended)
        ),
        "after Goodbye(RESYNC) the stream ends with status OK"
    );

    // Without a position it gets a snapshot, and with it the reader's state.
    let mut again = typha.sync(&world, hello("laggard", 2, &ALL), None).await;
    let target = reader.mirror.revision;
    batches_until(&mut again, |m| m.revision >= target)
        .await
        .unwrap();
    assert_eq!(again.mirror.revision, reader.mirror.revision);
    assert_eq!(again.mirror.digest(), reader.mirror.digest());
    assert!(
        again
            .mirror
            .get(
                Kind::WorkloadEndpoint,
                "ns-0",
                &format!("big-{}", WRITES - 1)
            )
            .is_some()
    );
}
