//! Wire decoding on both sides of the `Sync` stream.
//!
//! - [`client_message`]: what typha does with a client's message body: the server
//!   codec's decode (`ClientMessageDecoder` decodes `ClientMessage` with prost, exactly as here),
//!   hello validation, protocol negotiation and the resume position's parsing.
//! - [`server_frame`]: what felix-client does with a server frame: `ServerFrame::decode`
//!   (the client codec's decode), then each raw entry of a delta batch.

use prost::Message;
use typha::server::{ProtocolOffer, validate_hello};
use typha_proto::frame::ServerFrame;
use typha_proto::pb::{self, client_message as cm, server_message as sm};
use typha_proto::{Digest, Update, VersionVector};

/// Fuzz target `client_message`: one `ClientMessage` body as typha receives it.
pub fn client_message(data: &[u8]) {
    let Ok(message) = pb::ClientMessage::decode(data) else {
        return;
    };
    // Whatever decodes re-encodes to a message that decodes to the same value.
    let again = pb::ClientMessage::decode(message.encode_to_vec().as_slice());
    assert_eq!(
        again.as_ref().ok(),
        Some(&message),
        "ClientMessage round trip"
    );
    let Some(cm::Msg::Hello(hello)) = message.msg else {
        return;
    };
    if validate_hello(&hello).is_err() {
        return;
    }
    for offer in [ProtocolOffer::default(), ProtocolOffer::v1()] {
        let agreed = offer.negotiate(&hello);
        assert!(agreed.version <= hello.protocol_version && agreed.version <= offer.max_version);
        for granted in &agreed.capabilities {
            assert!(
                offer.capabilities.contains(granted),
                "granted unoffered {granted:?}"
            );
            assert!(
                hello.capabilities.contains(&(*granted as i32)),
                "granted unasked"
            );
        }
        assert_eq!(agreed.wire_capabilities().len(), agreed.capabilities.len());
    }
    if let Some(position) = &hello.resume {
        let _ = Digest::from_bytes(&position.digest);
        let versions = VersionVector::from_pb(&position.versions);
        // The vector is a function of its wire form: reading it back changes nothing.
        assert_eq!(VersionVector::from_pb(&versions.to_pb()), versions);
    }
}

/// Fuzz target `server_frame`: one `ServerMessage` as felix-client receives it.
pub fn server_frame(data: &[u8]) {
    let frame = ServerFrame::decode(data);
    // Differential: whatever prost decodes as a ServerMessage, the raw decoder decodes
    // as the same kind of frame (it may accept more: entries stay undecoded bytes).
    if let Ok(message) = pb::ServerMessage::decode(data) {
        let Ok(frame) = &frame else {
            panic!("prost decodes {message:?} but ServerFrame::decode fails: {frame:?}");
        };
        let same_kind = matches!(
            (&message.msg, frame),
            (None, ServerFrame::Unknown(_))
                | (Some(sm::Msg::Hello(_)), ServerFrame::Hello(_))
                | (
                    Some(sm::Msg::SnapshotChunk(_)),
                    ServerFrame::SnapshotChunk(_)
                )
                | (Some(sm::Msg::InSync(_)), ServerFrame::InSync(_))
                | (Some(sm::Msg::Deltas(_)), ServerFrame::Deltas(_))
                | (Some(sm::Msg::Ping(_)), ServerFrame::Ping(_))
                | (Some(sm::Msg::Pong(_)), ServerFrame::Pong(_))
                | (Some(sm::Msg::Goodbye(_)), ServerFrame::Goodbye(_))
        );
        assert!(same_kind, "prost {message:?} vs raw {frame:?}");
    }
    let Ok(frame) = frame else { return };
    match frame {
        ServerFrame::Deltas(batch) => {
            let _ = Digest::from_bytes(&batch.digest);
            let _ = VersionVector::from_pb(&batch.versions);
            for encoded in &batch.updates {
                if let Ok(update) = Update::decode(encoded) {
                    // A valid entry re-encodes to an entry that decodes the same.
                    assert_eq!(Update::decode(&update.encode()).ok(), Some(update));
                }
            }
        }
        ServerFrame::InSync(in_sync) => {
            let _ = Digest::from_bytes(&in_sync.digest);
            let _ = VersionVector::from_pb(&in_sync.versions);
        }
        _ => {}
    }
}
