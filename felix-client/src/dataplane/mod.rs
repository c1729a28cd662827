//! dataplane: writes [`crate::calc::Desired`] into the kernel: iptables/ip6tables chains
//! ([`iptables`]), ipsets ([`ipsets`]) and routes ([`routes`], through rtnetlink).
//!
//! Every pass writes only the difference between the desired state and what the kernel
//! holds. What the kernel holds comes from a cache of what the agent last read and wrote
//! (as Calico's felix trusts its table cache between refreshes): change-driven passes
//! ([`Dataplane::apply`]) read nothing once the cache is warm, compare only the chains and
//! ipsets that changed (an ipset whose member `Arc` is the one last written is not even
//! looked at), and cost CPU plus the writes. The kernel is read at start (an empty
//! cache: a restarted agent with unchanged state still writes nothing), on the periodic
//! refresh and on-demand repair ([`Dataplane::resync`], which is what repairs drift: a
//! rule or member deleted by hand comes back), and after any write error (the failed
//! component is re-read and, when its plan came from the cache, retried at once).
//! Order within a pass: create/update ipsets ->
//! iptables (per family and table, one atomic restore each, the tables concurrently) ->
//! tunnel devices ([`tunnels`]: only when they changed or were not yet written) ->
//! routes -> destroy ipsets
//! no longer wanted (only when every iptables write succeeded, so no rule references
//! them). A failing stage is counted and logged and does not stop the others; the driver
//! ([`run`]) retries.
//!
//! Invariants: only `cali-*` chains, `cali*` sets and routes of [`ROUTE_PROTOCOL`] are
//! changed, plus one hook rule at the top of the built-in INPUT/FORWARD/OUTPUT (filter)
//! and POSTROUTING (nat) chains. With [`DataplaneConfig::netns`] set, every command and
//! the netlink socket target that namespace and never the caller's.

pub mod backend;
mod cleanup;
mod driver;
mod exec;
mod interfaces;
pub(crate) mod ipsets;
pub(crate) mod iptables;
mod netns;
mod owner;
pub(crate) mod routes;
mod status;
mod tunnels;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use cleanup::{CleanupReport, cleanup};
pub use driver::{DesiredSource, drive, run};
pub use routes::ROUTE_PROTOCOL;
pub use status::DataplaneStatus;

use crate::calc::{Desired, Family};
use exec::Runner;
use iptables::Table;

/// Dataplane settings.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Run everything inside `/var/run/netns/<name>` (tests and development); `None` in
    /// production.
    pub netns: Option<String>,
    /// How often the driver re-reads the kernel and repairs drift.
    pub refresh_interval: Duration,
    /// How soon the driver retries after a pass with errors.
    pub retry_interval: Duration,
    /// Program ip6tables too (off on hosts without IPv6; desired IPv6 chains are then
    /// ignored).
    pub ipv6: bool,
    /// Which iptables to program (resolved once, when the dataplane opens).
    pub iptables_backend: backend::IptablesBackend,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            netns: None,
            refresh_interval: Duration::from_secs(90),
            retry_interval: Duration::from_secs(5),
            ipv6: true,
            iptables_backend: backend::IptablesBackend::Auto,
        }
    }
}

/// A dataplane stage, the `stage` label of `felix_dataplane_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Creating and updating ipsets.
    Ipsets,
    /// iptables / ip6tables.
    Iptables,
    /// Tunnel devices (VXLAN, IPIP).
    Tunnels,
    /// Routes.
    Routes,
    /// Destroying ipsets no longer wanted.
    IpsetCleanup,
}

impl Stage {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ipsets => "ipsets",
            Stage::Iptables => "iptables",
            Stage::Tunnels => "tunnels",
            Stage::Routes => "routes",
            Stage::IpsetCleanup => "ipset_cleanup",
        }
    }
}

/// Dataplane failures. All are retryable by the next pass unless noted.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A helper program could not be started or its pipes failed.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program exited non-zero (the kernel refused the write, or it is missing).
    #[error("{program} failed (exit {code:?}): {stderr}")]
    CommandFailed {
        /// The program.
        program: String,
        /// Its exit code, `None` when killed by a signal.
        code: Option<i32>,
        /// Its stderr.
        stderr: String,
    },
    /// A helper program's output could not be understood.
    #[error("unexpected {what} output: {line}")]
    Parse {
        /// Which output.
        what: &'static str,
        /// The offending line.
        line: String,
    },
    /// The network namespace could not be entered (fatal at startup: not retried).
    #[error("network namespace {name}: {reason}")]
    Netns {
        /// The namespace name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A netlink request or the netlink socket failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// A route names an interface that does not exist (yet): retried.
    #[error("route interface {0} does not exist")]
    MissingInterface(String),
    /// Another agent (Calico's Felix, say) owns `cali-` chains: fatal at startup.
    #[error(
        "another agent owns the cali- chains ({table} table, rule {rule:?}); refusing to start: \
         uninstall it first (docs/operations.md, \"Coexistence and migration\")"
    )]
    ForeignChains {
        /// The table.
        table: String,
        /// The first foreign rule found.
        rule: String,
    },
    /// A route could not be built or the kernel refused it.
    #[error("route {dst}: {reason}")]
    InvalidRoute {
        /// The destination.
        dst: String,
        /// Why.
        reason: String,
    },
}

/// Where one pass spent its time, summed over its stages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassTimings {
    /// Reading the kernel (`iptables-save`, `ipset save`, netlink dumps).
    pub read: Duration,
    /// Computing the difference (CPU only, no I/O).
    pub plan: Duration,
    /// Writing (`iptables-restore`, `ipset restore`, netlink requests).
    pub write: Duration,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Restore processes run (iptables and ip6tables).
    pub iptables_restores: u64,
    /// `ipset restore` processes run.
    pub ipset_restores: u64,
    /// Routes added or deleted.
    pub route_changes: u64,
    /// Tunnel device, FDB and neighbour writes.
    pub tunnel_writes: u64,
    /// Kernel reads run: `iptables-save` / `ipset save` processes and netlink dumps.
    pub kernel_reads: u64,
    /// Where the time went.
    pub timings: PassTimings,
    /// From the start of the pass until the desired state was in effect: ipsets,
    /// iptables and routes written (only the destroy of unused ipsets comes later).
    pub effective: Duration,
    /// Failures, by stage.
    pub errors: Vec<(Stage, DataplaneError)>,
}

impl ApplyReport {
    /// Whether the pass wrote nothing.
    pub fn wrote_nothing(&self) -> bool {
        self.iptables_restores == 0
            && self.ipset_restores == 0
            && self.route_changes == 0
            && self.tunnel_writes == 0
    }
}

/// What the agent knows the kernel holds, per component; `None` where it must be read
/// before the next plan (at start, after a write error, on refresh and repair).
#[derive(Debug, Default)]
struct Cache {
    ipsets: Option<ipsets::SetCache>,
    /// v4 filter, v4 nat, v6 filter, v6 nat.
    tables: [Option<iptables::TableCache>; 4],
    routes: Option<routes::RouteCache>,
    /// The tunnels last written successfully.
    tunnels: Option<crate::calc::tunnels::Tunnels>,
}

/// The (family, table) pairs in [`Cache::tables`] order.
const TABLES: [(Family, Table); 4] = [
    (Family::V4, Table::Filter),
    (Family::V4, Table::Nat),
    (Family::V6, Table::Filter),
    (Family::V6, Table::Nat),
];

fn chains(desired: &Desired, family: Family, table: Table) -> &crate::calc::Chains {
    let tables = match family {
        Family::V4 => &desired.v4,
        Family::V6 => &desired.v6,
    };
    match table {
        Table::Filter => &tables.filter,
        Table::Nat => &tables.nat,
    }
}

/// The kernel programmer: owns the netlink connection, the last desired state and the
/// cache of what the kernel holds.
///
/// [`Self::apply`] plans against the cache (no kernel read once it is warm: a no-op pass
/// is CPU only, and only changed chains and ipsets are even compared);
/// [`Self::resync`] and [`Self::repair`] re-read everything first, which is what repairs
/// drift. A component whose write fails is re-read and retried at once when its plan
/// came from the cache, and is re-read by the next pass in any case.
#[derive(Debug)]
pub struct Dataplane {
    config: DataplaneConfig,
    runner: Runner,
    netlink: netns::Netlink,
    status: Arc<DataplaneStatus>,
    last: Option<Desired>,
    cache: Cache,
    interfaces: interfaces::InterfaceWatch,
}

impl Dataplane {
    /// Opens the dataplane (the netlink socket, in the configured namespace). Writes
    /// nothing; the first pass reads the kernel.
    pub async fn new(
        config: DataplaneConfig,
        status: Arc<DataplaneStatus>,
    ) -> Result<Dataplane, DataplaneError> {
        let netlink = netns::open(config.netns.as_deref()).await?;
        let mut runner = Runner::new(config.netns.clone());
        runner.iptables = backend::resolve(&runner, config.iptables_backend).await;
        owner::check(&runner, &config).await?;
        Ok(Dataplane {
            runner,
            config,
            netlink,
            status,
            last: None,
            cache: Cache::default(),
            interfaces: interfaces::InterfaceWatch::default(),
        })
    }

    /// The shared status.
    pub fn status(&self) -> &Arc<DataplaneStatus> {
        &self.status
    }

    /// Brings the kernel in line with `desired`, trusting the cache of what the agent
    /// last wrote or read (the kernel is read only where the cache is empty), and
    /// remembers `desired` for [`Self::repair`].
    pub async fn apply(&mut self, desired: &Desired) -> ApplyReport {
        let started = Instant::now();
        let report = self.pass(desired).await;
        for (stage, error) in &report.errors {
            tracing::warn!(stage = stage.as_str(), error = %error, "dataplane write failed");
            self.status.error(*stage);
        }
        self.status.recorded(&report);
        tracing::debug!(
            iptables_restores = report.iptables_restores,
            ipset_restores = report.ipset_restores,
            route_changes = report.route_changes,
            kernel_reads = report.kernel_reads,
            errors = report.errors.len(),
            "dataplane pass done"
        );
        self.status.pass_done(started.elapsed().as_secs_f64());
        report
    }

    /// Re-reads the whole kernel, then brings it in line with `desired` (drift repair).
    pub async fn resync(&mut self, desired: &Desired) -> ApplyReport {
        self.cache = Cache::default();
        self.apply(desired).await
    }

    /// Re-reads the kernel and re-applies the last desired state (nothing before the
    /// first [`Self::apply`]).
    pub async fn repair(&mut self) -> ApplyReport {
        match self.last.take() {
            Some(desired) => self.resync(&desired).await,
            None => ApplyReport::default(),
        }
    }

    async fn pass(&mut self, desired: &Desired) -> ApplyReport {
        let started = Instant::now();
        let mut report = ApplyReport::default();
        let last = self.last.take();
        let sets = self.ipsets(desired, &mut report).await;
        let iptables_ok = self.iptables(desired, last.as_ref(), &mut report).await;
        if self.cache.tunnels.as_ref() != Some(&desired.tunnels) {
            let started = Instant::now();
            match tunnels::sync(&self.runner, &desired.tunnels).await {
                Ok(writes) => {
                    report.tunnel_writes = writes;
                    self.cache.tunnels = Some(desired.tunnels.clone());
                }
                Err(e) => {
                    self.cache.tunnels = None;
                    report.errors.push((Stage::Tunnels, e));
                }
            }
            report.timings.write += started.elapsed();
        }
        let routes_started = Instant::now();
        let routes = routes::sync(
            &self.netlink.handle,
            &desired.routes,
            last.as_ref().map(|l| &l.routes),
            &mut self.cache.routes,
        )
        .await;
        report.timings.read += routes.read_time;
        report.timings.write += routes_started.elapsed().saturating_sub(routes.read_time);
        report.effective = started.elapsed();
        report.route_changes = routes.changes;
        report.kernel_reads += routes.reads;
        self.interfaces
            .observe(desired, &routes.errors, &self.status);
        report
            .errors
            .extend(routes.errors.into_iter().map(|e| (Stage::Routes, e)));
        if let Some(plan) = sets
            && let Some(script) = plan.destroy.as_deref()
            && iptables_ok
        {
            let ok = self
                .ipset_restore(script, Stage::IpsetCleanup, &mut report)
                .await;
            self.cache.ipsets = ok.then(|| ipsets::cache_after(&desired.ipsets, &plan, true));
        }
        self.last = Some(desired.clone());
        report
    }

    /// Creates and updates ipsets; returns the plan written (for its destroys), `None`
    /// when the sets could not be brought in line.
    async fn ipsets(
        &mut self,
        desired: &Desired,
        report: &mut ApplyReport,
    ) -> Option<ipsets::SetPlan> {
        loop {
            let started = Instant::now();
            let (fresh, plan) = match &self.cache.ipsets {
                Some(cache) => (
                    false,
                    ipsets::plan(&desired.ipsets, ipsets::Current::Cache(cache)),
                ),
                None => {
                    let kernel = ipsets::read(&self.runner).await;
                    report.kernel_reads += 1;
                    report.timings.read += started.elapsed();
                    let kernel = match kernel {
                        Ok(kernel) => kernel,
                        Err(e) => {
                            report.errors.push((Stage::Ipsets, e));
                            return None;
                        }
                    };
                    let started = Instant::now();
                    let plan = ipsets::plan(&desired.ipsets, ipsets::Current::Kernel(&kernel));
                    report.timings.plan += started.elapsed();
                    (true, plan)
                }
            };
            if !fresh {
                report.timings.plan += started.elapsed();
            }
            if let Some(script) = plan.update.as_deref()
                && !self.ipset_restore(script, Stage::Ipsets, report).await
            {
                self.cache.ipsets = None;
                if fresh {
                    return None;
                }
                // Undo the error: the retry against a fresh read decides.
                report.errors.pop();
                tracing::info!("ipset write planned from the cache failed; re-reading ipsets");
                continue;
            }
            self.cache.ipsets = Some(ipsets::cache_after(&desired.ipsets, &plan, false));
            return Some(plan);
        }
    }

    /// Syncs every table of every family, concurrently (each is its own restore process
    /// and transaction, as Felix applies its tables in parallel); returns whether all
    /// succeeded.
    async fn iptables(
        &mut self,
        desired: &Desired,
        last: Option<&Desired>,
        report: &mut ApplyReport,
    ) -> bool {
        let runner = &self.runner;
        let ipv6 = self.config.ipv6;
        let syncs = self
            .cache
            .tables
            .iter_mut()
            .zip(TABLES)
            .filter(|(_, (family, _))| *family == Family::V4 || ipv6)
            .map(|(slot, (family, table))| async move {
                let mut outcome = iptables::TableOutcome::default();
                let result = iptables::sync_table(
                    runner,
                    family,
                    table,
                    chains(desired, family, table),
                    last.map(|l| chains(l, family, table)),
                    slot,
                    &mut outcome,
                )
                .await;
                (outcome, result)
            });
        let mut iptables_ok = true;
        for (outcome, result) in futures::future::join_all(syncs).await {
            report.iptables_restores += outcome.restores;
            report.kernel_reads += outcome.reads;
            // Concurrent: the sums are CPU/process time, not wall time.
            report.timings.read += outcome.timings.read;
            report.timings.plan += outcome.timings.plan;
            report.timings.write += outcome.timings.write;
            if let Err(e) = result {
                iptables_ok = false;
                report.errors.push((Stage::Iptables, e));
            }
        }
        iptables_ok
    }

    /// Runs one ipset script; returns whether it succeeded (a failure is in `report`).
    async fn ipset_restore(&self, script: &str, stage: Stage, report: &mut ApplyReport) -> bool {
        let started = Instant::now();
        let result = ipsets::restore(&self.runner, script).await;
        report.timings.write += started.elapsed();
        if !matches!(result, Err(DataplaneError::Spawn { .. })) {
            report.ipset_restores += 1;
        }
        match result {
            Ok(()) => true,
            Err(e) => {
                report.errors.push((stage, e));
                false
            }
        }
    }
}
