//! One held entry of the state: its encoded `KeyValue` and that encoding's digest
//! contribution, and nothing else.
//!
//! The encoded bytes are the one copy of the value the cache keeps: snapshots and
//! delta frames are cut from them, the digest hashes them, and the rare reader of a
//! value ([`SnapshotCache::get`](crate::SnapshotCache::get), tests) decodes them again.
//! A decoded `Value` next to the bytes cost about as much again as the bytes (labels as
//! owned strings, a map per endpoint), for nothing typha reads.
//!
//! Invariant: `hash == EntryHash::of(&encoded)`; `encoded` decodes to a present value.

use std::mem::size_of;

use bytes::{Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use typha_proto::digest::EntryHash;
use typha_proto::{Key, Update, Value};

/// One held entry (see the module docs).
#[derive(Debug)]
pub(crate) struct Entry {
    /// The encoded `KeyValue`: exactly the bytes the digest hashes and frames carry.
    pub encoded: Bytes,
    /// `EntryHash::of(&encoded)`.
    pub hash: EntryHash,
}

impl Entry {
    /// The entry of (key, value): encoded once, hashed once.
    pub fn new(key: &Key, value: &Value) -> Entry {
        let encoded = encode_key_value(key, Some(value));
        let hash = EntryHash::of(&encoded);
        Entry { encoded, hash }
    }

    /// The value, decoded again from the held bytes (`None` only if they do not decode,
    /// which the invariant rules out).
    pub fn value(&self) -> Option<Value> {
        Update::decode(&self.encoded).ok()?.value
    }

    /// What this entry and its key cost, by the cache's own accounting: the map slot
    /// (key and entry), the key's strings and the encoded bytes. Allocator overhead and
    /// the map's inner nodes are not counted.
    pub fn held_bytes(&self, key: &Key) -> usize {
        size_of::<(Key, Entry)>() + key_heap_bytes(key) + self.encoded.len()
    }
}

/// The heap bytes of a key's strings (their lengths; capacities are not visible).
pub(crate) fn key_heap_bytes(key: &Key) -> usize {
    key.namespace().len() + key.name().len()
}

/// The encoded `KeyValue` of (key, value), byte-identical to [`Update::encode`] (fields
/// in tag order, `Value` being just its oneof) but without cloning the value into a
/// `pb::KeyValue` first: values are the bulk of the bytes, and cloning them doubled the
/// cost of encoding (measured: 150k endpoints in ~130 ms instead of ~260 ms).
pub(crate) fn encode_key_value(key: &Key, value: Option<&Value>) -> Bytes {
    let key = key.to_pb();
    let value_len = value.map_or(0, |v| v.encoded_len());
    let mut len = prost::encoding::message::encoded_len(1, &key);
    if value.is_some() {
        len += prost::encoding::key_len(2) + encoded_len_varint(value_len as u64) + value_len;
    }
    let mut buf = BytesMut::with_capacity(len);
    prost::encoding::message::encode(1, &key, &mut buf);
    if let Some(value) = value {
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(value_len as u64, &mut buf);
        value.encode(&mut buf);
    }
    buf.freeze()
}
