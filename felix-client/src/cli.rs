//! The felix-client command line: parse and validate, pick the state source (typha at
//! fixed addresses or discovered through a Service, or the API itself in local mode),
//! serve health and metrics, run the sync, hand its events to the dataplane, drain on
//! signal. A library function so that the binary and multi-call tools share it.
//!
//! The pieces are separate functions ([`typha_sync_config`], [`start_health`], the
//! dataplane consumer) so that another dataplane plugs in at one place: whatever
//! consumes the `SyncEvent` channel.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use edge::discovery::Discovery;
use edge::tls::TransportChoice;
use metrics_exporter_prometheus::PrometheusHandle;
use netmodel::UpstreamConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::calc::{Calc, CalcConfig, CalcMode};
use crate::config::{self, Cli, Config, Dataplane, Mode, Source, TyphaTarget};
use crate::dataplane::{self, DataplaneConfig, DataplaneStatus};
use crate::discovery::TyphaSource;
use crate::health::{self, HealthServer};
use crate::local::run_local;
use crate::{SyncClient, SyncConfig, SyncEvent, SyncStatus};

/// Runs the felix-client command line with `args` (the first is the program name) and
/// returns the process exit code. Installs the ring crypto provider.
pub fn run_cli<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.get(1).is_some_and(|a| a == "cleanup") {
        return crate::cleanup_cli::run(args.into_iter().skip(1));
    }
    let cli: Cli = match edge::cli::parse(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    edge::cli::exit_code("felix-client", run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.validate()?;
    edge::logging::init(&cli.observe.log, cli.observe.log_format).context("--log")?;
    let scrape = cli.observe.metrics_listen.0;
    let metrics = match config.health_listen.or(scrape) {
        Some(_) => Some(health::install_recorder()?),
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(sync(config, metrics, scrape))
}

async fn sync(
    config: Config,
    metrics: Option<PrometheusHandle>,
    scrape: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(edge::signal::stop_on_signal(shutdown.clone()));
    let status = Arc::new(SyncStatus::default());
    if let (Some(listen), Some(handle)) = (scrape, &metrics) {
        edge::metrics::serve(listen, handle.clone(), shutdown.clone()).await?;
    }
    let health = start_health(&config, status.clone(), metrics, shutdown.clone()).await?;
    let (tx, rx) = mpsc::channel(64);
    let dataplane = start_dataplane(&config, rx, &shutdown).await?;
    tracing::info!(node = config.node_name, mode = ?config.mode, "felix-client starting");
    let result = match config.source {
        Source::Typha {
            ref target,
            ref transport,
        } => {
            let sync = typha_sync_config(&config, target, transport, &shutdown).await?;
            SyncClient::with_status(sync, status)
                .run(tx, shutdown.clone())
                .await
                .map_err(anyhow::Error::from)
        }
        Source::Local { ref kubeconfig } => {
            let client = netmodel::kube_client(kubeconfig.as_deref()).await?;
            let upstream = UpstreamConfig {
                interface_prefix: config.interface_prefixes.primary().to_string(),
                ..UpstreamConfig::default()
            };
            run_local(client, upstream, tx, status, shutdown.clone())
                .await
                .map_err(anyhow::Error::from)
        }
    };
    // Whatever ended the sync ends the agent: stop the health server too.
    shutdown.cancel();
    if let Err(join) = dataplane.await {
        tracing::error!(%join, "the dataplane task failed");
    }
    if let Some(health) = health {
        health.join().await;
    }
    let mirror = result?;
    tracing::info!(keys = mirror.len(), revision = %mirror.revision(), "felix-client stopped");
    Ok(())
}

/// Starts the consumer of the sync events: `--dataplane none` logs them; iptables opens
/// the dataplane first (refusing to start when it cannot be programmed) and drives it
/// from the calculation.
async fn start_dataplane(
    config: &Config,
    rx: mpsc::Receiver<SyncEvent>,
    shutdown: &CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let calc = match config.dataplane {
        Dataplane::None => return Ok(tokio::spawn(log_dataplane(rx, config.mode))),
        Dataplane::Iptables => Calc::with_hosts(
            CalcConfig {
                node_name: config.node_name.clone(),
                mode: match config.mode {
                    Mode::PolicyOnly => CalcMode::PolicyOnly,
                    Mode::Networking => CalcMode::Networking,
                },
                cluster_cidrs: config.cluster_cidrs.clone(),
                interface_prefixes: config.interface_prefixes.clone(),
            },
            config.hosts.clone(),
        ),
    };
    let dataplane_config = DataplaneConfig {
        netns: config.netns.clone(),
        refresh_interval: config.dataplane_refresh,
        ipv6: config.ipv6,
        iptables_backend: config.iptables_backend,
        ..DataplaneConfig::default()
    };
    // Opened before syncing (once: the iptables backend is resolved and the chains'
    // ownership checked here): refuse to start when another agent owns the chains or
    // the namespace cannot be programmed.
    let status = Arc::new(DataplaneStatus::default());
    let opened = dataplane::Dataplane::new(dataplane_config, status).await?;
    Ok(tokio::spawn(dataplane::drive(
        opened,
        calc,
        rx,
        shutdown.clone(),
    )))
}

/// The sync client's settings for typha mode: TLS, timeouts, and the candidate source
/// (fixed addresses, or a discovery watch started here and stopped with `shutdown`).
pub async fn typha_sync_config(
    config: &Config,
    target: &TyphaTarget,
    transport: &TransportChoice,
    shutdown: &CancellationToken,
) -> anyhow::Result<SyncConfig> {
    let source = match target {
        TyphaTarget::Addresses(addresses) => TyphaSource::fixed(addresses.clone()),
        TyphaTarget::Service {
            discovery,
            kubeconfig,
        } => {
            let client = netmodel::kube_client(kubeconfig.as_deref())
                .await
                .with_context(|| format!("Kubernetes access for --typha-service ({discovery})"))?;
            tracing::info!(%discovery, "discovering typha through EndpointSlices");
            TyphaSource::discovered(Discovery::spawn(client, discovery.clone(), shutdown))
        }
    };
    let mut sync = SyncConfig::with_source(config.node_name.clone(), source);
    if *transport == TransportChoice::Plaintext {
        tracing::warn!("INSECURE: talking to typha without TLS; the state can be read and forged");
    }
    sync.tls = transport.client_config()?;
    sync.connect_timeout = config.connect_timeout;
    sync.read_timeout = config.read_timeout;
    sync.backoff_min = config.backoff_min;
    sync.backoff_max = config.backoff_max;
    sync.start_timeout = config.start_timeout;
    Ok(sync)
}

/// Serves /livez, /readyz (ready while `status` is in sync) and /metrics on
/// `--health-listen`, unless disabled.
pub async fn start_health(
    config: &Config,
    status: Arc<SyncStatus>,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<HealthServer>> {
    let Some(listen) = config.health_listen else {
        return Ok(None);
    };
    let ready = health::sync_ready(status);
    Ok(Some(health::serve(listen, ready, metrics, shutdown).await?))
}

/// `--dataplane none`: programs nothing, logs what it would do.
async fn log_dataplane(mut events: mpsc::Receiver<SyncEvent>, mode: config::Mode) {
    while let Some(event) = events.recv().await {
        match event {
            SyncEvent::Changes {
                updates: changes, ..
            } => {
                tracing::info!(
                    count = changes.len(),
                    ?mode,
                    "dataplane none: would apply changes"
                );
                for change in &changes {
                    let action = if change.value.is_some() {
                        "set"
                    } else {
                        "remove"
                    };
                    tracing::debug!(key = ?change.key, action, "dataplane none: would program");
                }
            }
            SyncEvent::InSync {
                revision,
                digest,
                keys,
            } => {
                tracing::info!(%revision, %digest, keys, "in sync: dataplane none would now do a full resync");
            }
            SyncEvent::Disconnected { reason } => {
                tracing::warn!(reason, "sync disconnected; keeping state")
            }
        }
    }
}
