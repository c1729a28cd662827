//! HTTP front end: URL routing, discovery, and Status responses.
//!
//! One fallback handler parses Kubernetes REST paths by hand (the path grammar is small
//! and the same for every kind); resource verbs live in [`crate::handlers`] and
//! [`crate::writes`]. Every response body is JSON (a client that accepts only other
//! media types gets 406); errors are `Status` objects with the matching HTTP code.
//! Request bodies over 3 MiB get 413.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::Value;

use crate::discovery;
use crate::error::ApiError;
use crate::faults::{Faults, classify};
use crate::handlers;
use crate::metrics::Metrics;
use crate::openapi;
use crate::resources::{ResourceId, ResourceType};
use crate::store::Store;
use crate::watch::WatchContext;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct App {
    /// The object store.
    pub store: Arc<Store>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Injected failures.
    pub faults: Arc<Faults>,
    /// What watch streams need.
    pub watch: WatchContext,
    /// Whether the simulated control plane runs (namespaces then delete gracefully).
    pub simulate: bool,
}

/// A request addressed to a resource collection, object or subresource.
#[derive(Debug, Clone)]
pub struct ResourcePath {
    /// The resource type id.
    pub rid: ResourceId,
    /// The resource type.
    pub rtype: ResourceType,
    /// Namespace from the URL.
    pub namespace: Option<String>,
    /// Object name from the URL.
    pub name: Option<String>,
    /// Whether the `/status` subresource is addressed.
    pub status: bool,
    /// Whether the `/scale` subresource (deployments, replica sets) is addressed.
    pub scale: bool,
}

/// The router serving every path through [`handle`].
pub fn router(app: App) -> Router {
    Router::new().fallback(handle).with_state(app)
}

/// A JSON response, counted in the metrics.
pub fn json_response(metrics: &Metrics, code: StatusCode, body: Bytes) -> Response {
    metrics.add(&metrics.response_bytes, body.len() as u64);
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON value response.
pub fn value_response(metrics: &Metrics, code: StatusCode, v: &Value) -> Response {
    json_response(
        metrics,
        code,
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

/// An error as a Status response.
pub fn error_response(metrics: &Metrics, err: &ApiError) -> Response {
    let code = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    value_response(metrics, code, &err.to_status())
}

fn not_found() -> ApiError {
    ApiError::NotFound("the server could not find the requested resource".into())
}

async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    app.metrics.add(&app.metrics.requests, 1);
    let body = match checked_body(&app, &headers, body).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    if let Some(resp) = discovery_response(&app, &method, &segs) {
        return resp;
    }
    let path = match parse_resource_path(&app.store, &segs) {
        Ok(p) => p,
        Err(e) => return error_response(&app.metrics, &e),
    };
    let class = classify(method == Method::GET, path.name.is_some(), &query);
    if let Some(kind) = app.faults.check(class) {
        return app.faults.respond(class, kind);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    handlers::dispatch(&app, method, &path, &query, &content_type, body).await
}

/// The answer to a health, version, discovery or OpenAPI path; None for any other path.
fn discovery_response(app: &App, method: &Method, segs: &[&str]) -> Option<Response> {
    let reg = || app.store.registry();
    let doc = match segs {
        ["version"] => Some(discovery::version()),
        ["healthz" | "livez" | "readyz"] => {
            return Some(json_response(
                &app.metrics,
                StatusCode::OK,
                Bytes::from_static(b"ok"),
            ));
        }
        ["api"] => Some(discovery::core_versions()),
        ["api", v] => discovery::resource_list(&reg(), "", v),
        ["apis"] => Some(discovery::group_list(&reg())),
        ["apis", g] => discovery::group(&reg(), g),
        ["apis", g, v] => discovery::resource_list(&reg(), g, v),
        ["openapi", "v3"] => Some(openapi::root(&reg())),
        ["openapi", "v3", "api", v] => openapi::group_version(&reg(), "", v),
        ["openapi", "v3", "apis", g, v] => openapi::group_version(&reg(), g, v),
        _ => None,
    };
    let is_discovery = matches!(
        segs,
        ["version"]
            | ["api"]
            | ["api", _]
            | ["apis"]
            | ["apis", _]
            | ["apis", _, _]
            | ["openapi", ..]
    );
    if !is_discovery {
        return None;
    }
    Some(match doc {
        Some(d) if *method == Method::GET => value_response(&app.metrics, StatusCode::OK, &d),
        Some(_) => error_response(
            &app.metrics,
            &ApiError::MethodNotAllowed("only GET is allowed".into()),
        ),
        None => error_response(&app.metrics, &not_found()),
    })
}

/// The request body, or the 406 (JSON not acceptable) or 413 (too large) answer.
async fn checked_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, Box<Response>> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !accepts_json(accept) {
        let e = ApiError::NotAcceptable(format!(
            "only the following media types are accepted: application/json (got {accept})"
        ));
        return Err(Box::new(error_response(&app.metrics, &e)));
    }
    read_body(body).await.map_err(|()| {
        app.metrics.add(&app.metrics.rejected_bodies, 1);
        let e = ApiError::TooLarge(format!(
            "Request entity too large: limit is {}",
            crate::writes::MAX_BODY
        ));
        Box::new(error_response(&app.metrics, &e))
    })
}

/// Over-limit bodies are read (and dropped) up to this size before the 413, so that the
/// client, still sending, is not reset before it reads the answer.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// The request body, or Err if it exceeds [`crate::writes::MAX_BODY`] (or cannot be read).
async fn read_body(body: Body) -> Result<Bytes, ()> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ())?;
        seen += chunk.len();
        if seen <= crate::writes::MAX_BODY {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > crate::writes::MAX_BODY {
        return Err(());
    }
    Ok(buf.freeze())
}

/// Whether an `Accept` header admits a JSON answer (absent, JSON, or a wildcard).
pub fn accepts_json(accept: &str) -> bool {
    accept.trim().is_empty()
        || accept.split(',').any(|r| {
            let m = r.split(';').next().unwrap_or("").trim();
            matches!(m, "*/*" | "application/*" | "application/json" | "")
        })
}

/// Parses `/api/v1/...` and `/apis/<g>/<v>/...` resource paths.
fn parse_resource_path(store: &Store, segs: &[&str]) -> Result<ResourcePath, ApiError> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), [&[*plural], tail].concat())
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(*s)),
        _ => return Err(not_found()),
    };
    let (rid, rtype) = store
        .resolve_path(group, version, plural)
        .ok_or_else(not_found)?;
    if namespace.is_some() && !rtype.namespaced {
        return Err(not_found());
    }
    if name.is_some() && rtype.namespaced && namespace.is_none() {
        return Err(not_found());
    }
    let scalable =
        rtype.group == "apps" && matches!(rtype.kind.as_str(), "Deployment" | "ReplicaSet");
    let (status, scale) = match sub {
        None => (false, false),
        Some("status") if rtype.status_subresource => (true, false),
        Some("scale") if scalable => (false, true),
        Some(_) => return Err(not_found()),
    };
    Ok(ResourcePath {
        rid,
        rtype,
        namespace,
        name,
        status,
        scale,
    })
}
