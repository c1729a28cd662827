//! LIST semantics: consistent-snapshot pagination, resourceVersion matching, selectors,
//! and the history reads watches use.
//!
//! Pagination does not copy the collection: a continue token carries the snapshot rv and
//! the last key returned, and later pages rebuild the snapshot by undoing, for keys
//! touched since, the events in the history (the value at the snapshot is the `prev` of
//! the first later event). If the history no longer reaches back to the snapshot the
//! token is expired (410), exactly as in a real cluster after etcd compaction.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::error::ApiError;
use crate::object::{ObjectKey, StoredObject};
use crate::resources::ResourceId;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Event, State, Store};

/// How a LIST's `resourceVersion` is interpreted (`resourceVersionMatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionMatch {
    /// No match given: `resourceVersion` is a lower bound (or unset: most recent).
    #[default]
    Unset,
    /// `NotOlderThan`: at least as new as the given rv.
    NotOlderThan,
    /// `Exact`: the state at exactly the given rv (410 if compacted).
    Exact,
}

/// Which objects a LIST or WATCH selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this namespace (None: all).
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &StoredObject) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == obj.namespace)
            && self.labels.matches(&obj.labels)
            && self.fields.matches(|p| obj.field(p))
    }
}

/// A LIST request's paging and version parameters.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Selection.
    pub filter: Filter,
    /// `limit` (None or 0: everything).
    pub limit: Option<usize>,
    /// `continue` token from a previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion` ("" and "0" mean any/most recent).
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub version_match: VersionMatch,
}

/// One page of a LIST.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The selected objects, in key order.
    pub items: Vec<Arc<StoredObject>>,
    /// The snapshot's resourceVersion (the list's `metadata.resourceVersion`).
    pub resource_version: u64,
    /// Token for the next page, if more objects match.
    pub continue_token: Option<String>,
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Encodes a continue token: snapshot rv and the last key returned.
pub fn encode_continue(rv: u64, key: &ObjectKey) -> String {
    format!("ks1-{rv}-{}-{}", hex(&key.0), hex(&key.1))
}

/// Decodes a token made by [`encode_continue`].
pub fn decode_continue(token: &str) -> Result<(u64, ObjectKey), ApiError> {
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token}"));
    let mut parts = token.strip_prefix("ks1-").ok_or_else(bad)?.split('-');
    let rv = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().and_then(unhex).ok_or_else(bad)?;
    let name = parts.next().and_then(unhex).ok_or_else(bad)?;
    Ok((rv, (ns, name)))
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {s:?}")))
}

/// For keys of `rid` changed after `rv`: their value at `rv` (None = absent then).
fn undo_overlay(
    st: &State,
    rid: ResourceId,
    rv: u64,
) -> BTreeMap<ObjectKey, Option<Arc<StoredObject>>> {
    let start = st.history.partition_point(|e| e.rv <= rv);
    let mut overlay = BTreeMap::new();
    for e in st.history.range(start..).filter(|e| e.obj.resource == rid) {
        overlay.entry(e.obj.key()).or_insert_with(|| e.prev.clone());
    }
    overlay
}

impl Store {
    /// Serves a LIST (see [`ListOptions`]).
    pub fn list(&self, rid: ResourceId, opts: &ListOptions) -> Result<ListPage, ApiError> {
        let st = self.state.read();
        let (snapshot, after) = match &opts.continue_token {
            Some(t) => {
                let (rv, key) = decode_continue(t)?;
                if rv < st.compacted {
                    return Err(ApiError::Expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter."
                            .into(),
                    ));
                }
                (rv, Some(key))
            }
            None => (snapshot_rv(&st, opts)?, None),
        };
        let overlay = if snapshot < st.rv {
            undo_overlay(&st, rid, snapshot)
        } else {
            BTreeMap::new()
        };
        let lower = match &after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Included((
                opts.filter.namespace.clone().unwrap_or_default(),
                String::new(),
            )),
        };
        let empty = BTreeMap::new();
        let current = st.objects.get(&rid).unwrap_or(&empty);
        let cur = current
            .range((lower.clone(), Bound::Unbounded))
            .filter(|(k, _)| !overlay.contains_key(*k))
            .map(|(k, o)| (k, o.clone()));
        let old = overlay
            .range((lower, Bound::Unbounded))
            .filter_map(|(k, o)| o.clone().map(|o| (k, o)));
        let in_ns = |k: &ObjectKey| opts.filter.namespace.as_deref().is_none_or(|ns| k.0 == ns);
        let mut merged = MergeByKey {
            a: cur.peekable(),
            b: old.peekable(),
        }
        .take_while(|(k, _)| in_ns(k))
        .filter(|(_, o)| opts.filter.matches(o));
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let items: Vec<Arc<StoredObject>> = merged.by_ref().take(limit).map(|(_, o)| o).collect();
        let continue_token = match (items.last(), merged.next()) {
            (Some(last), Some(_)) => Some(encode_continue(snapshot, &last.key())),
            _ => None,
        };
        Ok(ListPage {
            items,
            resource_version: snapshot,
            continue_token,
        })
    }

    /// Events after `pos` that pass `keep` (at most `max`), and the rv scanned up to.
    /// 410 if `pos` is older than the retained history.
    pub fn events_after(
        &self,
        pos: u64,
        max: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<(Vec<Event>, u64), ApiError> {
        let st = self.state.read();
        if pos < st.compacted {
            return Err(ApiError::expired(pos));
        }
        let start = st.history.partition_point(|e| e.rv <= pos);
        let mut out = Vec::new();
        let mut scanned = pos.max(st.rv);
        for e in st.history.range(start..) {
            if out.len() >= max {
                scanned = e.rv - 1;
                break;
            }
            if keep(e) {
                out.push(e.clone());
            }
        }
        Ok((out, scanned))
    }

    /// The current objects matching `filter` and the rv they are consistent with.
    pub fn snapshot(&self, rid: ResourceId, filter: &Filter) -> (Vec<Arc<StoredObject>>, u64) {
        let st = self.state.read();
        let items = st
            .objects
            .get(&rid)
            .map(|m| m.values().filter(|o| filter.matches(o)).cloned().collect())
            .unwrap_or_default();
        (items, st.rv)
    }
}

fn snapshot_rv(st: &State, opts: &ListOptions) -> Result<u64, ApiError> {
    let requested = match opts.resource_version.as_deref() {
        None | Some("") => None,
        Some(s) => Some(parse_rv(s)?),
    };
    match (requested, opts.version_match) {
        (Some(rv), VersionMatch::Exact) if rv > 0 => {
            if rv < st.compacted {
                Err(ApiError::expired(rv))
            } else if rv > st.rv {
                Err(ApiError::BadRequest(format!("Too large resource version: {rv}, current: {}", st.rv)))
            } else {
                Ok(rv)
            }
        }
        (None, VersionMatch::Exact) | (Some(0), VersionMatch::Exact) => Err(ApiError::BadRequest(
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"".into(),
        )),
        (Some(rv), _) if rv > st.rv => {
            Err(ApiError::BadRequest(format!("Too large resource version: {rv}, current: {}", st.rv)))
        }
        _ => Ok(st.rv),
    }
}

/// Merges two key-ordered iterators with disjoint keys.
struct MergeByKey<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<'a, A, B> Iterator for MergeByKey<A, B>
where
    A: Iterator<Item = (&'a ObjectKey, Arc<StoredObject>)>,
    B: Iterator<Item = (&'a ObjectKey, Arc<StoredObject>)>,
{
    type Item = (&'a ObjectKey, Arc<StoredObject>);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.a.peek(), self.b.peek()) {
            (Some((ka, _)), Some((kb, _))) if kb < ka => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}
