//! Resource verbs: get, list, watch, create, update, patch (merge, strategic, apply),
//! delete and deletecollection, for any registered kind.
//!
//! Writes live in [`crate::writes`]. Server-side apply is simplified: the applied
//! configuration is JSON-merge-patched onto the live object (or creates it); field
//! managers and ownership conflicts are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use bytes::BytesMut;
use serde_json::Value;

use crate::error::ApiError;
use crate::faults::too_large_response;
use crate::http::{App, ResourcePath, error_response, json_response};
use crate::list::{Filter, ListOptions, VersionMatch};
use crate::object::StoredObject;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::Store;
use crate::watch::{WatchRequest, WatchStart, watch_start, watch_stream};
use crate::writes;

/// Routes a parsed resource request to its verb.
pub async fn dispatch(
    app: &App,
    method: Method,
    path: &ResourcePath,
    q: &HashMap<String, String>,
    content_type: &str,
    body: Bytes,
) -> Response {
    if method != Method::GET {
        app.metrics.add(&app.metrics.write_requests, 1);
    }
    let ct = content_type;
    let result = match (&method, &path.name) {
        (&Method::GET, None) if is_true(q.get("watch")) => return watch(app, path, q),
        (&Method::GET, None) => list(app, path, q),
        (&Method::GET, Some(name)) if path.scale => get(&app.store, path, name).map(|o| {
            (
                StatusCode::OK,
                to_bytes(&writes::scale_of(path, &o.value())),
            )
        }),
        (&Method::GET, Some(name)) => {
            get(&app.store, path, name).map(|o| (StatusCode::OK, o.raw.clone()))
        }
        (&Method::POST, None) => return written(app, writes::create(app, path, q, ct, &body)),
        (&Method::PUT, Some(n)) => return written(app, writes::update(app, path, n, q, ct, &body)),
        (&Method::PATCH, Some(n)) => {
            return written(app, writes::patch(app, path, n, q, ct, &body));
        }
        (&Method::DELETE, Some(n)) => return written(app, writes::delete(app, path, n, q, &body)),
        (&Method::DELETE, None) => delete_collection(app, path, q),
        _ => Err(ApiError::MethodNotAllowed(format!(
            "{method} is not supported on this path"
        ))),
    };
    match result {
        Ok((code, bytes)) => json_response(&app.metrics, code, bytes),
        Err(e) => error_response(&app.metrics, &e),
    }
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// The response to a write: the object with one `Warning` header per warning, or the
/// error (rejected bodies are counted).
fn written(app: &App, result: Result<writes::Written, ApiError>) -> Response {
    match result {
        Ok((code, v, warnings)) => {
            let mut resp = json_response(&app.metrics, code, to_bytes(&v));
            for w in warnings {
                let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
                if let Ok(h) = header::HeaderValue::from_str(&text) {
                    resp.headers_mut().append(header::WARNING, h);
                }
            }
            resp
        }
        Err(e) => {
            if matches!(e.code(), 400 | 413 | 415 | 422) {
                app.metrics.add(&app.metrics.rejected_bodies, 1);
            }
            error_response(&app.metrics, &e)
        }
    }
}

fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true" | "1"))
}

fn filter(path: &ResourcePath, q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: path.namespace.clone(),
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
    })
}

fn get(store: &Store, path: &ResourcePath, name: &str) -> Result<Arc<StoredObject>, ApiError> {
    store
        .get(path.rid, path.namespace.as_deref().unwrap_or(""), name)
        .ok_or_else(|| ApiError::not_found(&path.rtype.qualified_plural(), name))
}

fn list_options(path: &ResourcePath, q: &HashMap<String, String>) -> Result<ListOptions, ApiError> {
    let limit = match q.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::BadRequest(format!("invalid limit: {l}")))?,
        ),
        None => None,
    };
    let version_match = match q.get("resourceVersionMatch").map(String::as_str) {
        None | Some("") => VersionMatch::Unset,
        Some("NotOlderThan") => VersionMatch::NotOlderThan,
        Some("Exact") => VersionMatch::Exact,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unsupported resourceVersionMatch: {other}"
            )));
        }
    };
    Ok(ListOptions {
        filter: filter(path, q)?,
        limit,
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        version_match,
    })
}

fn list(
    app: &App,
    path: &ResourcePath,
    q: &HashMap<String, String>,
) -> Result<(StatusCode, Bytes), ApiError> {
    app.metrics.add(&app.metrics.list_requests, 1);
    let opts = list_options(path, q)?;
    if opts.continue_token.is_some() {
        app.metrics.add(&app.metrics.continue_requests, 1);
    }
    let page = app.store.list(path.rid, &opts)?;
    let mut meta = serde_json::json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = Value::String(c.clone());
    }
    let t = &path.rtype;
    let head = serde_json::json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(), "metadata": meta});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    // Splice the items into the head object: `{...,"items":[raw,raw]}`.
    let size: usize = page.items.iter().map(|o| o.raw.len() + 1).sum();
    let mut buf = BytesMut::with_capacity(head.len() + size + 16);
    buf.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    buf.extend_from_slice(b",\"items\":[");
    for (i, o) in page.items.iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b",");
        }
        buf.extend_from_slice(&o.raw);
    }
    buf.extend_from_slice(b"]}");
    Ok((StatusCode::OK, buf.freeze()))
}

fn watch(app: &App, path: &ResourcePath, q: &HashMap<String, String>) -> Response {
    // Counted once the answer exists: a stream subscribes to disconnects when it is
    // made, so a watch counted before a `disconnect_watches` is always cut by it.
    let response = watch_response(app, path, q);
    app.metrics.add(&app.metrics.watch_requests, 1);
    response
}

fn watch_response(app: &App, path: &ResourcePath, q: &HashMap<String, String>) -> Response {
    let req = (|| {
        let bookmarks = is_true(q.get("allowWatchBookmarks"));
        let send_initial = q.get("sendInitialEvents").map(|v| v == "true" || v == "1");
        let start = watch_start(
            &app.store,
            q.get("resourceVersion").map(String::as_str),
            send_initial,
            bookmarks,
        )?;
        let timeout = match q.get("timeoutSeconds") {
            Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                ApiError::BadRequest(format!("invalid timeoutSeconds: {t}"))
            })?)),
            None => None,
        };
        Ok::<_, ApiError>(WatchRequest {
            rid: path.rid,
            rtype: path.rtype.clone(),
            filter: filter(path, q)?,
            start,
            bookmarks,
            timeout,
        })
    })();
    match req {
        Ok(WatchRequest {
            start: WatchStart::From(rv),
            ..
        }) if rv > app.store.resource_version() => {
            // A position this server never issued (it restarted with a fresh history).
            app.metrics.add(&app.metrics.too_large_versions, 1);
            too_large_response(&app.metrics, rv, app.store.resource_version())
        }
        Ok(req) => {
            let mut resp = Response::new(Body::from_stream(watch_stream(app.watch.clone(), req)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => error_response(&app.metrics, &e),
    }
}

fn delete_collection(
    app: &App,
    path: &ResourcePath,
    q: &HashMap<String, String>,
) -> Result<(StatusCode, Bytes), ApiError> {
    let opts = ListOptions {
        filter: filter(path, q)?,
        ..Default::default()
    };
    let page = app.store.list(path.rid, &opts)?;
    for o in &page.items {
        match app.store.delete(path.rid, &o.namespace, &o.name, None) {
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let mut q2 = q.clone();
    q2.remove("continue");
    list(app, path, &q2)
}
