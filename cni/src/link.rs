//! The pod's wiring, through iproute2: a veth pair created inside the pod's namespace
//! (`nsenter --net=<path> ip link add <ifname> ... peer name <host> netns <our pid>`, so
//! the host side appears in the plugin's own namespace with its final name and no
//! temporary name is ever visible), the pod side's addresses and routes, and the host
//! side's proxy ARP, MAC and /32 routes.
//!
//! Why iproute2 rather than netlink in process: the plugin is a short-lived process run
//! once per pod, and switching a thread's network namespace safely needs either `unsafe`
//! or a dedicated thread dance; `nsenter` does it in a child process. The host needs
//! iproute2 and util-linux's nsenter (every Kubernetes node has both).
//!
//! Layout, as Calico's CNI leaves it: the host side is `<prefix><hash>` with MAC
//! `ee:ee:ee:ee:ee:ee`, proxy ARP on and no proxy delay; the pod has each IP as a /32 on
//! `eth0`, a scope-link route to the gateway [`GATEWAY`] and the default route via it.
//! The pod also gets a permanent neighbour entry for the gateway (the host side's MAC):
//! proxy ARP answers only when the host has a route to 169.254.1.1 (a default route),
//! which a node without one (the test bench) lacks. The host-side /32 routes carry the
//! agent's route protocol (80): the agent wants exactly these routes, so it adopts them
//! instead of colliding with them.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command as Process;

use crate::error::CniError;

/// The pods' default gateway (link-local, answered by the host side).
pub const GATEWAY: &str = "169.254.1.1";
/// The MAC of every host-side interface.
pub const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The route protocol of the agent's routes (`felix_client::dataplane::ROUTE_PROTOCOL`).
pub const ROUTE_PROTOCOL: &str = "80";

/// Runs `program args`; stdout on success, [`CniError::Command`] otherwise.
fn run(program: &str, args: &[&str]) -> Result<String, CniError> {
    let command = format!("{program} {}", args.join(" "));
    tracing::debug!(%command, "running");
    let out = Process::new(program)
        .args(args)
        .output()
        .map_err(|e| CniError::Command {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(CniError::Command {
        command,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// `ip args` in the plugin's namespace (the host's).
fn ip(args: &[&str]) -> Result<String, CniError> {
    run("ip", args)
}

/// `ip args` inside the namespace at `netns`.
fn ip_in(netns: &Path, args: &[&str]) -> Result<String, CniError> {
    let net = format!("--net={}", netns.display());
    let mut full = vec![net.as_str(), "ip"];
    full.extend_from_slice(args);
    run("nsenter", &full)
}

fn sysctl(path: &str, value: &str) -> Result<(), CniError> {
    std::fs::write(path, value).map_err(|e| CniError::Io {
        what: format!("writing {path}"),
        source: e,
    })
}

/// What ADD wires up.
#[derive(Clone, Debug)]
pub struct Wiring<'a> {
    /// The pod's network namespace.
    pub netns: &'a Path,
    /// The interface name inside the pod.
    pub ifname: &'a str,
    /// The host-side interface name.
    pub host: &'a str,
    /// The pod's addresses.
    pub ips: &'a [Ipv4Addr],
    /// MTU for both ends.
    pub mtu: Option<u32>,
}

/// True when interface `name` exists in the plugin's namespace.
pub fn host_link_exists(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).is_ok()
}

/// Creates the veth pair and configures both ends. On error the caller removes the
/// host side ([`delete_host`]), which takes the pod side with it.
pub fn create(w: &Wiring<'_>) -> Result<(), CniError> {
    let pid = std::process::id().to_string();
    let add = [
        "link", "add", w.ifname, "type", "veth", "peer", "name", w.host, "netns", &pid,
    ];
    ip_in(w.netns, &add)?;
    if let Some(mtu) = w.mtu {
        ip_in(
            w.netns,
            &["link", "set", "dev", w.ifname, "mtu", &mtu.to_string()],
        )?;
    }
    configure_host(w)?;
    configure_pod(w)
}

fn configure_host(w: &Wiring<'_>) -> Result<(), CniError> {
    if let Some(mtu) = w.mtu {
        ip(&["link", "set", "dev", w.host, "mtu", &mtu.to_string()])?;
    }
    ip(&["link", "set", "dev", w.host, "address", HOST_MAC])?;
    sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", w.host),
        "1",
    )?;
    sysctl(
        &format!("/proc/sys/net/ipv4/neigh/{}/proxy_delay", w.host),
        "0",
    )?;
    sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/forwarding", w.host),
        "1",
    )?;
    ip(&["link", "set", "dev", w.host, "up"])?;
    for addr in w.ips {
        let dst = format!("{addr}/32");
        ip(&[
            "route",
            "replace",
            &dst,
            "dev",
            w.host,
            "scope",
            "link",
            "proto",
            ROUTE_PROTOCOL,
        ])?;
    }
    Ok(())
}

fn configure_pod(w: &Wiring<'_>) -> Result<(), CniError> {
    for addr in w.ips {
        ip_in(
            w.netns,
            &["addr", "add", &format!("{addr}/32"), "dev", w.ifname],
        )?;
    }
    ip_in(w.netns, &["link", "set", "dev", w.ifname, "up"])?;
    ip_in(
        w.netns,
        &[
            "neigh",
            "replace",
            GATEWAY,
            "lladdr",
            HOST_MAC,
            "dev",
            w.ifname,
            "nud",
            "permanent",
        ],
    )?;
    ip_in(
        w.netns,
        &[
            "route", "replace", GATEWAY, "dev", w.ifname, "scope", "link",
        ],
    )?;
    ip_in(
        w.netns,
        &[
            "route", "replace", "default", "via", GATEWAY, "dev", w.ifname,
        ],
    )?;
    Ok(())
}

/// The pod side's MAC (for the result).
pub fn pod_mac(netns: &Path, ifname: &str) -> Result<String, CniError> {
    let out = ip_in(netns, &["-o", "link", "show", "dev", ifname])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| CniError::Command {
            command: format!("ip link show dev {ifname}"),
            stderr: "no MAC address".into(),
        })
}

/// Deletes the host side (and with it the pod side); a missing link is success.
pub fn delete_host(host: &str) -> Result<(), CniError> {
    if !host_link_exists(host) {
        return Ok(());
    }
    match ip(&["link", "del", "dev", host]) {
        Ok(_) => Ok(()),
        // Gone between the check and the delete (the pod's namespace went away).
        Err(_) if !host_link_exists(host) => Ok(()),
        Err(e) => Err(e),
    }
}

/// CHECK: the host side is up with its routes, the pod side has its addresses and the
/// default route via the gateway.
pub fn verify(w: &Wiring<'_>) -> Result<(), CniError> {
    let fail = CniError::Check;
    let link = ip(&["-o", "link", "show", "dev", w.host])
        .map_err(|_| fail(format!("host interface {} is missing", w.host)))?;
    if !link.contains(",UP") && !link.contains("<UP") {
        return Err(fail(format!("host interface {} is down", w.host)));
    }
    let routes = ip(&["route", "show", "dev", w.host])?;
    let addrs = ip_in(w.netns, &["-o", "-4", "addr", "show", "dev", w.ifname])
        .map_err(|_| fail(format!("{} is missing in the pod", w.ifname)))?;
    for addr in w.ips {
        if !routes.lines().any(|l| l.starts_with(&format!("{addr} "))) {
            return Err(fail(format!("no route to {addr} via {}", w.host)));
        }
        if !addrs.contains(&format!(" {addr}/32 ")) {
            return Err(fail(format!("{addr}/32 is not on {} in the pod", w.ifname)));
        }
    }
    let default = ip_in(w.netns, &["route", "show", "default"])?;
    if !default.contains(&format!("via {GATEWAY} dev {}", w.ifname)) {
        return Err(fail(format!(
            "the pod's default route is {:?}",
            default.trim()
        )));
    }
    Ok(())
}
