//! Fault injection for the simulated API server: failed requests, cut watch streams and
//! a restart with a fresh (lower) resourceVersion history.
//!
//! A [`Faults`] handle (see [`crate::KubeSim::faults`]) holds an ordered list of
//! [`FaultRule`]s. Every resource request (discovery and health paths are never
//! failed) is offered to the rules in order; the first rule that matches the request's
//! [`Target`] and still has budget answers it with a Kubernetes `Status` body instead of
//! serving it. Budgets are deterministic (counts, every n-th matching request, until
//! healed, or until a deadline), so tests reproduce exactly.
//!
//! Invariants:
//! - A failed request changes nothing in the store (the check runs before dispatch).
//! - [`FaultKind::Gone`] only applies to requests that carry a resourceVersion to expire
//!   (a WATCH from a position, a LIST with `resourceVersion` other than "0" or with a
//!   `continue` token); other requests pass the rule without consuming its budget. A
//!   watch answers it the way a real server's watch cache does: 200 and one `ERROR`
//!   event (Status 410 Expired).
//! - Every injected failure is counted in [`Metrics::faults_injected`] and every
//!   [`Faults::cut_watches`] in [`Metrics::watch_cuts`].
//!
//! [`Store::fresh_copy`] builds the store a restarted server with a restored datastore
//! serves: the same objects (uids, labels, specs) stamped with a new, low
//! resourceVersion and no history. A client resuming from an older server's (higher)
//! position is told "Too large resource version" (504), as a real API server does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::http::{json_response, value_response};
use crate::metrics::Metrics;
use crate::object::{StoredObject, metadata_mut};
use crate::store::{State, Store};

/// Which requests a rule fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every resource request.
    Any,
    /// LIST and WATCH requests.
    Reads,
    /// LIST requests (collection GET without `watch`).
    Lists,
    /// WATCH requests.
    Watches,
    /// Mutating requests (POST, PUT, PATCH, DELETE).
    Writes,
}

/// The failure a rule answers with (a `Status` JSON body with the matching code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// 500 `InternalError`.
    InternalError,
    /// 503 `ServiceUnavailable`.
    ServiceUnavailable,
    /// 429 `TooManyRequests` with a `Retry-After` header and `details.retryAfterSeconds`.
    TooManyRequests {
        /// The advertised retry delay in seconds.
        retry_after_secs: u32,
    },
    /// 410 `Expired` (only for requests carrying a resourceVersion; see the module docs).
    Gone,
}

impl FaultKind {
    /// The HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            FaultKind::InternalError => 500,
            FaultKind::ServiceUnavailable => 503,
            FaultKind::TooManyRequests { .. } => 429,
            FaultKind::Gone => 410,
        }
    }

    /// The Kubernetes `Status` object of this failure.
    pub fn to_status(self) -> Value {
        let (reason, message) = match self {
            FaultKind::InternalError => (
                "InternalError",
                "Internal error occurred: injected fault".to_string(),
            ),
            FaultKind::ServiceUnavailable => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request (injected fault)".into(),
            ),
            FaultKind::TooManyRequests { .. } => (
                "TooManyRequests",
                "too many requests, please try again later (injected fault)".into(),
            ),
            FaultKind::Gone => (
                "Expired",
                "too old resource version (injected fault)".to_string(),
            ),
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": self.code(),
        });
        if let FaultKind::TooManyRequests { retry_after_secs } = self {
            status["details"] = json!({"retryAfterSeconds": retry_after_secs});
        }
        status
    }
}

/// How many matching requests a rule fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The next `n` matching requests, then the rule is spent.
    Next(u64),
    /// Every matching request until [`Faults::heal`].
    UntilHealed,
    /// Every `n`-th matching request (the 1st, the n+1-th, ...) until healed: a
    /// deterministic fraction `1/n`.
    EveryNth(u64),
    /// Every matching request until this instant.
    Until(Instant),
}

/// One injection rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Which requests it applies to.
    pub target: Target,
    /// The failures it answers with, cycled over the requests it fails (at least one).
    pub kinds: Vec<FaultKind>,
    /// How many it fails.
    pub budget: Budget,
}

/// What kind of request is being served (see [`Faults::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// A LIST; `with_version`: it names a resourceVersion (not "0") or a continue token.
    List {
        /// Whether a 410 could apply.
        with_version: bool,
    },
    /// A WATCH; `with_version`: it starts from a position.
    Watch {
        /// Whether a 410 could apply.
        with_version: bool,
    },
    /// A GET of one object.
    Get,
    /// A mutating request.
    Write,
}

impl RequestClass {
    fn matches(self, target: Target) -> bool {
        match target {
            Target::Any => true,
            Target::Reads => matches!(self, RequestClass::List { .. } | RequestClass::Watch { .. }),
            Target::Lists => matches!(self, RequestClass::List { .. }),
            Target::Watches => matches!(self, RequestClass::Watch { .. }),
            Target::Writes => self == RequestClass::Write,
        }
    }

    fn can_expire(self) -> bool {
        matches!(
            self,
            RequestClass::List { with_version: true } | RequestClass::Watch { with_version: true }
        )
    }
}

struct Active {
    rule: FaultRule,
    /// Matching requests seen (EveryNth) / failed (others).
    seen: u64,
    failed: u64,
}

/// The fault-injection handle of one server.
pub struct Faults {
    rules: Mutex<VecDeque<Active>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Faults {
    /// Faults for the server serving `store` and counting into `metrics`.
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Faults {
            rules: Mutex::new(VecDeque::new()),
            store,
            metrics,
        }
    }

    /// Adds a rule after the existing ones. A rule without kinds is ignored.
    pub fn add(&self, rule: FaultRule) {
        if rule.kinds.is_empty() {
            return;
        }
        self.rules.lock().push_back(Active {
            rule,
            seen: 0,
            failed: 0,
        });
    }

    /// Fails the next `n` requests matching `target` with `kind`.
    pub fn fail_next(&self, n: u64, target: Target, kind: FaultKind) {
        self.add(FaultRule {
            target,
            kinds: vec![kind],
            budget: Budget::Next(n),
        });
    }

    /// Fails every request matching `target`, cycling through `kinds`, until [`Faults::heal`].
    pub fn fail_all(&self, target: Target, kinds: Vec<FaultKind>) {
        self.add(FaultRule {
            target,
            kinds,
            budget: Budget::UntilHealed,
        });
    }

    /// Fails every `n`-th request matching `target` with `kind` until healed.
    pub fn fail_every(&self, n: u64, target: Target, kind: FaultKind) {
        self.add(FaultRule {
            target,
            kinds: vec![kind],
            budget: Budget::EveryNth(n.max(1)),
        });
    }

    /// Removes every rule: requests are served normally again.
    pub fn heal(&self) {
        self.rules.lock().clear();
    }

    /// How many rules still have budget.
    pub fn active_rules(&self) -> usize {
        let now = Instant::now();
        self.rules.lock().iter().filter(|a| !spent(a, now)).count()
    }

    /// Ends every open watch stream now (clients reconnect from their last position).
    pub fn cut_watches(&self) {
        self.metrics.add(&self.metrics.watch_cuts, 1);
        self.store.disconnect_watches();
    }

    /// Offers one request to the rules: the failure to answer with, if any (counted).
    pub fn check(&self, class: RequestClass) -> Option<FaultKind> {
        let now = Instant::now();
        let mut rules = self.rules.lock();
        rules.retain(|a| !spent(a, now));
        let kind = rules.iter_mut().find_map(|a| {
            if !class.matches(a.rule.target) {
                return None;
            }
            let kind = a.rule.kinds[(a.failed % a.rule.kinds.len() as u64) as usize];
            if kind == FaultKind::Gone && !class.can_expire() {
                return None;
            }
            a.seen += 1;
            if let Budget::EveryNth(n) = a.rule.budget
                && (a.seen - 1) % n != 0
            {
                return None;
            }
            a.failed += 1;
            Some(kind)
        });
        drop(rules);
        if kind.is_some() {
            self.metrics.add(&self.metrics.faults_injected, 1);
        }
        kind
    }

    /// The response for an injected failure of a request of `class`.
    pub fn respond(&self, class: RequestClass, kind: FaultKind) -> Response {
        let status = kind.to_status();
        if kind == FaultKind::Gone && matches!(class, RequestClass::Watch { .. }) {
            // What a real watch cache does: 200, then one ERROR event.
            let event = json!({"type": "ERROR", "object": status});
            let mut body = serde_json::to_vec(&event).unwrap_or_default();
            body.push(b'\n');
            self.metrics.add(&self.metrics.watch_events, 1);
            return json_response(&self.metrics, StatusCode::OK, Bytes::from(body));
        }
        let code = StatusCode::from_u16(kind.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = value_response(&self.metrics, code, &status);
        if let FaultKind::TooManyRequests { retry_after_secs } = kind {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(retry_after_secs),
            );
        }
        resp
    }
}

fn spent(a: &Active, now: Instant) -> bool {
    match a.rule.budget {
        Budget::Next(n) => a.failed >= n,
        Budget::UntilHealed | Budget::EveryNth(_) => false,
        Budget::Until(t) => now >= t,
    }
}

/// Classifies a resource request for [`Faults::check`].
pub fn classify(is_get: bool, has_name: bool, query: &HashMap<String, String>) -> RequestClass {
    let flag = |k: &str| matches!(query.get(k).map(String::as_str), Some("true" | "1"));
    let rv = query
        .get("resourceVersion")
        .is_some_and(|v| !v.is_empty() && v != "0");
    match (is_get, has_name) {
        (false, _) => RequestClass::Write,
        (true, true) => RequestClass::Get,
        (true, false) if flag("watch") => RequestClass::Watch {
            with_version: rv && !flag("sendInitialEvents"),
        },
        (true, false) => RequestClass::List {
            with_version: rv || query.get("continue").is_some_and(|c| !c.is_empty()),
        },
    }
}

/// The 504 a real API server answers a watch from a resourceVersion it has not reached
/// (for example after a restore from an older backup).
pub fn too_large_response(metrics: &Metrics, requested: u64, current: u64) -> Response {
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("Timeout: Too large resource version: {requested}, current: {current}"),
        "reason": "Timeout",
        "details": {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
        "code": 504,
    });
    value_response(metrics, StatusCode::GATEWAY_TIMEOUT, &status)
}

/// The resourceVersion every object of a [`Store::fresh_copy`] carries.
pub const FRESH_RESOURCE_VERSION: u64 = 2;

impl Store {
    /// A store with the same types and objects but a fresh history: every object is
    /// stamped with resourceVersion [`FRESH_RESOURCE_VERSION`] (as if restored in one
    /// transaction), the counter continues from there, and no history is retained, so
    /// positions from this store are meaningless to the copy. `history_limit` as in
    /// [`Store::new`].
    pub fn fresh_copy(&self, history_limit: usize) -> Store {
        let (registry, objects) = {
            let st = self.state.read();
            (st.registry.clone(), st.objects.clone())
        };
        let fresh = Store::new(history_limit, false);
        {
            let mut st = fresh.state.write();
            restamp(&mut st, objects);
            st.registry = registry;
            st.rv = FRESH_RESOURCE_VERSION;
            st.compacted = FRESH_RESOURCE_VERSION;
        }
        fresh
    }
}

fn restamp(
    st: &mut State,
    objects: HashMap<
        crate::resources::ResourceId,
        BTreeMap<crate::object::ObjectKey, Arc<StoredObject>>,
    >,
) {
    st.objects = objects
        .into_iter()
        .map(|(rid, map)| {
            let map = map
                .into_iter()
                .map(|(key, obj)| {
                    let mut value = obj.value();
                    metadata_mut(&mut value).insert(
                        "resourceVersion".into(),
                        Value::String(FRESH_RESOURCE_VERSION.to_string()),
                    );
                    let obj = Arc::new(StoredObject::new(rid, &value, FRESH_RESOURCE_VERSION));
                    (key, obj)
                })
                .collect();
            (rid, map)
        })
        .collect();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn faults() -> Faults {
        Faults::new(
            Arc::new(Store::new(100, true)),
            Arc::new(Metrics::default()),
        )
    }

    const WATCH_RV: RequestClass = RequestClass::Watch { with_version: true };
    const LIST_0: RequestClass = RequestClass::List {
        with_version: false,
    };

    #[test]
    fn next_n_then_healthy_and_counted() {
        let f = faults();
        f.fail_next(2, Target::Reads, FaultKind::ServiceUnavailable);
        assert_eq!(f.check(RequestClass::Write), None);
        assert_eq!(f.check(RequestClass::Get), None);
        assert_eq!(f.check(LIST_0), Some(FaultKind::ServiceUnavailable));
        assert_eq!(f.check(WATCH_RV), Some(FaultKind::ServiceUnavailable));
        assert_eq!(f.check(WATCH_RV), None);
        assert_eq!(f.active_rules(), 0);
        assert_eq!(f.metrics.snapshot().faults_injected, 2);
    }

    #[test]
    fn every_nth_is_a_deterministic_fraction() {
        let f = faults();
        f.fail_every(3, Target::Any, FaultKind::InternalError);
        let failed: Vec<bool> = (0..9)
            .map(|_| f.check(RequestClass::Get).is_some())
            .collect();
        assert_eq!(
            failed,
            [true, false, false, true, false, false, true, false, false]
        );
        f.heal();
        assert_eq!(f.check(RequestClass::Get), None);
    }

    #[test]
    fn kinds_cycle_and_gone_only_hits_versioned_reads() {
        let f = faults();
        f.fail_all(
            Target::Reads,
            vec![FaultKind::Gone, FaultKind::InternalError],
        );
        // An unversioned list cannot expire: it passes without consuming the rule.
        assert_eq!(f.check(LIST_0), None);
        assert_eq!(f.check(WATCH_RV), Some(FaultKind::Gone));
        assert_eq!(f.check(LIST_0), Some(FaultKind::InternalError));
        assert_eq!(f.check(WATCH_RV), Some(FaultKind::Gone));
        assert_eq!(f.metrics.snapshot().faults_injected, 3);
    }

    #[test]
    fn status_bodies_have_kubernetes_shape() {
        let s = FaultKind::TooManyRequests {
            retry_after_secs: 2,
        }
        .to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["reason"], "TooManyRequests");
        assert_eq!(s["code"], 429);
        assert_eq!(s["details"]["retryAfterSeconds"], 2);
        assert_eq!(FaultKind::Gone.to_status()["reason"], "Expired");
        assert_eq!(FaultKind::InternalError.to_status()["code"], 500);
    }

    #[test]
    fn classify_reads_the_query() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            classify(
                true,
                false,
                &q(&[("watch", "true"), ("resourceVersion", "12")])
            ),
            WATCH_RV
        );
        assert_eq!(
            classify(true, false, &q(&[("watch", "1"), ("resourceVersion", "0")])),
            RequestClass::Watch {
                with_version: false
            }
        );
        assert_eq!(
            classify(true, false, &q(&[("resourceVersion", "0")])),
            LIST_0
        );
        assert_eq!(
            classify(true, false, &q(&[("continue", "abc")])),
            RequestClass::List { with_version: true }
        );
        assert_eq!(classify(true, true, &q(&[])), RequestClass::Get);
        assert_eq!(classify(false, true, &q(&[])), RequestClass::Write);
    }

    #[test]
    fn fresh_copy_keeps_objects_and_restarts_versions() {
        let store = Store::new(100, true);
        crate::seed(
            &store,
            &crate::SeedConfig {
                nodes: 2,
                pods_per_node: 2,
                namespaces: 1,
                policies_per_namespace: 1,
                host_network_every: 0,
            },
        )
        .unwrap();
        let before = store.list_objects("v1", "Pod");
        let fresh = store.fresh_copy(100);
        assert!(fresh.resource_version() < store.resource_version());
        let after = fresh.list_objects("v1", "Pod");
        assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(a["metadata"]["uid"], b["metadata"]["uid"]);
            assert_eq!(a["spec"], b["spec"]);
            assert_eq!(a["metadata"]["resourceVersion"], "2");
        }
        // Writes continue from the fresh counter.
        let mut pod = after[0].clone();
        pod["metadata"]["labels"]["x"] = json!("y");
        let written = fresh.upsert_object(pod).unwrap();
        assert_eq!(written["metadata"]["resourceVersion"], "3");
        // Calico kinds stay served.
        assert!(
            fresh
                .resolve_path("crd.projectcalico.org", "v1", "ippools")
                .is_some()
        );
    }
}
