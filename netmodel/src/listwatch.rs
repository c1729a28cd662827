//! List-then-watch of one resource that exposes the list's own resourceVersion and the
//! watch's bookmarks.
//!
//! kube's `watcher` hides both, but a replica's resume floor must be exactly the list's
//! version: the newest object a list returns can be older than a delete the list already
//! reflects, and a replica that started after such a delete would otherwise claim a
//! floor below it. This stream does what the watcher does, plus two things:
//! [`Step::ListDone`] carries the list's `metadata.resourceVersion` (with streaming
//! lists, the `k8s.io/initial-events-end` bookmark's), and [`Step::Progress`] passes
//! bookmarks on: they let a resource's version follow the datastore's while the
//! resource does not change, so replicas that listed at different times converge on
//! the same positions.
//!
//! Shape: `Init`, the listed objects (paginated; a consistent read of the newest state),
//! `ListDone(version)`, then watch events from that version, the watch restarted from
//! the last version seen (bookmarks included) when it ends. Errors are yielded as
//! `watcher::Error` (so kube's backoff and the caller's classification apply) and the
//! stream goes on. Any failed list page, any failed watch start and a 410 inside a
//! watch restart with a fresh list: a refused position (410 Gone, or 504 "Too large
//! resource version" from a server restored with a lower history) is never retried,
//! and the list's version is what tells a restore apart. The stream never ends by
//! itself.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;

/// Server-side watch timeout (seconds), inside the API server's own default range.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// The bookmark annotation that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// One step of a list-then-watch.
#[derive(Debug)]
pub enum Step<K> {
    /// A (re)list starts.
    Init,
    /// An object of the (re)list.
    Listed(K),
    /// The (re)list is complete, at the list's own resourceVersion.
    ListDone(String),
    /// A watch event: an object was added or modified.
    Applied(K),
    /// A watch event: an object was deleted.
    Deleted(K),
    /// A bookmark: every change up to this resourceVersion has been delivered.
    Progress(String),
}

/// How to list.
#[derive(Clone, Copy, Debug)]
pub struct ListMode {
    /// Watch-list streaming (`sendInitialEvents`) instead of paginated lists.
    pub streaming: bool,
    /// Page size of paginated lists.
    pub page_size: u32,
}

type WatchStream<K> =
    std::pin::Pin<Box<dyn Stream<Item = Result<WatchEvent<K>, kube::Error>> + Send>>;

/// What a list attempt ended with.
enum Listed<K> {
    /// Complete at this version; with streaming lists, the watch that continues it.
    Done(String, Option<WatchStream<K>>),
    /// Failed (the error was yielded); relist.
    Failed,
}

/// The list-then-watch stream of `api` (see the module docs).
pub fn list_watch<K>(
    api: Api<K>,
    mode: ListMode,
) -> impl Stream<Item = Result<Step<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    async_stream::stream! {
        'relist: loop {
            yield Ok(Step::Init);
            let listed = {
                let mut steps = std::pin::pin!(list(&api, mode));
                let mut outcome = Listed::Failed;
                while let Some(step) = steps.next().await {
                    match step {
                        ListItem::Step(s) => yield s,
                        ListItem::End(end) => outcome = end,
                    }
                }
                outcome
            };
            let (mut version, mut watch) = match listed {
                Listed::Done(version, watch) => (version, watch),
                Listed::Failed => continue 'relist,
            };
            yield Ok(Step::ListDone(version.clone()));
            loop {
                let mut stream = match watch.take() {
                    Some(s) => s,
                    None => {
                        let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
                        match api.watch(&params, &version).await {
                            Ok(s) => s.boxed(),
                            Err(e) => {
                                // Possibly a restarted (restored) server: only a list
                                // gets a position it accepts.
                                yield Err(watcher::Error::WatchStartFailed(e));
                                continue 'relist;
                            }
                        }
                    }
                };
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                            version = o.meta().resource_version.clone().unwrap_or(version);
                            yield Ok(Step::Applied(o));
                        }
                        Ok(WatchEvent::Deleted(o)) => {
                            version = o.meta().resource_version.clone().unwrap_or(version);
                            yield Ok(Step::Deleted(o));
                        }
                        Ok(WatchEvent::Bookmark(b)) => {
                            version = b.metadata.resource_version.clone();
                            yield Ok(Step::Progress(b.metadata.resource_version));
                        }
                        Ok(WatchEvent::Error(s)) => {
                            let gone = s.code == 410;
                            yield Err(watcher::Error::WatchError(s));
                            if gone {
                                continue 'relist;
                            }
                            break;
                        }
                        Err(e) => {
                            yield Err(watcher::Error::WatchFailed(e));
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// One item of a list attempt: a step to pass on, or how the attempt ended.
enum ListItem<K> {
    Step(Result<Step<K>, watcher::Error>),
    End(Listed<K>),
}

/// One list attempt: the listed objects, then how it ended (errors are passed on).
fn list<K>(api: &Api<K>, mode: ListMode) -> impl Stream<Item = ListItem<K>> + Send + '_
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    async_stream::stream! {
        if mode.streaming {
            let params = WatchParams::streaming_lists().timeout(WATCH_TIMEOUT_SECS);
            let mut stream = match api.watch(&params, "0").await {
                Ok(s) => s.boxed(),
                Err(e) => {
                    yield ListItem::Step(Err(watcher::Error::WatchStartFailed(e)));
                    yield ListItem::End(Listed::Failed);
                    return;
                }
            };
            loop {
                match stream.next().await {
                    Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                        yield ListItem::Step(Ok(Step::Listed(o)));
                    }
                    Some(Ok(WatchEvent::Deleted(_))) => {}
                    Some(Ok(WatchEvent::Bookmark(b))) => {
                        if b.metadata.annotations.contains_key(INITIAL_EVENTS_END) {
                            let version = b.metadata.resource_version;
                            yield ListItem::End(Listed::Done(version, Some(stream)));
                            return;
                        }
                    }
                    Some(Ok(WatchEvent::Error(s))) => {
                        yield ListItem::Step(Err(watcher::Error::WatchError(s)));
                        break;
                    }
                    Some(Err(e)) => {
                        yield ListItem::Step(Err(watcher::Error::WatchFailed(e)));
                        break;
                    }
                    None => break,
                }
            }
            yield ListItem::End(Listed::Failed);
            return;
        }
        let mut continue_token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(mode.page_size.max(1));
            params.continue_token = continue_token.take();
            match api.list(&params).await {
                Ok(page) => {
                    for o in page.items {
                        yield ListItem::Step(Ok(Step::Listed(o)));
                    }
                    continue_token = page.metadata.continue_.filter(|c| !c.is_empty());
                    if continue_token.is_none() {
                        match page.metadata.resource_version.filter(|v| !v.is_empty()) {
                            Some(version) => yield ListItem::End(Listed::Done(version, None)),
                            None => {
                                yield ListItem::Step(Err(watcher::Error::NoResourceVersion));
                                yield ListItem::End(Listed::Failed);
                            }
                        }
                        return;
                    }
                }
                Err(e) => {
                    yield ListItem::Step(Err(watcher::Error::InitialListFailed(e)));
                    yield ListItem::End(Listed::Failed);
                    return;
                }
            }
        }
    }
}
