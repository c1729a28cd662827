//! Typha discovery through a Service's EndpointSlices (discovery.k8s.io/v1), shared by
//! both binaries: felix-client picks the typha to connect to from it, typha counts its
//! ready replicas with it (to size its share of the connections).
//!
//! Why EndpointSlices: they are what kube-proxy follows, so "ready" here means exactly
//! what the Service means by it (the readiness probe passed and the pod is not
//! terminating), and one watch per agent on a label-selected, namespaced list is cheap.
//!
//! Invariants:
//! - the published list holds only READY endpoints (`conditions.ready` true, or unset,
//!   which the API defines as ready), each once, sorted by (address, port);
//! - nothing is published before the first complete list (a relist replaces the whole
//!   set atomically at `InitDone`, so an endpoint missing from a relist disappears);
//! - watch errors are stream items: logged, counted in [`DiscoveryState`], retried with
//!   kube's default backoff, never fatal. The task stops only when its token fires or the
//!   [`Discovery`] handle is dropped.

use std::collections::BTreeMap;
use std::fmt;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The EndpointSlice port name used when none is configured (Calico's Service port name).
pub const DEFAULT_PORT_NAME: &str = "calico-typha";

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One ready typha endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TyphaEndpoint {
    /// The endpoint's (first) address: an IP, or a name for FQDN slices.
    pub address: String,
    /// The selected port.
    pub port: u16,
    /// The node the endpoint runs on, when the slice says.
    pub node_name: Option<String>,
}

impl TyphaEndpoint {
    /// `HOST:PORT`, with IPv6 addresses in brackets.
    pub fn host_port(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// Which Service to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The port to use, by its name in the slices (the Service port's name); a slice with
    /// exactly one port uses that port whatever its name.
    pub port_name: String,
}

/// A malformed `NAMESPACE/NAME` service reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("typha service {0:?} is not NAMESPACE/NAME")]
pub struct ServiceRefError(pub String);

impl DiscoveryConfig {
    /// Follows `namespace/service` with the default port name.
    pub fn new(namespace: impl Into<String>, service: impl Into<String>) -> DiscoveryConfig {
        DiscoveryConfig {
            namespace: namespace.into(),
            service: service.into(),
            port_name: DEFAULT_PORT_NAME.to_string(),
        }
    }

    /// Parses `NAMESPACE/NAME` (both non-empty, no whitespace, one slash).
    pub fn parse(reference: &str) -> Result<DiscoveryConfig, ServiceRefError> {
        let bad = || ServiceRefError(reference.to_string());
        let (namespace, service) = reference.split_once('/').ok_or_else(bad)?;
        let valid =
            |s: &str| !s.is_empty() && !s.contains('/') && !s.chars().any(char::is_whitespace);
        if !valid(namespace) || !valid(service) {
            return Err(bad());
        }
        Ok(DiscoveryConfig::new(namespace, service))
    }
}

impl fmt::Display for DiscoveryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {}/{} (port {:?})",
            self.namespace, self.service, self.port_name
        )
    }
}

/// How the watch is doing (for error messages and health).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryState {
    /// The slices have been listed completely at least once.
    pub listed: bool,
    /// Watch errors so far (each retried with backoff).
    pub watch_errors: u64,
    /// The most recent watch error.
    pub last_error: Option<String>,
}

/// The port of `ports` named `name`, else the only port; `None` when neither exists.
pub fn select_port(ports: &[EndpointPort], name: &str) -> Option<u16> {
    let valid = |p: &EndpointPort| {
        p.port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    match ports.iter().find(|p| p.name.as_deref() == Some(name)) {
        Some(port) => valid(port),
        None if ports.len() == 1 => valid(&ports[0]),
        None => None,
    }
}

/// The ready endpoints of `slices`, each once, sorted (pure: the watch task's core).
pub fn ready_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
) -> Vec<TyphaEndpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = select_port(slice.ports.as_deref().unwrap_or_default(), port_name) else {
            tracing::debug!(
                slice = slice.metadata.name.as_deref().unwrap_or_default(),
                port_name,
                "endpoint slice has no usable port; skipped"
            );
            continue;
        };
        for endpoint in &slice.endpoints {
            // The API: "nil should be interpreted as ready".
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            // Addresses of one endpoint are fungible; clients may use the first.
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            if ready && !address.is_empty() {
                out.push(TyphaEndpoint {
                    address: address.clone(),
                    port,
                    node_name: endpoint.node_name.clone(),
                });
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    out
}

/// A running EndpointSlice watch. Dropping it stops the watch.
pub struct Discovery {
    config: DiscoveryConfig,
    endpoints: watch::Receiver<Vec<TyphaEndpoint>>,
    replicas: watch::Receiver<usize>,
    state: watch::Receiver<DiscoveryState>,
    task: JoinHandle<()>,
    stop: DropGuard,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("config", &self.config)
            .field("endpoints", &*self.endpoints.borrow())
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts watching on the current runtime; stops when `shutdown` fires or the handle
    /// is dropped.
    pub fn spawn(
        client: kube::Client,
        config: DiscoveryConfig,
        shutdown: &CancellationToken,
    ) -> Discovery {
        let (endpoints_tx, endpoints) = watch::channel(Vec::new());
        let (replicas_tx, replicas) = watch::channel(0);
        let (state_tx, state) = watch::channel(DiscoveryState::default());
        let token = shutdown.child_token();
        let api: Api<EndpointSlice> = Api::namespaced(client, &config.namespace);
        let publish = Publish {
            endpoints: endpoints_tx,
            replicas: replicas_tx,
            state: state_tx,
        };
        let task = tokio::spawn(run(api, config.clone(), publish, token.clone()));
        Discovery {
            config,
            endpoints,
            replicas,
            state,
            task,
            stop: token.drop_guard(),
        }
    }

    /// What is followed.
    pub fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    /// The ready endpoints (empty until the first list completes).
    pub fn endpoints(&self) -> watch::Receiver<Vec<TyphaEndpoint>> {
        self.endpoints.clone()
    }

    /// The number of ready endpoints (what typha uses to count its replicas).
    pub fn replicas(&self) -> watch::Receiver<usize> {
        self.replicas.clone()
    }

    /// How the watch is doing.
    pub fn state(&self) -> watch::Receiver<DiscoveryState> {
        self.state.clone()
    }

    /// Stops the watch and waits for its task.
    pub async fn stop(self) {
        let Discovery { stop, task, .. } = self;
        drop(stop);
        let _ = task.await;
    }
}

struct Publish {
    endpoints: watch::Sender<Vec<TyphaEndpoint>>,
    replicas: watch::Sender<usize>,
    state: watch::Sender<DiscoveryState>,
}

impl Publish {
    fn endpoints(&self, config: &DiscoveryConfig, slices: &BTreeMap<String, EndpointSlice>) {
        let ready = ready_endpoints(slices.values(), &config.port_name);
        let count = ready.len();
        let changed = self.endpoints.send_if_modified(|current| {
            if *current == ready {
                return false;
            }
            *current = ready;
            true
        });
        if changed {
            tracing::info!(%config, ready = count, "typha endpoints changed");
        }
        self.replicas.send_if_modified(|current| {
            let changed = *current != count;
            *current = count;
            changed
        });
    }
}

async fn run(
    api: Api<EndpointSlice>,
    config: DiscoveryConfig,
    publish: Publish,
    token: CancellationToken,
) {
    let selector = format!("{SERVICE_NAME_LABEL}={}", config.service);
    let wc = watcher::Config::default().labels(&selector);
    let mut events = std::pin::pin!(watcher(api, wc).default_backoff());
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, EndpointSlice>> = None;
    let mut listed = false;
    loop {
        let event = tokio::select! {
            _ = token.cancelled() => return,
            event = events.next() => event,
        };
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            // A watcher stream does not end; if it ever does, there is nothing to follow.
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%config, %error, "endpoint slice watch error; retrying with backoff");
                publish.state.send_modify(|s| {
                    s.watch_errors += 1;
                    s.last_error = Some(error.to_string());
                });
            }
            Some(Ok(watcher::Event::Init)) => relist = Some(BTreeMap::new()),
            Some(Ok(watcher::Event::InitApply(slice))) => {
                relist.get_or_insert_default().insert(name(&slice), slice);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                slices = relist.take().unwrap_or_default();
                if !listed {
                    listed = true;
                    publish.state.send_modify(|s| s.listed = true);
                }
                publish.endpoints(&config, &slices);
            }
            Some(Ok(watcher::Event::Apply(slice))) => {
                slices.insert(name(&slice), slice);
                publish.endpoints(&config, &slices);
            }
            Some(Ok(watcher::Event::Delete(slice))) => {
                slices.remove(&name(&slice));
                publish.endpoints(&config, &slices);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    fn port(name: Option<&str>, n: i32) -> EndpointPort {
        EndpointPort {
            name: name.map(str::to_string),
            port: Some(n),
            ..Default::default()
        }
    }

    fn endpoint(addr: &str, ready: Option<bool>, node: &str) -> Endpoint {
        Endpoint {
            addresses: vec![addr.to_string()],
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            node_name: Some(node.to_string()),
            ..Default::default()
        }
    }

    fn slice(ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(ports),
            ..Default::default()
        }
    }

    #[test]
    fn ports_by_name_or_the_only_one() {
        let named = [
            port(Some("metrics"), 9093),
            port(Some("calico-typha"), 5473),
        ];
        assert_eq!(select_port(&named, "calico-typha"), Some(5473));
        assert_eq!(select_port(&named, "metrics"), Some(9093));
        assert_eq!(select_port(&named, "other"), None);
        assert_eq!(
            select_port(&[port(Some("grpc"), 7)], "calico-typha"),
            Some(7)
        );
        assert_eq!(select_port(&[port(None, 7)], "calico-typha"), Some(7));
        assert_eq!(select_port(&[], "calico-typha"), None);
        assert_eq!(select_port(&[port(None, 0)], "x"), None);
        assert_eq!(select_port(&[port(None, 70000)], "x"), None);
    }

    #[test]
    fn only_ready_or_unset_endpoints_once_and_sorted() {
        let ports = vec![port(Some("calico-typha"), 5473)];
        let a = slice(
            ports.clone(),
            vec![
                endpoint("10.0.0.2", Some(true), "n2"),
                endpoint("10.0.0.3", Some(false), "n3"),
                endpoint("10.0.0.1", None, "n1"),
                Endpoint {
                    addresses: vec!["10.0.0.4".into()],
                    ..Default::default()
                },
            ],
        );
        // The same endpoint in two slices (a transient state while slices are rebalanced).
        let b = slice(ports, vec![endpoint("10.0.0.2", Some(true), "n2")]);
        let no_port = slice(
            vec![port(Some("a"), 1), port(Some("b"), 2)],
            vec![endpoint("10.0.0.9", Some(true), "n9")],
        );
        let got = ready_endpoints([&a, &b, &no_port], DEFAULT_PORT_NAME);
        let addrs: Vec<_> = got.iter().map(TyphaEndpoint::host_port).collect();
        assert_eq!(addrs, ["10.0.0.1:5473", "10.0.0.2:5473", "10.0.0.4:5473"]);
        assert_eq!(got[0].node_name.as_deref(), Some("n1"));
        assert_eq!(got[2].node_name, None);
    }

    #[test]
    fn ipv6_is_bracketed_and_references_parse() {
        let e = TyphaEndpoint {
            address: "fd00::1".into(),
            port: 5473,
            node_name: None,
        };
        assert_eq!(e.host_port(), "[fd00::1]:5473");
        let c = DiscoveryConfig::parse("kube-system/calico-typha").unwrap();
        assert_eq!(
            (
                c.namespace.as_str(),
                c.service.as_str(),
                c.port_name.as_str()
            ),
            ("kube-system", "calico-typha", DEFAULT_PORT_NAME)
        );
        for bad in ["", "x", "/x", "x/", "a/b/c", "a b/c"] {
            assert!(DiscoveryConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
