//! tunnels: the VXLAN device (`vxlan.calico`) with its per-peer FDB and neighbour
//! entries, and the IPIP device (`tunl0`), as [`crate::calc::tunnels::Tunnels`] says,
//! through `ip` and `bridge` in the dataplane's namespace.
//!
//! Ownership is by name: the agent creates, reconfigures and deletes `vxlan.calico`
//! (a device with other parameters is recreated; every FDB and neighbour entry on it is
//! the agent's, so entries not wanted are deleted). `tunl0` is the kernel's fallback
//! IPIP device (it appears when the ipip module loads and cannot be deleted): the agent
//! creates it when wanted and missing and sets its MTU, and never deletes it. On a
//! kernel without ipip, creating it fails with the kernel's "Unknown device type"; that
//! is reported like any write error. Runs before routes, so tunnel routes find their
//! device. `felix-client cleanup` deletes `vxlan.calico` and sets `tunl0` down
//! ([`remove`]).

use std::collections::BTreeSet;

use super::DataplaneError;
use super::exec::Runner;
use crate::calc::tunnels::{IPIP_DEVICE, Tunnels, VXLAN_DEVICE, VxlanDevice};

/// Brings the tunnel devices in line with `desired`; returns the writes made.
pub(crate) async fn sync(runner: &Runner, desired: &Tunnels) -> Result<u64, DataplaneError> {
    let mut writes = 0;
    match &desired.vxlan {
        Some(device) => writes += sync_vxlan(runner, device, desired).await?,
        None => {
            if link_details(runner, VXLAN_DEVICE).await.is_some() {
                runner
                    .run("ip", &["link", "del", VXLAN_DEVICE], None)
                    .await?;
                writes += 1;
            }
        }
    }
    if let Some(mtu) = desired.ipip_mtu {
        if link_details(runner, IPIP_DEVICE).await.is_none() {
            let add = ["link", "add", "name", IPIP_DEVICE, "type", "ipip"];
            runner.run("ip", &add, None).await?;
        }
        let mtu = mtu.to_string();
        let set = ["link", "set", IPIP_DEVICE, "mtu", &mtu, "up"];
        runner.run("ip", &set, None).await?;
        writes += 1;
    }
    Ok(writes)
}

/// Removes the tunnel devices (`felix-client cleanup`): deletes `vxlan.calico`, and
/// `tunl0` where it can be deleted; the kernel's fallback `tunl0` (which cannot) is set
/// down instead. Returns what was done, one entry per device found.
pub(crate) async fn remove(runner: &Runner) -> Result<Vec<String>, DataplaneError> {
    let mut done = Vec::new();
    if link_details(runner, VXLAN_DEVICE).await.is_some() {
        runner
            .run("ip", &["link", "del", VXLAN_DEVICE], None)
            .await?;
        done.push(format!("{VXLAN_DEVICE} deleted"));
    }
    if link_details(runner, IPIP_DEVICE).await.is_some() {
        if runner
            .run("ip", &["link", "del", IPIP_DEVICE], None)
            .await
            .is_ok()
        {
            done.push(format!("{IPIP_DEVICE} deleted"));
        } else {
            runner
                .run("ip", &["link", "set", IPIP_DEVICE, "down"], None)
                .await?;
            done.push(format!(
                "{IPIP_DEVICE} set down (the kernel's fallback device)"
            ));
        }
    }
    Ok(done)
}

/// `ip -d link show <name>`, `None` when the device does not exist.
async fn link_details(runner: &Runner, name: &str) -> Option<String> {
    runner
        .run("ip", &["-d", "link", "show", "dev", name], None)
        .await
        .ok()
}

/// Whether `details` (from `ip -d link show`) describes `device`.
fn vxlan_matches(details: &str, device: &VxlanDevice) -> bool {
    details.contains(&format!("vxlan id {} ", device.vni))
        && details.contains(&format!("local {} ", device.local))
        && details.contains(&format!("dstport {} ", device.port))
}

async fn sync_vxlan(
    runner: &Runner,
    device: &VxlanDevice,
    desired: &Tunnels,
) -> Result<u64, DataplaneError> {
    let mut writes = 0;
    let details = link_details(runner, VXLAN_DEVICE).await;
    if let Some(d) = &details
        && !vxlan_matches(d, device)
    {
        runner
            .run("ip", &["link", "del", VXLAN_DEVICE], None)
            .await?;
        writes += 1;
    }
    if details.as_deref().is_none_or(|d| !vxlan_matches(d, device)) {
        let (vni, local, port) = (
            device.vni.to_string(),
            device.local.to_string(),
            device.port.to_string(),
        );
        let add = [
            "link",
            "add",
            VXLAN_DEVICE,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &local,
            "dstport",
            &port,
            "nolearning",
        ];
        runner.run("ip", &add, None).await?;
        writes += 1;
    }
    let mtu = device.mtu.to_string();
    let set = [
        "link",
        "set",
        VXLAN_DEVICE,
        "address",
        &device.mac,
        "mtu",
        &mtu,
        "up",
    ];
    runner.run("ip", &set, None).await?;
    writes += 1;
    writes += sync_peers(runner, desired).await?;
    Ok(writes)
}

/// FDB (`mac dst ip`) and neighbour (`ip lladdr mac`) entries: stale ones deleted,
/// wanted ones replaced.
async fn sync_peers(runner: &Runner, desired: &Tunnels) -> Result<u64, DataplaneError> {
    let mut writes = 0;
    let fdb_want: BTreeSet<(String, String)> = desired
        .vxlan_peers
        .iter()
        .map(|p| (p.mac.clone(), p.node_ip.to_string()))
        .collect();
    let neigh_want: BTreeSet<(String, String)> = desired
        .vxlan_peers
        .iter()
        .map(|p| (p.gateway.to_string(), p.mac.clone()))
        .collect();
    let fdb = runner
        .run("bridge", &["fdb", "show", "dev", VXLAN_DEVICE], None)
        .await?;
    for (mac, dst) in parse_fdb(&fdb) {
        if !fdb_want.contains(&(mac.clone(), dst.clone())) {
            let del = ["fdb", "del", &mac, "dev", VXLAN_DEVICE, "dst", &dst];
            runner.run("bridge", &del, None).await?;
            writes += 1;
        }
    }
    let neigh = runner
        .run("ip", &["neigh", "show", "dev", VXLAN_DEVICE], None)
        .await?;
    for (ip, mac) in parse_neigh(&neigh) {
        if !neigh_want.contains(&(ip.clone(), mac)) {
            runner
                .run("ip", &["neigh", "del", &ip, "dev", VXLAN_DEVICE], None)
                .await?;
            writes += 1;
        }
    }
    for (mac, dst) in &fdb_want {
        let add = [
            "fdb",
            "replace",
            mac,
            "dev",
            VXLAN_DEVICE,
            "dst",
            dst,
            "self",
            "permanent",
        ];
        runner.run("bridge", &add, None).await?;
        writes += 1;
    }
    for (ip, mac) in &neigh_want {
        let add = [
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            VXLAN_DEVICE,
            "nud",
            "permanent",
        ];
        runner.run("ip", &add, None).await?;
        writes += 1;
    }
    Ok(writes)
}

/// `(mac, dst)` of `bridge fdb show dev X` lines with a `dst`.
fn parse_fdb(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let dst = words.iter().position(|w| *w == "dst")?;
            Some((words.first()?.to_string(), words.get(dst + 1)?.to_string()))
        })
        .collect()
}

/// `(ip, mac)` of `ip neigh show dev X` lines with an `lladdr`.
fn parse_neigh(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let ll = words.iter().position(|w| *w == "lladdr")?;
            Some((words.first()?.to_string(), words.get(ll + 1)?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn fdb_and_neighbour_listings_parse() {
        let fdb = "66:01:02:03:04:05 dst 10.99.1.1 self permanent\n\
                   00:00:00:00:00:00 dst 10.99.1.9 self permanent\n\
                   33:33:00:00:00:01 self permanent\n";
        assert_eq!(
            parse_fdb(fdb),
            vec![
                ("66:01:02:03:04:05".into(), "10.99.1.1".into()),
                ("00:00:00:00:00:00".into(), "10.99.1.9".into())
            ]
        );
        let neigh = "10.244.1.0 lladdr 66:01:02:03:04:05 PERMANENT\n10.244.2.0 FAILED\n";
        assert_eq!(
            parse_neigh(neigh),
            vec![("10.244.1.0".into(), "66:01:02:03:04:05".into())]
        );
    }

    #[test]
    fn device_parameters_are_checked() {
        let device = VxlanDevice {
            vni: 4096,
            port: 4789,
            local: "10.99.0.1".parse().unwrap(),
            mac: "66:00:00:00:00:01".into(),
            mtu: 1450,
        };
        let ok = "vxlan id 4096 local 10.99.0.1 srcport 0 0 dstport 4789 nolearning ttl auto";
        assert!(vxlan_matches(ok, &device));
        let other = "vxlan id 4096 local 10.99.0.2 srcport 0 0 dstport 4789 nolearning";
        assert!(!vxlan_matches(other, &device));
    }
}
