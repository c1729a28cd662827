//! felix-client: the per-node agent. It syncs the cluster's network state from typha
//! ([`sync`], keeping a [`mirror::Mirror`] proven equal to the server's by digest) and
//! hands changes to the rest of the agent. Without typha, [`local`] watches the API
//! itself through typha's upstream code and feeds the same mirror and events.

pub mod calc;
pub mod cli;
pub mod config;
pub mod connect;
pub mod dataplane;
pub mod discovery;
pub mod health;
pub mod local;
pub mod metrics;
pub mod mirror;
pub mod reconnect;
pub mod sync;

pub use mirror::{Mirror, MirrorError};
pub use sync::{SyncClient, SyncConfig, SyncError, SyncEvent, SyncStatus};
