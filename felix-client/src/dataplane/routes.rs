//! routes: programs the agent's routes through rtnetlink.
//!
//! Ownership is by route protocol: every route the agent adds carries
//! [`ROUTE_PROTOCOL`] and lives in the main table; a sync lists the main table's routes
//! of that protocol (both families), deletes those not wanted and adds the missing ones.
//! Between refreshes the agent trusts its [`RouteCache`] of what it wrote: unchanged
//! desired routes cost no netlink call at all, changed ones one link dump plus the writes.
//! Invariant: routes of any other protocol or table are never modified or deleted (an
//! add that collides with one fails and is reported). Interface routes are scope link out
//! of the named interface; an interface that does not exist is an error for that route
//! only (the others are still programmed; the driver retries). Tunnel routes are
//! `via <gateway> dev <tunnel> onlink` (identified by both, unlike plain gateway routes
//! whose interface the kernel picks).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::DataplaneError;
use crate::calc::{Route, RouteTarget};

/// The route protocol number marking the agent's routes (`proto 80` in `ip route`).
/// It is Calico Felix's default, so an agent replacing Felix owns the same routes; no
/// other routing daemon in iproute2's registry uses it.
pub const ROUTE_PROTOCOL: u8 = 80;

/// A route in the kernel's terms: masked destination, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RouteKey {
    /// Destination network address (masked) and prefix length.
    pub(crate) dst: (IpAddr, u8),
    /// Output interface index for interface routes.
    pub(crate) oif: Option<u32>,
    /// Gateway for gateway routes.
    pub(crate) gateway: Option<IpAddr>,
}

/// What one sync did.
#[derive(Debug, Default)]
pub(crate) struct RouteOutcome {
    /// Routes added or deleted.
    pub(crate) changes: u64,
    /// Per-route failures (the rest was still programmed).
    pub(crate) errors: Vec<DataplaneError>,
    /// Netlink dumps run (routes, links).
    pub(crate) reads: u64,
    /// Time spent in those dumps.
    pub(crate) read_time: std::time::Duration,
}

/// Parses `10.0.0.0/24` (or a bare address, a host route) into a masked network.
pub(crate) fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match cidr.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
        None => (cidr.parse::<IpAddr>().ok()?, None),
    };
    Some(match ip {
        IpAddr::V4(v4) => {
            let len = len.unwrap_or(32);
            let mask = u32::MAX
                .checked_shl(32u32.checked_sub(len.into())?)
                .unwrap_or(0);
            (IpAddr::from((u32::from(v4) & mask).to_be_bytes()), len)
        }
        IpAddr::V6(v6) => {
            let len = len.unwrap_or(128);
            let mask = u128::MAX
                .checked_shl(128u32.checked_sub(len.into())?)
                .unwrap_or(0);
            (IpAddr::from((u128::from(v6) & mask).to_be_bytes()), len)
        }
    })
}

fn address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The agent's route a kernel message describes, if it is one (main table, our protocol).
fn owned_key(msg: &RouteMessage) -> Option<RouteKey> {
    if u8::from(msg.header.protocol) != ROUTE_PROTOCOL {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let (mut dst, mut oif, mut gateway) = (None, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = address(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(a) => gateway = address(a),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = dst?;
    let onlink = msg.header.flags.contains(RouteFlags::Onlink);
    Some(RouteKey {
        dst: (dst, msg.header.destination_prefix_length),
        // A gateway route is identified by its gateway (the kernel fills in the oif),
        // an onlink tunnel route by both.
        oif: if gateway.is_some() && !onlink {
            None
        } else {
            oif
        },
        gateway,
    })
}

/// Lists the agent's routes (both families).
async fn list(handle: &Handle) -> Result<Vec<(RouteKey, RouteMessage)>, DataplaneError> {
    let mut owned = Vec::new();
    for query in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut stream = handle.route().get(query).execute();
        while let Some(msg) = stream.try_next().await.map_err(netlink)? {
            if let Some(key) = owned_key(&msg) {
                owned.push((key, msg));
            }
        }
    }
    Ok(owned)
}

fn netlink(e: rtnetlink::Error) -> DataplaneError {
    DataplaneError::Netlink(e.to_string())
}

/// Interface name -> index, for all links.
async fn links(handle: &Handle) -> Result<std::collections::HashMap<String, u32>, DataplaneError> {
    let mut map = std::collections::HashMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(netlink)? {
        for attr in &msg.attributes {
            if let LinkAttribute::IfName(name) = attr {
                map.insert(name.clone(), msg.header.index);
            }
        }
    }
    Ok(map)
}

/// Resolves a desired route to its kernel key.
fn resolve(
    route: &Route,
    links: &std::collections::HashMap<String, u32>,
) -> Result<RouteKey, DataplaneError> {
    let dst = parse_cidr(&route.dst).ok_or_else(|| DataplaneError::InvalidRoute {
        dst: route.dst.clone(),
        reason: "not a CIDR".into(),
    })?;
    let (device, gateway) = match &route.target {
        RouteTarget::Interface(name) => (name, None),
        RouteTarget::Tunnel { device, gateway } => (device, Some(*gateway)),
        RouteTarget::Gateway(gw) => {
            if gw.is_ipv4() != dst.0.is_ipv4() {
                return Err(DataplaneError::InvalidRoute {
                    dst: route.dst.clone(),
                    reason: format!("gateway {gw} is of the other family"),
                });
            }
            return Ok(RouteKey {
                dst,
                oif: None,
                gateway: Some(*gw),
            });
        }
    };
    let index = links
        .get(device)
        .ok_or_else(|| DataplaneError::MissingInterface(device.clone()))?;
    Ok(RouteKey {
        dst,
        oif: Some(*index),
        gateway,
    })
}

/// The netlink message adding `key`.
fn message(key: &RouteKey) -> Result<RouteMessage, DataplaneError> {
    // The builder's error type is not exported; only its text is kept.
    fn invalid(key: &RouteKey) -> impl Fn(&dyn std::fmt::Display) -> DataplaneError + '_ {
        move |e| DataplaneError::InvalidRoute {
            dst: format!("{}/{}", key.dst.0, key.dst.1),
            reason: e.to_string(),
        }
    }
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(key.dst.0, key.dst.1)
        .map_err(|e| invalid(key)(&e))?
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    match (key.oif, key.gateway) {
        (Some(index), None) => {
            builder = builder.output_interface(index).scope(RouteScope::Link);
        }
        (Some(index), Some(gw)) => {
            builder = builder
                .output_interface(index)
                .gateway(gw)
                .map_err(|e| invalid(key)(&e))?
                .onlink();
        }
        (None, Some(gw)) => {
            builder = builder.gateway(gw).map_err(|e| invalid(key)(&e))?;
        }
        (None, None) => {}
    }
    Ok(builder.build())
}

/// What the agent knows of its routes in the kernel.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteCache {
    /// The agent's routes, with the message that deletes each.
    owned: BTreeMap<RouteKey, RouteMessage>,
    /// Whether they are exactly the last pass's desired routes (no route failed then).
    matches_last: bool,
}

/// Brings the agent's routes in line with `desired`. Unchanged desired routes over a
/// cache that matched them cost nothing; otherwise the links are listed (a new pod's
/// interface must be resolved) and the routes diffed against the cache, or against a
/// fresh route dump when there is no cache. A netlink write that fails empties the cache
/// and, when the plan came from the cache, is retried once against a fresh dump.
pub(crate) async fn sync(
    handle: &Handle,
    desired: &BTreeSet<Route>,
    last: Option<&BTreeSet<Route>>,
    cache: &mut Option<RouteCache>,
) -> RouteOutcome {
    let mut outcome = RouteOutcome::default();
    if let Some(c) = cache
        && c.matches_last
        && last == Some(desired)
    {
        return outcome;
    }
    loop {
        let fresh = cache.is_none();
        let reported = outcome.errors.len();
        let failed = attempt(handle, desired, cache, &mut outcome).await;
        if failed.is_empty() {
            return outcome;
        }
        *cache = None;
        if fresh {
            outcome.errors.extend(failed);
            return outcome;
        }
        outcome.errors.truncate(reported);
        tracing::info!(errors = failed.len(), first = %failed[0], "route writes planned from the cache failed; re-reading routes");
    }
}

/// One sync attempt. Per-route resolution failures are collected in `outcome` (the cache
/// stays valid, not matching); failed netlink calls are returned (the other routes are
/// still programmed).
async fn attempt(
    handle: &Handle,
    desired: &BTreeSet<Route>,
    cache: &mut Option<RouteCache>,
    outcome: &mut RouteOutcome,
) -> Vec<DataplaneError> {
    let current = match cache {
        Some(c) => c,
        None => match timed_read(outcome, list(handle)).await {
            Ok(owned) => cache.insert(RouteCache {
                owned: owned.into_iter().collect(),
                matches_last: false,
            }),
            Err(e) => return vec![e],
        },
    };
    current.matches_last = false;
    // Sequential: one netlink socket runs one dump at a time (a second one gets EBUSY).
    let links = match timed_read(outcome, links(handle)).await {
        Ok(links) => links,
        Err(e) => return vec![e],
    };
    let mut wanted = BTreeSet::new();
    let mut unresolved = Vec::new();
    for route in desired {
        match resolve(route, &links) {
            Ok(key) => {
                wanted.insert(key);
            }
            Err(e) => unresolved.push(e),
        }
    }
    let mut failed = remove_stale(handle, current, &wanted, outcome).await;
    failed.extend(add_missing(handle, current, wanted, outcome).await);
    current.matches_last = unresolved.is_empty() && failed.is_empty();
    outcome.errors.extend(unresolved);
    failed
}

/// Awaits one read of the kernel's state, counting it and its time in `outcome`.
async fn timed_read<T>(outcome: &mut RouteOutcome, read: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let result = read.await;
    outcome.read_time += started.elapsed();
    outcome.reads += 1;
    result
}

/// Deletes the owned routes that are not `wanted`; returns the failed deletes.
async fn remove_stale(
    handle: &Handle,
    current: &mut RouteCache,
    wanted: &BTreeSet<RouteKey>,
    outcome: &mut RouteOutcome,
) -> Vec<DataplaneError> {
    let mut failed = Vec::new();
    let stale: Vec<RouteKey> = current
        .owned
        .keys()
        .filter(|k| !wanted.contains(*k))
        .cloned()
        .collect();
    for key in stale {
        let Some(msg) = current.owned.remove(&key) else {
            continue;
        };
        match handle.route().del(msg).execute().await {
            Ok(()) => outcome.changes += 1,
            Err(e) => failed.push(netlink(e)),
        }
    }
    failed
}

/// Adds the `wanted` routes not owned yet; returns the failed adds.
async fn add_missing(
    handle: &Handle,
    current: &mut RouteCache,
    wanted: BTreeSet<RouteKey>,
    outcome: &mut RouteOutcome,
) -> Vec<DataplaneError> {
    let mut failed = Vec::new();
    for key in wanted {
        if current.owned.contains_key(&key) {
            continue;
        }
        let result = match message(&key) {
            Ok(msg) => handle
                .route()
                .add(msg.clone())
                .execute()
                .await
                .map(|()| msg)
                .map_err(|e| DataplaneError::InvalidRoute {
                    dst: format!("{}/{}", key.dst.0, key.dst.1),
                    reason: e.to_string(),
                }),
            Err(e) => Err(e),
        };
        match result {
            Ok(msg) => {
                current.owned.insert(key, msg);
                outcome.changes += 1;
            }
            Err(e) => failed.push(e),
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn cidrs_are_masked() {
        assert_eq!(
            parse_cidr("10.1.2.3/16"),
            Some(("10.1.0.0".parse().unwrap(), 16))
        );
        assert_eq!(
            parse_cidr("10.0.0.5"),
            Some(("10.0.0.5".parse().unwrap(), 32))
        );
        assert_eq!(
            parse_cidr("fd00::5/128"),
            Some(("fd00::5".parse().unwrap(), 128))
        );
        assert_eq!(
            parse_cidr("0.0.0.0/0"),
            Some(("0.0.0.0".parse().unwrap(), 0))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("x"), None);
    }

    #[test]
    fn messages_round_trip_through_owned_key() {
        let iface = RouteKey {
            dst: ("10.0.0.5".parse().unwrap(), 32),
            oif: Some(7),
            gateway: None,
        };
        let msg = message(&iface).unwrap();
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert_eq!(owned_key(&msg), Some(iface));
        let gw = RouteKey {
            dst: ("fd00:2::".parse().unwrap(), 64),
            oif: None,
            gateway: Some("fd00::1".parse().unwrap()),
        };
        assert_eq!(owned_key(&message(&gw).unwrap()), Some(gw));
        let tunnel = RouteKey {
            dst: ("10.244.1.0".parse().unwrap(), 24),
            oif: Some(9),
            gateway: Some("10.244.1.0".parse().unwrap()),
        };
        let msg = message(&tunnel).unwrap();
        assert!(msg.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(owned_key(&msg), Some(tunnel));
        let mut foreign = message(&RouteKey {
            dst: ("10.0.0.0".parse().unwrap(), 8),
            oif: Some(1),
            gateway: None,
        })
        .unwrap();
        foreign.header.protocol = RouteProtocol::Static;
        assert_eq!(owned_key(&foreign), None);
    }
}
