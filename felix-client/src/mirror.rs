//! The client's mirror of typha's state: built from a snapshot, moved forward by delta
//! batches, and proven equal to the server's by the digest.
//!
//! Pure: frames in, changes out, no I/O. Compact: per key the mirror keeps only the
//! key (its namespace shared, see [`key`]) and its 16-byte entry hash, which is all the digest needs (a delete or update
//! subtracts the old hash) and all a snapshot needs to tell a changed key from an
//! unchanged one. Values are handed on as changes and held once, by whoever consumes
//! them (the calc keeps its own compact form of what it uses). Invariants:
//! - the mirror's digest is the sum of its entries' hashes, each the hash of the exact
//!   `KeyValue` bytes received (see `typha_proto::digest`);
//! - a snapshot is staged beside the current mirror (keys, hashes and the chunks'
//!   payloads as received, still compressed) and swapped in only at InSync, so a
//!   connection lost mid-snapshot leaves the mirror as it was;
//! - at the swap only real differences are reported: unchanged keys do not flap; the
//!   changes are decoded again from the staged chunks, one chunk at a time
//!   ([`SnapshotChanges`]), so the decoded values of a whole snapshot never exist at once;
//! - a batch applies only at the mirror's revision (`from_revision` == `revision`),
//!   except the one rebase batch after a cross-replica resume (ServerHello resumed with
//!   another epoch), which moves the mirror onto the new server's history: it carries
//!   the current value of every key that may differ and the digest, so a mirror that
//!   would not match refuses it and gets a snapshot instead;
//! - the version vector is kept only while the server granted
//!   `CAPABILITY_RESOURCE_VERSIONS`: set at InSync and by a rebase batch, raised by
//!   every delta batch, and sent back in the resume position.

mod key;

use bytes::Bytes;
use typha_proto::digest::EntryHash;
use typha_proto::frame::{RawDeltaBatch, RawSnapshotEntries};
use typha_proto::{Digest, Key, ModelError, Revision, Update, VersionVector, pb};

use key::{Entries, KeyRef, MirrorKey, Namespaces};

/// Decompressed snapshot chunks larger than this are refused (a hostile or broken
/// server cannot make the client allocate without bound).
pub const MAX_CHUNK_RAW_BYTES: u64 = 64 * 1024 * 1024;

/// Why a frame could not be applied. All of them end the connection; the client then
/// reconnects and, for a digest mismatch, asks for a fresh snapshot.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A snapshot chunk arrived out of order or for another revision.
    #[error("snapshot chunk {got} of revision {revision} out of order (expected chunk {expected})")]
    ChunkOutOfOrder {
        /// The chunk index expected next.
        expected: u32,
        /// The chunk index received.
        got: u32,
        /// The chunk's revision.
        revision: u64,
    },
    /// A chunk claimed a decompressed size beyond the limit, or did not match it.
    #[error("snapshot chunk size {raw_len} invalid (limit {MAX_CHUNK_RAW_BYTES})")]
    ChunkSize {
        /// The claimed size.
        raw_len: u64,
    },
    /// A chunk's compression is unknown to this build.
    #[error("unsupported snapshot compression {0}")]
    Compression(i32),
    /// Decompression failed.
    #[error("decompressing snapshot chunk: {0}")]
    Decompress(std::io::Error),
    /// A frame's contents did not decode or validate.
    #[error("invalid entry: {0}")]
    Model(#[from] ModelError),
    /// InSync without a complete snapshot, or for another revision.
    #[error("in-sync for revision {got} but the snapshot was {expected:?}")]
    UnexpectedInSync {
        /// The staged snapshot's revision, if any.
        expected: Option<u64>,
        /// The InSync's revision.
        got: u64,
    },
    /// A delta batch did not start at the mirror's revision.
    #[error("delta batch from revision {from} does not follow the mirror's revision {have}")]
    RevisionGap {
        /// The mirror's revision.
        have: u64,
        /// The batch's first revision.
        from: u64,
    },
    /// A batch arrived before any snapshot.
    #[error("delta batch before the first snapshot")]
    NotSynced,
    /// The state after a snapshot or batch differs from the server's.
    #[error("digest mismatch at revision {revision}: server {server}, mirror {mirror}")]
    DigestMismatch {
        /// Where.
        revision: u64,
        /// The server's digest.
        server: Digest,
        /// Ours.
        mirror: Digest,
    },
}

/// One staged chunk's payload as received: what decoding it again needs.
struct StagedChunk {
    compression: i32,
    raw_len: u64,
    payload: Bytes,
}

#[derive(Default)]
struct Staging {
    epoch: String,
    revision: u64,
    next_chunk: u32,
    count: u32,
    entries: Entries,
    digest: Digest,
    chunks: Vec<StagedChunk>,
}

/// The mirror (see the module docs).
#[derive(Default)]
pub struct Mirror {
    entries: Entries,
    /// The namespaces of the keys in `entries` and in the staged snapshot.
    namespaces: Namespaces,
    digest: Digest,
    revision: Revision,
    epoch: String,
    synced: bool,
    staging: Option<Staging>,
    /// The epoch of the session in progress; adopted only when its snapshot completes,
    /// so a lost snapshot never pairs a new epoch with the old history's position.
    session_epoch: String,
    /// The version vector, while the servers grant it (see the module docs).
    versions: Option<VersionVector>,
    /// Whether the session in progress granted `CAPABILITY_RESOURCE_VERSIONS`.
    session_versions: bool,
    /// A cross-replica resume is in progress: the new epoch, adopted with the rebase batch.
    rebasing: Option<String>,
}

impl Mirror {
    /// An empty mirror that has never been in sync.
    pub fn new() -> Mirror {
        Mirror::default()
    }

    /// A mirror of the empty state at revision 0 of `epoch`, ready for that history's
    /// delta batches from its start (local mode follows its own cache this way). Nothing
    /// needs proving: the empty state's digest is [`Digest::EMPTY`] by definition.
    pub fn following(epoch: &str) -> Mirror {
        Mirror {
            epoch: epoch.to_string(),
            synced: true,
            ..Mirror::default()
        }
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the mirror is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digest of the mirror.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The server revision the mirror is at.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the mirror has been in sync at least once.
    pub fn has_synced(&self) -> bool {
        self.synced
    }

    /// The entry hash held for `key` (the hash of its encoded `KeyValue`).
    pub fn get(&self, key: &Key) -> Option<EntryHash> {
        self.entries.get(&KeyRef::of(key)).copied()
    }

    /// Every key with its entry hash, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, EntryHash)> + '_ {
        self.entries
            .iter()
            .filter_map(|(k, h)| Some((k.to_key()?, *h)))
    }

    /// The mirror's own accounting of the heap it holds, in bytes: the map's slots
    /// (compact key and hash inline, one control byte each), each key's name buffer and
    /// the shared namespaces. An estimate of what the allocator hands out, for budgets
    /// and benches.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(MirrorKey, EntryHash)>() + 1;
        let names: usize = self.entries.keys().map(MirrorKey::name_len).sum();
        self.entries.capacity() * slot + names + self.namespaces.heap_bytes()
    }

    /// Where to resume from, once the mirror has synced with a server of `epoch`.
    pub fn resume_position(&self) -> Option<pb::ResumePosition> {
        self.synced.then(|| pb::ResumePosition {
            epoch: self.epoch.clone(),
            revision: self.revision.0,
            digest: self.digest.to_bytes().to_vec(),
            versions: self
                .versions
                .as_ref()
                .map(VersionVector::to_pb)
                .unwrap_or_default(),
        })
    }

    /// The version vector, when the server grants resource versions.
    pub fn versions(&self) -> Option<&VersionVector> {
        self.versions.as_ref()
    }

    /// Forgets the resume position (after a digest mismatch: the next server must send
    /// a snapshot). The entries stay, so the snapshot only reports differences.
    pub fn forget_position(&mut self) {
        self.epoch.clear();
        self.synced = false;
        self.versions = None;
        self.rebasing = None;
    }

    /// A new server session started. `resumed`: the server continues from our position;
    /// otherwise a snapshot follows and any half-received one is discarded.
    pub fn start_session(&mut self, epoch: &str, resumed: bool) {
        self.staging = None;
        self.rebasing = None;
        if !resumed {
            self.session_epoch = epoch.to_string();
        }
    }

    /// A new server session started with `hello`: as [`Self::start_session`], plus the
    /// granted capabilities, and a cross-replica resume when the server resumes us on a
    /// history of another epoch (the rebase batch follows; [`Self::is_rebasing`]).
    pub fn accept_hello(&mut self, hello: &pb::ServerHello) {
        self.start_session(&hello.epoch, hello.resumed);
        self.session_versions = hello
            .capabilities
            .contains(&(pb::Capability::ResourceVersions as i32));
        if !self.session_versions {
            self.versions = None;
        }
        if hello.resumed && hello.epoch != self.epoch {
            self.rebasing = Some(hello.epoch.clone());
        }
    }

    /// Whether the next delta batch is the rebase batch of a cross-replica resume (the
    /// mirror is in sync with the new server only once it applied).
    pub fn is_rebasing(&self) -> bool {
        self.rebasing.is_some()
    }

    /// Stages one snapshot chunk.
    pub fn apply_chunk(&mut self, chunk: pb::SnapshotChunk) -> Result<(), MirrorError> {
        if chunk.index == 0 {
            self.staging = Some(Staging {
                epoch: self.session_epoch.clone(),
                revision: chunk.revision,
                count: chunk.count,
                ..Default::default()
            });
        }
        let staging = self.staging.as_mut().ok_or(MirrorError::ChunkOutOfOrder {
            expected: 0,
            got: chunk.index,
            revision: chunk.revision,
        })?;
        if chunk.index != staging.next_chunk
            || chunk.revision != staging.revision
            || chunk.count != staging.count
            || chunk.index >= staging.count
        {
            return Err(MirrorError::ChunkOutOfOrder {
                expected: staging.next_chunk,
                got: chunk.index,
                revision: chunk.revision,
            });
        }
        let staged = StagedChunk {
            compression: chunk.compression,
            raw_len: chunk.raw_len,
            // A copy: the received payload may share a larger frame buffer.
            payload: Bytes::copy_from_slice(&chunk.payload),
        };
        let raw = decompress(staged.compression, staged.raw_len, &staged.payload)?;
        let entries = <RawSnapshotEntries as prost::Message>::decode(raw.as_slice())
            .map_err(ModelError::from)?;
        for encoded in entries.entries {
            let update = Update::decode(&encoded)?;
            if update.value.is_none() {
                continue;
            }
            let hash = EntryHash::of(&encoded);
            let key = self.namespaces.key(&update.key);
            if let Some(old) = staging.entries.insert(key, hash) {
                staging.digest.remove(old);
            }
            staging.digest.add(hash);
        }
        staging.chunks.push(staged);
        staging.next_chunk += 1;
        Ok(())
    }

    /// Swaps the staged snapshot in after checking it against the server's digest, and
    /// returns only what changed relative to the previous mirror, decoded one chunk at a
    /// time as the caller iterates (see [`SnapshotChanges`]).
    pub fn finish_snapshot(
        &mut self,
        in_sync: &pb::InSync,
    ) -> Result<SnapshotChanges, MirrorError> {
        let staging = match self.staging.take() {
            Some(s) if s.revision == in_sync.revision && s.next_chunk == s.count => s,
            other => {
                return Err(MirrorError::UnexpectedInSync {
                    expected: other.map(|s| s.revision),
                    got: in_sync.revision,
                });
            }
        };
        let server = Digest::from_bytes(&in_sync.digest).unwrap_or_default();
        if server != staging.digest {
            return Err(MirrorError::DigestMismatch {
                revision: in_sync.revision,
                server,
                mirror: staging.digest,
            });
        }
        let changed = staging
            .entries
            .iter()
            .filter(|(key, hash)| self.entries.get(*key) != Some(*hash))
            .count();
        let deleted = self
            .entries
            .keys()
            .filter(|key| !staging.entries.contains_key(*key))
            .count();
        let old = std::mem::replace(&mut self.entries, staging.entries);
        self.namespaces.prune();
        let changes = SnapshotChanges {
            chunks: staging.chunks.into_iter(),
            old,
            len: changed + deleted,
            deletions_done: false,
        };
        self.digest = staging.digest;
        self.revision = Revision(staging.revision);
        self.epoch = staging.epoch;
        self.synced = true;
        self.versions = self
            .session_versions
            .then(|| VersionVector::from_pb(&in_sync.versions));
        Ok(changes)
    }

    /// Applies one delta batch (possibly coalesced) and verifies the digest it carries.
    /// All or nothing: the batch is decoded and its digest checked before anything
    /// changes, so a refused batch leaves the mirror as it was and, once resent or
    /// replaced by a snapshot, all its changes are still reported. Returns the changes;
    /// deletes of absent keys and unchanged values are not changes.
    pub fn apply_deltas(&mut self, batch: RawDeltaBatch) -> Result<Vec<Update>, MirrorError> {
        self.check_follows(&batch)?;
        let (decoded, digest) = self.decode_verified(&batch)?;
        let changes = self.commit(decoded);
        self.digest = digest;
        self.revision = Revision(batch.revision);
        match self.rebasing.take() {
            Some(epoch) => {
                self.epoch = epoch;
                self.versions = self
                    .session_versions
                    .then(|| VersionVector::from_pb(&batch.versions));
            }
            None => {
                if let Some(versions) = self.versions.as_mut() {
                    versions.merge(&batch.versions);
                }
            }
        }
        Ok(changes)
    }

    /// Whether `batch` continues this mirror: synced, and from its revision (or, while
    /// rebasing onto another replica, a batch at one revision).
    fn check_follows(&self, batch: &RawDeltaBatch) -> Result<(), MirrorError> {
        if !self.synced {
            return Err(MirrorError::NotSynced);
        }
        let follows = if self.rebasing.is_some() {
            batch.from_revision == batch.revision
        } else {
            batch.from_revision == self.revision.0 && batch.revision > batch.from_revision
        };
        if !follows {
            return Err(MirrorError::RevisionGap {
                have: self.revision.0,
                from: batch.from_revision,
            });
        }
        Ok(())
    }

    /// Decodes `batch` and checks the digest it carries against the digest the mirror
    /// would have after it, changing nothing; returns the updates with their hashes and
    /// that digest.
    fn decode_verified(
        &self,
        batch: &RawDeltaBatch,
    ) -> Result<(Vec<(Update, EntryHash)>, Digest), MirrorError> {
        let server = Digest::from_bytes(&batch.digest)
            .ok_or(MirrorError::Model(ModelError::Missing("DeltaBatch.digest")))?;
        let mut decoded = Vec::with_capacity(batch.updates.len());
        let mut digest = self.digest;
        for encoded in &batch.updates {
            let update = Update::decode(encoded)?;
            let hash = EntryHash::of(encoded);
            let old = self.get(&update.key);
            match (&update.value, old) {
                (Some(_), Some(old)) => digest.replace(old, hash),
                (Some(_), None) => digest.add(hash),
                (None, Some(old)) => digest.remove(old),
                (None, None) => {}
            }
            decoded.push((update, hash));
        }
        if server != digest {
            return Err(MirrorError::DigestMismatch {
                revision: batch.revision,
                server,
                mirror: digest,
            });
        }
        Ok((decoded, digest))
    }

    /// Applies verified updates to the entries; returns those that changed something.
    fn commit(&mut self, decoded: Vec<(Update, EntryHash)>) -> Vec<Update> {
        let mut changes = Vec::with_capacity(decoded.len());
        for (update, hash) in decoded {
            match update.value {
                Some(_) => {
                    let key = self.namespaces.key(&update.key);
                    let old = self.entries.insert(key, hash);
                    if old != Some(hash) {
                        changes.push(update);
                    }
                }
                None => {
                    if self.entries.remove(&KeyRef::of(&update.key)).is_some() {
                        self.namespaces.deleted();
                        changes.push(update);
                    }
                }
            }
        }
        changes
    }
}

/// What a snapshot changed, relative to the mirror it replaced: decoded one staged
/// chunk at a time. As an iterator it yields one batch per chunk (the sets and updates
/// of that chunk that differ from the old mirror; possibly empty) and finally the
/// deletions (keys of the old mirror the snapshot lacks). The entries were decoded and
/// hashed once already, so decoding them again cannot fail; an entry that did anyway
/// would be skipped.
pub struct SnapshotChanges {
    chunks: std::vec::IntoIter<StagedChunk>,
    /// The old mirror's entries not yet seen in the snapshot.
    old: Entries,
    len: usize,
    deletions_done: bool,
}

impl std::fmt::Debug for SnapshotChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotChanges")
            .field("len", &self.len)
            .field("chunks_left", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl SnapshotChanges {
    /// The number of changes (sets plus deletions) the iteration yields in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every change in one vector (tests and small states; the agent iterates).
    pub fn into_vec(self) -> Vec<Update> {
        self.flatten().collect()
    }

    fn decode_chunk(&mut self, chunk: &StagedChunk) -> Vec<Update> {
        let Ok(raw) = decompress(chunk.compression, chunk.raw_len, &chunk.payload) else {
            return Vec::new();
        };
        let Ok(entries) = <RawSnapshotEntries as prost::Message>::decode(raw.as_slice()) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        for encoded in entries.entries {
            let Ok(update) = Update::decode(&encoded) else {
                continue;
            };
            if update.value.is_none() {
                continue;
            }
            let old = self.old.remove(&KeyRef::of(&update.key));
            if old != Some(EntryHash::of(&encoded)) {
                changes.push(update);
            }
        }
        changes
    }
}

impl Iterator for SnapshotChanges {
    type Item = Vec<Update>;

    fn next(&mut self) -> Option<Vec<Update>> {
        if let Some(chunk) = self.chunks.next() {
            return Some(self.decode_chunk(&chunk));
        }
        if self.deletions_done {
            return None;
        }
        self.deletions_done = true;
        let deletions = std::mem::take(&mut self.old)
            .into_keys()
            .filter_map(|k| Some(Update::delete(k.to_key()?)))
            .collect();
        Some(deletions)
    }
}

fn decompress(compression: i32, raw_len: u64, payload: &[u8]) -> Result<Vec<u8>, MirrorError> {
    if raw_len > MAX_CHUNK_RAW_BYTES {
        return Err(MirrorError::ChunkSize { raw_len });
    }
    let raw = match pb::Compression::try_from(compression) {
        Ok(pb::Compression::Zstd) => {
            // Capacity-bounded: a payload that inflates beyond raw_len is an error.
            zstd::bulk::decompress(payload, raw_len as usize).map_err(MirrorError::Decompress)?
        }
        Ok(pb::Compression::None) => payload.to_vec(),
        Err(_) => return Err(MirrorError::Compression(compression)),
    };
    if raw.len() as u64 != raw_len {
        return Err(MirrorError::ChunkSize { raw_len });
    }
    Ok(raw)
}
