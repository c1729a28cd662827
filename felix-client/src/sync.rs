//! The sync client: keeps a [`Mirror`] of typha's state current across connections.
//!
//! One session per connection: ClientHello (with a resume position once synced), then
//! ServerHello, a snapshot or a resumption, InSync, and delta batches. The rest of the
//! agent consumes [`SyncEvent`]s. On connection loss the mirror is kept; the client
//! reconnects with jittered exponential backoff (immediately after a goodbye), resumes
//! where the server's history allows, and otherwise receives a snapshot of which only
//! the real differences are reported.
//!
//! Which typha: the candidates come from a [`TyphaSource`] (a fixed list, or a Service's
//! ready endpoints followed through discovery) and are tried in a [`Picker`] order:
//! shuffled, this node's typha first, never one that was removed, never the one that just
//! said goodbye (rebalance, shutdown) while another exists. A goodbye is not a failure:
//! the backoff does not grow and the reconnect is counted under its own reason.
//!
//! Start timeout: until the first in-sync, `start_timeout` bounds the whole effort (no
//! endpoint, unreachable endpoints, or no in-sync from any); then [`SyncError::StartTimeout`]
//! names the source and what was tried. Nothing has reached the dataplane by then: events
//! before the first in-sync are only snapshot changes, which come with that in-sync.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use typha_proto::{Digest, Revision, Update};

use crate::connect::ConnectError;
use crate::discovery::{Picker, TyphaSource};
use crate::mirror::Mirror;
use crate::reconnect;
use session::SessionEnd;

mod session;
mod status;
pub use crate::reconnect::RECONNECT_REASONS;
pub use status::SyncStatus;

/// What the sync client tells the rest of the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncEvent {
    /// Changes to the mirror, in order. Deletions have `value: None`. A snapshot's
    /// changes come as several events (one per snapshot chunk, then the deletions), all
    /// before its `InSync`.
    Changes {
        /// The mirror's revision after these changes.
        revision: Revision,
        /// The changes; deletions have `value: None`.
        updates: Vec<Update>,
    },
    /// The mirror equals the server's state at `revision` (after a snapshot or resume).
    InSync {
        /// The server revision.
        revision: Revision,
        /// The verified digest.
        digest: Digest,
        /// The number of keys.
        keys: usize,
    },
    /// The connection was lost; the mirror is kept and the client reconnects.
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
}

/// Sync client settings.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// This node's name, sent in ClientHello.
    pub node_name: String,
    /// Where the typha candidates come from (a fixed list or discovery).
    pub typha: TyphaSource,
    /// The TLS client configuration; `None` for plaintext (development only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bound on TCP + TLS + HTTP/2 setup and on the wait for ServerHello.
    pub connect_timeout: Duration,
    /// Silence from the server for this long ends the session (it pings every 10 s).
    pub read_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// Give up (with [`SyncError::StartTimeout`]) when not in sync this long after
    /// start; `None` waits forever. Only before the first in-sync.
    pub start_timeout: Option<Duration>,
}

impl SyncConfig {
    /// Defaults for `node_name` and a fixed list of HOST:PORT `addresses`.
    pub fn new(node_name: impl Into<String>, addresses: Vec<String>) -> SyncConfig {
        SyncConfig::with_source(node_name, TyphaSource::fixed(addresses))
    }

    /// Defaults for `node_name` and the candidates of `typha`.
    pub fn with_source(node_name: impl Into<String>, typha: TyphaSource) -> SyncConfig {
        SyncConfig {
            node_name: node_name.into(),
            typha,
            tls: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(90),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            start_timeout: None,
        }
    }
}

/// Errors that stop the client for good.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No addresses configured.
    #[error("no typha addresses configured")]
    NoAddresses,
    /// An address is malformed.
    #[error(transparent)]
    Config(ConnectError),
    /// Not in sync with any typha within the start timeout. Not retried in-process: the
    /// agent exits (and is restarted) so that the failure is visible.
    #[error(
        "no typha brought this agent in sync within {} (--typha-start-timeout); following {typha}; tried: {tried}",
        humantime::format_duration(*.waited)
    )]
    StartTimeout {
        /// The start timeout.
        waited: Duration,
        /// The candidate source and its state (service, addresses, discovery errors).
        typha: String,
        /// Each address tried, with attempts and the last outcome.
        tried: String,
    },
}

/// The sync client (see the module docs).
pub struct SyncClient {
    config: SyncConfig,
    mirror: Mirror,
    status: Arc<SyncStatus>,
    /// The address of the current session.
    current: String,
}

impl SyncClient {
    /// A client with an empty mirror.
    pub fn new(config: SyncConfig) -> SyncClient {
        SyncClient {
            config,
            mirror: Mirror::new(),
            status: Arc::new(SyncStatus::default()),
            current: String::new(),
        }
    }

    /// A client with an empty mirror that publishes into `status` (shared with the
    /// health endpoint, for example).
    pub fn with_status(config: SyncConfig, status: Arc<SyncStatus>) -> SyncClient {
        SyncClient {
            status,
            ..SyncClient::new(config)
        }
    }

    /// A client that starts from `mirror`, as an earlier [`SyncClient::run`] returned it:
    /// it resumes from the mirror's position where the server's history allows, and
    /// otherwise reports only the differences of the snapshot it receives.
    pub fn with_mirror(config: SyncConfig, mirror: Mirror) -> SyncClient {
        SyncClient {
            mirror,
            ..SyncClient::new(config)
        }
    }

    /// The live counters.
    pub fn status(&self) -> Arc<SyncStatus> {
        self.status.clone()
    }

    /// Runs until `shutdown` fires; returns the mirror as it stands then. Stops early with
    /// [`SyncError::StartTimeout`] when not in sync within `start_timeout`.
    pub async fn run(
        mut self,
        events: mpsc::Sender<SyncEvent>,
        shutdown: CancellationToken,
    ) -> Result<Mirror, SyncError> {
        if self.config.typha.is_empty_fixed() {
            return Err(SyncError::NoAddresses);
        }
        crate::metrics::register_sync_series();
        let status = self.status.clone();
        let mut source = self.config.typha.clone();
        let mut picker = Picker::new(self.config.node_name.clone());
        let start = self
            .config
            .start_timeout
            .map(|limit| (limit, Instant::now() + limit));
        let mut tried = Tried::default();
        let mut policy = reconnect::State::default();
        let mut avoid: Option<String> = None;
        loop {
            note_candidates(&mut picker, &mut source);
            let Some(addr) = picker.next(avoid.take().as_deref()) else {
                match wait_for_endpoint(&mut source, &status, start, &tried, &shutdown).await? {
                    Waited::Shutdown => return Ok(self.mirror),
                    Waited::Changed => continue,
                }
            };
            let syncs_before = status.syncs();
            let end = tokio::select! {
                end = self.session(&addr, &events, &shutdown) => end,
                _ = start_deadline(&status, start) => {
                    status.out_of_sync();
                    return Err(start_timeout(start, &source, &tried));
                }
            };
            status.out_of_sync();
            let synced = status.syncs() > syncs_before;
            let Some(reconnect) = decide(&mut policy, &addr, end, synced, &mut tried)? else {
                return Ok(self.mirror);
            };
            if reconnect.avoid_last {
                avoid = Some(addr.clone());
            }
            let delay = self
                .prepare_reconnect(&reconnect, &addr, &tried, &events)
                .await;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(self.mirror),
                _ = tokio::time::sleep(delay) => {}
                _ = start_deadline(&status, start) => {
                    return Err(start_timeout(start, &source, &tried));
                }
            }
        }
    }

    /// Carries out a reconnect decision (except the avoid, which is the loop's): forgets
    /// the position and reports the disconnect as told, counts the reconnect; returns
    /// the delay before the next attempt.
    async fn prepare_reconnect(
        &mut self,
        reconnect: &reconnect::Reconnect,
        addr: &str,
        tried: &Tried,
        events: &mpsc::Sender<SyncEvent>,
    ) -> Duration {
        if reconnect.forget_position {
            self.mirror.forget_position();
        }
        if reconnect.report_disconnect {
            let reason = tried.last(addr);
            let _ = events.send(SyncEvent::Disconnected { reason }).await;
        }
        let status = &self.status;
        let counter = match reconnect.counted {
            reconnect::Counted::Goodbye => &status.goodbyes,
            reconnect::Counted::Failure => &status.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let delay = match reconnect.delay {
            reconnect::Delay::Min => jitter(self.config.backoff_min),
            reconnect::Delay::Backoff(attempt) => backoff(&self.config, attempt),
        };
        status.reconnects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("felix_sync_reconnects_total", "reason" => reconnect.label).increment(1);
        // Cleared after the counters, so that a waiter on it sees them updated.
        status.endpoint.send_replace(None);
        delay
    }
}

/// Takes the source's current candidates into the picker, logging and counting them when
/// they changed.
fn note_candidates(picker: &mut Picker, source: &mut TyphaSource) {
    if picker.update(source.current()) {
        let candidates: Vec<&str> = picker
            .candidates()
            .iter()
            .map(|c| c.addr.as_str())
            .collect();
        tracing::info!(?candidates, "typha candidates changed");
        metrics::gauge!("felix_sync_typha_candidates").set(candidates.len() as f64);
    }
}

/// How a wait for a typha endpoint ended.
enum Waited {
    /// The candidates changed: pick again.
    Changed,
    /// Shutdown requested.
    Shutdown,
}

/// Waits, with no endpoint to try, until the candidates change, shutdown, or the start
/// deadline (an error).
async fn wait_for_endpoint(
    source: &mut TyphaSource,
    status: &SyncStatus,
    start: Option<(Duration, Instant)>,
    tried: &Tried,
    shutdown: &CancellationToken,
) -> Result<Waited, SyncError> {
    tracing::warn!(
        source = source.describe(),
        "no typha endpoint; waiting for one"
    );
    let timed_out = tokio::select! {
        _ = shutdown.cancelled() => return Ok(Waited::Shutdown),
        _ = source.changed() => false,
        _ = start_deadline(status, start) => true,
    };
    if timed_out {
        return Err(start_timeout(start, source, tried));
    }
    Ok(Waited::Changed)
}

/// Judges how a session ended and steps the reconnect policy: the reconnect to carry
/// out, `None` to stop, or the error to give up with.
fn decide(
    policy: &mut reconnect::State,
    addr: &str,
    end: Result<SessionEnd, ConnectError>,
    synced: bool,
    tried: &mut Tried,
) -> Result<Option<reconnect::Reconnect>, SyncError> {
    let (ended, config_error) = judge(addr, end, tried);
    let (action, next) = reconnect::step(*policy, reconnect::Event { synced, ended });
    *policy = next;
    match action {
        reconnect::Action::Stop => Ok(None),
        reconnect::Action::GiveUp => {
            Err(config_error.map_or(SyncError::NoAddresses, SyncError::Config))
        }
        reconnect::Action::Reconnect(reconnect) => Ok(Some(reconnect)),
    }
}

/// Exponential backoff with jitter between 50% and 100% of the step: `backoff_min` at
/// the first failure (`attempt` 1), doubling up to `backoff_max`.
fn backoff(config: &SyncConfig, attempt: u32) -> Duration {
    jitter(backoff_step(config, attempt))
}

fn backoff_step(config: &SyncConfig, attempt: u32) -> Duration {
    config
        .backoff_min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(config.backoff_max)
}

/// Logs how a session ended, notes it in `tried`, and classifies it for the reconnect
/// policy; a configuration error comes back too, to be returned as it is.
fn judge(
    addr: &str,
    end: Result<SessionEnd, ConnectError>,
    tried: &mut Tried,
) -> (reconnect::Ended, Option<ConnectError>) {
    match end {
        Ok(SessionEnd::Shutdown) => (reconnect::Ended::Shutdown, None),
        Err(e @ ConnectError::BadAddress { .. }) => (reconnect::Ended::BadAddress, Some(e)),
        Ok(SessionEnd::Goodbye(reason, message)) => {
            tracing::info!(%addr, ?reason, message, "typha said goodbye; reconnecting");
            tried.note(addr, format!("goodbye {reason:?}: {message}"));
            (reconnect::Ended::Goodbye(reason), None)
        }
        Ok(SessionEnd::Failed(reason)) => {
            tracing::warn!(%addr, reason, "sync session failed");
            tried.note(addr, reason);
            (reconnect::Ended::Failed, None)
        }
        Err(error) => {
            let error = error_chain(&error);
            tracing::warn!(error, "cannot connect to typha");
            tried.note(addr, error);
            (reconnect::Ended::ConnectError, None)
        }
    }
}

/// `error` and its sources, `: `-separated (tonic's "transport error" alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What was tried before the first in-sync, for the start-timeout error.
#[derive(Default)]
struct Tried(BTreeMap<String, (u32, String)>);

impl Tried {
    fn note(&mut self, addr: &str, outcome: String) {
        let entry = self.0.entry(addr.to_string()).or_default();
        entry.0 += 1;
        entry.1 = outcome;
    }

    /// The last outcome noted for `addr`.
    fn last(&self, addr: &str) -> String {
        self.0
            .get(addr)
            .map(|(_, last)| last.clone())
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Tried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("nothing (no typha endpoint was ever available)");
        }
        for (i, (addr, (attempts, last))) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{addr} ({attempts} attempt(s), last: {last})")?;
        }
        Ok(())
    }
}

/// Resolves at the start deadline if the mirror has never been in sync by then; never
/// otherwise.
async fn start_deadline(status: &SyncStatus, start: Option<(Duration, Instant)>) {
    if let Some((_, deadline)) = start
        && !status.has_synced()
    {
        tokio::time::sleep_until(deadline).await;
        if !status.has_synced() {
            return;
        }
    }
    std::future::pending().await
}

fn start_timeout(
    start: Option<(Duration, Instant)>,
    source: &TyphaSource,
    tried: &Tried,
) -> SyncError {
    SyncError::StartTimeout {
        waited: start.map(|(limit, _)| limit).unwrap_or_default(),
        typha: source.describe(),
        tried: tried.to_string(),
    }
}

fn jitter(step: Duration) -> Duration {
    step.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests;
