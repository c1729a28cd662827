//! tonic codecs for the `Sync` RPC.
//!
//! [`ServerCodec`] writes pre-encoded frames as they are (the per-client cost of a shared
//! frame is one copy into the HTTP/2 buffer) and decodes `ClientMessage`s with prost.
//! [`ClientCodec`] encodes `ClientMessage`s with prost and decodes [`ServerFrame`]s.
//! Neither compresses: snapshot chunks are compressed once by the server, per snapshot.
//!
//! The server side's buffers start small ([`SERVER_BUFFERS`]): typha holds one encode and
//! one decode buffer per connected client for as long as it is connected, almost all
//! frames it sends are deltas of a few hundred bytes and clients send only small
//! messages. Larger frames grow the buffer as needed.
//!
//! The encoder's yield threshold equals that buffer size (1 KiB). tonic hands the filled
//! part of its buffer to HTTP/2 and keeps writing into the rest of the same allocation,
//! so with tonic's 32 KiB threshold the buffer a snapshot grew (tens of KiB) stayed alive
//! for as long as the client stayed idle: measured as about 23 KiB per idle client.
//! With 1 KiB, big frames get a buffer of about their own size that is released once
//! written, and the allocation kept between frames stays within about 2 KiB, while
//! frames that are queued together still share HTTP/2 DATA frames and socket writes.
//! The bytes on the wire are the same gRPC messages; only how they are split into
//! HTTP/2 DATA frames can differ.
//!
//! typha's own server no longer encodes responses through tonic (its `Sync` body hands
//! the cache's gRPC-prefixed messages, [`crate::frame::grpc_message`], to HTTP/2 without
//! a copy); it still decodes requests with [`ClientMessageDecoder`] and its buffer size.
//! The generated server and [`FrameEncoder`] remain for tests that play a server.

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::frame::ServerFrame;
use crate::pb;

/// Initial capacity of the server's per-stream encode and decode buffers (tonic's default
/// is 8 KiB each), and the encoder's yield threshold, the same 1 KiB (tonic's default is
/// 32 KiB; see the module docs for why).
pub const SERVER_BUFFERS: (usize, usize) = (1024, 1024);

fn server_buffers() -> BufferSettings {
    BufferSettings::new(SERVER_BUFFERS.0, SERVER_BUFFERS.1)
}

/// Server side: `Bytes` frames out, `ClientMessage` in.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerCodec;

/// Client side: `ClientMessage` out, [`ServerFrame`] in.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCodec;

/// Writes pre-encoded frames.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameEncoder;

/// Encodes prost messages.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientMessageEncoder;

/// Decodes `ClientMessage`s.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientMessageDecoder;

/// Decodes [`ServerFrame`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameDecoder;

impl Codec for ServerCodec {
    type Encode = Bytes;
    type Decode = pb::ClientMessage;
    type Encoder = FrameEncoder;
    type Decoder = ClientMessageDecoder;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> ClientMessageDecoder {
        ClientMessageDecoder
    }
}

impl Codec for ClientCodec {
    type Encode = pb::ClientMessage;
    type Decode = ServerFrame;
    type Encoder = ClientMessageEncoder;
    type Decoder = FrameDecoder;

    fn encoder(&mut self) -> ClientMessageEncoder {
        ClientMessageEncoder
    }

    fn decoder(&mut self) -> FrameDecoder {
        FrameDecoder
    }
}

impl Encoder for FrameEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        server_buffers()
    }
}

impl Encoder for ClientMessageEncoder {
    type Item = pb::ClientMessage;
    type Error = Status;

    fn encode(&mut self, item: pb::ClientMessage, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encode ClientMessage: {e}")))
    }
}

impl Decoder for ClientMessageDecoder {
    type Item = pb::ClientMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::ClientMessage>, Status> {
        pb::ClientMessage::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed ClientMessage: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        server_buffers()
    }
}

impl Decoder for FrameDecoder {
    type Item = ServerFrame;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<ServerFrame>, Status> {
        ServerFrame::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("malformed server frame: {e}")))
    }
}
