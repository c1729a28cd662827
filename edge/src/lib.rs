//! The edge both binaries share: everything typha and felix-client need to reach each
//! other and to stop cleanly, and nothing of either one's core.
//!
//! - [`tls`]: identities, verifiers, the flags' transport choice, hot reload of files;
//! - [`certs`]: the development PKI (`typha certs`, tests);
//! - [`discovery`]: ready typha endpoints from the Service's EndpointSlices (felix-client
//!   picks one; typha counts its replicas);
//! - [`signal`]: SIGTERM / SIGINT to a cancellation token.
//!
//! Neither binary's crate is a dependency: typha and felix-client both depend on this.

pub mod certs;
pub mod discovery;
pub mod signal;
pub mod tls;
