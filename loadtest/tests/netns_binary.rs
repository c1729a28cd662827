//! The real felix-client binary on the netns bench (root only): proves the command-line
//! wiring end to end (`--netns`, `--dataplane iptables`, `--mode networking`,
//! `--cluster-cidr`, `--typha-addr` with the `--tls-*` files) against an in-process
//! typha watching kube-sim.
//!
//! The policy is in the API before the agents start, so their first kernel pass holds
//! it. A separate process offers no in-process signal, so the test polls the kernel
//! (bounded) until each node holds every route the agent must write (routes are the
//! last stage of a pass, after ipsets and iptables), then probes every pod pair against
//! the NetworkPolicy oracle. The agents are stopped with SIGTERM and must exit cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edge::certs::{DEFAULT_CLIENT_CN, DEFAULT_SERVER_CN, DevPki};
use edge::tls::{PeerIdentity, server_config};
use netlab::kube::{policy_json, topology_objects};
use netlab::topology::CLUSTER_CIDR;
use netlab::{LabelSelector as Sel, Peer, PodSpec, Policy, PolicyPort, Protocol, Rule, Topology};
use typha::app::{TyphaOptions, Upstream};
use typha::server::{ServerConfig, Transport};

const SERVICES: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
];
const LIMIT: Duration = Duration::from_secs(60);
/// Between kernel polls (no signal crosses the process boundary).
const POLL: Duration = Duration::from_millis(50);

/// A scratch directory removed on drop (also on panic).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An agent process, killed on drop unless it was stopped.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test with the agent's log if it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("felix-client exited early ({status}):\n{}", self.log());
        }
    }

    /// SIGTERM, then the exit status must be success.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "felix-client exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_agent(node: &netlab::NodeInfo, typha: SocketAddr, certs: &Path) -> AgentProcess {
    let log = certs.join(format!("{}.log", node.name));
    let file = std::fs::File::create(&log).unwrap();
    let path = |name: &str| certs.join(name).to_string_lossy().into_owned();
    // The multi-call load-test binary runs the real felix-client command line.
    let child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("felix-client")
        .args(["--node-name", &node.name])
        .args(["--typha-addr", &typha.to_string()])
        .args(["--tls-ca", &path("ca.crt")])
        .args(["--tls-cert", &path("felix.crt")])
        .args(["--tls-key", &path("felix.key")])
        .args(["--typha-cn", DEFAULT_SERVER_CN])
        .args(["--dataplane", "iptables", "--mode", "networking"])
        .args(["--cluster-cidr", CLUSTER_CIDR])
        .args(["--netns", &node.netns])
        .args(["--health-listen", "none", "--log", "info"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    AgentProcess { child, log }
}

/// The routes node `n` must hold with the agent's protocol (networking mode).
fn wanted_routes(topo: &Topology, n: usize) -> Vec<String> {
    let mut want: Vec<String> = topo
        .pods()
        .iter()
        .filter(|p| p.node == n)
        .map(|p| format!("{} dev {} ", p.ip, p.iface))
        .collect();
    for (m, other) in topo.nodes().iter().enumerate() {
        if m != n {
            want.push(format!("{} via {} ", other.pod_cidr, other.ip));
        }
    }
    want
}

/// Polls node `n`'s kernel until it holds every wanted route and a policy chain.
async fn wait_programmed(topo: &Topology, n: usize, agent: &mut AgentProcess) {
    let netns = topo.nodes()[n].netns.clone();
    let proto = felix_client::dataplane::ROUTE_PROTOCOL.to_string();
    let want = wanted_routes(topo, n);
    let poll = async {
        loop {
            agent.assert_running();
            let routes = netlab::cmd::ip_in(&netns, &["-4", "route", "show", "proto", &proto])
                .await
                .unwrap()
                .replace('\n', " \n");
            let rules = netlab::cmd::exec_in(&netns, "iptables-save", &["-t", "filter"])
                .await
                .unwrap();
            if want.iter().all(|w| routes.contains(w.as_str())) && rules.contains(":cali-pi-") {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    if tokio::time::timeout(LIMIT, poll).await.is_err() {
        panic!("node {n} never programmed; agent log:\n{}", agent.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn felix_client_binary_programs_node_namespaces() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = Topology::builder().nodes(2).listen(&[80, 81]);
    let mut i = 0;
    for ns in ["x", "y", "z"] {
        for pod in ["a", "b", "c"] {
            builder = builder.pod(PodSpec::new(ns, pod, i % 2).serve_ports(&[80, 81]));
            i += 1;
        }
    }
    let topo = builder.build().await.unwrap();
    let scratch = Scratch(std::env::temp_dir().join(format!("netns-binary-{}", topo.id())));
    let pki = DevPki::generate().unwrap();
    pki.write_to_dir(&scratch.0, false).unwrap();

    // Ingress to x only from namespace y, on TCP 80.
    let policy = Policy::new("x", "from-y-tcp-80", Sel::all()).ingress(
        Rule::from_peers(vec![Peer::namespaces(Sel::label("ns", "y"))])
            .with_ports(vec![PolicyPort::number(Protocol::Tcp, 80)]),
    );
    let sim = kube_sim::KubeSim::start(kube_sim::Config::default())
        .await
        .unwrap();
    for obj in topology_objects(&topo) {
        sim.store().upsert_object(obj).unwrap();
    }
    sim.store().upsert_object(policy_json(&policy)).unwrap();
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    let typha = typha::app::start(TyphaOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        health_listen: None,
        transport: Transport::Tls(
            server_config(
                &pki.server_material(),
                &PeerIdentity::with_cn(DEFAULT_CLIENT_CN),
            )
            .unwrap(),
        ),
        server: ServerConfig::default(),
        ops: typha::app::OpsConfig::default(),
        hub: typha::hub::HubConfig::default(),
        upstream: Upstream::Kube {
            client,
            config: netmodel::UpstreamConfig::default(),
        },
        metrics: None,
    })
    .await
    .unwrap();
    tokio::time::timeout(LIMIT, typha.hub.wait_in_sync())
        .await
        .expect("typha never in sync");

    let mut agents: Vec<AgentProcess> = topo
        .nodes()
        .iter()
        .map(|node| spawn_agent(node, typha.grpc_addr, &scratch.0))
        .collect();
    for (n, agent) in agents.iter_mut().enumerate() {
        wait_programmed(&topo, n, agent).await;
    }
    let want = netlab::expected(&topo.cluster(), &[policy], &SERVICES);
    assert!(want.reachable() < want.len(), "the policy blocks nothing");
    let seen = topo
        .probe(&SERVICES, Duration::from_millis(300))
        .await
        .unwrap();
    let mismatches = want.mismatches(&seen);
    let report = if mismatches.is_empty() {
        String::new()
    } else {
        let mut r = want.render_diff(&seen);
        for (n, agent) in agents.iter().enumerate() {
            r.push_str(&format!("--- node {n} agent log\n{}", agent.log()));
            r.push_str(&topo.iptables_save(n).await.unwrap_or_default());
        }
        r
    };
    for agent in agents {
        agent.stop();
    }
    typha.shutdown().await.unwrap();
    sim.shutdown().await;
    drop(topo);
    assert!(
        mismatches.is_empty(),
        "probes differ from the oracle:\n{report}"
    );
}
