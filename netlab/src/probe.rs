//! Probes between pods and the [`Matrix`] of their results.
//!
//! A pair of pods is probed over every IP family both have (a dual-stack pair twice:
//! IPv4 and IPv6 are separate flows, separately allowed or denied).
//!
//! A probe is a real connection from one pod's namespace to another pod's IP: TCP
//! succeeds when the handshake completes, UDP when the listener's echo comes back, each
//! within a short timeout. A refused connection counts as blocked, like a dropped one
//! (the upstream e2e suite does the same). All probes of a matrix run concurrently:
//! each source pod's sockets are created by one thread inside its namespace, then driven
//! by the tokio runtime.
//!
//! Invariant: every probe of a process uses a fresh source port (a counter below the
//! kernel's ephemeral range), so no probe can ride on a conntrack entry left by an
//! earlier, allowed probe of the same flow: a policy change is always judged on new
//! connections.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::{TcpSocket, UdpSocket};

use crate::NetlabError;
use crate::netns::{io_err, run_in};
use crate::policy::Protocol;
use crate::stack::IpFamily;

/// One probe: from pod `from` to pod `to` (ids `namespace/name`) on `protocol`/`port`
/// over `family`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeKey {
    /// Source pod id.
    pub from: String,
    /// Destination pod id.
    pub to: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// The IP family of both addresses.
    pub family: IpFamily,
}

impl std::fmt::Display for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {}/{} over {}",
            self.from, self.to, self.protocol, self.port, self.family
        )
    }
}

/// Mismatches listed by name under the grids of [`Matrix::render_diff`].
const MAX_LISTED: usize = 24;

/// Reachability per probe (true = connected).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matrix {
    cells: BTreeMap<ProbeKey, bool>,
}

/// One probe whose observed result differs from the expected one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The probe.
    pub key: ProbeKey,
    /// What the oracle expected.
    pub expected: bool,
    /// What was observed (`None`: not probed).
    pub observed: Option<bool>,
}

fn word(reachable: Option<bool>) -> &'static str {
    match reachable {
        Some(true) => "reachable",
        Some(false) => "blocked",
        None => "not probed",
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {}, observed {}",
            self.key,
            word(Some(self.expected)),
            word(self.observed)
        )
    }
}

impl Matrix {
    /// Records one result.
    pub fn insert(&mut self, key: ProbeKey, reachable: bool) {
        self.cells.insert(key, reachable);
    }

    /// One result.
    pub fn get(&self, key: &ProbeKey) -> Option<bool> {
        self.cells.get(key).copied()
    }

    /// Every result in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&ProbeKey, bool)> {
        self.cells.iter().map(|(k, v)| (k, *v))
    }

    /// Number of probes.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether there are no probes.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Number of reachable probes.
    pub fn reachable(&self) -> usize {
        self.cells.values().filter(|v| **v).count()
    }

    /// Probes (of `self`, the expectation) that `observed` got wrong or lacks.
    pub fn mismatches(&self, observed: &Matrix) -> Vec<Mismatch> {
        self.cells
            .iter()
            .filter_map(|(key, &expected)| {
                let seen = observed.get(key);
                (seen != Some(expected)).then(|| Mismatch {
                    key: key.clone(),
                    expected,
                    observed: seen,
                })
            })
            .collect()
    }

    /// A grid per family and protocol/port (rows: from, columns: to) of `observed` against `self`:
    /// `.` reachable and `-` blocked as expected; `B` blocked but expected reachable;
    /// `R` reachable but expected blocked; `?` not probed. Then the mismatches listed
    /// (the first few).
    pub fn render_diff(&self, observed: &Matrix) -> String {
        let mut out = String::new();
        let services: BTreeSet<(IpFamily, Protocol, u16)> = self
            .cells
            .keys()
            .map(|k| (k.family, k.protocol, k.port))
            .collect();
        let from: BTreeSet<&str> = self.cells.keys().map(|k| k.from.as_str()).collect();
        let to: BTreeSet<&str> = self.cells.keys().map(|k| k.to.as_str()).collect();
        let width = to.iter().map(|t| t.len()).max().unwrap_or(1).max(1) + 1;
        let row_width = from.iter().map(|f| f.len()).max().unwrap_or(1);
        for (family, protocol, port) in services {
            let _ = write!(out, "{protocol}/{port} {family}\n{:row_width$}", "");
            for t in &to {
                let _ = write!(out, "{t:>width$}");
            }
            out.push('\n');
            for f in &from {
                let _ = write!(out, "{f:row_width$}");
                for t in &to {
                    let key = ProbeKey {
                        from: f.to_string(),
                        to: t.to_string(),
                        protocol,
                        port,
                        family,
                    };
                    let cell = match (self.get(&key), observed.get(&key)) {
                        (Some(true), Some(true)) => ".",
                        (Some(false), Some(false)) => "-",
                        (Some(true), Some(false)) => "B",
                        (Some(false), Some(true)) => "R",
                        _ => "?",
                    };
                    let _ = write!(out, "{cell:>width$}");
                }
                out.push('\n');
            }
        }
        let mismatches = self.mismatches(observed);
        for m in mismatches.iter().take(MAX_LISTED) {
            let _ = writeln!(out, "  {m}");
        }
        if mismatches.len() > MAX_LISTED {
            let _ = writeln!(out, "  ... and {} more", mismatches.len() - MAX_LISTED);
        }
        out
    }
}

/// A pod as a probe source or target.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `namespace/name`.
    pub id: String,
    /// Its network namespace.
    pub netns: String,
    /// Its IPs (one per family).
    pub ips: Vec<IpAddr>,
}

fn shares_family(from: &Endpoint, ip: IpAddr) -> bool {
    from.ips.iter().any(|own| own.is_ipv6() == ip.is_ipv6())
}

/// Source ports handed out so far (see the module invariant).
static SOURCE_PORTS: AtomicU32 = AtomicU32::new(0);
const FIRST_SOURCE_PORT: u32 = 10_000;
const SOURCE_PORT_SPAN: u32 = 20_000;

fn next_source_port() -> u16 {
    let n = SOURCE_PORTS.fetch_add(1, Ordering::Relaxed) % SOURCE_PORT_SPAN;
    // FIRST_SOURCE_PORT + SOURCE_PORT_SPAN < 65536.
    u16::try_from(FIRST_SOURCE_PORT + n).unwrap_or(u16::MAX)
}

/// A socket created inside the source's namespace, not yet connected.
enum Unconnected {
    Tcp(TcpSocket),
    Udp(std::net::UdpSocket),
}

/// Creates, inside `netns`, one socket per (protocol, family) in `kinds`.
async fn sockets(
    netns: &str,
    kinds: Vec<(Protocol, IpFamily)>,
) -> Result<Vec<Unconnected>, NetlabError> {
    let name = netns.to_string();
    run_in(netns, move || {
        kinds
            .into_iter()
            .map(|(protocol, family)| match protocol {
                Protocol::Udp => {
                    let local = (family.unspecified(), next_source_port());
                    let s = std::net::UdpSocket::bind(local)
                        .map_err(io_err(&name, "binding a UDP probe"))?;
                    s.set_nonblocking(true)
                        .map_err(io_err(&name, "UDP probe non-blocking"))?;
                    Ok(Unconnected::Udp(s))
                }
                _ => {
                    let s = match family {
                        IpFamily::V4 => TcpSocket::new_v4(),
                        IpFamily::V6 => TcpSocket::new_v6(),
                    }
                    .map_err(io_err(&name, "creating a TCP probe"))?;
                    s.set_reuseaddr(true)
                        .map_err(io_err(&name, "TCP probe SO_REUSEADDR"))?;
                    let local = SocketAddr::from((family.unspecified(), next_source_port()));
                    s.bind(local)
                        .map_err(io_err(&name, "binding a TCP probe"))?;
                    Ok(Unconnected::Tcp(s))
                }
            })
            .collect()
    })
    .await
}

async fn attempt(socket: Unconnected, to: SocketAddr, payload: Vec<u8>, limit: Duration) -> bool {
    match socket {
        Unconnected::Tcp(s) => {
            matches!(tokio::time::timeout(limit, s.connect(to)).await, Ok(Ok(_)))
        }
        Unconnected::Udp(s) => {
            let Ok(s) = UdpSocket::from_std(s) else {
                return false;
            };
            let exchange = async {
                s.send_to(&payload, to).await?;
                let mut buf = vec![0u8; payload.len() + 16];
                loop {
                    let (n, from) = s.recv_from(&mut buf).await?;
                    if from == to && buf[..n] == payload[..] {
                        return Ok::<_, std::io::Error>(());
                    }
                }
            };
            matches!(tokio::time::timeout(limit, exchange).await, Ok(Ok(())))
        }
    }
}

/// Probes every (from, to) pair of `pods` on every `(protocol, port)` of `services`
/// over every family both have, all at once, each bounded by `limit`. SCTP services are
/// skipped (not probed).
pub async fn probe_all(
    pods: &[Endpoint],
    services: &[(Protocol, u16)],
    limit: Duration,
) -> Result<Matrix, NetlabError> {
    let services: Vec<(Protocol, u16)> = services
        .iter()
        .copied()
        .filter(|(p, _)| *p != Protocol::Sctp)
        .collect();
    let mut plans = Vec::new();
    for from in pods {
        let mut keys = Vec::new();
        for to in pods {
            for &ip in to.ips.iter().filter(|ip| shares_family(from, **ip)) {
                for &(protocol, port) in &services {
                    let key = ProbeKey {
                        from: from.id.clone(),
                        to: to.id.clone(),
                        protocol,
                        port,
                        family: IpFamily::of(ip),
                    };
                    keys.push((key, SocketAddr::new(ip, port)));
                }
            }
        }
        plans.push((from.netns.clone(), keys));
    }
    let created = futures::future::try_join_all(plans.iter().map(|(netns, keys)| {
        sockets(
            netns,
            keys.iter().map(|(k, _)| (k.protocol, k.family)).collect(),
        )
    }))
    .await?;
    let mut attempts = Vec::new();
    for ((_, keys), socks) in plans.into_iter().zip(created) {
        for ((key, addr), sock) in keys.into_iter().zip(socks) {
            let payload = key.to_string().into_bytes();
            attempts.push(async move { (key, attempt(sock, addr, payload, limit).await) });
        }
    }
    let mut matrix = Matrix::default();
    for (key, reachable) in futures::future::join_all(attempts).await {
        matrix.insert(key, reachable);
    }
    Ok(matrix)
}
