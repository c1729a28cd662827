//! tonic codecs for the `Sync` RPC.
//!
//! typha's server decodes `ClientMessage`s with [`ClientMessageDecoder`] (tonic's
//! `Streaming` on the request body); it does not encode responses through tonic: its
//! `Sync` body hands the cache's gRPC-prefixed messages ([`crate::frame::GrpcFrame`])
//! to HTTP/2 as they are. [`ClientCodec`] encodes `ClientMessage`s with prost and decodes
//! [`ServerFrame`]s. Nothing is compressed by gRPC: snapshot chunks are compressed once
//! by the server, per snapshot.
//!
//! The server's decode buffer starts small ([`SERVER_BUFFERS`]): typha holds one per
//! connected client for as long as it is connected, and clients send only small
//! messages (larger ones grow it as needed).

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::frame::ServerFrame;
use crate::pb;

/// Initial capacity of the server's per-stream decode buffer (tonic's default is 8 KiB),
/// and the yield threshold tonic's settings carry with it.
pub const SERVER_BUFFERS: (usize, usize) = (1024, 1024);

fn server_buffers() -> BufferSettings {
    BufferSettings::new(SERVER_BUFFERS.0, SERVER_BUFFERS.1)
}

/// Client side: `ClientMessage` out, [`ServerFrame`] in.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCodec;

/// Writes pre-encoded bytes as they are (a client that sends hand-made messages).
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
