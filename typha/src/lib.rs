//! typha: watches the Kubernetes API once, keeps one snapshot, and fans snapshot plus
//! deltas out to thousands of agents over mutual-TLS gRPC.
//!
//! Data flows one way: [`upstream`] (kube watchers, conversion to the model) feeds
//! [`hub`], which owns the pure [`cache`] and publishes its history; [`server`] streams
//! that history to each client. [`tls`] and [`certs`] hold the TLS plumbing both typha
//! and felix-client use. Operations: [`health`] (readiness, freshness, /metrics),
//! [`rebalance`] (spreading agents over the replicas) and [`drain`] (graceful shutdown).

pub mod app;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod drain;
pub mod health;
pub mod hub;
pub mod rebalance;
pub mod server;
pub mod tls;
pub mod upstream;
