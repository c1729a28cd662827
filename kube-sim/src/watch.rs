//! WATCH streams: newline-delimited JSON events read from the store's history.
//!
//! A stream optionally starts with synthetic ADDED events for the current state (legacy
//! `resourceVersion=""/"0"` watches and `sendInitialEvents=true` streaming lists, the
//! latter ending with a BOOKMARK annotated `k8s.io/initial-events-end: "true"`), then
//! follows the history from its position. Label/field selectors turn MODIFIED events into
//! ADDED/DELETED when an object enters/leaves the selection. A position older than the
//! retained history yields one ERROR event (Status 410 Expired) and the stream ends.
//! Streams end on `timeoutSeconds`, on `disconnect_watches()` and on server shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use serde_json::json;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::list::Filter;
use crate::metrics::Metrics;
use crate::object::StoredObject;
use crate::resources::{ResourceId, ResourceType};
use crate::store::{Event, EventKind, Store};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Events after this resourceVersion.
    From(u64),
    /// Synthetic ADDED events for the current state first; `end_bookmark` sends the
    /// initial-events-end bookmark after them.
    Initial {
        /// Whether to send the `k8s.io/initial-events-end` bookmark.
        end_bookmark: bool,
    },
}

/// A parsed WATCH request.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// The resource watched.
    pub rid: ResourceId,
    /// Its type (for bookmark apiVersion/kind).
    pub rtype: ResourceType,
    /// Selection.
    pub filter: Filter,
    /// Start position.
    pub start: WatchStart,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
}

/// Serving-side knobs shared by all watches.
#[derive(Clone)]
pub struct WatchContext {
    /// The store.
    pub store: Arc<Store>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// How often idle streams get a BOOKMARK (when the client allows bookmarks).
    pub bookmark_interval: Duration,
    /// Server shutdown.
    pub shutdown: CancellationToken,
}

const BATCH: usize = 512;

/// How an event looks through `filter`, if it is visible at all.
fn classify(e: &Event, f: &Filter) -> Option<EventKind> {
    let now = f.matches(&e.obj);
    let before = e.prev.as_ref().is_some_and(|p| f.matches(p));
    match (e.kind, before, now) {
        (EventKind::Added, _, true) => Some(EventKind::Added),
        (EventKind::Deleted, true, _) => Some(EventKind::Deleted),
        (EventKind::Modified, true, true) => Some(EventKind::Modified),
        (EventKind::Modified, false, true) => Some(EventKind::Added),
        (EventKind::Modified, true, false) => Some(EventKind::Deleted),
        _ => None,
    }
}

fn push_event(buf: &mut BytesMut, kind: &str, object: &[u8]) {
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    buf.extend_from_slice(object);
    buf.extend_from_slice(b"}\n");
}

fn bookmark(t: &ResourceType, rv: u64, initial_end: bool) -> Vec<u8> {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": t.kind, "apiVersion": t.api_version(), "metadata": meta});
    serde_json::to_vec(&obj).unwrap_or_default()
}

fn initial_chunks(objs: &[Arc<StoredObject>]) -> Vec<(Bytes, u64)> {
    objs.chunks(BATCH)
        .map(|c| {
            let mut buf = BytesMut::new();
            for o in c {
                push_event(&mut buf, "ADDED", &o.raw);
            }
            (buf.freeze(), c.len() as u64)
        })
        .collect()
}

fn count(m: &Metrics, bytes: usize, events: u64) {
    m.add(&m.watch_bytes, bytes as u64);
    m.add(&m.response_bytes, bytes as u64);
    m.add(&m.watch_events, events);
}

/// Decrements `open_watches` when the stream is dropped (client gone or stream ended).
struct OpenGuard(Arc<Metrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.watch_opened(-1);
    }
}

/// One event as a chunk of the stream.
fn event_chunk(kind: &str, object: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    push_event(&mut buf, kind, object);
    buf.freeze()
}

/// The chunks of a watch's initial state (and its end bookmark), each with its event
/// count, and the rv the stream continues from.
fn initial_events(
    store: &Store,
    req: &WatchRequest,
    end_bookmark: bool,
) -> (Vec<(Bytes, u64)>, u64) {
    let (objs, rv) = store.snapshot(req.rid, &req.filter);
    let mut chunks = initial_chunks(&objs);
    if end_bookmark {
        chunks.push((event_chunk("BOOKMARK", &bookmark(&req.rtype, rv, true)), 1));
    }
    (chunks, rv)
}

/// What the history holds for a watch past its position.
enum Next {
    /// Visible events: the chunk and its event count.
    Events(Bytes, u64),
    /// Nothing visible yet: wait for a write.
    Idle,
    /// The position has expired: the ERROR event that ends the stream.
    Expired(Bytes),
}

/// Reads the next batch of `req`'s visible events after `*pos`, advancing `*pos` past
/// every event scanned.
fn next_events(store: &Store, req: &WatchRequest, pos: &mut u64) -> Next {
    let (rid, filter) = (req.rid, &req.filter);
    match store.events_after(*pos, BATCH, |e| {
        e.obj.resource == rid && classify(e, filter).is_some()
    }) {
        Err(err) => {
            let status = serde_json::to_vec(&err.to_status()).unwrap_or_default();
            Next::Expired(event_chunk("ERROR", &status))
        }
        Ok((events, scanned)) => {
            *pos = scanned;
            if events.is_empty() {
                return Next::Idle;
            }
            let mut buf = BytesMut::new();
            for e in &events {
                if let Some(kind) = classify(e, filter) {
                    push_event(&mut buf, kind.as_str(), &e.obj.raw);
                }
            }
            Next::Events(buf.freeze(), events.len() as u64)
        }
    }
}

/// Completes at `deadline`, or never.
async fn deadline_passed(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Ticks for idle-stream bookmarks, the first one `interval` from now.
fn bookmark_ticks(interval: Duration) -> Interval {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// The body of a WATCH response.
pub fn watch_stream(
    ctx: WatchContext,
    req: WatchRequest,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    ctx.metrics.watch_opened(1);
    let guard = OpenGuard(ctx.metrics.clone());
    // Subscribe before the body is first polled so no disconnect or write is missed.
    let mut notify = ctx.store.subscribe();
    let mut disconnect = ctx.store.subscribe_disconnect();
    disconnect.borrow_and_update();
    async_stream::stream! {
        let _guard = guard;
        let WatchContext { store, metrics, bookmark_interval, shutdown } = ctx;
        let timeout = deadline_passed(req.timeout.map(|t| Instant::now() + t));
        tokio::pin!(timeout);
        let mut ticks = bookmark_ticks(bookmark_interval);
        let mut pos = match req.start {
            WatchStart::From(rv) => rv,
            WatchStart::Initial { end_bookmark } => {
                let (chunks, rv) = initial_events(&store, &req, end_bookmark);
                for (chunk, n) in chunks {
                    count(&metrics, chunk.len(), n);
                    yield Ok(chunk);
                }
                rv
            }
        };
        loop {
            notify.borrow_and_update();
            match next_events(&store, &req, &mut pos) {
                Next::Expired(chunk) => {
                    count(&metrics, chunk.len(), 1);
                    yield Ok(chunk);
                    break;
                }
                Next::Events(chunk, n) => {
                    count(&metrics, chunk.len(), n);
                    yield Ok(chunk);
                    continue;
                }
                Next::Idle => {}
            }
            tokio::select! {
                changed = notify.changed() => if changed.is_err() { break },
                _ = ticks.tick(), if req.bookmarks => {
                    let chunk = event_chunk("BOOKMARK", &bookmark(&req.rtype, pos, false));
                    count(&metrics, chunk.len(), 1);
                    yield Ok(chunk);
                }
                _ = &mut timeout => break,
                _ = disconnect.changed() => break,
                _ = shutdown.cancelled() => break,
            }
        }
    }
}

/// Validates a watch's start from its query parameters. An expired rv is not rejected
/// here: like a real server, the stream answers 200 and then one ERROR (410) event.
pub fn watch_start(
    store: &Store,
    rv: Option<&str>,
    send_initial: Option<bool>,
    bookmarks: bool,
) -> Result<WatchStart, ApiError> {
    let legacy_initial = matches!(rv, None | Some("") | Some("0"));
    match send_initial {
        Some(true) => Ok(WatchStart::Initial {
            end_bookmark: bookmarks,
        }),
        Some(false) | None if !legacy_initial => {
            Ok(WatchStart::From(parse_watch_rv(rv.unwrap_or_default())?))
        }
        Some(false) => Ok(WatchStart::From(store.resource_version())),
        None => Ok(WatchStart::Initial {
            end_bookmark: false,
        }),
    }
}

fn parse_watch_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv:?}")))
}
