//! felix-client: the per-node agent. It syncs the cluster's network state from typha
//! ([`sync`], keeping a [`mirror::Mirror`] proven equal to the server's by digest) and
//! hands changes to the rest of the agent.

pub mod connect;
pub mod mirror;
pub mod sync;

pub use mirror::{Mirror, MirrorError};
pub use sync::{SyncClient, SyncConfig, SyncError, SyncEvent, SyncStatus};
