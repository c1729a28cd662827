//! typha's command line: flags with TYPHA_* environment equivalents, validated once into
//! the typed options [`crate::app::start`] takes. Invalid configuration is an error with
//! a message naming the flag; the binary prints it and exits non-zero.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::server::ServerConfig;
use crate::tls::{PeerIdentity, TlsFlagsError, TransportChoice};

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
    /// Health and metrics listen address (/livez, /readyz, /metrics).
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
    /// Drop a client whose send buffer stays full this long.
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
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "TYPHA_LOG", default_value = "info")]
    pub log: String,
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

impl ServeArgs {
    /// Checks the flags and returns the transport and server settings.
    pub fn validate(&self) -> Result<(TransportChoice, ServerConfig), ConfigError> {
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
        let server = ServerConfig {
            server_id: self.server_id.clone().unwrap_or_else(default_server_id),
            handshake_timeout: self.handshake_timeout,
            write_timeout: self.write_timeout,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_connections: self.max_connections,
            ..ServerConfig::default()
        };
        Ok((transport, server))
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
        assert!(matches!(ok.validate(), Ok((TransportChoice::Tls(..), _))));
    }

    #[test]
    fn plaintext_is_explicit_and_exclusive() {
        assert!(matches!(
            parse(&["--insecure-plaintext"]).validate(),
            Ok((TransportChoice::Plaintext, _))
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
        let (_, server) = args.validate().unwrap();
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
}
