//! The wire schema of the typha sync protocol and the typed model both sides share.
//!
//! - [`pb`]: the prost messages generated from `proto/typha/sync/v1/sync.proto`.
//! - [`model`]: typed keys and values; wire messages convert to them once, here, with
//!   `TryFrom`, and a missing or inconsistent field is a [`model::ModelError`].
//! - [`digest`]: the order-independent state digest every client verifies.
//! - [`frame`]: building shared, pre-encoded server frames, and decoding them on the
//!   client without losing the bytes the digest is computed over.
//! - `codec`, `server`, `client` (feature `grpc`): the tonic codecs and service of the one
//!   `Sync` RPC.

#[cfg(feature = "grpc")]
pub mod codec;
pub mod digest;
pub mod frame;
pub mod model;

/// Generated prost messages of package `typha.sync.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/typha.sync.v1.rs"));
}

#[cfg(feature = "grpc")]
/// The tonic client for `Sync`, decoding frames with [`codec::ClientCodec`].
#[allow(clippy::all, missing_docs)]
pub mod client {
    include!(concat!(env!("OUT_DIR"), "/client/typha.sync.v1.Typha.rs"));
}

pub use digest::Digest;
pub use model::{Key, Kind, ModelError, ResourceMark, Revision, Update, Value, VersionVector};

/// The highest protocol version this build speaks. Version 2 is version 1 plus
/// `CAPABILITY_RESOURCE_VERSIONS` (version vectors, cross-replica resume).
pub const PROTOCOL_VERSION: u32 = 2;

/// The lowest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The gRPC path of the one RPC, for logs and tests.
pub const SYNC_PATH: &str = "/typha.sync.v1.Typha/Sync";
