//! Snapshots: the whole state at one revision, first as raw chunks (the held entries'
//! encoded `KeyValue`s, grouped, taken under the cache's read lock by reference count)
//! and then compressed into shared frames (pure CPU, done once per snapshot version off
//! the runtime and sent to every client).
//!
//! A raw chunk is a list of the entries' shared [`Bytes`], not a concatenated copy:
//! taking a snapshot copies no value bytes, and compression concatenates one chunk at a
//! time, so building a snapshot of a 70 MiB state needs about one
//! chunk of scratch space rather than a second copy of the state.
//!
//! Invariants: a snapshot has at least one chunk (an empty state has one empty chunk); a
//! chunk holds at most `chunk_raw_bytes` unless a single entry is larger; chunk frames
//! are numbered `0..count` and every one names the same revision and count.

use bytes::{Bytes, BytesMut};
use typha_proto::{Digest, Revision, VersionVector, frame, pb};

use super::CacheError;

/// One raw chunk: the encoded `KeyValue`s of an encoded `SnapshotEntries`, shared with
/// the cache's entries.
#[derive(Clone, Debug, Default)]
pub struct RawChunk {
    entries: Vec<Bytes>,
    len: usize,
}

impl RawChunk {
    /// The size of this chunk's encoded `SnapshotEntries`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the chunk holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The encoded `KeyValue`s, in key order.
    pub fn entries(&self) -> &[Bytes] {
        &self.entries
    }

    /// This chunk's encoded `SnapshotEntries`, in a buffer of its own (of exactly
    /// [`Self::len`] bytes).
    pub fn encode(&self) -> BytesMut {
        frame::snapshot_entries(&self.entries)
    }
}

/// The whole state at one revision, as raw (uncompressed) chunks.
#[derive(Clone, Debug)]
pub struct RawSnapshot {
    /// The revision the state is at.
    pub revision: Revision,
    /// The digest of the state.
    pub digest: Digest,
    /// The state's version vector (sent in InSync).
    pub versions: VersionVector,
    /// The number of entries over all chunks.
    pub key_count: u64,
    /// The chunks, in key order.
    pub chunks: Vec<RawChunk>,
    /// The sum of the chunks' sizes.
    pub raw_bytes: u64,
}

impl RawSnapshot {
    /// Cuts `entries` (encoded `KeyValue`s) into chunks of at most `chunk_raw_bytes`.
    pub(super) fn build<'a>(
        revision: Revision,
        digest: Digest,
        versions: VersionVector,
        entries: impl ExactSizeIterator<Item = &'a Bytes>,
        chunk_raw_bytes: usize,
    ) -> RawSnapshot {
        let key_count = entries.len() as u64;
        let mut chunks = Vec::new();
        let mut pending = RawChunk::default();
        for entry in entries {
            let len = frame::snapshot_entry_len(entry);
            if !pending.is_empty() && pending.len + len > chunk_raw_bytes {
                chunks.push(std::mem::take(&mut pending));
            }
            pending.entries.push(entry.clone());
            pending.len += len;
        }
        chunks.push(pending);
        let raw_bytes = chunks.iter().map(|c| c.len as u64).sum();
        RawSnapshot {
            revision,
            digest,
            versions,
            key_count,
            chunks,
            raw_bytes,
        }
    }
}

/// A snapshot ready to send: compressed chunk frames, then the in-sync frame.
#[derive(Clone, Debug)]
pub struct EncodedSnapshot {
    /// The revision the state is at.
    pub revision: Revision,
    /// The digest of the state.
    pub digest: Digest,
    /// The state's version vector.
    pub versions: VersionVector,
    /// The number of entries.
    pub key_count: u64,
    /// `ServerMessage{snapshot_chunk}` frames, in index order (slices of
    /// `chunk_messages`).
    pub chunk_frames: Vec<Bytes>,
    /// The same chunks as gRPC messages (prefix, then frame), written as they are to
    /// every client the snapshot is sent to.
    pub chunk_messages: Vec<Bytes>,
    /// The `ServerMessage{in_sync}` frame that follows the last chunk (a slice of
    /// `in_sync_message`).
    pub in_sync_frame: Bytes,
    /// The in-sync frame as a gRPC message.
    pub in_sync_message: Bytes,
    /// Uncompressed payload bytes over all chunks.
    pub raw_bytes: u64,
    /// Compressed payload bytes over all chunks.
    pub compressed_bytes: u64,
}

/// Compresses each chunk (zstd at `level`) and wraps it as a `ServerMessage{snapshot_chunk}`
/// frame, plus the `InSync` frame. Pure CPU: run it off the async runtime, once per
/// snapshot version, and share the result with every client. Each chunk is concatenated
/// just before it is compressed and dropped right after.
pub fn compress(raw: &RawSnapshot, level: i32) -> Result<EncodedSnapshot, CacheError> {
    let count =
        u32::try_from(raw.chunks.len()).map_err(|_| CacheError::TooManyChunks(raw.chunks.len()))?;
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    let mut chunk_frames = Vec::with_capacity(raw.chunks.len());
    let mut chunk_messages = Vec::with_capacity(raw.chunks.len());
    let mut compressed_bytes = 0;
    for (index, chunk) in (0..count).zip(&raw.chunks) {
        // One chunk's concatenation at a time: freed before the next is built.
        let payload = Bytes::from(compressor.compress(&chunk.encode())?);
        compressed_bytes += payload.len() as u64;
        let chunk = frame::encode_grpc(pb::server_message::Msg::SnapshotChunk(pb::SnapshotChunk {
            revision: raw.revision.0,
            index,
            count,
            compression: pb::Compression::Zstd as i32,
            raw_len: chunk.len() as u64,
            payload,
        }));
        chunk_frames.push(chunk.frame);
        chunk_messages.push(chunk.wire);
    }
    let in_sync = frame::encode_grpc(pb::server_message::Msg::InSync(pb::InSync {
        revision: raw.revision.0,
        digest: raw.digest.to_bytes().to_vec(),
        key_count: raw.key_count,
        versions: raw.versions.to_pb(),
    }));
    Ok(EncodedSnapshot {
        revision: raw.revision,
        digest: raw.digest,
        versions: raw.versions.clone(),
        key_count: raw.key_count,
        chunk_frames,
        chunk_messages,
        in_sync_frame: in_sync.frame,
        in_sync_message: in_sync.wire,
        raw_bytes: raw.raw_bytes,
        compressed_bytes,
    })
}
