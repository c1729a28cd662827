//! The world a conformance test runs in: kube-sim in this process (the datastore, seeded
//! with kube-sim's own synthetic cluster), the typha BINARY as a child process (killed by
//! PID on drop) with the development PKI written by `typha certs`, and a scratch dir.
//!
//! Only the binary is exercised, only through the wire (and its command line); a binary
//! older than typha's sources is refused, so a test never runs a stale server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use conformance::{ConformanceError, SyncStream, Synced, pb};
use kube_sim::KubeSim;
use kube_sim::seed::{SeedConfig, seed};
use testkit::Scratch;
use tokio::process::Child;

/// Every wait's deadline: it only turns a hang into a failure.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Every capability of version 2.
pub const ALL: [pb::Capability; 4] = [
    pb::Capability::SnapshotZstd,
    pb::Capability::Resume,
    pb::Capability::Digest,
    pb::Capability::ResourceVersions,
];

/// The typha binary of this workspace (`target/<profile>/typha`, beside this test's
/// directory). A workspace test run (`scripts/test`) builds it for typha's own tests;
/// alone, run `cargo build -p typha` first. A binary older than typha's sources is
/// refused rather than tested.
fn typha_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        // target/<profile>/deps/<this test> -> target/<profile>/typha
        let test = std::env::current_exe().unwrap();
        let exe = test.parent().unwrap().parent().unwrap().join("typha");
        let built = std::fs::metadata(&exe)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| panic!("{} is missing: run `cargo build -p typha`", exe.display()));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for dir in [
            "typha/src",
            "proto/src",
            "proto/proto",
            "cache/src",
            "netmodel/src",
            "edge/src",
        ] {
            if let Some(newer) = newer_than(&root.join(dir), built) {
                panic!(
                    "{} is older than {}: run `cargo build -p typha`",
                    exe.display(),
                    newer.display()
                );
            }
        }
        exe
    })
}

/// A file under `dir` modified after `time`, if any.
fn newer_than(dir: &Path, time: std::time::SystemTime) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = newer_than(&path, time) {
                return Some(found);
            }
        } else if entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > time)
        {
            return Some(path);
        }
    }
    None
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch dir with the PKI and the kubeconfig, and kube-sim serving a small cluster.
pub struct World {
    /// Removed on drop (also when the test fails).
    scratch: Scratch,
    pub sim: KubeSim,
    pub kubeconfig: PathBuf,
}

impl World {
    /// kube-sim with 2 nodes x 4 pods in 2 namespaces (every 4th pod host-networked), one
    /// Kubernetes NetworkPolicy per namespace, Calico's defaults; certificates from
    /// `typha certs`.
    pub async fn start(name: &str) -> World {
        let scratch = Scratch::new(&format!("conformance-{name}"));
        certs(scratch.path());
        let sim = KubeSim::start(kube_sim::Config {
            simulate_pods: false,
            ..Default::default()
        })
        .await
        .unwrap();
        let cluster = SeedConfig {
            nodes: 2,
            pods_per_node: 4,
            namespaces: 2,
            policies_per_namespace: 1,
            host_network_every: 4,
        };
        seed(sim.store(), &cluster).unwrap();
        let kubeconfig = scratch.path().join("kubeconfig");
        std::fs::write(&kubeconfig, sim.kubeconfig()).unwrap();
        World {
            scratch,
            sim,
            kubeconfig,
        }
    }

    /// Starts typha `name` with the common flags plus `extra`, and waits until it
    /// accepts connections.
    pub async fn typha(&self, name: &str, extra: &[&str]) -> Typha {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let file = |f: &str| self.dir().join(f).display().to_string();
        let log = self.dir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(typha_exe());
        command
            .arg("serve")
            .args(["--kubeconfig", &self.kubeconfig.display().to_string()])
            .args(["--listen", &grpc.to_string()])
            .args(["--health-listen", &health.to_string()])
            .args([
                "--tls-ca",
                &file("ca.crt"),
                "--tls-cert",
                &file("typha.crt"),
            ])
            .args([
                "--tls-key",
                &file("typha.key"),
                "--client-cn",
                "typha-client",
            ])
            .args(["--server-id", name, "--log", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut typha = Typha { grpc, child, log };
        typha.wait_listening().await;
        typha
    }

    /// The scratch directory (PKI, kubeconfig, logs).
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The legitimate client TLS configuration.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        let f = |n: &str| self.dir().join(n);
        conformance::tls_config(&f("ca.crt"), Some((&f("felix.crt"), &f("felix.key")))).unwrap()
    }

    /// Writes a pod (create or replace) in kube-sim.
    pub fn put(&self, object: serde_json::Value) {
        self.sim.store().upsert_object(object).unwrap();
    }
}

/// `typha certs --out dir`: a development CA, typha's and the client's certificates.
pub fn certs(dir: &Path) {
    let status = Command::new(typha_exe())
        .args(["certs", "--force", "--out"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "typha certs failed");
}

/// A typha process, SIGKILLed on drop (`kill_on_drop`).
pub struct Typha {
    pub grpc: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Typha {
    async fn wait_listening(&mut self) {
        let start = Instant::now();
        while tokio::net::TcpStream::connect(self.grpc).await.is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("typha exited ({status}):\n{}", self.log_tail());
            }
            assert!(start.elapsed() < LIMIT, "typha never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The end of typha's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM by PID: typha drains (goodbyes) and exits.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().expect("running").to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        within(self.child.wait()).await.unwrap()
    }

    /// A new connection and stream, synced with `hello` (`prior`: the mirror its resume
    /// position came from).
    pub async fn sync(
        &self,
        world: &World,
        hello: pb::ClientHello,
        prior: Option<conformance::Mirror>,
    ) -> Synced {
        let channel = conformance::connect(self.grpc, world.tls()).await.unwrap();
        let stream = SyncStream::open(&channel).await.unwrap();
        within(stream.sync(hello, prior))
            .await
            .unwrap_or_else(|e| panic!("sync failed: {e}\n{}", self.log_tail()))
    }
}

/// Awaits `f` within [`LIMIT`].
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

/// Applies batches until `done` holds for the mirror; returns the batches.
pub async fn batches_until(
    synced: &mut Synced,
    done: impl Fn(&conformance::Mirror) -> bool,
) -> Result<Vec<pb::DeltaBatch>, ConformanceError> {
    let mut seen = Vec::new();
    while !done(&synced.mirror) {
        seen.push(within(synced.stream.next_batch(&mut synced.mirror)).await?);
    }
    Ok(seen)
}

/// A running pod on `node` with `ip` (and labels `app=<app>`).
pub fn pod(namespace: &str, name: &str, node: &str, ip: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": "probe"}},
        "spec": {"nodeName": node, "serviceAccountName": "default",
                 "containers": [{"name": "c", "image": "i",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}
