//! interfaces: notices local endpoints whose interface the kernel does not have, the
//! symptom of an `--interface-prefix` that does not match the CNI (typha names the
//! endpoints' interfaces with one prefix, the CNI creates them with another) or of a CNI
//! that names interfaces differently altogether. Such an agent enforces nothing for
//! those pods; it says so in `felix_dataplane_endpoints_without_interface` (a gauge,
//! set after every pass that synced routes) and in a warning at most once per
//! [`WARN_EVERY`] while the condition lasts.
//!
//! The count comes from the route sync: every local endpoint has an interface route, and
//! resolving it fails with [`DataplaneError::MissingInterface`] when the link is absent.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{DataplaneError, DataplaneStatus};
use crate::calc::{Desired, RouteTarget};

/// Least time between two warnings.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(60);

/// The rate limit's state.
#[derive(Debug, Default)]
pub(crate) struct InterfaceWatch {
    warned: Option<Instant>,
}

impl InterfaceWatch {
    /// Records a pass's route errors against the local endpoints of `desired`.
    pub(crate) fn observe(
        &mut self,
        desired: &Desired,
        route_errors: &[DataplaneError],
        status: &DataplaneStatus,
    ) {
        let missing: BTreeSet<&str> = route_errors
            .iter()
            .filter_map(|e| match e {
                DataplaneError::MissingInterface(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let local: BTreeSet<&str> = desired
            .routes
            .iter()
            .filter_map(|r| match &r.target {
                RouteTarget::Interface(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        status.set_endpoints_without_interface(missing.len());
        if missing.is_empty() {
            self.warned = None;
            return;
        }
        if self.warned.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        self.warned = Some(Instant::now());
        let example = missing.iter().next().copied().unwrap_or_default();
        tracing::warn!(
            missing = missing.len(),
            local_endpoints = local.len(),
            example,
            "local endpoints without a matching interface: no policy is enforced for them; \
             check that --interface-prefix (agent and typha) matches the CNI's interface names"
        );
    }
}
