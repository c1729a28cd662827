//! driver: the dataplane's lifecycle. It folds every sync event into the calculation
//! and decides when to write the kernel.
//!
//! Invariants: nothing is written before the first `SyncEvent::InSync` (a partial
//! snapshot must never reach the kernel: it would drop rules of pods not yet seen);
//! after that every batch of queued events causes one pass; `Disconnected` changes
//! nothing (the kernel keeps the last state while the client reconnects). Change-driven
//! passes trust the dataplane's cache ([`Dataplane::apply`]); a periodic refresh, an
//! explicit [`DataplaneStatus::request_repair`] and a retry after a failed pass re-read
//! the kernel ([`Dataplane::resync`]) and so repair drift.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use typha_proto::{Revision, Update};

use super::{Dataplane, DataplaneConfig, DataplaneError, DataplaneStatus};
use crate::calc::{Calc, Desired};
use crate::sync::SyncEvent;

/// What the driver needs from the calculation (the real one is [`Calc`]; tests supply
/// their own).
pub trait DesiredSource: Send {
    /// Folds changes in, in order.
    fn apply(&mut self, updates: &[Update]);
    /// What the kernel should hold now.
    fn desired(&self) -> Desired;
}

impl DesiredSource for Calc {
    fn apply(&mut self, updates: &[Update]) {
        Calc::apply(self, updates);
    }

    fn desired(&self) -> Desired {
        Calc::desired(self)
    }
}

/// Driver state between events.
struct Fold {
    in_sync: bool,
    dirty: bool,
    revision: Revision,
}

impl Fold {
    fn event(&mut self, calc: &mut impl DesiredSource, status: &DataplaneStatus, event: SyncEvent) {
        match event {
            SyncEvent::Changes { revision, updates } => {
                calc.apply(&updates);
                self.revision = revision;
                self.dirty = true;
            }
            SyncEvent::InSync { revision, .. } => {
                self.revision = revision;
                self.in_sync = true;
                self.dirty = true;
            }
            SyncEvent::Disconnected { reason } => {
                tracing::info!(%reason, "sync disconnected; dataplane kept as is");
                return;
            }
        }
        status.folded.send_replace(self.revision);
    }
}

/// Opens the dataplane ([`Dataplane::new`]) and runs it ([`drive`]) until `shutdown`
/// fires or `events` closes. Fails only when the dataplane cannot be opened (namespace,
/// netlink, or another agent's chains).
pub async fn run(
    config: DataplaneConfig,
    calc: impl DesiredSource,
    events: mpsc::Receiver<SyncEvent>,
    status: Arc<DataplaneStatus>,
    shutdown: CancellationToken,
) -> Result<(), DataplaneError> {
    let dataplane = Dataplane::new(config, status).await?;
    drive(dataplane, calc, events, shutdown).await;
    Ok(())
}

/// Runs an opened dataplane until `shutdown` fires or `events` closes: folds events into
/// `calc`, writes the kernel after the first in-sync, repairs drift periodically. The
/// binary opens the dataplane before it starts syncing (so a host it must not program
/// stops the start) and hands it here.
pub async fn drive(
    mut dataplane: Dataplane,
    mut calc: impl DesiredSource,
    mut events: mpsc::Receiver<SyncEvent>,
    shutdown: CancellationToken,
) {
    let status = dataplane.status().clone();
    let config = dataplane.config.clone();
    let mut refresh = tokio::time::interval_at(
        Instant::now() + config.refresh_interval,
        config.refresh_interval,
    );
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut retry_at: Option<Instant> = None;
    let mut fold = Fold {
        in_sync: false,
        dirty: false,
        revision: Revision::default(),
    };
    loop {
        let mut force = false;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            event = events.recv() => {
                let Some(event) = event else { return };
                fold.event(&mut calc, &status, event);
                while let Ok(event) = events.try_recv() {
                    fold.event(&mut calc, &status, event);
                }
            }
            () = async { if let Some(at) = retry_at { tokio::time::sleep_until(at).await } },
                if retry_at.is_some() => force = true,
            () = status.repair_requested() => force = true,
            _ = refresh.tick() => force = true,
        }
        if !fold.in_sync || !(fold.dirty || force) {
            continue;
        }
        fold.dirty = false;
        let desired = calc.desired();
        let report = if force {
            dataplane.resync(&desired).await
        } else {
            dataplane.apply(&desired).await
        };
        status.applied.send_replace(fold.revision);
        retry_at = (!report.errors.is_empty()).then(|| Instant::now() + config.retry_interval);
    }
}
