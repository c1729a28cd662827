//! Frames: encoded `ServerMessage`s.
//!
//! The server builds each frame that is the same for every client once and shares its
//! bytes ([`Bytes`] clones are reference counts). Snapshot payloads and delta batches
//! are assembled from the per-entry encoded `KeyValue`s the cache already holds, so
//! building them is concatenation, not re-encoding.
//!
//! The client decodes frames into [`ServerFrame`], keeping each `KeyValue` as the bytes
//! received ([`RawDeltaBatch`], [`RawSnapshotEntries`]): the digest hashes exactly those.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, decode_key, encode_key, encode_varint, encoded_len_varint};

use crate::digest::Digest;
use crate::model::Revision;
use crate::pb;

/// `ServerMessage` oneof field numbers (see sync.proto).
mod field {
    pub const HELLO: u32 = 1;
    pub const SNAPSHOT_CHUNK: u32 = 2;
    pub const IN_SYNC: u32 = 3;
    pub const DELTAS: u32 = 4;
    pub const PING: u32 = 5;
    pub const PONG: u32 = 6;
    pub const GOODBYE: u32 = 7;
}

/// Encodes a whole `ServerMessage` (for the small, rare frames).
pub fn encode(msg: pb::server_message::Msg) -> Bytes {
    Bytes::from(pb::ServerMessage { msg: Some(msg) }.encode_to_vec())
}

fn put_len_delimited(tag: u32, body: &[u8], buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body.len() as u64, buf);
    buf.put_slice(body);
}

fn len_delimited_len(tag: u32, body_len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(body_len as u64) + body_len
}

/// The encoded `SnapshotEntries` holding `entries` (each an encoded `KeyValue`), in one
/// allocation of the exact size.
pub fn snapshot_entries<'a>(entries: impl IntoIterator<Item = &'a Bytes> + Clone) -> BytesMut {
    let len = entries
        .clone()
        .into_iter()
        .map(|e| snapshot_entry_len(e))
        .sum();
    let mut buf = BytesMut::with_capacity(len);
    for entry in entries {
        put_len_delimited(1, entry, &mut buf);
    }
    buf
}

/// The size `entry` adds to an encoded `SnapshotEntries`.
pub fn snapshot_entry_len(entry: &[u8]) -> usize {
    len_delimited_len(1, entry.len())
}

/// A `ServerMessage{deltas}` frame from encoded `KeyValue`s (at most one per key).
pub fn delta_batch<'a>(
    from: Revision,
    to: Revision,
    updates: impl IntoIterator<Item = &'a Bytes> + Clone,
    digest: Digest,
) -> Bytes {
    delta_batch_with_versions(from, to, updates, digest, &[])
}

/// A `ServerMessage{deltas}` frame from encoded `KeyValue`s (at most one per key) that
/// also carries version vector entries (field 5; older clients skip it).
pub fn delta_batch_with_versions<'a>(
    from: Revision,
    to: Revision,
    updates: impl IntoIterator<Item = &'a Bytes> + Clone,
    digest: Digest,
    versions: &[pb::ResourceVersion],
) -> Bytes {
    delta_batch_grpc(from, to, updates, digest, versions).frame
}

/// Bytes of the gRPC length prefix in front of every message of a gRPC stream: a
/// compression flag (0: not compressed) and the message length, big-endian `u32`.
pub const GRPC_PREFIX_LEN: usize = 5;

/// Writes the gRPC length prefix of a `len`-byte uncompressed message. Frames are far
/// below 4 GiB (snapshots are chunked); a longer one would not fit any gRPC message.
fn put_grpc_prefix(len: usize, buf: &mut BytesMut) {
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// `frame` as one message of a gRPC stream: the length prefix, then a copy of the frame.
pub fn grpc_message(frame: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(GRPC_PREFIX_LEN + frame.len());
    put_grpc_prefix(frame.len(), &mut buf);
    buf.put_slice(frame);
    buf.freeze()
}

/// A server frame encoded once, after its gRPC length prefix, in one buffer: `wire` is
/// what a server writes into a stream as it is, `frame` the same bytes without the prefix
/// (a slice of `wire`), for whoever decodes or hashes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcFrame {
    /// The gRPC message: [`GRPC_PREFIX_LEN`] bytes of prefix, then `frame`'s bytes.
    pub wire: Bytes,
    /// The `ServerMessage` frame (a slice of `wire`).
    pub frame: Bytes,
}

impl GrpcFrame {
    fn from_wire(wire: BytesMut) -> GrpcFrame {
        let wire = wire.freeze();
        GrpcFrame {
            frame: wire.slice(GRPC_PREFIX_LEN..),
            wire,
        }
    }
}

/// [`encode`] after the gRPC length prefix, with no second copy.
pub fn encode_grpc(msg: pb::server_message::Msg) -> GrpcFrame {
    let message = pb::ServerMessage { msg: Some(msg) };
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(GRPC_PREFIX_LEN + len);
    put_grpc_prefix(len, &mut buf);
    // A BytesMut with room for the whole message cannot run out of space.
    let _ = message.encode(&mut buf);
    GrpcFrame::from_wire(buf)
}

/// [`delta_batch_with_versions`] after the gRPC length prefix (see [`GrpcFrame`]).
pub fn delta_batch_grpc<'a>(
    from: Revision,
    to: Revision,
    updates: impl IntoIterator<Item = &'a Bytes> + Clone,
    digest: Digest,
    versions: &[pb::ResourceVersion],
) -> GrpcFrame {
    GrpcFrame::from_wire(encode_delta_batch(
        from,
        to,
        updates,
        digest,
        versions,
        |_| {},
    ))
}

/// A delta batch encoded once for every client (see [`delta_batch_sliced`]): the same
/// buffer seen as the gRPC message, the frame, and each update.
#[derive(Clone, Debug)]
pub struct SlicedDeltaBatch {
    /// The gRPC message: [`GRPC_PREFIX_LEN`] bytes of prefix, then `frame`'s bytes.
    pub wire: Bytes,
    /// The `ServerMessage{deltas}` frame (a slice of `wire`).
    pub frame: Bytes,
    /// Each update, in order (slices of `frame`).
    pub updates: Vec<Bytes>,
}

/// [`delta_batch_with_versions`], encoded after a gRPC length prefix in one buffer, also
/// returning each update as a slice of the frame (the same bytes in the frame's buffer,
/// in order): whoever keeps the updates next to the frame holds their bytes once,
/// without decoding the frame to find them, and a server writes the prefixed message
/// to every client without copying it.
pub fn delta_batch_sliced<'a>(
    from: Revision,
    to: Revision,
    updates: impl IntoIterator<Item = &'a Bytes> + Clone,
    digest: Digest,
    versions: &[pb::ResourceVersion],
) -> SlicedDeltaBatch {
    let mut ranges = Vec::new();
    let wire = encode_delta_batch(from, to, updates, digest, versions, |range| {
        ranges.push(range)
    });
    let GrpcFrame { wire, frame } = GrpcFrame::from_wire(wire);
    let updates = ranges.into_iter().map(|range| wire.slice(range)).collect();
    SlicedDeltaBatch {
        wire,
        frame,
        updates,
    }
}

/// Encodes a `ServerMessage{deltas}` after its gRPC length prefix, in one buffer;
/// `each_update` is told where each update's bytes lie in it.
fn encode_delta_batch<'a>(
    from: Revision,
    to: Revision,
    updates: impl IntoIterator<Item = &'a Bytes> + Clone,
    digest: Digest,
    versions: &[pb::ResourceVersion],
    mut each_update: impl FnMut(std::ops::Range<usize>),
) -> BytesMut {
    let updates_len: usize = updates
        .clone()
        .into_iter()
        .map(|u| len_delimited_len(2, u.len()))
        .sum();
    let digest = digest.to_bytes();
    let body_len = prost::encoding::uint64::encoded_len(1, &to.0)
        + updates_len
        + len_delimited_len(3, digest.len())
        + prost::encoding::uint64::encoded_len(4, &from.0)
        + prost::encoding::message::encoded_len_repeated(5, versions);
    let frame_len = len_delimited_len(field::DELTAS, body_len);
    let mut buf = BytesMut::with_capacity(GRPC_PREFIX_LEN + frame_len);
    put_grpc_prefix(frame_len, &mut buf);
    encode_key(field::DELTAS, WireType::LengthDelimited, &mut buf);
    encode_varint(body_len as u64, &mut buf);
    prost::encoding::uint64::encode(1, &to.0, &mut buf);
    for update in updates {
        put_len_delimited(2, update, &mut buf);
        each_update(buf.len() - update.len()..buf.len());
    }
    put_len_delimited(3, &digest, &mut buf);
    prost::encoding::uint64::encode(4, &from.0, &mut buf);
    for version in versions {
        prost::encoding::message::encode(5, version, &mut buf);
    }
    buf
}

/// A `DeltaBatch` decoded with each update kept as received.
#[derive(Clone, PartialEq, Message)]
pub struct RawDeltaBatch {
    /// The revision after the batch.
    #[prost(uint64, tag = "1")]
    pub revision: u64,
    /// Encoded `KeyValue`s.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub updates: Vec<Bytes>,
    /// The digest after the batch (16 bytes), if the server sent one.
    #[prost(bytes = "bytes", tag = "3")]
    pub digest: Bytes,
    /// The first revision covered.
    #[prost(uint64, tag = "4")]
    pub from_revision: u64,
    /// The version vector entries the batch advances (the full vector after a
    /// cross-replica resume).
    #[prost(message, repeated, tag = "5")]
    pub versions: Vec<pb::ResourceVersion>,
}

/// A `SnapshotEntries` decoded with each entry kept as received.
#[derive(Clone, PartialEq, Message)]
pub struct RawSnapshotEntries {
    /// Encoded `KeyValue`s.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub entries: Vec<Bytes>,
}

/// A decoded server frame, as the client sees it.
#[derive(Clone, PartialEq, Debug)]
pub enum ServerFrame {
    /// `ServerHello`.
    Hello(pb::ServerHello),
    /// `SnapshotChunk`.
    SnapshotChunk(pb::SnapshotChunk),
    /// `InSync`.
    InSync(pb::InSync),
    /// `DeltaBatch`, raw.
    Deltas(RawDeltaBatch),
    /// `Ping`.
    Ping(pb::Ping),
    /// `Pong`.
    Pong(pb::Pong),
    /// `Goodbye`.
    Goodbye(pb::Goodbye),
    /// A frame type this build does not know (from a newer server): ignored.
    Unknown(u32),
}

impl ServerFrame {
    /// Decodes one `ServerMessage`. An empty message or one with only unknown fields is
    /// [`ServerFrame::Unknown`]; the last oneof member wins, as in protobuf, and unknown
    /// fields are skipped without undoing a known member (a newer server may add fields).
    pub fn decode(mut buf: impl Buf) -> Result<ServerFrame, prost::DecodeError> {
        let mut frame = ServerFrame::Unknown(0);
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            if wire_type != WireType::LengthDelimited {
                prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default())?;
                if let ServerFrame::Unknown(_) = frame {
                    frame = ServerFrame::Unknown(tag);
                }
                continue;
            }
            let mut body = Bytes::new();
            prost::encoding::bytes::merge(wire_type, &mut body, &mut buf, Default::default())?;
            let decoded = match tag {
                field::HELLO => ServerFrame::Hello(Message::decode(body)?),
                field::SNAPSHOT_CHUNK => ServerFrame::SnapshotChunk(Message::decode(body)?),
                field::IN_SYNC => ServerFrame::InSync(Message::decode(body)?),
                field::DELTAS => ServerFrame::Deltas(Message::decode(body)?),
                field::PING => ServerFrame::Ping(Message::decode(body)?),
                field::PONG => ServerFrame::Pong(Message::decode(body)?),
                field::GOODBYE => ServerFrame::Goodbye(Message::decode(body)?),
                other => ServerFrame::Unknown(other),
            };
            if !matches!(decoded, ServerFrame::Unknown(_))
                || matches!(frame, ServerFrame::Unknown(_))
            {
                frame = decoded;
            }
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::EntryHash;
    use crate::model::{Key, Kind, Update, Value};

    fn node(name: &str) -> Bytes {
        let key = Key::cluster(Kind::Node, name).unwrap();
        let value = Value::Node(pb::Node {
            name: name.into(),
            ..Default::default()
        });
        Update::new(key, Some(value)).unwrap().encode()
    }

    #[test]
    fn a_grpc_frame_is_the_prefixed_frame_in_one_buffer() {
        let msg = || {
            pb::server_message::Msg::Ping(pb::Ping {
                nonce: 7,
                sent_unix_nanos: 9,
            })
        };
        let once = encode_grpc(msg());
        assert_eq!(once.frame, encode(msg()));
        assert_eq!(once.wire, grpc_message(&encode(msg())));
        assert_eq!(once.wire[GRPC_PREFIX_LEN..].as_ptr(), once.frame.as_ptr());
    }

    #[test]
    fn hand_built_delta_batch_decodes_with_prost_and_raw() {
        let updates = vec![node("a"), node("b")];
        let mut digest = Digest::EMPTY;
        digest.add(EntryHash::of(&updates[0]));
        let frame = delta_batch(Revision(3), Revision(5), &updates, digest);

        let msg = pb::ServerMessage::decode(frame.clone()).unwrap();
        let Some(pb::server_message::Msg::Deltas(batch)) = msg.msg else {
            panic!("not deltas")
        };
        assert_eq!((batch.from_revision, batch.revision), (3, 5));
        assert_eq!(batch.updates.len(), 2);
        assert_eq!(batch.updates[1].key.as_ref().unwrap().name, "b");

        let ServerFrame::Deltas(raw) = ServerFrame::decode(frame).unwrap() else {
            panic!()
        };
        assert_eq!(raw.updates, updates);
        assert_eq!(Digest::from_bytes(&raw.digest), Some(digest));
    }

    /// The sliced encoder writes the same frame, and each slice is its update's bytes
    /// inside the frame's buffer, where a decoder finds them.
    #[test]
    fn sliced_delta_batch_points_into_its_frame() {
        let updates = vec![node("a"), node("bb"), node("c")];
        let versions = [pb::ResourceVersion {
            resource: "nodes".into(),
            version: 9,
        }];
        let plain =
            delta_batch_with_versions(Revision(1), Revision(2), &updates, Digest::EMPTY, &versions);
        let sliced =
            delta_batch_sliced(Revision(1), Revision(2), &updates, Digest::EMPTY, &versions);
        let (frame, slices) = (sliced.frame, sliced.updates);
        assert_eq!(frame, plain);
        assert_eq!(sliced.wire, grpc_message(&plain));
        let once = delta_batch_grpc(Revision(1), Revision(2), &updates, Digest::EMPTY, &versions);
        assert_eq!(
            (once.wire, once.frame),
            (sliced.wire.clone(), plain.clone())
        );
        assert_eq!(sliced.wire[GRPC_PREFIX_LEN..].as_ptr(), frame.as_ptr());
        assert_eq!(slices, updates);
        let ServerFrame::Deltas(raw) = ServerFrame::decode(frame.clone()).unwrap() else {
            panic!("not deltas")
        };
        let start = frame.as_ptr() as usize;
        for (slice, decoded) in slices.iter().zip(&raw.updates) {
            assert_eq!(
                slice.as_ptr(),
                decoded.as_ptr(),
                "where the decoder finds it"
            );
            let at = slice.as_ptr() as usize;
            assert!(at > start && at + slice.len() <= start + frame.len());
        }
    }

    #[test]
    fn delta_batch_versions_decode_and_old_readers_skip_them() {
        let updates = vec![node("a")];
        let versions = vec![
            pb::ResourceVersion {
                resource: "nodes".into(),
                version: 42,
            },
            pb::ResourceVersion {
                resource: "pods".into(),
                version: 7,
            },
        ];
        let frame =
            delta_batch_with_versions(Revision(1), Revision(2), &updates, Digest::EMPTY, &versions);
        let Some(pb::server_message::Msg::Deltas(batch)) =
            pb::ServerMessage::decode(frame.clone()).unwrap().msg
        else {
            panic!("not deltas")
        };
        assert_eq!(batch.versions, versions);
        let ServerFrame::Deltas(raw) = ServerFrame::decode(frame.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(raw.versions, versions);
        // A version 1 reader (no field 5) decodes the same batch, minus the versions.
        #[derive(Clone, PartialEq, Message)]
        struct V1DeltaBatch {
            #[prost(uint64, tag = "1")]
            revision: u64,
            #[prost(bytes = "bytes", repeated, tag = "2")]
            updates: Vec<Bytes>,
            #[prost(bytes = "bytes", tag = "3")]
            digest: Bytes,
            #[prost(uint64, tag = "4")]
            from_revision: u64,
        }
        let mut body = frame;
        let (tag, _) = decode_key(&mut body).unwrap();
        assert_eq!(tag, field::DELTAS);
        let _len = prost::encoding::decode_varint(&mut body).unwrap();
        let v1 = V1DeltaBatch::decode(body).unwrap();
        assert_eq!((v1.from_revision, v1.revision), (1, 2));
        assert_eq!(v1.updates, updates);
        // And without versions the frame is byte-identical to the version 1 builder's.
        assert_eq!(
            delta_batch(Revision(1), Revision(2), &updates, Digest::EMPTY),
            delta_batch_with_versions(Revision(1), Revision(2), &updates, Digest::EMPTY, &[])
        );
    }

    #[test]
    fn snapshot_entries_round_trip() {
        let entries = vec![node("a"), node("b"), node("c")];
        let buf = snapshot_entries(&entries);
        let expected: usize = entries.iter().map(|e| snapshot_entry_len(e)).sum();
        assert_eq!(buf.len(), expected);
        let raw = RawSnapshotEntries::decode(buf.freeze()).unwrap();
        assert_eq!(raw.entries, entries);
    }

    #[test]
    fn small_frames_and_unknown_fields() {
        let hello = encode(pb::server_message::Msg::Goodbye(pb::Goodbye {
            reason: pb::GoodbyeReason::Rebalance as i32,
            message: "bye".into(),
        }));
        assert!(
            matches!(ServerFrame::decode(hello).unwrap(), ServerFrame::Goodbye(g) if g.message == "bye")
        );
        // Field 42 from some future server is skipped, not an error.
        let mut future = BytesMut::new();
        put_len_delimited(42, b"whatever", &mut future);
        assert_eq!(
            ServerFrame::decode(future.freeze()).unwrap(),
            ServerFrame::Unknown(42)
        );
        assert!(ServerFrame::decode(&[0x22, 0x05, 0x01][..]).is_err());
        // A known member followed by unknown fields (any wire type) stays that member.
        let mut in_sync = encode(pb::server_message::Msg::InSync(pb::InSync {
            revision: 1,
            ..Default::default()
        }))
        .to_vec();
        in_sync.extend_from_slice(&[0x59, 1, 2, 3, 4, 5, 6, 7, 8]); // field 11, fixed64
        let mut unknown = BytesMut::new();
        put_len_delimited(42, b"x", &mut unknown);
        in_sync.extend_from_slice(&unknown);
        assert!(matches!(
            ServerFrame::decode(&in_sync[..]).unwrap(),
            ServerFrame::InSync(s) if s.revision == 1
        ));
    }
}
