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

/// One item of a list attempt.
enum ListItem<K> {
    /// An object of the list.
    Object(K),
    /// Complete at this version; with streaming lists, the watch that continues it.
    Done(String, Option<WatchStream<K>>),
    /// Failed (with the error to pass on, if there is one); relist.
    Failed(Option<watcher::Error>),
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
        loop {
            yield Ok(Step::Init);
            let mut done = None;
            let mut items = std::pin::pin!(list(&api, mode));
            while let Some(item) = items.next().await {
                match item {
                    ListItem::Object(o) => yield Ok(Step::Listed(o)),
                    ListItem::Done(version, watch) => done = Some((version, watch)),
                    ListItem::Failed(Some(e)) => yield Err(e),
                    ListItem::Failed(None) => {}
                }
            }
            let Some((version, watch)) = done else {
                continue;
            };
            yield Ok(Step::ListDone(version.clone()));
            let mut steps = std::pin::pin!(watch_from(&api, version, watch));
            while let Some(step) = steps.next().await {
                yield step;
            }
        }
    }
}

/// The watch after a list: events from `version` on (through `watch`, if the list left
/// one open), the watch restarted from the last version seen when it ends. Ends when
/// only a relist can go on: a failed watch start or a 410 inside a watch.
fn watch_from<K>(
    api: &Api<K>,
    mut version: String,
    mut watch: Option<WatchStream<K>>,
) -> impl Stream<Item = Result<Step<K>, watcher::Error>> + Send + '_
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    async_stream::stream! {
        loop {
            let mut stream = match watch.take() {
                Some(s) => s,
                None => {
                    let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
                    match api.watch(&params, &version).await {
                        Ok(s) => s.boxed(),
                        Err(e) => {
                            // Possibly a restarted (restored) server: only a list gets a
                            // position it accepts.
                            yield Err(watcher::Error::WatchStartFailed(e));
                            return;
                        }
                    }
                }
            };
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                        follow(&mut version, &o);
                        yield Ok(Step::Applied(o));
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        follow(&mut version, &o);
                        yield Ok(Step::Deleted(o));
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        version.clone_from(&b.metadata.resource_version);
                        yield Ok(Step::Progress(b.metadata.resource_version));
                    }
                    Ok(WatchEvent::Error(s)) => {
                        let gone = s.code == 410;
                        yield Err(watcher::Error::WatchError(s));
                        if gone {
                            return;
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

/// Moves the watch position to `o`'s resourceVersion (reusing the string's buffer).
fn follow<K: kube::Resource>(version: &mut String, o: &K) {
    if let Some(v) = &o.meta().resource_version {
        version.clone_from(v);
    }
}

/// One list attempt: the listed objects, then how it ended.
fn list<K>(api: &Api<K>, mode: ListMode) -> impl Stream<Item = ListItem<K>> + Send + '_
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    if mode.streaming {
        streaming_list(api).left_stream()
    } else {
        paged_list(api, mode.page_size).right_stream()
    }
}

/// A list as a watch with `sendInitialEvents`: done at the initial-events-end bookmark,
/// whose watch goes on.
fn streaming_list<K>(api: &Api<K>) -> impl Stream<Item = ListItem<K>> + Send + '_
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    async_stream::stream! {
        let params = WatchParams::streaming_lists().timeout(WATCH_TIMEOUT_SECS);
        let mut stream = match api.watch(&params, "0").await {
            Ok(s) => s.boxed(),
            Err(e) => {
                yield ListItem::Failed(Some(watcher::Error::WatchStartFailed(e)));
                return;
            }
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                    yield ListItem::Object(o);
                }
                Ok(WatchEvent::Deleted(_)) => {}
                Ok(WatchEvent::Bookmark(b)) => {
                    if b.metadata.annotations.contains_key(INITIAL_EVENTS_END) {
                        yield ListItem::Done(b.metadata.resource_version, Some(stream));
                        return;
                    }
                }
                Ok(WatchEvent::Error(s)) => {
                    yield ListItem::Failed(Some(watcher::Error::WatchError(s)));
                    return;
                }
                Err(e) => {
                    yield ListItem::Failed(Some(watcher::Error::WatchFailed(e)));
                    return;
                }
            }
        }
        // Ended before the initial events did.
        yield ListItem::Failed(None);
    }
}

/// A paginated list, done at the last page's resourceVersion.
fn paged_list<K>(api: &Api<K>, page_size: u32) -> impl Stream<Item = ListItem<K>> + Send + '_
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    async_stream::stream! {
        let mut continue_token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(page_size.max(1));
            params.continue_token = continue_token.take();
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(e) => {
                    yield ListItem::Failed(Some(watcher::Error::InitialListFailed(e)));
                    return;
                }
            };
            for o in page.items {
                yield ListItem::Object(o);
            }
            continue_token = page.metadata.continue_.filter(|c| !c.is_empty());
            if continue_token.is_none() {
                yield match page.metadata.resource_version.filter(|v| !v.is_empty()) {
                    Some(version) => ListItem::Done(version, None),
                    None => ListItem::Failed(Some(watcher::Error::NoResourceVersion)),
                };
                return;
            }
        }
    }
}
