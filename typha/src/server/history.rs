//! What a session needs from the hub, as a trait: the smallest surface that lets a
//! session run (and be tested) without the rest of the server.
//!
//! Why: like Calico's one-method breadcrumb provider, the session depends on "give me
//! what happened after revision N" and "give me a snapshot", not on the hub's internals.
//! [`Hub`] is the one production implementation; the session's tests drive a real `Hub`
//! (it does no I/O) through this trait with in-memory streams and a paused clock.
//!
//! Invariant: every method is cheap or awaits only the hub (never the network).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use snapshot_cache::{DeltasSince, EncodedSnapshot};
use tokio::sync::watch;
use typha_proto::{Revision, pb};

use super::resume::{self, Agreed, Start};
use crate::hub::{Hub, HubError, SessionStart};

/// The history a session streams from (implemented by [`Hub`]).
pub trait History: Send + Sync + 'static {
    /// This history's epoch (sent in ServerHello; resume positions carry it).
    fn epoch(&self) -> String;
    /// Completes once the upstream has been in sync (sessions wait for it).
    fn wait_in_sync(&self) -> impl Future<Output = ()> + Send;
    /// Follows the latest revision.
    fn subscribe(&self) -> watch::Receiver<Revision>;
    /// Decides how a client with `hello` starts (resume or snapshot; refusals counted).
    fn start(
        &self,
        hello: &pb::ClientHello,
        agreed: &Agreed,
        catch_up: Duration,
    ) -> impl Future<Output = Start> + Send;
    /// A snapshot of the current state.
    fn snapshot(&self) -> impl Future<Output = Result<Arc<EncodedSnapshot>, HubError>> + Send;
    /// The breadcrumbs after `since`.
    fn deltas_since(&self, since: Revision) -> DeltasSince;
    /// Counts how a session started.
    fn count_start(&self, start: SessionStart);
}

impl History for Hub {
    fn epoch(&self) -> String {
        Hub::epoch(self).to_string()
    }

    fn wait_in_sync(&self) -> impl Future<Output = ()> + Send {
        Hub::wait_in_sync(self)
    }

    fn subscribe(&self) -> watch::Receiver<Revision> {
        Hub::subscribe(self)
    }

    fn start(
        &self,
        hello: &pb::ClientHello,
        agreed: &Agreed,
        catch_up: Duration,
    ) -> impl Future<Output = Start> + Send {
        resume::decide(self, hello, agreed, catch_up)
    }

    fn snapshot(&self) -> impl Future<Output = Result<Arc<EncodedSnapshot>, HubError>> + Send {
        Hub::snapshot(self)
    }

    fn deltas_since(&self, since: Revision) -> DeltasSince {
        Hub::deltas_since(self, since)
    }

    fn count_start(&self, start: SessionStart) {
        self.count_session_start(start);
    }
}
