//! The typha binary: parse, build, run, drain.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use typha::app::{self, TyphaOptions, Upstream};
use typha::certs::DevPki;
use typha::config::{Cli, Command, ServeArgs};
use typha::hub::HubConfig;
use typha::server::Transport;
use typha::tls::{TlsMaterial, TransportChoice, server_config};
use typha::upstream::UpstreamConfig;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("typha: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .init();
    let (transport, server) = args.validate()?;
    let transport = match transport {
        TransportChoice::Plaintext => Transport::Plaintext,
        TransportChoice::Tls(files, identity) => {
            let material = TlsMaterial::load(&files)?;
            Transport::Tls(server_config(&material, &identity)?)
        }
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let client = typha::upstream::kube_client(args.kubeconfig.as_deref()).await?;
        let mut hub = HubConfig::default();
        hub.cache.max_log_batches = args.history_batches;
        let upstream = UpstreamConfig {
            streaming_lists: args.streaming_lists,
            ..UpstreamConfig::default()
        };
        let options = TyphaOptions {
            listen: args.listen,
            health_listen: Some(args.health_listen),
            transport,
            server,
            hub,
            upstream: Upstream::Kube {
                client,
                config: upstream,
            },
            metrics: Some(metrics),
        };
        let mut running = app::start(options).await?;
        let token = running.shutdown_token();
        tokio::spawn(typha::app::stop_on_signal(token));
        running.join().await?;
        tracing::info!("typha stopped");
        Ok(())
    })
}
