//! First start on an empty datastore: the default IPPool and a ready ClusterInformation.
//!
//! Calico's node agent does this at start; here typha does it, once its upstream is in
//! sync, so that a fresh cluster works without a manual step:
//! - if `--cluster-cidr` is set and no IPPool exists at all, create `default-ipv4-ippool`
//!   (or `default-ipv6-ippool`) for that CIDR with `natOutgoing: true`. Another replica
//!   creating it first (409) is success. An existing pool is never modified: changing the
//!   flag later has no effect, and typha logs that it has none.
//! - ClusterInformation `default` is created with `datastoreReady: true` when missing; an
//!   existing one whose flag is unset is marked ready. An explicit `false` is an operator's
//!   lock (Calico uses it during datastore migration) and is left alone, loudly.
//!
//! Invariants: the only writes are those listed in [`WRITES`] (the RBAC test holds the
//! manifests to them); nothing here deletes or rewrites a pool.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::crd::{CalicoObject, ClusterInformation, IPPool};

/// Name of the ClusterInformation singleton.
pub const CLUSTER_INFORMATION_NAME: &str = "default";

/// One kind of write the bootstrap performs: API group, resource plural and verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiWrite {
    /// API group (empty for core).
    pub group: &'static str,
    /// Resource plural as in RBAC rules.
    pub plural: &'static str,
    /// RBAC verbs needed.
    pub verbs: &'static [&'static str],
}

/// Every write typha makes to the API (reads are the watched resources).
pub const WRITES: &[ApiWrite] = &[
    ApiWrite {
        group: super::crd::GROUP,
        plural: "ippools",
        verbs: &["create"],
    },
    ApiWrite {
        group: super::crd::GROUP,
        plural: "clusterinformations",
        verbs: &["create", "update"],
    },
];

/// The cluster's pod CIDR (`--cluster-cidr`): a network address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterCidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a `--cluster-cidr` value is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// Not `ADDRESS/PREFIX`.
    #[error("{0:?} is not ADDRESS/PREFIX (e.g. 10.244.0.0/16)")]
    Syntax(String),
    /// The prefix is longer than an allocation block (/26 for IPv4, /122 for IPv6).
    #[error("{0:?}: the prefix must be at most /{1} (one IPAM block)")]
    TooSmall(String, u8),
    /// Bits set after the prefix.
    #[error("{0:?} has host bits set; did you mean {1}?")]
    HostBits(String, String),
}

impl ClusterCidr {
    /// The name of the default pool for this address family.
    pub fn pool_name(&self) -> &'static str {
        match self.addr {
            IpAddr::V4(_) => "default-ipv4-ippool",
            IpAddr::V6(_) => "default-ipv6-ippool",
        }
    }

    /// Calico's default allocation block size for this address family.
    pub fn block_size(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 26,
            IpAddr::V6(_) => 122,
        }
    }
}

impl FromStr for ClusterCidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        let cidr = ClusterCidr { addr, prefix };
        let (bits, value) = match addr {
            IpAddr::V4(a) => (32u32, u128::from(u32::from(a)) << 96),
            IpAddr::V6(a) => (128u32, u128::from(a)),
        };
        if u32::from(prefix) > bits {
            return Err(syntax());
        }
        if prefix > cidr.block_size() {
            return Err(CidrError::TooSmall(s.to_string(), cidr.block_size()));
        }
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        if value & !mask != 0 {
            let network = match addr {
                IpAddr::V4(_) => {
                    IpAddr::from(std::net::Ipv4Addr::from(((value & mask) >> 96) as u32))
                }
                IpAddr::V6(_) => IpAddr::from((value & mask).to_be_bytes()),
            };
            return Err(CidrError::HostBits(
                s.to_string(),
                format!("{network}/{prefix}"),
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for ClusterCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What happened to the default pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolOutcome {
    /// No `--cluster-cidr`: nothing created.
    NotConfigured,
    /// This replica created the pool.
    Created,
    /// Another replica created it first (409).
    LostRace,
    /// Pools already exist (their names); none was touched.
    Existing(Vec<String>),
}

/// What happened to ClusterInformation `default`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoOutcome {
    /// It was missing and was created ready.
    Created,
    /// It existed without the flag and was marked ready.
    MarkedReady,
    /// It was already ready.
    AlreadyReady,
    /// An operator set `datastoreReady: false`: left alone.
    Locked,
}

/// The result of one bootstrap pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The default pool.
    pub pool: PoolOutcome,
    /// ClusterInformation `default`.
    pub cluster_information: InfoOutcome,
}

/// Errors of a bootstrap pass; every one is retryable (the next pass starts over).
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// An API call failed (unreachable, forbidden, conflict on update).
    #[error("bootstrap API call: {0}")]
    Api(#[from] kube::Error),
    /// An object could not be built or read.
    #[error("bootstrap object: {0}")]
    Json(#[from] serde_json::Error),
}

fn dynamic_api<K: 'static>(client: &kube::Client) -> Api<DynamicObject>
where
    CalicoObject<K>: kube::Resource<DynamicType = ()>,
{
    Api::all_with(client.clone(), &ApiResource::erase::<CalicoObject<K>>(&()))
}

/// One pass: the default pool (if configured and no pool exists) and ClusterInformation.
pub async fn ensure_defaults(
    client: &kube::Client,
    cluster_cidr: Option<&ClusterCidr>,
) -> Result<Outcome, BootstrapError> {
    let pool = match cluster_cidr {
        None => PoolOutcome::NotConfigured,
        Some(cidr) => ensure_pool(client, cidr).await?,
    };
    let cluster_information = ensure_cluster_information(client).await?;
    Ok(Outcome {
        pool,
        cluster_information,
    })
}

async fn ensure_pool(
    client: &kube::Client,
    cidr: &ClusterCidr,
) -> Result<PoolOutcome, BootstrapError> {
    let api = dynamic_api::<IPPool>(client);
    let existing = api.list(&ListParams::default()).await?;
    if !existing.items.is_empty() {
        let names = existing
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        return Ok(PoolOutcome::Existing(names));
    }
    let pool: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{}/{}", super::crd::GROUP, super::crd::VERSION),
        "kind": "IPPool",
        "metadata": { "name": cidr.pool_name() },
        "spec": {
            "cidr": cidr.to_string(),
            "natOutgoing": true,
            "ipipMode": "Never",
            "vxlanMode": "Never",
            "blockSize": cidr.block_size(),
            "nodeSelector": "all()",
        },
    }))?;
    match api.create(&PostParams::default(), &pool).await {
        Ok(_) => Ok(PoolOutcome::Created),
        Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
            Ok(PoolOutcome::LostRace)
        }
        Err(e) => Err(e.into()),
    }
}

async fn ensure_cluster_information(client: &kube::Client) -> Result<InfoOutcome, BootstrapError> {
    let api = dynamic_api::<ClusterInformation>(client);
    // Two rounds: if another replica creates it between our read and our create, the
    // second read sees theirs.
    let mut rounds = 0;
    loop {
        rounds += 1;
        let Some(mut info) = api.get_opt(CLUSTER_INFORMATION_NAME).await? else {
            match api
                .create(&PostParams::default(), &new_cluster_information()?)
                .await
            {
                Ok(_) => return Ok(InfoOutcome::Created),
                Err(kube::Error::Api(status)) if status.code == 409 && rounds < 2 => continue,
                Err(e) => return Err(e.into()),
            }
        };
        return match info.data.pointer("/spec/datastoreReady") {
            Some(serde_json::Value::Bool(true)) => Ok(InfoOutcome::AlreadyReady),
            Some(serde_json::Value::Bool(false)) => Ok(InfoOutcome::Locked),
            _ => {
                if !info.data.get("spec").is_some_and(|s| s.is_object()) {
                    info.data["spec"] = json!({});
                }
                info.data["spec"]["datastoreReady"] = json!(true);
                // Carries the resourceVersion read: a concurrent change is a 409, retried.
                api.replace(CLUSTER_INFORMATION_NAME, &PostParams::default(), &info)
                    .await?;
                Ok(InfoOutcome::MarkedReady)
            }
        };
    }
}

fn new_cluster_information() -> Result<DynamicObject, serde_json::Error> {
    let guid: u128 = rand::random();
    serde_json::from_value(json!({
        "apiVersion": format!("{}/{}", super::crd::GROUP, super::crd::VERSION),
        "kind": "ClusterInformation",
        "metadata": { "name": CLUSTER_INFORMATION_NAME },
        "spec": {
            "clusterGUID": format!("{guid:032x}"),
            "clusterType": "typha,kdd",
            "datastoreReady": true,
        },
    }))
}

/// Waits for `in_sync` (the upstream's first complete sync), then runs
/// [`ensure_defaults`] until it succeeds (backoff 1 s doubling to 30 s) or `shutdown`
/// fires. Logs what it did.
pub async fn run(
    client: kube::Client,
    in_sync: impl Future<Output = ()>,
    cluster_cidr: Option<ClusterCidr>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = in_sync => {}
        _ = shutdown.cancelled() => return,
    }
    let mut delay = Duration::from_secs(1);
    loop {
        match ensure_defaults(&client, cluster_cidr.as_ref()).await {
            Ok(outcome) => {
                log_outcome(&outcome, cluster_cidr.as_ref());
                return;
            }
            Err(error) => tracing::warn!(%error, retry_in = ?delay, "bootstrap failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

fn log_outcome(outcome: &Outcome, cidr: Option<&ClusterCidr>) {
    let cidr_text = cidr.map(ToString::to_string).unwrap_or_default();
    match &outcome.pool {
        PoolOutcome::NotConfigured => {
            tracing::info!("no --cluster-cidr: no default IPPool is created")
        }
        PoolOutcome::Created => {
            tracing::info!(cidr = %cidr_text, "created the default IPPool")
        }
        PoolOutcome::LostRace => {
            tracing::info!(cidr = %cidr_text, "another replica created the default IPPool")
        }
        PoolOutcome::Existing(names) => tracing::info!(
            cidr = %cidr_text,
            pools = ?names,
            "IPPools exist: --cluster-cidr has no effect (existing pools are never changed)"
        ),
    }
    match outcome.cluster_information {
        InfoOutcome::Locked => tracing::warn!(
            "ClusterInformation default has datastoreReady: false (set by an operator): agents will wait"
        ),
        other => tracing::info!(outcome = ?other, "ClusterInformation default is ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_are_checked() {
        let v4: ClusterCidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(v4.to_string(), "10.244.0.0/16");
        assert_eq!(v4.pool_name(), "default-ipv4-ippool");
        let v6: ClusterCidr = "fd00:10::/64".parse().unwrap();
        assert_eq!(v6.pool_name(), "default-ipv6-ippool");
        assert_eq!(
            "10.244.0.1/16".parse::<ClusterCidr>(),
            Err(CidrError::HostBits(
                "10.244.0.1/16".into(),
                "10.244.0.0/16".into()
            ))
        );
        assert!(matches!(
            "10.0.0.0/28".parse::<ClusterCidr>(),
            Err(CidrError::TooSmall(_, 26))
        ));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/a", ""] {
            assert!(
                matches!(bad.parse::<ClusterCidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
        assert!("0.0.0.0/0".parse::<ClusterCidr>().is_ok());
    }
}
