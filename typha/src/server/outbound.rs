//! A `Sync` stream's response body: what hyper's per-stream task polls to write the
//! stream, reading the hub itself.
//!
//! Why: before, a session task took each new revision's frames from the hub and queued
//! them to tonic, whose encoder copied each into a per-client buffer behind a 5-byte
//! gRPC prefix before hyper's stream task and then h2's connection task wrote it: two
//! task hops and a copy per client per batch. Now the body follows the hub's revisions
//! itself (the watch wakes hyper's stream task directly) and hands each breadcrumb's
//! [`Breadcrumb::wire`] (the prefixed gRPC message, built once per batch in the cache)
//! to HTTP/2 as it is: no queue hop and no copy. Everything pending leaves in one poll
//! (one wake-up of the connection task and one flush for several revisions), a client
//! more than `max_uncoalesced` batches behind gets one coalesced batch, one behind the
//! history gets goodbye(RESYNC) and the stream ends.
//!
//! What stays in the session task ([`super::session`]): the handshake and snapshot,
//! reading the client (pings, second hellos, errors), pinging, shutdown/drain/rebalance
//! goodbyes, refusals and every drop decision. hyper stops polling a body while the
//! client's HTTP/2 window is full, so nothing that must happen while a client does not
//! read may depend on this body being polled. The session sends its frames and the
//! final status through a small queue ([`Out`]) the body drains first, and watches
//! [`Progress`] to drop a client whose output stays pending without the body being
//! polled for `--write-timeout`.
//!
//! Invariants: after a goodbye or a status nothing more is sent; the trailers are
//! exactly tonic's (`grpc-status`, `grpc-message` when not empty); the body holds at most
//! one catch-up's breadcrumbs (shared) or one coalesced batch.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body::Frame;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::Status;
use typha_proto::Revision;
use typha_proto::pb;

use super::DropReason;
use super::history::History;
use super::session::goodbye_message;
use snapshot_cache::{Breadcrumb, DeltasSince};

/// What the session hands its stream's body, in order.
pub(crate) enum Out {
    /// A gRPC message (prefix and frame, see [`typha_proto::frame::GrpcFrame`]) to write.
    Message(Bytes),
    /// The client is at `cursor`: from now on, send it the deltas `revisions` announces.
    Deltas {
        /// The revision the client has.
        cursor: Revision,
        /// The hub's published revision (changes after the snapshot are marked).
        revisions: watch::Receiver<Revision>,
    },
    /// End the stream with this status; `taken` hears when the body took it.
    End(Box<Status>, oneshot::Sender<()>),
}

/// What the body tells the session without waking it.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Times hyper polled the body (it polls only while the client's window is open).
    polls: AtomicU64,
    /// The revision whose deltas were all handed to HTTP/2.
    sent: AtomicU64,
    /// The body holds frames it has not handed over yet.
    holding: AtomicBool,
}

impl Progress {
    /// Times the body was polled.
    pub(crate) fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Whether the client is owed output: deltas after what was sent, or frames the
    /// body holds. (The session adds what is still in its queue.)
    pub(crate) fn owes(&self, published: Revision) -> bool {
        self.holding.load(Ordering::Relaxed) || self.sent.load(Ordering::Relaxed) < published.0
    }
}

/// The session's end of the pair (see [`pair`]).
pub(crate) struct Outlet {
    /// Frames, the start of the deltas and the final status, to the body.
    pub out: mpsc::Sender<Out>,
    /// What the body has done.
    pub progress: Arc<Progress>,
    /// The body ended the stream (only `TooFarBehind`), or was dropped (the stream is
    /// gone: `Err`).
    pub body_end: oneshot::Receiver<DropReason>,
}

/// A session's outlet and its stream's body; the queue holds `queue` messages.
pub(crate) fn pair<H: History>(
    hub: H,
    queue: usize,
    max_uncoalesced: usize,
) -> (Outlet, SyncBody<H>) {
    let (out, control) = mpsc::channel(queue.max(1));
    let (end_tx, body_end) = oneshot::channel();
    let progress = Arc::new(Progress::default());
    let outlet = Outlet {
        out,
        progress: progress.clone(),
        body_end,
    };
    let body = SyncBody {
        control,
        hub,
        deltas: None,
        pending: VecDeque::new(),
        finish: Finish::Streaming,
        progress,
        end: Some(end_tx),
        max_uncoalesced,
        lag: metrics::histogram!("typha_client_lag_batches"),
        fanout: metrics::histogram!("typha_fanout_latency_seconds"),
    };
    (outlet, body)
}

/// A frame waiting in the body.
enum Pending {
    /// A shared breadcrumb (its fan-out latency is measured when handed over).
    Crumb(Arc<Breadcrumb>),
    /// Any other message.
    Message(Bytes),
}

/// Following the hub after the client's start.
struct Deltas {
    cursor: Revision,
    published: Revision,
    changes: WatchStream<Revision>,
}

enum Finish {
    Streaming,
    Trailers(Box<Status>),
    Done,
}

/// The response body of one `Sync` stream (see the module docs).
pub struct SyncBody<H> {
    control: mpsc::Receiver<Out>,
    hub: H,
    deltas: Option<Deltas>,
    pending: VecDeque<Pending>,
    finish: Finish,
    progress: Arc<Progress>,
    end: Option<oneshot::Sender<DropReason>>,
    max_uncoalesced: usize,
    lag: metrics::Histogram,
    /// Time from a breadcrumb's publication to its hand-over to HTTP/2, per client
    /// (shared breadcrumbs only: coalesced batches and the session's frames are not
    /// measured).
    fanout: metrics::Histogram,
}

impl<H: History + Unpin> SyncBody<H> {
    /// Takes the session's queued items; false when it has nothing now.
    fn take_control(&mut self, cx: &mut Context<'_>) -> bool {
        match self.control.poll_recv(cx) {
            Poll::Ready(Some(Out::Message(message))) => {
                self.pending.push_back(Pending::Message(message))
            }
            Poll::Ready(Some(Out::Deltas { cursor, revisions })) => {
                self.progress.sent.store(cursor.0, Ordering::Relaxed);
                // What was published before the session subscribed (a resuming client
                // behind) is owed too, not only what changes from now on.
                let published = *revisions.borrow();
                self.deltas = Some(Deltas {
                    cursor,
                    published,
                    changes: WatchStream::from_changes(revisions),
                });
            }
            Poll::Ready(Some(Out::End(status, taken))) => {
                let _ = taken.send(());
                self.finish = Finish::Trailers(status);
            }
            // The session ended: after its goodbye (if any), the stream ends well.
            Poll::Ready(None) => self.finish = Finish::Trailers(Box::new(Status::ok(""))),
            Poll::Pending => return false,
        }
        true
    }

    /// Queues everything published after the cursor; false when there is nothing.
    fn catch_up(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deltas) = self.deltas.as_mut() else {
            return false;
        };
        // Every revision published since the last poll, at once.
        loop {
            match Pin::new(&mut deltas.changes).poll_next(cx) {
                Poll::Ready(Some(revision)) => deltas.published = deltas.published.max(revision),
                // The hub is gone: the server is stopping and the session will say so.
                Poll::Ready(None) => break,
                Poll::Pending => break,
            }
        }
        // A client at the published revision is up to date without asking the history
        // (which takes the cache's lock): this runs for every client on every batch.
        if deltas.cursor >= deltas.published {
            return false;
        }
        let crumbs = match self.hub.deltas_since(deltas.cursor) {
            DeltasSince::UpToDate => return false,
            DeltasSince::Expired => {
                self.resync();
                return true;
            }
            DeltasSince::Crumbs(crumbs) => crumbs,
        };
        let Some(last) = crumbs.last() else {
            return false;
        };
        deltas.cursor = last.revision;
        self.lag.record(crumbs.len() as f64);
        if crumbs.len() > self.max_uncoalesced {
            if let Some(batch) = snapshot_cache::coalesce(&crumbs) {
                metrics::counter!("typha_deltas_coalesced_total").increment(1);
                self.pending.push_back(Pending::Message(batch.wire));
            }
        } else {
            self.pending.extend(crumbs.into_iter().map(Pending::Crumb));
        }
        true
    }

    /// The client fell behind the history: goodbye(RESYNC), then the stream ends and the
    /// session hears why.
    fn resync(&mut self) {
        let goodbye = goodbye_message(
            pb::GoodbyeReason::Resync,
            "fell behind the server's history",
        );
        self.pending.push_back(Pending::Message(goodbye));
        self.deltas = None;
        self.finish = Finish::Trailers(Box::new(Status::ok("")));
        if let Some(end) = self.end.take() {
            let _ = end.send(DropReason::TooFarBehind);
        }
    }

    /// Hands over the next pending frame.
    fn hand_over(&mut self, next: Pending) -> Bytes {
        if self.pending.is_empty()
            && let Some(deltas) = &self.deltas
        {
            self.progress.sent.store(deltas.cursor.0, Ordering::Relaxed);
        }
        match next {
            Pending::Crumb(crumb) => {
                self.fanout.record(crumb.applied_at.elapsed().as_secs_f64());
                crumb.wire.clone()
            }
            Pending::Message(message) => message,
        }
    }
}

impl<H: History + Unpin> http_body::Body for SyncBody<H> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        this.progress.polls.fetch_add(1, Ordering::Relaxed);
        loop {
            if let Some(next) = this.pending.pop_front() {
                this.progress
                    .holding
                    .store(!this.pending.is_empty(), Ordering::Relaxed);
                return Poll::Ready(Some(Ok(Frame::data(this.hand_over(next)))));
            }
            match std::mem::replace(&mut this.finish, Finish::Done) {
                Finish::Done => return Poll::Ready(None),
                Finish::Trailers(status) => {
                    let mut trailers = http::HeaderMap::with_capacity(2);
                    return Poll::Ready(Some(
                        status
                            .add_header(&mut trailers)
                            .map(|()| Frame::trailers(trailers)),
                    ));
                }
                Finish::Streaming => this.finish = Finish::Streaming,
            }
            if !this.take_control(cx) && !this.catch_up(cx) {
                return Poll::Pending;
            }
            this.progress
                .holding
                .store(!this.pending.is_empty(), Ordering::Relaxed);
        }
    }
}
