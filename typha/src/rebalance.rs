//! Load spreading: each replica keeps about its share of the agents and tells the excess
//! to move (`Goodbye(REBALANCE)`), so a replica that joins (or a rolling update) ends up
//! with connections without anyone reconnecting by hand.
//!
//! The target per replica is `ceil(nodes / replicas * (1 + headroom))`: `nodes` is the
//! number of Node objects in the cache (one agent per node), `replicas` the number of
//! ready typha endpoints (from [`edge::discovery`]). The headroom keeps the replicas'
//! combined capacity above the number of agents, so shed clients always find a place.
//!
//! Invariants: no goodbye while the upstream is not in sync (the counts may be partial),
//! none while either count is zero (unknown: discovery not running or not listed yet, or
//! no Node objects), never below the target (sessions already told do not count), and at
//! most `rate` goodbyes per second. Which client goes: the newest (see
//! [`Sessions::tell_newest`]).

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use typha_proto::pb::GoodbyeReason;

use crate::hub::InSyncWatch;
use crate::server::Sessions;

/// Tuning for load spreading.
#[derive(Clone, Debug, PartialEq)]
pub struct RebalanceConfig {
    /// Extra share each replica accepts beyond an even split (0.1 = 10 %).
    pub headroom: f64,
    /// Most goodbyes per second.
    pub rate: f64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            headroom: 0.1,
            rate: 10.0,
        }
    }
}

impl RebalanceConfig {
    /// The pause between two goodbyes.
    pub fn gap(&self) -> Duration {
        if self.rate.is_finite() && self.rate > 0.0 {
            Duration::from_secs_f64(1.0 / self.rate)
        } else {
            Duration::from_secs(1)
        }
    }
}

/// `ceil(nodes / replicas * (1 + headroom))`, or `None` when either count is unknown (0).
pub fn connection_target(nodes: usize, replicas: usize, headroom: f64) -> Option<usize> {
    if nodes == 0 || replicas == 0 {
        return None;
    }
    let share = nodes as f64 / replicas as f64 * (1.0 + headroom.max(0.0));
    // Float error must not push an exact share up by one: 10 / 2 * 1.0 is 5, not 6.
    let target = (share - 1e-9).ceil().max(1.0);
    Some(target as usize)
}

/// Sheds sessions above the target until `shutdown`, only while `in_sync`. `nodes` and
/// `replicas` are the live counts; a closed channel keeps its last value.
pub async fn run(
    sessions: Sessions,
    in_sync: InSyncWatch,
    mut nodes: watch::Receiver<usize>,
    mut replicas: watch::Receiver<usize>,
    config: RebalanceConfig,
    shutdown: CancellationToken,
) {
    let target_gauge = metrics::gauge!("typha_connections_target");
    let goodbyes = metrics::counter!("typha_rebalance_goodbyes_total");
    let mut counts = sessions.watch();
    let (mut nodes_open, mut replicas_open) = (true, true);
    let mut last_target = None;
    loop {
        let target = connection_target(*nodes.borrow(), *replicas.borrow(), config.headroom);
        // 0 means "no target": rebalancing is off.
        target_gauge.set(target.unwrap_or(0) as f64);
        if target != last_target {
            tracing::info!(?target, "connection target");
            last_target = target;
        }
        let staying = counts.borrow_and_update().staying;
        let excess = target.map_or(0, |t| staying.saturating_sub(t));
        if excess > 0 && in_sync.is_in_sync() && sessions.tell_newest(GoodbyeReason::Rebalance) {
            goodbyes.increment(1);
            tracing::debug!(staying, ?target, "told a client to move");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(config.gap()) => {}
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = nodes.changed(), if nodes_open => nodes_open = changed.is_ok(),
            changed = replicas.changed(), if replicas_open => replicas_open = changed.is_ok(),
            changed = counts.changed() => if changed.is_err() { return },
            _ = in_sync.wait(), if !in_sync.is_in_sync() => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig};
    use crate::server::{Farewell, Registration};

    #[test]
    fn target_is_the_share_plus_headroom_rounded_up() {
        assert_eq!(connection_target(100, 3, 0.1), Some(37)); // 36.67
        assert_eq!(connection_target(10, 2, 0.0), Some(5));
        assert_eq!(connection_target(10, 2, 0.1), Some(6)); // 5.5
        assert_eq!(connection_target(1000, 10, 0.1), Some(110));
        assert_eq!(connection_target(1, 5, 0.1), Some(1));
        assert_eq!(connection_target(0, 5, 0.1), None);
        assert_eq!(connection_target(10, 0, 0.1), None);
    }

    struct Fixture {
        sessions: Sessions,
        hub: Hub,
        held: Vec<(Registration, Farewell)>,
        nodes: watch::Sender<usize>,
        replicas: watch::Sender<usize>,
        shutdown: CancellationToken,
    }

    fn fixture(clients: usize, nodes: usize, replicas: usize) -> Fixture {
        let sessions = Sessions::new();
        let held = (0..clients).map(|_| sessions.register()).collect();
        let (nodes, nodes_rx) = watch::channel(nodes);
        let (replicas, replicas_rx) = watch::channel(replicas);
        let hub = Hub::new(HubConfig::default());
        let shutdown = CancellationToken::new();
        let config = RebalanceConfig {
            headroom: 0.0,
            rate: 10.0,
        };
        tokio::spawn(run(
            sessions.clone(),
            hub.in_sync_watch(),
            nodes_rx,
            replicas_rx,
            config,
            shutdown.clone(),
        ));
        Fixture {
            sessions,
            hub,
            held,
            nodes,
            replicas,
            shutdown,
        }
    }

    impl Fixture {
        fn told(&self) -> usize {
            self.held
                .iter()
                .filter(|(_, f)| f.borrow().is_some())
                .count()
        }
    }

    /// Lets the rebalancer run everything it can without time passing.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_newest_down_to_the_target_at_the_rate() {
        // 20 nodes over 2 replicas: target 10; 14 clients, so 4 must go, 100 ms apart.
        let f = fixture(14, 20, 2);
        f.hub.set_in_sync(true);
        settle().await;
        assert_eq!(f.told(), 1, "one goodbye at once");
        let gap = Duration::from_millis(100);
        for expected in 2..=4 {
            tokio::time::advance(gap - Duration::from_millis(1)).await;
            settle().await;
            assert_eq!(f.told(), expected - 1, "no goodbye before the gap");
            tokio::time::advance(Duration::from_millis(1)).await;
            settle().await;
            assert_eq!(f.told(), expected);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(f.told(), 4, "never below the target");
        assert_eq!(f.sessions.counts().staying, 10);
        // The newest four were told, the oldest ten kept.
        let told: Vec<bool> = f.held.iter().map(|(_, r)| r.borrow().is_some()).collect();
        assert!(told[..10].iter().all(|t| !t) && told[10..].iter().all(|t| *t));
        f.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_sync_and_known_counts_and_follows_the_target() {
        let f = fixture(6, 0, 2);
        settle().await;
        f.hub.set_in_sync(true);
        settle().await;
        assert_eq!(f.told(), 0, "no Node objects: no target");
        f.replicas.send_replace(0);
        f.nodes.send_replace(4);
        settle().await;
        assert_eq!(f.told(), 0, "no replica count: no target");
        // 4 nodes over 1 replica: target 4, 2 must go. Then a second replica comes and
        // the target drops to 2 while the first goodbye's gap runs.
        f.replicas.send_replace(1);
        settle().await;
        assert_eq!(f.told(), 1);
        f.replicas.send_replace(2);
        // Awaiting lets the paused clock run to the rebalancer's next deadline.
        f.sessions.wait_for(|c| c.staying == 2).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(f.told(), 4);
        f.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_shed_before_the_upstream_is_in_sync() {
        let f = fixture(10, 4, 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(f.told(), 0);
        f.hub.set_in_sync(true);
        f.sessions.wait_for(|c| c.staying == 4).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(f.told(), 6);
        f.shutdown.cancel();
    }
}
