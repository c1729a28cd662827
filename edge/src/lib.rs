//! The edge both binaries share: everything typha and felix-client need to reach each
//! other and to stop cleanly, and nothing of either one's core.
//!
//! - [`cli`]: parsing with clap's exit codes, error chains to exit codes, and the
//!   logging/metrics flags every binary takes;
//! - [`tls`]: identities, verifiers, the flags' transport choice, hot reload of files;
//! - [`certs`]: the development PKI (`typha certs`, tests);
//! - [`discovery`]: ready typha endpoints from the Service's EndpointSlices (felix-client
//!   picks one; typha counts its replicas);
//! - [`signal`]: SIGTERM / SIGINT to a cancellation token;
//! - [`logging`]: the log subscriber (text without colour off a terminal, or JSON) and
//!   error chains printed once;
//! - [`metrics`] and [`process`]: the Prometheus recorder (histograms with buckets), the
//!   `process_*` and `*_build_info` metrics, and the `/metrics` listener.
//!
//! Neither binary's crate is a dependency: typha and felix-client both depend on this.

pub mod certs;
pub mod cli;
pub mod discovery;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod signal;
pub mod tls;
