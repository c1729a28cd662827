//! typha's command line: flags with TYPHA_* environment equivalents, validated once into
//! the typed options [`crate::app::start`] takes. Invalid configuration is an error with
//! a message naming the flag; the binary prints it and exits non-zero.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app::OpsConfig;
use crate::drain::DrainConfig;
use crate::health::HealthConfig;
use crate::rebalance::RebalanceConfig;
use crate::server::ServerConfig;
use edge::cli::{ObserveArgs, ObserveEnv};
use edge::tls::{PeerIdentity, TlsFlagsError, TransportChoice};

/// The typha command line.
#[derive(Debug, Parser)]
#[command(
    name = "typha",
    version,
    about = "Fan-out proxy for Kubernetes network state"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// typha's subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup; boxing buys nothing
pub enum Command {
    /// Watch the Kubernetes API and serve agents.
    Serve(ServeArgs),
    /// Write a development CA and server/client certificates.
    Certs(CertsArgs),
}

/// `typha certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, typha.crt, typha.key, felix.crt, felix.key.
    #[arg(long, env = "TYPHA_CERTS_OUT")]
    pub out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// `typha serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "TYPHA_LISTEN", default_value = "0.0.0.0:5473")]
    pub listen: SocketAddr,
    /// Health listen address (/livez, /readyz for the probes; also /metrics).
    #[arg(long, env = "TYPHA_HEALTH_LISTEN", default_value = "0.0.0.0:9098")]
    pub health_listen: SocketAddr,
    /// CA bundle that client certificates must chain to.
    #[arg(long, env = "TYPHA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long, env = "TYPHA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "TYPHA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Accept clients whose certificate has this Common Name.
    #[arg(long, env = "TYPHA_CLIENT_CN")]
    pub client_cn: Option<String>,
    /// Accept clients whose certificate has this URI SAN.
    #[arg(long, env = "TYPHA_CLIENT_URI_SAN")]
    pub client_uri_san: Option<String>,
    /// Serve without TLS. Anyone who can connect reads the cluster's state: development only.
    #[arg(long, env = "TYPHA_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// kubeconfig to use (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Replica id sent to clients (default: the host name).
    #[arg(long, env = "TYPHA_SERVER_ID")]
    pub server_id: Option<String>,
    /// Drop a client that does not read what it is owed this long.
    #[arg(long, env = "TYPHA_WRITE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// TLS handshake + ClientHello deadline.
    #[arg(long, env = "TYPHA_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Ping interval.
    #[arg(long, env = "TYPHA_PING_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// Drop a client silent for this long.
    #[arg(long, env = "TYPHA_PING_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ping_timeout: Duration,
    /// Refuse connections beyond this many.
    #[arg(long, env = "TYPHA_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Delta batches kept for catching up and resuming.
    #[arg(long, env = "TYPHA_HISTORY_BATCHES", default_value_t = 10_000)]
    pub history_batches: usize,
    /// Use streaming lists (sendInitialEvents) for the initial list.
    #[arg(long, env = "TYPHA_STREAMING_LISTS")]
    pub streaming_lists: bool,
    /// `--log`, `--log-format`, `--metrics-listen` (k8s/ uses 0.0.0.0:9093 for metrics).
    #[command(flatten)]
    pub observe: ObserveArgs<TyphaEnv>,
    /// Namespace of typha's own Service; with --service-name, typha counts its ready
    /// replicas from the Service's EndpointSlices and spreads the agents over them.
    #[arg(long, env = "TYPHA_SERVICE_NAMESPACE")]
    pub service_namespace: Option<String>,
    /// Name of typha's own Service (see --service-namespace).
    #[arg(long, env = "TYPHA_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Share of the agents a replica keeps beyond an even split before it sheds
    /// (target = ceil(nodes / replicas * (1 + headroom))).
    #[arg(long, env = "TYPHA_REBALANCE_HEADROOM", default_value_t = 0.1)]
    pub rebalance_headroom: f64,
    /// Most clients told to move to another replica per second.
    #[arg(long, env = "TYPHA_REBALANCE_RATE", default_value_t = 10.0)]
    pub rebalance_rate: f64,
    /// On SIGTERM, spread the clients' goodbyes over this long (keep it below the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, env = "TYPHA_DRAIN_DURATION", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_duration: Duration,
    /// Most time between two goodbyes while draining (few clients drain quickly).
    #[arg(long, env = "TYPHA_DRAIN_MAX_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub drain_max_interval: Duration,
    /// Not ready when nothing (event, bookmark, list page) was heard from the API server
    /// for this long.
    #[arg(long, env = "TYPHA_MAX_STALENESS", default_value = "90s", value_parser = humantime::parse_duration)]
    pub max_staleness: Duration,
    /// How often to check the TLS files for a new certificate, key or CA.
    #[arg(long, env = "TYPHA_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
    /// Pod CIDR for the default IPPool, created at first start only if no pool exists.
    #[arg(long, env = "TYPHA_CLUSTER_CIDR")]
    pub cluster_cidr: Option<netmodel::bootstrap::ClusterCidr>,
    /// Host-side interface prefixes, comma-separated (as the agents'); the first names
    /// pods' interfaces in WorkloadEndpoints.
    #[arg(long, env = "TYPHA_INTERFACE_PREFIX", default_value = "cali")]
    pub interface_prefix: netmodel::InterfacePrefixes,
}

/// typha's environment variables for the logging and metrics flags.
#[derive(Debug)]
pub struct TyphaEnv;

impl ObserveEnv for TyphaEnv {
    const LOG: &'static str = "TYPHA_LOG";
    const LOG_FORMAT: &'static str = "TYPHA_LOG_FORMAT";
    const METRICS_LISTEN: &'static str = "TYPHA_METRICS_LISTEN";
    const METRICS_PORT: u16 = 9093;
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TLS flags are incomplete or contradictory.
    #[error(transparent)]
    Tls(#[from] TlsFlagsError),
    /// No client identity check.
    #[error(
        "with TLS, set --client-cn and/or --client-uri-san: typha must know which clients to accept"
    )]
    NoClientIdentity,
    /// A value out of range.
    #[error("{0}")]
    Invalid(&'static str),
}

/// The Service typha counts its replicas from (`--service-namespace --service-name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnService {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// The validated settings of `typha serve`.
#[derive(Debug)]
pub struct Settings {
    /// TLS or plaintext.
    pub transport: TransportChoice,
    /// Session tuning.
    pub server: ServerConfig,
    /// Rebalance, drain and readiness tuning.
    pub ops: OpsConfig,
}

impl ServeArgs {
    /// Checks the flags and returns the transport, server and operations settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let identity = PeerIdentity {
            cn: self.client_cn.clone(),
            uri_san: self.client_uri_san.clone(),
        };
        let transport = TransportChoice::from_flags(
            &self.tls_ca,
            &self.tls_cert,
            &self.tls_key,
            identity,
            self.insecure_plaintext,
        )?;
        if matches!(&transport, TransportChoice::Tls(_, identity) if identity.is_empty()) {
            return Err(ConfigError::NoClientIdentity);
        }
        if self.ping_timeout <= self.ping_interval {
            return Err(ConfigError::Invalid(
                "--ping-timeout must exceed --ping-interval",
            ));
        }
        if self.history_batches == 0 || self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "--history-batches and --max-connections must be positive",
            ));
        }
        self.validate_ops()?;
        let server = ServerConfig {
            server_id: self.server_id.clone().unwrap_or_else(default_server_id),
            handshake_timeout: self.handshake_timeout,
            write_timeout: self.write_timeout,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_connections: self.max_connections,
            ..ServerConfig::default()
        };
        Ok(Settings {
            transport,
            server,
            ops: self.ops(),
        })
    }

    fn ops(&self) -> OpsConfig {
        OpsConfig {
            rebalance: RebalanceConfig {
                headroom: self.rebalance_headroom,
                rate: self.rebalance_rate,
            },
            drain: DrainConfig {
                duration: self.drain_duration,
                max_interval: self.drain_max_interval,
            },
            health: HealthConfig {
                max_staleness: self.max_staleness,
            },
        }
    }

    /// The Service to count replicas from, if both flags are set (checked by `validate`).
    pub fn own_service(&self) -> Option<OwnService> {
        match (&self.service_namespace, &self.service_name) {
            (Some(namespace), Some(name)) => Some(OwnService {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
            _ => None,
        }
    }

    fn validate_ops(&self) -> Result<(), ConfigError> {
        if self.service_namespace.is_some() != self.service_name.is_some() {
            return Err(ConfigError::Invalid(
                "--service-namespace and --service-name go together",
            ));
        }
        if !(self.rebalance_headroom.is_finite() && self.rebalance_headroom >= 0.0) {
            return Err(ConfigError::Invalid(
                "--rebalance-headroom must be a number >= 0",
            ));
        }
        if !(self.rebalance_rate.is_finite() && self.rebalance_rate > 0.0) {
            return Err(ConfigError::Invalid("--rebalance-rate must be positive"));
        }
        if self.drain_max_interval.is_zero() && !self.drain_duration.is_zero() {
            return Err(ConfigError::Invalid(
                "--drain-max-interval must be positive",
            ));
        }
        if self.max_staleness.is_zero() || self.tls_reload_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "--max-staleness and --tls-reload-interval must be positive",
            ));
        }
        Ok(())
    }
}

fn default_server_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "typha".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["typha", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(s) => s,
            Command::Certs(_) => unreachable!(),
        }
    }

    #[test]
    fn tls_is_the_default_and_must_be_complete() {
        assert!(matches!(
            parse(&[]).validate(),
            Err(ConfigError::Tls(TlsFlagsError::Incomplete))
        ));
        assert!(matches!(
            parse(&["--tls-ca", "a"]).validate(),
            Err(ConfigError::Tls(TlsFlagsError::Incomplete))
        ));
        let no_identity = parse(&["--tls-ca", "a", "--tls-cert", "b", "--tls-key", "c"]);
        assert!(matches!(
            no_identity.validate(),
            Err(ConfigError::NoClientIdentity)
        ));
        let ok = parse(&[
            "--tls-ca",
            "a",
            "--tls-cert",
            "b",
            "--tls-key",
            "c",
            "--client-cn",
            "x",
        ]);
        assert!(matches!(
            ok.validate(),
            Ok(Settings {
                transport: TransportChoice::Tls(..),
                ..
            })
        ));
    }

    #[test]
    fn plaintext_is_explicit_and_exclusive() {
        assert!(matches!(
            parse(&["--insecure-plaintext"]).validate(),
            Ok(Settings {
                transport: TransportChoice::Plaintext,
                ..
            })
        ));
        let both = parse(&["--insecure-plaintext", "--tls-ca", "a"]);
        assert!(matches!(
            both.validate(),
            Err(ConfigError::Tls(TlsFlagsError::Contradictory))
        ));
    }

    #[test]
    fn durations_parse_and_are_checked() {
        let args = parse(&[
            "--insecure-plaintext",
            "--ping-interval",
            "500ms",
            "--ping-timeout",
            "2s",
        ]);
        let server = args.validate().unwrap().server;
        assert_eq!(server.ping_interval, Duration::from_millis(500));
        let bad = parse(&[
            "--insecure-plaintext",
            "--ping-interval",
            "5s",
            "--ping-timeout",
            "1s",
        ]);
        assert!(matches!(bad.validate(), Err(ConfigError::Invalid(_))));
        assert!(Cli::try_parse_from(["typha", "serve", "--write-timeout", "soon"]).is_err());
    }

    #[test]
    fn ops_flags_have_defaults_and_are_checked() {
        let ops = parse(&["--insecure-plaintext"]).validate().unwrap().ops;
        assert_eq!(ops, OpsConfig::default());
        let args = parse(&[
            "--insecure-plaintext",
            "--drain-duration",
            "10s",
            "--rebalance-headroom",
            "0.25",
            "--service-namespace",
            "calico-system",
            "--service-name",
            "calico-typha",
        ]);
        let ops = args.validate().unwrap().ops;
        assert_eq!(ops.drain.duration, Duration::from_secs(10));
        assert_eq!(ops.rebalance.headroom, 0.25);
        assert_eq!(args.own_service().unwrap().name, "calico-typha");
        for bad in [
            &["--service-name", "calico-typha"][..],
            &["--rebalance-headroom=-1"],
            &["--rebalance-rate", "0"],
            &["--max-staleness", "0s"],
        ] {
            let mut argv = vec!["--insecure-plaintext"];
            argv.extend_from_slice(bad);
            assert!(
                matches!(parse(&argv).validate(), Err(ConfigError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
