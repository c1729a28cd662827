//! status: the dataplane's live counters and signals, shared between the driver, the
//! rest of the agent and tests, and mirrored into `felix_dataplane_*` metrics.
//!
//! Tests await the watches (never poll): `folded` moves when an event is folded into
//! the calculation, `applied` when a kernel pass for a revision finished, `passes` after
//! every pass (including drift repairs). Counters only grow.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};
use typha_proto::Revision;

use super::Stage;

/// Live counters of one dataplane (also exported as `felix_dataplane_*` metrics).
#[derive(Debug)]
pub struct DataplaneStatus {
    /// The sync revision the kernel was last brought in line with.
    pub applied: watch::Sender<Revision>,
    /// The sync revision of the last event folded into the calculation.
    pub folded: watch::Sender<Revision>,
    /// Kernel passes completed (applies and repairs, successful or not).
    pub passes: watch::Sender<u64>,
    /// `iptables-restore` / `ip6tables-restore` processes run.
    pub iptables_restores: AtomicU64,
    /// `ipset restore` processes run.
    pub ipset_restores: AtomicU64,
    /// Routes added or deleted.
    pub route_changes: AtomicU64,
    /// Kernel reads (`iptables-save`, `ipset save`, netlink dumps).
    pub kernel_reads: AtomicU64,
    /// Errors (any stage).
    pub errors: AtomicU64,
    /// Local endpoints whose interface the kernel lacks, after the last route sync.
    pub endpoints_without_interface: watch::Sender<usize>,
    repair: Notify,
}

impl Default for DataplaneStatus {
    fn default() -> Self {
        DataplaneStatus {
            applied: watch::Sender::new(Revision::default()),
            folded: watch::Sender::new(Revision::default()),
            passes: watch::Sender::new(0),
            iptables_restores: AtomicU64::default(),
            ipset_restores: AtomicU64::default(),
            route_changes: AtomicU64::default(),
            kernel_reads: AtomicU64::default(),
            errors: AtomicU64::default(),
            endpoints_without_interface: watch::Sender::new(0),
            repair: Notify::new(),
        }
    }
}

impl DataplaneStatus {
    /// Asks the running driver for a drift repair pass now (a no-op before in-sync).
    pub fn request_repair(&self) {
        self.repair.notify_one();
    }

    /// Resolves when a repair was requested.
    pub(crate) async fn repair_requested(&self) {
        self.repair.notified().await;
    }

    /// Adds a pass's writes and reads to the counters.
    pub(crate) fn recorded(&self, report: &super::ApplyReport) {
        let add = |counter: &AtomicU64, name: &'static str, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
                metrics::counter!(name).increment(n);
            }
        };
        add(
            &self.iptables_restores,
            "felix_dataplane_iptables_restore_total",
            report.iptables_restores,
        );
        add(
            &self.ipset_restores,
            "felix_dataplane_ipset_restore_total",
            report.ipset_restores,
        );
        add(
            &self.route_changes,
            "felix_dataplane_route_changes_total",
            report.route_changes,
        );
        add(
            &self.kernel_reads,
            "felix_dataplane_kernel_reads_total",
            report.kernel_reads,
        );
    }

    /// A stage failed.
    pub(crate) fn error(&self, stage: Stage) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("felix_dataplane_errors_total", "stage" => stage.as_str()).increment(1);
    }

    /// Local endpoints without their interface (see `dataplane::interfaces`).
    pub(crate) fn set_endpoints_without_interface(&self, n: usize) {
        metrics::gauge!("felix_dataplane_endpoints_without_interface").set(n as f64);
        self.endpoints_without_interface.send_if_modified(|old| {
            let changed = *old != n;
            *old = n;
            changed
        });
    }

    /// A pass finished after `seconds`.
    pub(crate) fn pass_done(&self, seconds: f64) {
        metrics::histogram!("felix_dataplane_apply_seconds").record(seconds);
        self.passes.send_modify(|n| *n += 1);
    }

    /// Snapshot of the write counters: (iptables restores, ipset restores, route changes).
    pub fn writes(&self) -> (u64, u64, u64) {
        (
            self.iptables_restores.load(Ordering::Relaxed),
            self.ipset_restores.load(Ordering::Relaxed),
            self.route_changes.load(Ordering::Relaxed),
        )
    }
}
