//! The shared end-to-end rig (root only): the netns bench, kube-sim holding its objects,
//! an in-process typha watching kube-sim and serving mutual TLS on 127.0.0.1, and one
//! agent per node (sync client -> calc -> dataplane in the node's namespace).
//!
//! Typha can be stopped and started again on the same address with the same PKI (the
//! agents keep their configuration and find it again); each agent can be stopped and a
//! fresh one started over the same namespace.
//!
//! With [`RigConfig::typha_via_nodes`] each agent's sync client runs on a thread inside
//! its node's namespace and dials typha at [`RELAY_IP`] on the nodes' segment (an address
//! of the switch namespace, where a relay forwards to typha's loopback listener): the
//! agent's connection then crosses the node's own network stack, so a firewall rule in
//! the node's namespace ([`Rig::partition`]) cuts exactly that node off, as on a real
//! host. Never the root namespace's firewall.
//!
//! Waits are on signals, never sleeps:
//! - between each agent's sync client and its dataplane sits a tap that forwards every
//!   event and, after each in-sync, an empty `Changes` at the same revision (what the
//!   sync client itself sends for empty delta batches). The calc is wrapped to count
//!   folds and `desired()` calls. So "the dataplane has folded everything forwarded so
//!   far and finished the pass after it" is an exact condition ([`Rig::settled`]), with
//!   no revision arithmetic (a restarted typha may count revisions differently).
//! - every wait is bounded by [`LIMIT`]: a hung test fails instead of hanging.
#![allow(dead_code)] // each test binary uses a part

pub mod cases;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use edge::certs::{DEFAULT_CLIENT_CN, DEFAULT_SERVER_CN, DevPki};
use edge::tls::{PeerIdentity, client_config, server_config};
use felix_client::calc::hosts::HostConfig;
use felix_client::calc::{Calc, CalcConfig, CalcMode, Desired};
use felix_client::dataplane::{self, DataplaneConfig, DataplaneStatus, DesiredSource};
use felix_client::{Mirror, SyncClient, SyncConfig, SyncEvent, SyncStatus};
use kube_sim::KubeSim;
use netlab::cni::CniWiring;
use netlab::flow::{Flow, Pump};
use netlab::kube::{policy_json, topology_objects};
use netlab::stack::CLUSTER_CIDR_V6;
use netlab::topology::CLUSTER_CIDR;
use netlab::{LabelSelector, Peer, PodSpec, Policy, Protocol, Rule, Stack, Topology};
use netmodel::UpstreamConfig;
use serde_json::Value as Json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};
use typha::app::{Running, TyphaOptions, Upstream};
use typha::hub::HubConfig;
use typha::server::{ServerConfig, Transport};
use typha_proto::{Revision, Update};

/// What every probe matrix covers.
pub const SERVICES: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
];
/// Per-probe timeout (probes run concurrently).
pub const PROBE_LIMIT: Duration = Duration::from_millis(300);
/// Bound on every wait: a hung test fails instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(60);
/// Where agents dial typha with [`RigConfig::typha_via_nodes`]: an address of the switch
/// namespace on the nodes' segment (no node's).
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 250);
/// The relay's port (typha's default).
pub const RELAY_PORT: u16 = 5473;

/// The port of the long-lived test connections (not one the probes use).
pub const FLOW_PORT: u16 = 8080;
/// Pacing of the background exchanges.
pub const PUMP_EVERY: Duration = Duration::from_millis(10);

/// Ingress to the pods of `ns` that `selector` picks only from namespaces labelled
/// `ns: <from>`.
pub fn allow_from(ns: &str, name: &str, selector: LabelSelector, from: &[&str]) -> Policy {
    let peers = from
        .iter()
        .map(|f| Peer::namespaces(LabelSelector::label("ns", f)))
        .collect();
    Policy::new(ns, name, selector).ingress(Rule::from_peers(peers))
}

/// Starts a background exchange on a new connection from pod `from` to pod `to` (on
/// different nodes), after three exchanges went through.
pub async fn pump_between(rig: &Rig, from: (&str, &str), to: (&str, &str)) -> Pump {
    let src = rig.topo.pod(from.0, from.1).unwrap();
    let dst = rig.topo.pod(to.0, to.1).unwrap();
    assert_ne!(src.node, dst.node, "the flow must cross nodes");
    let flow = Flow::open(&src.netns, &dst.netns, dst.ip, FLOW_PORT, LIMIT)
        .await
        .unwrap();
    let pump = flow.pump(PUMP_EVERY, LIMIT);
    pump.advance(3, LIMIT).await.unwrap();
    pump
}

/// Installs the crypto provider and a test log subscriber (RUST_LOG).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// Namespaces x, y, z with pods a, b, c each, round robin over the nodes, every pod
/// listening on TCP and UDP 80 and 81 (named ports `serve-<port>-<proto>`), of the IP
/// families of `stack`; wired by hand, or through `cni` when given. Nodes: one per entry
/// of `subnets` (node `n` on subnet `subnets[n]`, see `netlab::underlay`), or two on one
/// segment when empty.
pub async fn bench_of(cni: Option<CniWiring>, subnets: &[usize], stack: Stack) -> Topology {
    let subnets = if subnets.is_empty() {
        &[0, 0][..]
    } else {
        subnets
    };
    let mut builder = Topology::builder()
        .subnets(subnets)
        .stack(stack)
        .listen(&[80, 81]);
    if let Some(cni) = cni {
        builder = builder.wiring(cni);
    }
    let mut i = 0;
    for ns in ["x", "y", "z"] {
        for pod in ["a", "b", "c"] {
            let node = i % subnets.len();
            builder = builder.pod(PodSpec::new(ns, pod, node).serve_ports(&[80, 81]));
            i += 1;
        }
    }
    builder.build().await.unwrap()
}

/// What the tap has forwarded to the dataplane.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tapped {
    /// `Changes` events forwarded (including the one after each in-sync).
    pub changes: u64,
    /// In-sync events forwarded.
    pub in_syncs: u64,
    /// The revision of the last event forwarded.
    pub revision: Revision,
}

/// What the dataplane driver did with the calculation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Folded {
    /// `Changes` events folded.
    pub applies: u64,
    /// `desired()` calls (one per kernel pass).
    pub desired_calls: u64,
    /// `applies` when `desired()` was last called.
    pub applies_at_last_desired: u64,
}

/// The real calc, counting what the driver does with it.
struct CountingCalc {
    calc: Calc,
    folded: watch::Sender<Folded>,
}

impl DesiredSource for CountingCalc {
    fn apply(&mut self, updates: &[Update]) {
        self.calc.apply(updates);
        self.folded.send_modify(|f| f.applies += 1);
    }

    fn desired(&self) -> Desired {
        self.folded.send_modify(|f| {
            f.desired_calls += 1;
            f.applies_at_last_desired = f.applies;
        });
        self.calc.desired()
    }
}

async fn tap(
    mut from: mpsc::Receiver<SyncEvent>,
    to: mpsc::Sender<SyncEvent>,
    seen: watch::Sender<Tapped>,
) {
    while let Some(event) = from.recv().await {
        let marker = match &event {
            SyncEvent::Changes { revision, .. } => {
                seen.send_modify(|t| {
                    t.changes += 1;
                    t.revision = *revision;
                });
                None
            }
            SyncEvent::InSync { revision, .. } => {
                seen.send_modify(|t| t.revision = *revision);
                Some(*revision)
            }
            SyncEvent::Disconnected { .. } => None,
        };
        if to.send(event).await.is_err() {
            return;
        }
        if let Some(revision) = marker {
            seen.send_modify(|t| t.changes += 1);
            let empty = SyncEvent::Changes {
                revision,
                updates: Vec::new(),
            };
            if to.send(empty).await.is_err() {
                return;
            }
            seen.send_modify(|t| t.in_syncs += 1);
        }
    }
}

/// One node's agent.
pub struct Agent {
    /// The node's name.
    pub name: String,
    /// The node's index.
    pub node: usize,
    /// The sync client's counters.
    pub sync: Arc<SyncStatus>,
    /// The dataplane's counters.
    pub dataplane: Arc<DataplaneStatus>,
    /// What the tap forwarded.
    pub tapped: watch::Receiver<Tapped>,
    /// What the driver folded.
    pub folded: watch::Receiver<Folded>,
    stop: CancellationToken,
    /// The sync client, which hands back its mirror when stopped.
    sync_task: JoinHandle<Mirror>,
    tasks: Vec<JoinHandle<()>>,
    /// Stops everything also when the agent is dropped without [`Agent::stop`] (a
    /// failed test): the sync thread of a node namespace must not outlive the rig.
    _guard: DropGuard,
}

impl Agent {
    /// Waits until the dataplane has folded every event the tap forwarded so far and
    /// finished the kernel pass after the last fold.
    pub async fn settled(&self) {
        let (mut tapped, mut folded) = (self.tapped.clone(), self.folded.clone());
        let mut passes = self.dataplane.passes.subscribe();
        let wait = async {
            loop {
                let (t, f, p) = (
                    *tapped.borrow_and_update(),
                    *folded.borrow_and_update(),
                    *passes.borrow_and_update(),
                );
                if f.applies_at_last_desired >= t.changes
                    && p >= f.desired_calls
                    && f.desired_calls > 0
                {
                    return;
                }
                tokio::select! {
                    _ = tapped.changed() => {}
                    _ = folded.changed() => {}
                    _ = passes.changed() => {}
                }
            }
        };
        let done = tokio::time::timeout(LIMIT, wait).await;
        assert!(
            done.is_ok(),
            "{}: dataplane never settled: tapped {:?}, folded {:?}, passes {}",
            self.name,
            *self.tapped.borrow(),
            *self.folded.borrow(),
            *self.dataplane.passes.borrow()
        );
    }

    /// Waits until the tap forwarded `n` in-syncs in total (and the marker after the
    /// last), then until the dataplane settled.
    pub async fn synced(&self, n: u64) {
        let mut tapped = self.tapped.clone();
        // `.is_ok()` at once: the watch's read guard must not outlive the wait (held
        // across the next await it would block the tap's writer, and the runtime).
        let waited = tokio::time::timeout(LIMIT, tapped.wait_for(|t| t.in_syncs >= n))
            .await
            .is_ok();
        assert!(waited, "{}: never in sync #{n}", self.name);
        self.settled().await;
    }

    /// Waits until the tap forwarded an event at `revision` or later, then until the
    /// dataplane settled.
    pub async fn reached(&self, revision: Revision) {
        let mut tapped = self.tapped.clone();
        let waited = tokio::time::timeout(LIMIT, tapped.wait_for(|t| t.revision >= revision))
            .await
            .is_ok();
        assert!(
            waited,
            "{}: sync at {}, tap at {}, wanted {revision}",
            self.name,
            *self.sync.applied.borrow(),
            self.tapped.borrow().revision
        );
        self.settled().await;
    }

    /// Stops the sync client and the dataplane, waits for both, and returns the sync
    /// client's mirror as it stood then.
    pub async fn stop(self) -> Mirror {
        self.stop.cancel();
        let mirror = self.sync_task.await.unwrap();
        for task in self.tasks {
            task.await.unwrap();
        }
        mirror
    }
}

/// Runs the sync client on a dedicated thread inside `netns`, on a runtime of its own:
/// every socket it opens (the connection to typha) lives in that namespace.
fn run_sync_in(
    netns: &str,
    sync: SyncClient,
    events: mpsc::Sender<SyncEvent>,
    stop: CancellationToken,
) -> JoinHandle<Mirror> {
    let path = netlab::netns::netns_path(netns);
    let (done, mirror) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("sync-{netns}"))
        .spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = done.send(runtime.block_on(sync.run(events, stop)).unwrap());
        })
        .unwrap();
    tokio::spawn(async move { mirror.await.expect("the sync thread failed") })
}

/// A TCP relay: a listener inside one namespace whose connections are forwarded to
/// `target`, dialled from the test process's own namespace (typha's loopback address).
/// When the target refuses, the accepted connection is closed.
struct Relay {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(netns: &str, ip: Ipv4Addr, port: u16, target: SocketAddr) -> Relay {
        let listener = netlab::flow::bind(netns, ip, port).await.unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            // Dropped (aborting every open relay) when the relay stops.
            let mut open = JoinSet::new();
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        open.spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(target).await else {
                                return;
                            };
                            let _ = inbound.set_nodelay(true);
                            let _ = outbound.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        });
                    }
                    Some(_) = open.join_next(), if !open.is_empty() => {}
                }
            }
        });
        Relay { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// How to build the rig.
#[derive(Clone, Debug)]
pub struct RigConfig {
    /// The agents' mode.
    pub mode: CalcMode,
    /// The dataplanes' periodic refresh.
    pub refresh: Duration,
    /// Agents reach typha from inside their node namespace, through [`RELAY_IP`] (see
    /// the module docs); otherwise from the test's namespace on loopback.
    pub typha_via_nodes: bool,
    /// How often typha pings each agent.
    pub ping_interval: Duration,
    /// An agent ends a session after this long without a frame (typha's pings included).
    pub read_timeout: Duration,
    /// Bound on an agent's connection setup.
    pub connect_timeout: Duration,
    /// Wire the bench's pods through this CNI plugin instead of by hand.
    pub cni: Option<CniWiring>,
    /// Interface prefixes of typha's conversion (the first) and the agents' calc.
    pub interface_prefixes: netmodel::InterfacePrefixes,
    /// The subnet of each node (see [`bench_of`]); empty: two nodes on one segment.
    pub subnets: Vec<usize>,
    /// The IP families of nodes and pods.
    pub stack: Stack,
    /// The agents' host endpoint settings (failsafe ports, automatic host endpoints).
    pub hosts: HostConfig,
}

impl Default for RigConfig {
    fn default() -> Self {
        let sync = SyncConfig::new("defaults", Vec::new());
        RigConfig {
            mode: CalcMode::Networking,
            refresh: Duration::from_secs(600),
            typha_via_nodes: false,
            ping_interval: ServerConfig::default().ping_interval,
            read_timeout: sync.read_timeout,
            connect_timeout: sync.connect_timeout,
            cni: None,
            interface_prefixes: Default::default(),
            subnets: Vec::new(),
            stack: Stack::V4,
            hosts: HostConfig::default(),
        }
    }
}

/// The whole path on the bench.
pub struct Rig {
    /// The bench.
    pub topo: Topology,
    /// The API.
    pub sim: KubeSim,
    /// Typha, while running.
    pub typha: Option<Running>,
    /// Typha's gRPC address (kept across restarts).
    pub typha_addr: SocketAddr,
    /// The development PKI (kept across restarts).
    pub pki: DevPki,
    /// One agent per node (`None` while stopped).
    pub agents: Vec<Option<Agent>>,
    /// The pods and namespaces as the API has them (the oracle's view).
    pub cluster: netlab::Cluster,
    /// Policies currently in the API.
    pub policies: Vec<Policy>,
    /// The relay to typha in the switch namespace (with `typha_via_nodes`).
    relay: Option<Relay>,
    config: RigConfig,
}

async fn start_typha(
    sim: &KubeSim,
    pki: &DevPki,
    listen: SocketAddr,
    config: &RigConfig,
) -> Running {
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    let identity = PeerIdentity::with_cn(DEFAULT_CLIENT_CN);
    let options = TyphaOptions {
        listen,
        health_listen: None,
        transport: Transport::Tls(server_config(&pki.server_material(), &identity).unwrap()),
        server: ServerConfig {
            ping_interval: config.ping_interval,
            ..ServerConfig::default()
        },
        ops: typha::app::OpsConfig::default(),
        hub: HubConfig::default(),
        upstream: Upstream::Kube {
            client,
            config: UpstreamConfig {
                interface_prefix: config.interface_prefixes.primary().to_string(),
                ..UpstreamConfig::default()
            },
        },
        metrics: None,
    };
    let typha = typha::app::start(options).await.unwrap();
    tokio::time::timeout(LIMIT, typha.hub.wait_in_sync())
        .await
        .expect("typha never in sync");
    typha
}

impl Rig {
    /// Builds the bench, the API, typha and the agents, and waits until every agent's
    /// dataplane applied the initial state.
    pub async fn start(config: RigConfig) -> Rig {
        init();
        let topo = bench_of(config.cni.clone(), &config.subnets, config.stack).await;
        let sim = KubeSim::start(kube_sim::Config::default()).await.unwrap();
        for obj in topology_objects(&topo) {
            sim.store().upsert_object(obj).unwrap();
        }
        let pki = DevPki::generate().unwrap();
        let typha = start_typha(&sim, &pki, SocketAddr::from(([127, 0, 0, 1], 0)), &config).await;
        let relay = if config.typha_via_nodes {
            topo.add_external_address(RELAY_IP).await.unwrap();
            let switch = topo.switch_netns().to_string();
            Some(Relay::start(&switch, RELAY_IP, RELAY_PORT, typha.grpc_addr).await)
        } else {
            None
        };
        let mut rig = Rig {
            cluster: topo.cluster(),
            typha_addr: typha.grpc_addr,
            typha: Some(typha),
            agents: Vec::new(),
            topo,
            sim,
            pki,
            policies: Vec::new(),
            relay,
            config,
        };
        for n in 0..rig.topo.nodes().len() {
            let agent = rig.spawn_agent(n);
            rig.agents.push(Some(agent));
        }
        for agent in rig.agents() {
            agent.synced(1).await;
        }
        rig
    }

    /// The running agents.
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter().flatten()
    }

    /// Node `n`'s running agent.
    pub fn agent(&self, n: usize) -> &Agent {
        self.agents[n].as_ref().expect("agent stopped")
    }

    /// The sync settings of node `name`'s agent: typha's address (or the relay's), mutual
    /// TLS, quick reconnects, the configured timeouts.
    pub fn sync_config(&self, name: &str) -> SyncConfig {
        let addr = if self.config.typha_via_nodes {
            SocketAddr::from((RELAY_IP, RELAY_PORT))
        } else {
            self.typha_addr
        };
        let mut sync = SyncConfig::new(name, vec![addr.to_string()]);
        let identity = PeerIdentity::with_cn(DEFAULT_SERVER_CN);
        sync.tls = Some(client_config(&self.pki.client_material(), &identity).unwrap());
        sync.backoff_min = Duration::from_millis(20);
        sync.backoff_max = Duration::from_millis(200);
        sync.read_timeout = self.config.read_timeout;
        sync.connect_timeout = self.config.connect_timeout;
        sync
    }

    /// Starts an agent for node `n` (a fresh sync client, calc and dataplane).
    pub fn spawn_agent(&self, n: usize) -> Agent {
        let node = &self.topo.nodes()[n];
        let sync = SyncClient::new(self.sync_config(&node.name));
        let sync_status = sync.status();
        let status = Arc::new(DataplaneStatus::default());
        let (sync_tx, sync_rx) = mpsc::channel(256);
        let (tx, rx) = mpsc::channel(256);
        let (tapped_tx, tapped) = watch::channel(Tapped::default());
        let (folded_tx, folded) = watch::channel(Folded::default());
        let calc = CountingCalc {
            calc: Calc::with_hosts(
                CalcConfig {
                    node_name: node.name.clone(),
                    mode: self.config.mode,
                    cluster_cidrs: vec![CLUSTER_CIDR.to_string(), CLUSTER_CIDR_V6.to_string()],
                    interface_prefixes: self.config.interface_prefixes.clone(),
                },
                self.config.hosts.clone(),
            ),
            folded: folded_tx,
        };
        let config = DataplaneConfig {
            netns: Some(node.netns.clone()),
            refresh_interval: self.config.refresh,
            ..DataplaneConfig::default()
        };
        let stop = CancellationToken::new();
        let dp = dataplane::run(config, calc, rx, status.clone(), stop.clone());
        let sync_task = if self.config.typha_via_nodes {
            run_sync_in(&node.netns, sync, sync_tx, stop.clone())
        } else {
            let token = stop.clone();
            tokio::spawn(async move { sync.run(sync_tx, token).await.unwrap() })
        };
        let name = node.name.clone();
        let tasks = vec![
            tokio::spawn(tap(sync_rx, tx, tapped_tx)),
            tokio::spawn(async move {
                if let Err(e) = dp.await {
                    panic!("dataplane of {name} stopped: {e}");
                }
            }),
        ];
        Agent {
            name: node.name.clone(),
            node: n,
            sync: sync_status,
            dataplane: status,
            tapped,
            folded,
            _guard: stop.clone().drop_guard(),
            stop,
            sync_task,
            tasks,
        }
    }

    /// Stops node `n`'s agent; returns its sync client's mirror.
    pub async fn stop_agent(&mut self, n: usize) -> Mirror {
        let agent = self.agents[n].take().expect("agent already stopped");
        agent.stop().await
    }

    /// Cuts node `n` off from typha inside the node's namespace (needs
    /// [`RigConfig::typha_via_nodes`]): every packet to or from the relay is dropped in
    /// the raw table (before conntrack; the agent owns no raw rules). The rules go with
    /// the namespace if the test fails.
    pub async fn partition(&self, n: usize) {
        assert!(
            self.config.typha_via_nodes,
            "partition needs typha_via_nodes"
        );
        for rule in partition_rules() {
            let mut args = vec!["-t", "raw", "-I"];
            args.extend(rule.iter().map(String::as_str));
            node_exec(self, n, "iptables", &args).await;
        }
    }

    /// Removes what [`Rig::partition`] added.
    pub async fn heal(&self, n: usize) {
        for rule in partition_rules() {
            let mut args = vec!["-t", "raw", "-D"];
            args.extend(rule.iter().map(String::as_str));
            node_exec(self, n, "iptables", &args).await;
        }
    }

    /// Stops typha (every client gets goodbye and then finds nobody listening).
    pub async fn stop_typha(&mut self) {
        let typha = self.typha.take().expect("typha already stopped");
        typha.shutdown().await.unwrap();
    }

    /// Starts typha again on the same address with the same certificates.
    pub async fn restart_typha(&mut self) {
        assert!(self.typha.is_none(), "typha is running");
        let typha = start_typha(&self.sim, &self.pki, self.typha_addr, &self.config).await;
        assert_eq!(typha.grpc_addr, self.typha_addr);
        self.typha = Some(typha);
    }

    fn running_typha(&self) -> &Running {
        self.typha.as_ref().expect("typha stopped")
    }

    /// Typha's current revision.
    pub fn revision(&self) -> Revision {
        self.running_typha().hub.revision()
    }

    /// Writes `obj` and/or deletes the policy `delete`, then waits until typha's hub has
    /// a different digest (each such write changes the model, and nothing else writes).
    /// Not a newer revision: a bookmark's progress batch (kube-sim sends them every 5 s)
    /// is a new revision with the same model.
    pub async fn write(&self, obj: Option<Json>, delete: Option<&Policy>) {
        let hub = &self.running_typha().hub;
        let before = hub.digest();
        if let Some(obj) = obj {
            self.sim.store().upsert_object(obj).unwrap();
        }
        if let Some(p) = delete {
            self.sim
                .store()
                .delete_object(
                    "networking.k8s.io/v1",
                    "NetworkPolicy",
                    &p.namespace,
                    &p.name,
                )
                .unwrap();
        }
        let mut rx = hub.subscribe();
        tokio::time::timeout(LIMIT, rx.wait_for(|_| hub.digest() != before))
            .await
            .expect("typha did not see the write")
            .unwrap();
    }

    /// Waits until every running agent's dataplane applied typha's current revision.
    pub async fn converge(&self) {
        let target = self.revision();
        for agent in self.agents() {
            agent.reached(target).await;
        }
    }

    /// Makes `policies` the API's policies (deleting the others), then converges.
    pub async fn set_policies(&mut self, policies: Vec<Policy>) {
        self.put_policies(policies).await;
        self.converge().await;
    }

    /// Makes `policies` the API's policies (deleting the others) and waits until typha
    /// has them, not for the agents.
    pub async fn put_policies(&mut self, policies: Vec<Policy>) {
        let old = std::mem::take(&mut self.policies);
        for p in old.iter().filter(|o| {
            !policies
                .iter()
                .any(|n| n.namespace == o.namespace && n.name == o.name)
        }) {
            self.write(None, Some(p)).await;
        }
        for p in policies.iter().filter(|n| !old.contains(n)) {
            self.write(Some(policy_json(p)), None).await;
        }
        self.policies = policies;
    }

    /// Adds a label to a namespace in the API (and the oracle's view), then converges.
    pub async fn label_namespace(&mut self, namespace: &str, key: &str, value: &str) {
        let labels = self.cluster.namespaces.get_mut(namespace).unwrap();
        labels.insert(key.into(), value.into());
        let obj = netlab::kube::namespace_json(namespace, labels);
        self.write(Some(obj), None).await;
        self.converge().await;
    }

    /// The oracle's matrix for the current policies.
    pub fn expected(&self) -> netlab::Matrix {
        netlab::expected(&self.cluster, &self.policies, &SERVICES)
    }

    /// Probes everything against `want`; returns a failure report, if any.
    pub async fn check_against(&self, case: &str, want: &netlab::Matrix) -> Option<String> {
        let seen = self.topo.probe(&SERVICES, PROBE_LIMIT).await.unwrap();
        if want.mismatches(&seen).is_empty() {
            return None;
        }
        let mut report = format!(
            "case {case}: probes differ from the oracle\n{}",
            want.render_diff(&seen)
        );
        report.push_str(&self.diagnostics().await);
        Some(report)
    }

    /// Probes everything against the oracle; returns a failure report, if any.
    pub async fn check(&self, case: &str) -> Option<String> {
        self.check_against(case, &self.expected()).await
    }

    /// Every node's agent rules (`cali` lines of iptables-save) and routes.
    pub async fn diagnostics(&self) -> String {
        let mut report = String::new();
        for (n, node) in self.topo.nodes().iter().enumerate() {
            let rules = self
                .topo
                .iptables_save(n)
                .await
                .unwrap_or_else(|e| e.to_string());
            let routes = self.topo.routes(n).await.unwrap_or_else(|e| e.to_string());
            report.push_str(&format!("--- {} iptables-save (cali lines)\n", node.name));
            for line in rules.lines().filter(|l| l.contains("cali")) {
                report.push_str(line);
                report.push('\n');
            }
            report.push_str(&format!("--- {} routes\n{routes}", node.name));
        }
        report
    }

    /// A last probe check (`case`), then [`Rig::stop`]; fails with every mismatch
    /// collected in `failures` and this check.
    pub async fn finish(self, mut failures: Vec<String>, case: &str) {
        failures.extend(self.check(case).await);
        self.stop().await;
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Stops everything (the bench's namespaces go when `topo` drops, also on panic).
    pub async fn stop(mut self) {
        for agent in self.agents.iter_mut().filter_map(Option::take) {
            agent.stop().await;
        }
        if let Some(relay) = self.relay.take() {
            relay.stop().await;
        }
        if let Some(typha) = self.typha.take() {
            typha.shutdown().await.unwrap();
        }
        self.sim.shutdown().await;
        drop(self.topo);
    }
}

/// Runs `program args` inside node `n`'s namespace and returns its stdout.
pub async fn node_exec(rig: &Rig, n: usize, program: &str, args: &[&str]) -> String {
    netlab::cmd::exec_in(&rig.topo.nodes()[n].netns, program, args)
        .await
        .unwrap()
}

/// The agent's rule lines (`-A <chain> ...`) of one table of node `n`, in order, each
/// with its packet counter (`<program> -c -t <table>`): every line that names a `cali`
/// chain or jumps to one.
pub async fn agent_rules(rig: &Rig, n: usize, program: &str, table: &str) -> Vec<(String, u64)> {
    let save = node_exec(rig, n, program, &["-c", "-t", table]).await;
    let mut out = Vec::new();
    for line in save.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let (count, rule) = rest.split_once(']').unwrap();
        let rule = rule.trim();
        if rule.contains("cali") {
            let packets: u64 = count.split(':').next().unwrap().parse().unwrap();
            out.push((rule.to_string(), packets));
        }
    }
    out
}

/// The rule specs (chain first) that cut a node off from [`RELAY_IP`].
fn partition_rules() -> [Vec<String>; 2] {
    let relay = RELAY_IP.to_string();
    [
        ["PREROUTING", "-s", &relay, "-j", "DROP"]
            .map(String::from)
            .to_vec(),
        ["OUTPUT", "-d", &relay, "-j", "DROP"]
            .map(String::from)
            .to_vec(),
    ]
}
