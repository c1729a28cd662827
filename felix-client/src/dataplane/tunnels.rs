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
//!
//! Writes only what differs: the device is read first (`ip -d link show`) and `ip link
//! set` runs only when its MTU, MAC or UP flag is off; FDB and neighbour entries are
//! listed and only the missing or non-permanent wanted ones are written, so a resync
//! without drift costs the reads, not two processes per peer.

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
        let details = link_details(runner, IPIP_DEVICE).await;
        if details.is_none() {
            let add = ["link", "add", "name", IPIP_DEVICE, "type", "ipip"];
            runner.run("ip", &add, None).await?;
        }
        if !details
            .as_deref()
            .is_some_and(|d| link_settled(d, None, mtu))
        {
            let mtu = mtu.to_string();
            let set = ["link", "set", IPIP_DEVICE, "mtu", &mtu, "up"];
            runner.run("ip", &set, None).await?;
            writes += 1;
        }
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

/// Whether `details` (from `ip -d link show`) has MTU `mtu`, the MAC `mac` (when given)
/// and the UP flag: the device needs no `ip link set`.
fn link_settled(details: &str, mac: Option<&str>, mtu: u32) -> bool {
    let up = details
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"));
    let mac_ok = mac
        .is_none_or(|mac| details.contains(&format!("link/ether {} ", mac.to_ascii_lowercase())));
    up && mac_ok && details.contains(&format!(" mtu {mtu} "))
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
    let settled = details.as_deref().is_some_and(|d| {
        vxlan_matches(d, device) && link_settled(d, Some(&device.mac), device.mtu)
    });
    if !settled {
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
    }
    writes += sync_peers(runner, desired).await?;
    Ok(writes)
}

/// FDB (`mac dst ip`) and neighbour (`ip lladdr mac`) entries: stale ones deleted,
/// wanted ones written only where the kernel lacks them as permanent entries (a resync
/// with no drift runs the two listings and nothing else, however many peers there are).
async fn sync_peers(runner: &Runner, desired: &Tunnels) -> Result<u64, DataplaneError> {
    let peers = &desired.vxlan_peers;
    let fdb = peers
        .iter()
        .map(|p| (p.mac.clone(), p.node_ip.to_string()))
        .collect();
    let neigh = peers
        .iter()
        .map(|p| (p.gateway.to_string(), p.mac.clone()))
        .collect();
    Ok(sync_entries(runner, &FDB, fdb).await? + sync_entries(runner, &NEIGH, neigh).await?)
}

/// One kind of per-peer entry on the VXLAN device: how it is listed, deleted and written.
struct EntryKind {
    program: &'static str,
    /// The listing's arguments.
    list: [&'static str; 4],
    /// The word before an entry's value in the listing.
    tag: &'static str,
    /// The arguments deleting `(key, value)`.
    del: fn(&str, &str) -> Vec<String>,
    /// The arguments writing `(key, value)` as a permanent entry.
    add: fn(&str, &str) -> Vec<String>,
}

/// `mac -> node address` in the device's forwarding database.
const FDB: EntryKind = EntryKind {
    program: "bridge",
    list: ["fdb", "show", "dev", VXLAN_DEVICE],
    tag: "dst",
    del: |mac, dst| words(&["fdb", "del", mac, "dev", VXLAN_DEVICE, "dst", dst]),
    add: |mac, dst| {
        let add = ["fdb", "replace", mac, "dev", VXLAN_DEVICE, "dst", dst];
        words(&[&add[..], &["self", "permanent"]].concat())
    },
};

/// `gateway -> peer device MAC` neighbours.
const NEIGH: EntryKind = EntryKind {
    program: "ip",
    list: ["neigh", "show", "dev", VXLAN_DEVICE],
    tag: "lladdr",
    del: |ip, _| words(&["neigh", "del", ip, "dev", VXLAN_DEVICE]),
    add: |ip, mac| {
        let add = ["neigh", "replace", ip, "lladdr", mac, "dev", VXLAN_DEVICE];
        words(&[&add[..], &["nud", "permanent"]].concat())
    },
};

fn words(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Lists `kind`'s entries, deletes the unwanted ones and writes the wanted ones not
/// already there as permanent; returns the writes made.
async fn sync_entries(
    runner: &Runner,
    kind: &EntryKind,
    want: BTreeSet<(String, String)>,
) -> Result<u64, DataplaneError> {
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        runner.run(kind.program, &args, None).await.map(drop)
    };
    let listing = runner.run(kind.program, &kind.list, None).await?;
    let mut writes = 0;
    let mut have = BTreeSet::new();
    for entry in parse_entries(&listing, kind.tag) {
        let pair = (entry.key, entry.value);
        if !want.contains(&pair) {
            run((kind.del)(&pair.0, &pair.1)).await?;
            writes += 1;
        } else if entry.permanent {
            have.insert(pair);
        }
    }
    for (key, value) in want.difference(&have) {
        run((kind.add)(key, value)).await?;
        writes += 1;
    }
    Ok(writes)
}

/// One line of `bridge fdb show` (`mac dst ip ...`) or `ip neigh show` (`ip lladdr mac
/// ...`): the first word, the word after the tag, and whether the entry is permanent.
#[derive(Debug, PartialEq)]
struct Entry {
    key: String,
    value: String,
    permanent: bool,
}

/// The entries of a listing whose lines carry `tag` (`dst` or `lladdr`); other lines
/// (the FDB's multicast entries, neighbours that failed) are skipped.
fn parse_entries(text: &str, tag: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == tag)?;
            Some(Entry {
                key: words.first()?.to_string(),
                value: words.get(at + 1)?.to_string(),
                permanent: words.iter().any(|w| w.eq_ignore_ascii_case("permanent")),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn fdb_and_neighbour_listings_parse() {
        let entry = |key: &str, value: &str, permanent| Entry {
            key: key.into(),
            value: value.into(),
            permanent,
        };
        let fdb = "66:01:02:03:04:05 dst 10.99.1.1 self permanent\n\
                   00:00:00:00:00:00 dst 10.99.1.9 self\n\
                   33:33:00:00:00:01 self permanent\n";
        assert_eq!(
            parse_entries(fdb, "dst"),
            vec![
                entry("66:01:02:03:04:05", "10.99.1.1", true),
                entry("00:00:00:00:00:00", "10.99.1.9", false)
            ]
        );
        let neigh = "10.244.1.0 lladdr 66:01:02:03:04:05 PERMANENT\n\
                     10.244.3.0 lladdr 66:01:02:03:04:06 STALE\n10.244.2.0 FAILED\n";
        assert_eq!(
            parse_entries(neigh, "lladdr"),
            vec![
                entry("10.244.1.0", "66:01:02:03:04:05", true),
                entry("10.244.3.0", "66:01:02:03:04:06", false)
            ]
        );
    }

    #[test]
    fn a_settled_link_needs_no_set() {
        let up = "5: vxlan.calico: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue\n    \
                  link/ether 66:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff promiscuity 0\n";
        assert!(link_settled(up, Some("66:00:00:00:00:01"), 1450));
        assert!(link_settled(
            up,
            Some("66:00:00:00:00:01".to_uppercase().as_str()),
            1450
        ));
        assert!(!link_settled(up, Some("66:00:00:00:00:02"), 1450));
        assert!(!link_settled(up, None, 1480));
        let down = "6: tunl0@NONE: <NOARP> mtu 1480 qdisc noop state DOWN\n    link/ipip 0.0.0.0 brd 0.0.0.0\n";
        assert!(!link_settled(down, None, 1480));
        let lower_up_only = "6: tunl0@NONE: <NOARP,LOWER_UP> mtu 1480 qdisc noop\n";
        assert!(!link_settled(lower_up_only, None, 1480));
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
