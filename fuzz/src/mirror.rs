//! Fuzz target `mirror`: a sequence of server frames applied to felix-client's
//! [`Mirror`], as the sync loop does.
//!
//! Input: records `[flags: u8][len: u16 LE][len bytes: one encoded ServerMessage]`.
//! Flags: bit 0 "fix up" the frame so it passes the checks a fuzzer cannot forge (chunk
//! `raw_len` of an uncompressed chunk, batch revisions, InSync and batch digests), which
//! takes the fuzzer past the digest into the apply code; bit 1 calls `forget_position`
//! first; bit 2 calls `start_session` first (bit 3: resumed).
//!
//! Checked: no panic; a refused delta batch leaves the mirror as it was (all or
//! nothing); an accepted snapshot holds exactly the staged entries, with their digest.

use std::collections::HashMap;

use felix_client::mirror::{Mirror, MirrorError};
use typha_proto::digest::EntryHash;
use typha_proto::frame::{RawSnapshotEntries, ServerFrame};
use typha_proto::{Digest, Key, Update, pb};

/// What the harness knows of the snapshot being staged (from uncompressed chunks only).
struct Staged {
    revision: u64,
    /// `None` once a chunk the harness cannot read (compressed) was accepted.
    entries: Option<HashMap<Key, EntryHash>>,
}

impl Staged {
    fn digest(&self) -> Option<Digest> {
        let entries = self.entries.as_ref()?;
        let mut digest = Digest::EMPTY;
        for hash in entries.values() {
            digest.add(*hash);
        }
        Some(digest)
    }
}

/// Fuzz target `mirror` (see the module docs for the input format).
pub fn mirror(data: &[u8]) {
    replay(data);
}

/// Applies `data`'s frames to a new mirror and returns it (tests check where seeds lead).
pub fn replay(data: &[u8]) -> Mirror {
    let mut mirror = Mirror::new();
    let mut staged: Option<Staged> = None;
    let mut rest = data;
    while let [flags, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let fix = flags & 1 != 0;
        if flags & 2 != 0 {
            mirror.forget_position();
        }
        if flags & 4 != 0 {
            mirror.start_session("fuzz", flags & 8 != 0);
            staged = None;
        }
        let Ok(frame) = ServerFrame::decode(body) else {
            continue;
        };
        match frame {
            ServerFrame::Hello(hello) => {
                mirror.accept_hello(&hello);
                staged = None;
            }
            ServerFrame::SnapshotChunk(chunk) => chunk_frame(&mut mirror, &mut staged, chunk, fix),
            ServerFrame::InSync(in_sync) => in_sync_frame(&mut mirror, staged.take(), in_sync, fix),
            ServerFrame::Deltas(batch) => deltas_frame(&mut mirror, batch, fix),
            _ => {}
        }
        let _ = mirror.resume_position();
    }
    mirror
}

fn chunk_frame(
    mirror: &mut Mirror,
    staged: &mut Option<Staged>,
    mut chunk: pb::SnapshotChunk,
    fix: bool,
) {
    let plain = chunk.compression == pb::Compression::None as i32;
    if fix && plain {
        chunk.raw_len = chunk.payload.len() as u64;
    }
    let (index, revision) = (chunk.index, chunk.revision);
    let payload = plain.then(|| chunk.payload.clone());
    if mirror.apply_chunk(chunk).is_err() {
        // A refused chunk may have staged part of its entries: the harness loses track.
        *staged = None;
        return;
    }
    if index == 0 {
        *staged = Some(Staged {
            revision,
            entries: Some(HashMap::new()),
        });
    }
    let Some(staged) = staged.as_mut() else {
        return;
    };
    let (Some(entries), Some(payload)) = (staged.entries.as_mut(), payload) else {
        staged.entries = None;
        return;
    };
    let Ok(raw) = <RawSnapshotEntries as prost::Message>::decode(&payload[..]) else {
        panic!("the mirror accepted a chunk whose entries do not decode");
    };
    for encoded in &raw.entries {
        let Ok(update) = Update::decode(encoded) else {
            panic!("the mirror accepted a chunk with an invalid entry");
        };
        // Deletes inside a snapshot are skipped, as the mirror does.
        if update.value.is_some() {
            entries.insert(update.key, EntryHash::of(encoded));
        }
    }
}

fn in_sync_frame(mirror: &mut Mirror, staged: Option<Staged>, mut in_sync: pb::InSync, fix: bool) {
    let known = staged
        .as_ref()
        .and_then(|s| Some((s.revision, s.digest()?)));
    if fix && let Some((revision, digest)) = known {
        in_sync.revision = revision;
        in_sync.digest = digest.to_bytes().to_vec();
    }
    if mirror.finish_snapshot(&in_sync).is_err() {
        return;
    }
    if let Some(entries) = staged.and_then(|s| s.entries) {
        assert_eq!(
            mirror.len(),
            entries.len(),
            "mirror size after the snapshot"
        );
        let mut digest = Digest::EMPTY;
        for hash in entries.values() {
            digest.add(*hash);
        }
        assert_eq!(mirror.digest(), digest, "mirror digest after the snapshot");
        assert!(entries.iter().all(|(k, h)| mirror.get(k) == Some(*h)));
    }
    assert_eq!(mirror.revision().0, in_sync.revision);
    assert!(mirror.has_synced());
}

fn deltas_frame(mirror: &mut Mirror, mut batch: typha_proto::frame::RawDeltaBatch, fix: bool) {
    if fix {
        if mirror.is_rebasing() {
            batch.from_revision = batch.revision;
        } else {
            batch.from_revision = mirror.revision().0;
            batch.revision = batch.revision.max(batch.from_revision.saturating_add(1));
        }
    }
    let before = (mirror.revision(), mirror.digest(), mirror.len());
    let result = match mirror.apply_deltas(batch.clone()) {
        Err(MirrorError::DigestMismatch { mirror: digest, .. }) if fix => {
            assert_eq!(before, (mirror.revision(), mirror.digest(), mirror.len()));
            batch.digest = digest.to_bytes().to_vec().into();
            mirror.apply_deltas(batch.clone())
        }
        other => other,
    };
    match result {
        Ok(changes) => {
            assert_eq!(mirror.revision().0, batch.revision);
            assert!(changes.len() <= batch.updates.len());
        }
        Err(_) => assert_eq!(
            before,
            (mirror.revision(), mirror.digest(), mirror.len()),
            "a refused batch changed the mirror"
        ),
    }
}
