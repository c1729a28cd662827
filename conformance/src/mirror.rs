//! The client's copy of the server's state, and the digest that proves it, as
//! docs/protocol.md ("The digest", "Revisions and batches") specifies them.
//!
//! Per present entry: XXH3-128 (seed 0) of the entry's `KeyValue` bytes exactly as
//! received, read as one 128-bit integer; the digest is their sum modulo 2^128, on the
//! wire as 16 big-endian bytes. Entries are found in the received bytes by walking the
//! protobuf wire format ([`raw_fields`]), never by re-encoding decoded messages.
//!
//! Invariant: `digest` always equals the sum of the held entries' hashes.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use prost::Message;

use crate::{ConformanceError, pb, violation};

/// A key's identity: (kind, namespace, name).
pub type KeyId = (i32, String, String);

/// The hash of one entry: XXH3-128 with seed 0 of its encoded `KeyValue`.
pub fn entry_hash(encoded_key_value: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(encoded_key_value)
}

/// The content of every length-delimited field numbered `field` in `message`, as
/// received (without tag and length). Other fields are skipped by wire type.
pub fn raw_fields(message: &[u8], field: u32) -> Result<Vec<Bytes>, ConformanceError> {
    let mut buf = message;
    let mut found = Vec::new();
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf)?;
        let (number, wire_type) = ((key >> 3) as u32, key & 7);
        let skip = match wire_type {
            0 => {
                prost::encoding::decode_varint(&mut buf)?;
                0
            }
            1 => 8,
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut buf)?)
                    .map_err(|_| violation("length does not fit"))?;
                if len > buf.len() {
                    return Err(violation("truncated length-delimited field"));
                }
                if number == field {
                    found.push(Bytes::copy_from_slice(&buf[..len]));
                }
                len
            }
            5 => 4,
            other => return Err(violation(format!("unsupported wire type {other}"))),
        };
        if skip > buf.len() {
            return Err(violation("truncated field"));
        }
        buf = &buf[skip..];
    }
    Ok(found)
}

/// The mirror of one server's state (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct Mirror {
    entries: HashMap<KeyId, (u128, pb::KeyValue)>,
    digest: u128,
    /// The revision the mirror is at (in `epoch`'s history).
    pub revision: u64,
    /// The history the revision belongs to.
    pub epoch: String,
    /// The version vector (only with `CAPABILITY_RESOURCE_VERSIONS`).
    pub versions: BTreeMap<String, u64>,
    /// Snapshot chunks received so far (before `InSync`).
    chunks: u32,
}

impl Mirror {
    /// An empty mirror of `epoch`'s history, ready for a snapshot.
    pub fn new(epoch: &str) -> Mirror {
        Mirror {
            epoch: epoch.to_string(),
            ..Mirror::default()
        }
    }

    /// The digest's wire form.
    pub fn digest(&self) -> [u8; 16] {
        self.digest.to_be_bytes()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value held under (kind, namespace, name).
    pub fn get(&self, kind: pb::Kind, namespace: &str, name: &str) -> Option<&pb::Value> {
        let id = (kind as i32, namespace.to_string(), name.to_string());
        self.entries.get(&id).and_then(|(_, kv)| kv.value.as_ref())
    }

    /// Every key held.
    pub fn keys(&self) -> impl Iterator<Item = &KeyId> {
        self.entries.keys()
    }

    /// Sets or deletes one entry from its bytes as received.
    fn put(&mut self, raw: &Bytes) -> Result<(), ConformanceError> {
        let kv = pb::KeyValue::decode(raw.as_ref())?;
        let key = kv
            .key
            .as_ref()
            .ok_or_else(|| violation("KeyValue without key"))?;
        if key.name.is_empty() {
            return Err(violation("key with an empty name"));
        }
        let id = (key.kind, key.namespace.clone(), key.name.clone());
        if let Some((old, _)) = self.entries.remove(&id) {
            self.digest = self.digest.wrapping_sub(old);
        }
        if kv.value.is_some() {
            let hash = entry_hash(raw);
            self.digest = self.digest.wrapping_add(hash);
            self.entries.insert(id, (hash, kv));
        }
        Ok(())
    }

    /// Adds one snapshot chunk: the chunks come in order and decompress (zstd) to an
    /// encoded `SnapshotEntries` of exactly `raw_len` bytes.
    pub fn apply_chunk(&mut self, chunk: &pb::SnapshotChunk) -> Result<(), ConformanceError> {
        if chunk.index != self.chunks || chunk.index >= chunk.count {
            return Err(violation(format!(
                "chunk {} of {} after {} chunks",
                chunk.index, chunk.count, self.chunks
            )));
        }
        if chunk.compression != pb::Compression::Zstd as i32 {
            return Err(violation("a snapshot chunk that is not zstd"));
        }
        let raw_len = usize::try_from(chunk.raw_len).map_err(|_| violation("raw_len"))?;
        let raw = zstd::bulk::decompress(&chunk.payload, raw_len)
            .map_err(|e| violation(format!("zstd: {e}")))?;
        if raw.len() != raw_len {
            return Err(violation("chunk size differs from raw_len"));
        }
        for entry in raw_fields(&raw, 1)? {
            self.put(&entry)?;
        }
        self.chunks += 1;
        self.revision = chunk.revision;
        Ok(())
    }

    /// Completes a snapshot: every chunk came, and the digest and key count agree.
    pub fn complete(&mut self, in_sync: &pb::InSync) -> Result<(), ConformanceError> {
        if self.chunks == 0 || in_sync.revision != self.revision {
            return Err(violation("InSync without its chunks"));
        }
        self.check_digest(&in_sync.digest, "InSync")?;
        if in_sync.key_count != self.entries.len() as u64 {
            return Err(violation(format!(
                "key_count {} but {} entries",
                in_sync.key_count,
                self.entries.len()
            )));
        }
        self.versions = vector(&in_sync.versions);
        Ok(())
    }

    /// Applies a `ServerMessage` frame holding a `DeltaBatch`, as received. `rebase`:
    /// this is the batch after a cross-replica resume (`from_revision == revision`).
    pub fn apply_batch(
        &mut self,
        frame: &[u8],
        rebase: bool,
    ) -> Result<pb::DeltaBatch, ConformanceError> {
        let Some(pb::server_message::Msg::Deltas(batch)) = pb::ServerMessage::decode(frame)?.msg
        else {
            return Err(violation("not a DeltaBatch"));
        };
        let follows = if rebase {
            batch.from_revision == batch.revision
        } else {
            batch.from_revision == self.revision && batch.revision > batch.from_revision
        };
        if !follows {
            return Err(violation(format!(
                "batch {}..{} at revision {} (rebase: {rebase})",
                batch.from_revision, batch.revision, self.revision
            )));
        }
        let body = raw_fields(frame, 4)?;
        let [body] = body.as_slice() else {
            return Err(violation("one deltas field expected"));
        };
        for update in raw_fields(body, 2)? {
            self.put(&update)?;
        }
        self.check_digest(&batch.digest, "DeltaBatch")?;
        self.revision = batch.revision;
        if rebase {
            // The rebase batch carries the server's full vector: adopted as it is.
            self.versions = vector(&batch.versions);
        } else {
            // Each entry replaces the mirror's, also downwards (a datastore restore).
            for v in &batch.versions {
                self.versions.insert(v.resource.clone(), v.version);
            }
        }
        Ok(batch)
    }

    fn check_digest(&self, wire: &[u8], frame: &str) -> Result<(), ConformanceError> {
        if wire != self.digest() {
            return Err(ConformanceError::DigestMismatch(format!(
                "{frame} at revision {}: server {wire:02x?}, mirror {:02x?}",
                self.revision,
                self.digest()
            )));
        }
        Ok(())
    }

    /// The position to resume from.
    pub fn position(&self) -> pb::ResumePosition {
        pb::ResumePosition {
            epoch: self.epoch.clone(),
            revision: self.revision,
            digest: self.digest().to_vec(),
            versions: self
                .versions
                .iter()
                .map(|(resource, version)| pb::ResourceVersion {
                    resource: resource.clone(),
                    version: *version,
                })
                .collect(),
        }
    }
}

fn vector(entries: &[pb::ResourceVersion]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in entries {
        let held: &mut u64 = out.entry(e.resource.clone()).or_default();
        *held = (*held).max(e.version);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn raw_fields_finds_each_occurrence_and_skips_the_rest() {
        // field 1 varint 5, field 2 "ab", field 3 fixed64, field 2 "c".
        let mut m = vec![0x08, 5, 0x12, 2, b'a', b'b', 0x19];
        m.extend([0; 8]);
        m.extend([0x12, 1, b'c']);
        let got = raw_fields(&m, 2).unwrap();
        assert_eq!(
            got,
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]
        );
        assert!(raw_fields(&[0x12, 5, b'a'], 2).is_err(), "truncated");
    }

    #[test]
    fn the_digest_is_an_order_independent_sum_that_deletes_undo() {
        let kv = |name: &str, value: bool| {
            let kv = pb::KeyValue {
                key: Some(pb::Key {
                    kind: pb::Kind::Node as i32,
                    namespace: String::new(),
                    name: name.to_string(),
                }),
                value: value.then(|| pb::Value {
                    kind: Some(pb::value::Kind::Node(pb::Node::default())),
                }),
            };
            Bytes::from(kv.encode_to_vec())
        };
        let (mut one, mut two) = (Mirror::default(), Mirror::default());
        for name in ["a", "b"] {
            one.put(&kv(name, true)).unwrap();
        }
        for name in ["b", "a"] {
            two.put(&kv(name, true)).unwrap();
        }
        assert_eq!(one.digest(), two.digest());
        let expected = entry_hash(&kv("a", true)).wrapping_add(entry_hash(&kv("b", true)));
        assert_eq!(one.digest(), expected.to_be_bytes());
        one.put(&kv("a", false)).unwrap();
        one.put(&kv("b", false)).unwrap();
        assert_eq!(one.digest(), [0; 16]);
    }

    #[test]
    fn batch_versions_replace_entries_even_downwards_and_a_rebase_adopts_the_vector() {
        let batch = |from: u64, to: u64, versions: &[(&str, u64)]| {
            let batch = pb::DeltaBatch {
                revision: to,
                from_revision: from,
                digest: vec![0; 16],
                updates: Vec::new(),
                versions: versions
                    .iter()
                    .map(|(resource, version)| pb::ResourceVersion {
                        resource: resource.to_string(),
                        version: *version,
                    })
                    .collect(),
            };
            let msg = pb::server_message::Msg::Deltas(batch);
            pb::ServerMessage { msg: Some(msg) }.encode_to_vec()
        };
        let vv = |entries: &[(&str, u64)]| -> BTreeMap<String, u64> {
            entries.iter().map(|(r, v)| (r.to_string(), *v)).collect()
        };
        let mut mirror = Mirror {
            versions: vv(&[("pods", 9), ("nodes", 4)]),
            ..Mirror::default()
        };
        mirror
            .apply_batch(&batch(0, 1, &[("pods", 3)]), false)
            .unwrap();
        assert_eq!(mirror.revision, 1);
        assert_eq!(
            mirror.versions,
            vv(&[("pods", 3), ("nodes", 4)]),
            "restored"
        );
        mirror
            .apply_batch(&batch(7, 7, &[("pods", 5)]), true)
            .unwrap();
        assert_eq!(mirror.revision, 7);
        assert_eq!(mirror.versions, vv(&[("pods", 5)]), "the rebase's vector");
    }
}
