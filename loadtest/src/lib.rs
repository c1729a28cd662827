//! The load-test harness: typha, kube-sim and thousands of felix-client sync clients
//! over real mutual TLS, with the measurements the report prints.
//!
//! Two modes share the fixtures: [`harness`] runs everything in one process (the
//! integration tests), and [`scenario`] runs kube-sim, each typha replica and the agent
//! workers ([`worker`]) as child processes of this binary (multi-call: `loadtest kube-sim
//! ...`, `loadtest typha ...`, `loadtest agent-worker ...`) so that CPU, memory and bytes
//! are measured per process.

pub mod api;
pub mod churn;
pub mod direct;
pub mod fleet;
pub mod harness;
pub mod http1;
pub mod latency;
pub mod model;
pub mod pinning;
pub mod plot;
pub mod probe;
pub mod procs;
pub mod rawnet;
pub mod report;
pub mod scenario;
pub mod stack;
pub mod worker;
