//! The typha command line (`typha serve`, `typha certs`): parse, build, run, drain. A
//! library function so that the `typha` binary and multi-call tools (the load test runs
//! replicas as child processes of its own binary) share one entry point.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::app::{self, Running, TyphaOptions, Upstream};
use crate::config::{Cli, Command, ServeArgs};
use crate::hub::HubConfig;
use crate::server::Transport;
use anyhow::Context;
use edge::certs::DevPki;
use edge::discovery::{Discovery, DiscoveryConfig};
use edge::tls::{ReloadableServerTls, TlsFileWatcher, TlsMaterial, TransportChoice};
use metrics_exporter_prometheus::PrometheusHandle;
use netmodel::UpstreamConfig;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the typha command line with `args` (the first is the program name) and returns
/// the process exit code. Installs the ring crypto provider.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli: Cli = match edge::cli::parse(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Certs(args) => DevPki::generate()
            .and_then(|pki| pki.write_to_dir(&args.out, args.force))
            .map(|files| {
                for file in files {
                    println!("wrote {}", file.display());
                }
            })
            .map_err(anyhow::Error::from),
        Command::Serve(args) => serve(args),
    };
    edge::cli::exit_code("typha", result)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    edge::logging::init(&args.observe.log, args.observe.log_format).context("--log")?;
    let settings = args.validate()?;
    let (transport, tls_watcher) = server_transport(settings.transport)?;
    let metrics = crate::metrics::install()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let client = netmodel::kube_client(args.kubeconfig.as_deref()).await?;
        let options = TyphaOptions {
            listen: args.listen,
            health_listen: Some(args.health_listen),
            transport,
            server: settings.server,
            ops: settings.ops,
            hub: hub_config(&args),
            upstream: Upstream::Kube {
                client: client.clone(),
                config: upstream_config(&args),
            },
            metrics: Some(metrics.clone()),
        };
        let mut running = app::start(options).await?;
        running.spawn_bootstrap(client.clone(), args.cluster_cidr);
        let token = running.shutdown_token();
        if let Some(listen) = args.observe.metrics_listen.0 {
            edge::metrics::serve(listen, metrics.clone(), token.clone()).await?;
        }
        if let Some(watcher) = tls_watcher {
            tokio::spawn(watcher.run(args.tls_reload_interval, token.clone()));
        }
        tokio::spawn(metrics_upkeep(metrics, token.clone()));
        // Kept alive until exit: dropping it stops the EndpointSlice watch.
        let discovery = start_discovery(&args, client, &mut running, &token);
        run_until_signal(running).await?;
        drop(discovery);
        tracing::info!("typha stopped");
        Ok(())
    })
}

/// The server transport for `choice`, and for TLS the watcher that reloads the files.
fn server_transport(
    choice: TransportChoice,
) -> anyhow::Result<(Transport, Option<TlsFileWatcher>)> {
    Ok(match choice {
        TransportChoice::Plaintext => (Transport::Plaintext, None),
        TransportChoice::Tls(files, identity) => {
            let material = TlsMaterial::load(&files)?;
            let tls = ReloadableServerTls::new(&material, &identity)?;
            let transport = Transport::Tls(tls.config());
            (transport, Some(TlsFileWatcher::new(files, tls, material)))
        }
    })
}

/// The cache tuning from the flags.
fn hub_config(args: &ServeArgs) -> HubConfig {
    let mut hub = HubConfig::default();
    hub.cache.max_log_batches = args.history_batches;
    hub
}

/// The upstream watch tuning from the flags.
fn upstream_config(args: &ServeArgs) -> UpstreamConfig {
    UpstreamConfig {
        streaming_lists: args.streaming_lists,
        interface_prefix: args.interface_prefix.primary().to_string(),
        ..UpstreamConfig::default()
    }
}

/// Spreads agents over the ready replicas when typha is told its own Service (else
/// load spreading is off). The returned discovery must be kept alive.
fn start_discovery(
    args: &ServeArgs,
    client: kube::Client,
    running: &mut Running,
    token: &CancellationToken,
) -> Option<Discovery> {
    let Some(service) = args.own_service() else {
        tracing::info!("no --service-namespace/--service-name: load spreading is off");
        return None;
    };
    let config = DiscoveryConfig::new(service.namespace, service.name);
    tracing::info!(%config, "spreading agents over the ready replicas");
    let discovery = Discovery::spawn(client, config, token);
    running.start_rebalancing(discovery.replicas());
    Some(discovery)
}

/// Runs until SIGTERM/SIGINT, then drains (goodbyes spread over --drain-duration).
async fn run_until_signal(mut running: Running) -> anyhow::Result<()> {
    let term = CancellationToken::new();
    tokio::spawn(edge::signal::stop_on_signal(term.clone()));
    let stopped = tokio::select! {
        _ = term.cancelled() => false,
        stopped = running.join() => { stopped?; true }
    };
    if !stopped {
        let report = running.drain().await?;
        tracing::info!(
            goodbyes = report.goodbyes,
            lingering = report.lingering,
            "drained"
        );
    }
    Ok(())
}

/// Drains the Prometheus recorder's histogram buffers between scrapes.
async fn metrics_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => handle.run_upkeep(),
        }
    }
}
