//! A second, minimal client of the typha sync protocol, written from docs/protocol.md and
//! `sync.proto` only, and the home of the conformance suite (`tests/`) that runs it
//! against the real typha binary through the wire.
//!
//! Why: the protocol must be implementable by an outsider from its specification. This
//! crate shares no code with felix-client or typha (not even typha-proto): its message
//! types are generated from the .proto by its own build script, its digest is computed
//! from the spec's text ([`mirror`]), and it speaks gRPC through tonic's generic client
//! with a pass-through codec ([`client`]), so it hashes each entry's bytes as received.
//!
//! Invariants: a [`mirror::Mirror`] only changes through a snapshot ending in a verified
//! `InSync` or a batch whose `from_revision` and digest check out; anything else is a
//! [`ConformanceError`], never a silently accepted state.

pub mod client;
pub mod mirror;

/// Messages of package `typha.sync.v1`, generated from the schema.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/typha.sync.v1.rs"));
}

pub use client::{SyncStream, Synced, connect, connect_with_window, hello, tls_config};
pub use mirror::Mirror;

/// Why the conformance client gave up.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// A certificate or key file could not be read or parsed.
    #[error("reading {path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// TCP, TLS or HTTP/2 setup failed.
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server ended the stream with an error status (or the connection broke).
    #[error("status {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The stream ended without an error status where a frame was expected.
    #[error("the stream ended")]
    Ended,
    /// The server said goodbye (the reason's wire value and the message).
    #[error("goodbye {0}: {1}")]
    Goodbye(i32, String),
    /// A frame could not be decoded.
    #[error("decoding: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The server broke a rule of the specification.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A digest did not match: the mirror is not the server's state.
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
}

/// Shorthand for a protocol violation.
pub(crate) fn violation(what: impl Into<String>) -> ConformanceError {
    ConformanceError::Protocol(what.into())
}
