//! The typha command line (`typha serve`, `typha certs`): parse, build, run, drain. A
//! library function so that the `typha` binary and multi-call tools (the load test runs
//! replicas as child processes of its own binary) share one entry point.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::app::{self, TyphaOptions, Upstream};
use crate::certs::DevPki;
use crate::config::{Cli, Command, ServeArgs};
use crate::hub::HubConfig;
use crate::server::Transport;
use crate::tls::{TlsMaterial, TransportChoice, server_config};
use crate::upstream::UpstreamConfig;
use anyhow::Context;
use clap::Parser;

/// Runs the typha command line with `args` (the first is the program name) and returns
/// the process exit code. Installs the ring crypto provider.
pub fn run<I, T>(args: I) -> ExitCode
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
        .try_init()
        .ok();
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
        let client = crate::upstream::kube_client(args.kubeconfig.as_deref()).await?;
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
        tokio::spawn(crate::app::stop_on_signal(token));
        running.join().await?;
        tracing::info!("typha stopped");
        Ok(())
    })
}
