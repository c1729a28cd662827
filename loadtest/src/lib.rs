//! The load-test harness: typha, kube-sim and thousands of in-process felix-client sync
//! clients over real mutual TLS, with the measurements the report prints.

pub mod harness;
pub mod model;
pub mod steady;
