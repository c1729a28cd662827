//! The felix-client command line: parse and validate, pick the state source (typha, or
//! the API itself in local mode), run the sync, hand its events to the dataplane, drain
//! on signal. A library function so that the binary and multi-call tools share it.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use typha::tls::{TlsMaterial, TransportChoice, client_config};
use typha::upstream::UpstreamConfig;

use crate::config::{self, Cli, Config, Dataplane, Source};
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
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("felix-client: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.validate()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .try_init()
        .ok();
    if config.dataplane == Dataplane::Iptables {
        anyhow::bail!("--dataplane iptables is not implemented yet; use --dataplane none");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(sync(config))
}

async fn sync(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(typha::app::stop_on_signal(shutdown.clone()));
    let (tx, rx) = mpsc::channel(64);
    let dataplane = tokio::spawn(log_dataplane(rx, config.mode));
    tracing::info!(node = config.node_name, mode = ?config.mode, "felix-client starting");
    let mirror = match config.source {
        Source::Typha {
            addresses,
            transport,
        } => {
            let mut sync = SyncConfig::new(config.node_name.clone(), addresses);
            sync.tls = match transport {
                TransportChoice::Plaintext => {
                    tracing::warn!(
                        "INSECURE: talking to typha without TLS; the state can be read and forged"
                    );
                    None
                }
                TransportChoice::Tls(files, identity) => {
                    Some(client_config(&TlsMaterial::load(&files)?, &identity)?)
                }
            };
            sync.connect_timeout = config.connect_timeout;
            sync.read_timeout = config.read_timeout;
            sync.backoff_min = config.backoff_min;
            sync.backoff_max = config.backoff_max;
            SyncClient::new(sync).run(tx, shutdown).await?
        }
        Source::Local { kubeconfig } => {
            let client = typha::upstream::kube_client(kubeconfig.as_deref()).await?;
            let status = Arc::new(SyncStatus::default());
            run_local(client, UpstreamConfig::default(), tx, status, shutdown).await?
        }
    };
    let _ = dataplane.await;
    tracing::info!(keys = mirror.len(), revision = %mirror.revision(), "felix-client stopped");
    Ok(())
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
