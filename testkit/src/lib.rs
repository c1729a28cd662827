//! Helpers the workspace's integration tests share, so a test says what it needs (a
//! scratch directory, kubectl pointed at a kube-sim, one HTTP GET, test logs) instead of
//! copying how: [`Scratch`], [`Kubectl`], [`http_get`], [`test_logs`]; and the sample
//! names the benchmarks share ([`APP_NAMES`]).
//!
//! Test support only (a dev-dependency everywhere): a helper that cannot do its job
//! panics with the reason, which is how a test reports failure; hence the allow below.
//! Nothing here depends on a workspace crate, so any crate's tests can use it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod http;
mod kubectl;
mod logs;
mod names;
mod scratch;

pub use http::http_get;
pub use kubectl::{KUBECTL, Kubectl};
pub use logs::test_logs;
pub use names::APP_NAMES;
pub use scratch::Scratch;
