//! typha: watches the Kubernetes API once, keeps one snapshot, and fans snapshot plus
//! deltas out to thousands of agents over mutual-TLS gRPC.
//!
//! Data flows one way: the upstream (`netmodel`: kube watchers, conversion to the model)
//! feeds [`hub`], which owns the pure snapshot cache (`snapshot_cache`) and publishes its
//! history; [`server`] streams that history to each client. TLS, the development PKI
//! and discovery live in the `edge` crate that felix-client shares. Operations:
//! [`health`] (readiness, freshness, /metrics), [`metrics`] (HELP text, buckets, build
//! info), [`rebalance`] (spreading agents over the
//! replicas) and [`drain`] (graceful shutdown).

pub mod app;
pub mod cli;
pub mod config;
pub mod drain;
#[cfg(test)]
mod fixtures;
pub mod health;
pub mod hub;
pub mod metrics;
pub mod rebalance;
pub mod server;
