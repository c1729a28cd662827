//! felix-client's command line: flags with FELIX_* environment equivalents, validated once
//! into a typed [`Config`]. Invalid configuration is an error naming the flag; the binary
//! prints it and exits non-zero.
//!
//! Where the state comes from: with `--typha-addr` (fixed addresses) or `--typha-service`
//! (a Service's ready EndpointSlice endpoints, which needs Kubernetes access) the agent
//! syncs from typha over mutual TLS (plaintext only with the loudly logged
//! `--insecure-plaintext`); with neither, it watches the Kubernetes API itself (local
//! mode, Calico's behaviour for small clusters).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::calc::hosts;

pub use crate::dataplane::backend::IptablesBackend;
use edge::discovery::{DEFAULT_PORT_NAME, DiscoveryConfig, ServiceRefError};
use edge::tls::{PeerIdentity, TlsFlagsError, TransportChoice};

/// The felix-client command line.
#[derive(Debug, Parser)]
#[command(
    name = "felix-client",
    version,
    about = "Per-node agent: syncs network state and programs the dataplane"
)]
pub struct Cli {
    /// This node's name (as in the Kubernetes Node object).
    #[arg(long, env = "FELIX_NODE_NAME")]
    pub node_name: String,
    /// Typha addresses, HOST:PORT[,HOST:PORT...]. Without one, watch the API directly.
    #[arg(long, env = "FELIX_TYPHA_ADDR", value_delimiter = ',')]
    pub typha_addr: Vec<String>,
    /// Discover typha through this Service's EndpointSlices, NAMESPACE/NAME (instead of
    /// --typha-addr; needs --kubeconfig or in-cluster access).
    #[arg(long, env = "FELIX_TYPHA_SERVICE", conflicts_with = "typha_addr")]
    pub typha_service: Option<String>,
    /// The Service port (by name) to connect to; a Service with one port uses it anyway.
    #[arg(long, env = "FELIX_TYPHA_PORT_NAME", default_value = DEFAULT_PORT_NAME)]
    pub typha_port_name: String,
    /// Exit non-zero when not in sync with any typha this long after start ("0s": wait
    /// forever).
    #[arg(long, env = "FELIX_TYPHA_START_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub typha_start_timeout: Duration,
    /// CA bundle that typha's certificate must chain to.
    #[arg(long, env = "FELIX_TYPHA_CA_FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to typha.
    #[arg(long, env = "FELIX_TYPHA_CERT_FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "FELIX_TYPHA_KEY_FILE")]
    pub tls_key: Option<PathBuf>,
    /// Accept a typha whose certificate has this Common Name.
    #[arg(long, env = "FELIX_TYPHA_CN")]
    pub typha_cn: Option<String>,
    /// Accept a typha whose certificate has this URI SAN.
    #[arg(long, env = "FELIX_TYPHA_URI_SAN")]
    pub typha_uri_san: Option<String>,
    /// Talk to typha without TLS. Anyone on the path can forge the state: development only.
    #[arg(long, env = "FELIX_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// kubeconfig for local mode and --typha-service (default: KUBECONFIG,
    /// ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Which dataplane to program.
    #[arg(long, env = "FELIX_DATAPLANE", value_enum, default_value_t = Dataplane::Iptables)]
    pub dataplane: Dataplane,
    /// Policy only, or policy plus routes between nodes.
    #[arg(long, env = "FELIX_MODE", value_enum, default_value_t = Mode::PolicyOnly)]
    pub mode: Mode,
    /// Bound on connecting to typha (TCP + TLS + HTTP/2 + ServerHello).
    #[arg(long, env = "FELIX_TYPHA_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Silence from typha for this long ends the session (typha pings every 10 s).
    #[arg(long, env = "FELIX_TYPHA_READ_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
    /// First reconnect delay.
    #[arg(long, env = "FELIX_TYPHA_BACKOFF_MIN", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,
    /// Reconnect delay cap.
    #[arg(long, env = "FELIX_TYPHA_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// The cluster's pod CIDRs, CIDR[,CIDR...]: pod traffic to them is never NATed
    /// (networking mode, natOutgoing pools).
    #[arg(long, env = "FELIX_CLUSTER_CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// How often the dataplane re-reads the kernel and repairs drift.
    #[arg(long, env = "FELIX_DATAPLANE_REFRESH", default_value = "90s", value_parser = humantime::parse_duration)]
    pub dataplane_refresh: Duration,
    /// Do not program ip6tables (hosts without IPv6).
    #[arg(long, env = "FELIX_DISABLE_IPV6")]
    pub disable_ipv6: bool,
    /// Program the network namespace /var/run/netns/NAME instead of the agent's own
    /// (development and tests: one host standing in for several nodes).
    #[arg(long, env = "FELIX_NETNS")]
    pub netns: Option<String>,
    /// /livez, /readyz and /metrics listen address; "none" disables it.
    #[arg(long, env = "FELIX_HEALTH_LISTEN", default_value = "127.0.0.1:9099")]
    pub health_listen: String,
    /// Logging and metrics.
    #[command(flatten)]
    pub observe: crate::metrics::ObserveArgs,
    /// Workload interface prefixes, comma-separated (the CNI's host-side veth names; the
    /// first must be typha's, which names the endpoints' interfaces).
    #[arg(long, env = "FELIX_INTERFACE_PREFIX", default_value = "cali")]
    pub interface_prefix: netmodel::InterfacePrefixes,
    /// Which iptables backend to program: auto (the one holding the host's existing
    /// rules, as Calico's Auto), nft or legacy.
    #[arg(long, env = "FELIX_IPTABLES_BACKEND", value_enum, default_value_t = IptablesBackend::Auto)]
    pub iptables_backend: IptablesBackend,
    /// Host ports always open inbound while this node has host endpoints,
    /// `[tcp|udp|sctp:]PORT,...` or `none` (Calico's FailsafeInboundHostPorts).
    #[arg(long, env = "FELIX_FAILSAFE_INBOUND_HOST_PORTS", default_value = hosts::DEFAULT_FAILSAFE_INBOUND)]
    pub failsafe_inbound: hosts::FailsafeList,
    /// Remote ports the host may always reach while it has host endpoints, like
    /// `--failsafe-inbound` (Calico's FailsafeOutboundHostPorts).
    #[arg(long, env = "FELIX_FAILSAFE_OUTBOUND_HOST_PORTS", default_value = hosts::DEFAULT_FAILSAFE_OUTBOUND)]
    pub failsafe_outbound: hosts::FailsafeList,
    /// Give every node an all-interfaces host endpoint `<node>-auto-hep` with the node's
    /// labels and addresses and the default-allow profile (Calico's automatic host
    /// endpoints), so host policy can select nodes.
    #[arg(long, env = "FELIX_AUTO_HOST_ENDPOINTS")]
    pub auto_host_endpoints: bool,
}

/// The dataplane programmer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dataplane {
    /// iptables-restore, ipset and netlink routes.
    Iptables,
    /// Program nothing; log what would change.
    None,
}

/// What the agent is responsible for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Network policy only (another CNI does the routing).
    PolicyOnly,
    /// Network policy plus pod routes between nodes.
    Networking,
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The node name is empty or has whitespace.
    #[error("--node-name must be a non-empty name without whitespace")]
    NodeName,
    /// A typha address is not HOST:PORT.
    #[error("--typha-addr {0:?} is not HOST:PORT")]
    BadAddress(String),
    /// The TLS flags are incomplete or contradictory.
    #[error(transparent)]
    Tls(#[from] TlsFlagsError),
    /// Typha connection flags without a typha.
    #[error(
        "--tls-*, --typha-cn, --typha-uri-san and --insecure-plaintext need --typha-addr or --typha-service (without either the agent watches the API itself)"
    )]
    TyphaFlagsWithoutTypha,
    /// `--typha-service` is not NAMESPACE/NAME.
    #[error("--typha-service: {0}")]
    Service(#[from] ServiceRefError),
    /// `--health-listen` is neither an address nor "none".
    #[error("--health-listen {0:?} is not IP:PORT or \"none\"")]
    HealthListen(String),
    /// `--cluster-cidr` has a value that is not a CIDR.
    #[error("--cluster-cidr {0:?} is not a CIDR like 10.244.0.0/16")]
    ClusterCidr(String),
    /// A value out of range.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Where the state comes from, once validated.
#[derive(Debug)]
pub enum Source {
    /// Sync from typha.
    Typha {
        /// Which typha replicas.
        target: TyphaTarget,
        /// TLS or plaintext.
        transport: TransportChoice,
    },
    /// Watch the Kubernetes API directly.
    Local {
        /// kubeconfig path, if given.
        kubeconfig: Option<PathBuf>,
    },
}

/// How the typha replicas are found.
#[derive(Debug)]
pub enum TyphaTarget {
    /// A fixed list of HOST:PORT addresses.
    Addresses(Vec<String>),
    /// The ready endpoints of a Service.
    Service {
        /// Which Service and port.
        discovery: DiscoveryConfig,
        /// kubeconfig path, if given (else inferred).
        kubeconfig: Option<PathBuf>,
    },
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// This node's name.
    pub node_name: String,
    /// Where the state comes from.
    pub source: Source,
    /// Which dataplane to program.
    pub dataplane: Dataplane,
    /// Policy only or networking.
    pub mode: Mode,
    /// Connect bound (typha mode).
    pub connect_timeout: Duration,
    /// Read bound (typha mode).
    pub read_timeout: Duration,
    /// First reconnect delay (typha mode).
    pub backoff_min: Duration,
    /// Reconnect delay cap (typha mode).
    pub backoff_max: Duration,
    /// Give up when not in sync this long after start (typha mode); `None`: never.
    pub start_timeout: Option<Duration>,
    /// Where to serve /livez, /readyz and /metrics; `None`: nowhere.
    pub health_listen: Option<SocketAddr>,
    /// The cluster's pod CIDRs (validated).
    pub cluster_cidrs: Vec<String>,
    /// Drift repair period.
    pub dataplane_refresh: Duration,
    /// Program ip6tables.
    pub ipv6: bool,
    /// Network namespace to program (development); `None`: the agent's own.
    pub netns: Option<String>,
    /// Workload interface prefixes.
    pub interface_prefixes: netmodel::InterfacePrefixes,
    /// The iptables backend choice.
    pub iptables_backend: IptablesBackend,
    /// Host endpoint settings (failsafe ports, automatic host endpoints).
    pub hosts: hosts::HostConfig,
}

impl Cli {
    /// Checks the flags and returns the typed configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        if self.node_name.is_empty() || self.node_name.chars().any(char::is_whitespace) {
            return Err(ConfigError::NodeName);
        }
        let source = self.source()?;
        self.check_durations()?;
        Ok(Config {
            node_name: self.node_name.clone(),
            source,
            dataplane: self.dataplane,
            mode: self.mode,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            start_timeout: (!self.typha_start_timeout.is_zero())
                .then_some(self.typha_start_timeout),
            health_listen: parse_health_listen(&self.health_listen)?,
            cluster_cidrs: self
                .cluster_cidr
                .iter()
                .map(|cidr| check_cidr(cidr))
                .collect::<Result<_, _>>()?,
            dataplane_refresh: self.dataplane_refresh,
            ipv6: !self.disable_ipv6,
            netns: self.checked_netns()?,
            interface_prefixes: self.interface_prefix.clone(),
            iptables_backend: self.iptables_backend,
            hosts: hosts::HostConfig {
                failsafe_inbound: self.failsafe_inbound.0.clone(),
                failsafe_outbound: self.failsafe_outbound.0.clone(),
                auto_host_endpoints: self.auto_host_endpoints,
            },
        })
    }
    /// Where the model comes from: typha (its addresses or Service, and the transport)
    /// or, without typha flags, the API server itself.
    fn source(&self) -> Result<Source, ConfigError> {
        let identity = PeerIdentity {
            cn: self.typha_cn.clone(),
            uri_san: self.typha_uri_san.clone(),
        };
        let any_tls = self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some();
        if self.typha_addr.is_empty() && self.typha_service.is_none() {
            if any_tls || self.insecure_plaintext || !identity.is_empty() {
                return Err(ConfigError::TyphaFlagsWithoutTypha);
            }
            return Ok(Source::Local {
                kubeconfig: self.kubeconfig.clone(),
            });
        }
        Ok(Source::Typha {
            target: self.typha_target()?,
            transport: TransportChoice::from_flags(
                &self.tls_ca,
                &self.tls_cert,
                &self.tls_key,
                identity,
                self.insecure_plaintext,
            )?,
        })
    }

    /// Which typha: the Service to discover, or the fixed addresses.
    fn typha_target(&self) -> Result<TyphaTarget, ConfigError> {
        Ok(match &self.typha_service {
            Some(service) => {
                let mut discovery = DiscoveryConfig::parse(service)?;
                if self.typha_port_name.trim().is_empty() {
                    return Err(ConfigError::Invalid("--typha-port-name must not be empty"));
                }
                discovery.port_name = self.typha_port_name.clone();
                TyphaTarget::Service {
                    discovery,
                    kubeconfig: self.kubeconfig.clone(),
                }
            }
            None => TyphaTarget::Addresses(
                self.typha_addr
                    .iter()
                    .map(|a| check_address(a))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Timeouts, refresh and backoff must be positive (and the backoff ordered).
    fn check_durations(&self) -> Result<(), ConfigError> {
        if self.connect_timeout.is_zero() || self.read_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "--connect-timeout and --read-timeout must be positive",
            ));
        }
        if self.dataplane_refresh.is_zero() {
            return Err(ConfigError::Invalid("--dataplane-refresh must be positive"));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err(ConfigError::Invalid(
                "--backoff-min must be positive and at most --backoff-max",
            ));
        }
        Ok(())
    }

    /// `--netns`, a bare namespace name if given.
    fn checked_netns(&self) -> Result<Option<String>, ConfigError> {
        match &self.netns {
            Some(name) if name.is_empty() || name.contains('/') => Err(ConfigError::Invalid(
                "--netns must be a bare namespace name",
            )),
            other => Ok(other.clone()),
        }
    }
}

/// An IPv4 or IPv6 CIDR (`10.244.0.0/16`), trimmed.
fn check_cidr(cidr: &str) -> Result<String, ConfigError> {
    let cidr = cidr.trim();
    let bad = || ConfigError::ClusterCidr(cidr.to_string());
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max || cidr.is_empty() {
        return Err(bad());
    }
    Ok(cidr.to_string())
}

/// An IP:PORT, or `none` / `off` / empty for no health endpoint.
fn parse_health_listen(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match value.trim() {
        "" | "none" | "off" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::HealthListen(value.to_string())),
    }
}

/// HOST:PORT with a non-empty host and a port in 1..=65535 (IPv6 hosts in brackets).
fn check_address(addr: &str) -> Result<String, ConfigError> {
    let addr = addr.trim();
    let bad = || ConfigError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.is_empty() || port == 0 || (host.contains(':') && !bracketed) {
        return Err(bad());
    }
    Ok(addr.to_string())
}

#[cfg(test)]
mod tests;
