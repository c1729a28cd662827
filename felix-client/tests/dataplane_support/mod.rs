//! Shared fixture of the root-only dataplane tests: a network namespace `fdp-<pid>-<n>`
//! removed by a guard even when the test fails, helpers to read iptables, ipset and
//! route state inside it, and a synthetic desired state for a node.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use felix_client::calc::{Desired, Family, IpSet, IpSetKind, Route, RouteTarget, Tables};
use felix_client::dataplane::{Dataplane, DataplaneConfig, DataplaneStatus, ROUTE_PROTOCOL};

/// A network namespace that is deleted when dropped.
pub struct Netns {
    /// The namespace name.
    pub name: String,
}

impl Netns {
    /// Creates `fdp-<pid>-<n>` with lo up and interfaces `d0`..`d{links}`; `d0`
    /// carries 192.168.50.1/24 so gateway routes via 192.168.50.2 resolve.
    pub fn new(links: usize) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "fdp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns { name };
        sh("ip", &["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        for i in 0..links {
            ns.add_link(&format!("d{i}"));
        }
        if links > 0 {
            ns.ip(&["addr", "add", "192.168.50.1/24", "dev", "d0"]);
        }
        ns
    }

    /// Adds interface `name` (a veth pair `name`/`name`p, both up: this kernel has no
    /// dummy driver, and a pod's host side is a veth anyway).
    pub fn add_link(&self, name: &str) {
        let peer = format!("{name}p");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
        self.ip(&["link", "set", &peer, "up"]);
        self.ip(&["link", "set", name, "up"]);
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let net = format!("--net=/var/run/netns/{}", self.name);
        let mut all = vec![net.as_str(), "--", program];
        all.extend_from_slice(args);
        sh("nsenter", &all)
    }

    /// `<program> -t <table>` output without its `#` comment lines.
    pub fn save(&self, program: &str, table: &str) -> Vec<String> {
        self.exec(program, &["-t", table])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    /// Rules of `chain` with their packet counters, in order.
    pub fn counters(&self, chain: &str) -> Vec<(u64, String)> {
        let prefix = format!("-A {chain} ");
        self.exec("iptables-save", &["-c", "-t", "filter"])
            .lines()
            .filter_map(|l| {
                let (count, rule) = l.strip_prefix('[')?.split_once("] ")?;
                let rule = rule.strip_prefix(&prefix)?;
                Some((count.split(':').next()?.parse().ok()?, rule.to_owned()))
            })
            .collect()
    }

    pub fn set_members(&self, set: &str) -> BTreeSet<String> {
        self.exec("ipset", &["save", set])
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("add {set} ")).map(str::to_owned))
            .collect()
    }

    pub fn sets(&self) -> BTreeSet<String> {
        self.exec("ipset", &["list", "-n"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn agent_routes(&self) -> BTreeSet<String> {
        let proto = ROUTE_PROTOCOL.to_string();
        let mut all: BTreeSet<String> = BTreeSet::new();
        for family in ["-4", "-6"] {
            let out = self.ip(&[family, "route", "show", "proto", &proto]);
            all.extend(out.lines().map(|l| l.trim().to_owned()));
        }
        all
    }

    /// Sends one UDP datagram to 127.0.0.1:`port` from inside the namespace.
    pub fn send_udp(&self, port: u16, count: usize) {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..count {
                socket.send_to(b"x", ("127.0.0.1", port)).unwrap();
            }
        })
        .join()
        .unwrap();
    }

    pub fn config(&self) -> DataplaneConfig {
        DataplaneConfig {
            netns: Some(self.name.clone()),
            ..DataplaneConfig::default()
        }
    }

    pub async fn dataplane(&self) -> Dataplane {
        Dataplane::new(self.config(), Arc::new(DataplaneStatus::default()))
            .await
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command in the caller's namespace; panics on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether we may create namespaces; the tests are skipped (loudly) otherwise.
pub fn root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("SKIPPED: dataplane kernel tests need root");
    }
    root
}

/// A scratch namespace with `links` interfaces ([`Netns::new`]); `None` without root
/// (the test returns, and [`root`] has said it skipped).
pub fn scratch(links: usize) -> Option<Netns> {
    root().then(|| Netns::new(links))
}

/// [`scratch`] with a dataplane opened on it.
pub async fn scratch_dataplane(links: usize) -> Option<(Netns, Dataplane)> {
    let ns = scratch(links)?;
    let dp = ns.dataplane().await;
    Some((ns, dp))
}

/// Owned rule strings.
pub fn rules(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// An ipset value.
pub fn set(kind: IpSetKind, family: Family, members: impl IntoIterator<Item = String>) -> IpSet {
    IpSet {
        kind,
        family,
        members: Arc::new(members.into_iter().collect()),
    }
}

/// A node with `endpoints` local endpoints (interfaces `d0`.. when `with_routes`): per
/// endpoint two chains and two ipsets, plus root chains, v6 chains, a nat rule and
/// routes.
pub fn node(endpoints: usize, with_routes: bool) -> Desired {
    let mut d = Desired::default();
    let mut forward = Vec::new();
    for i in 0..endpoints {
        let (to, from) = (format!("cali-tw-ep{i}"), format!("cali-fw-ep{i}"));
        let (src, ports) = (format!("cali40s{i}"), format!("cali40p{i}"));
        forward.push(format!("-o d{i} -j {to}"));
        forward.push(format!("-i d{i} -j {from}"));
        d.v4.filter.insert(
            to,
            vec![
                format!("-m set --match-set {src} src -j ACCEPT"),
                format!("-p tcp -m set --match-set {ports} dst,dst -j ACCEPT"),
                "-j DROP".into(),
            ],
        );
        d.v4.filter
            .insert(from, rules(&["-p udp --dport 53 -j ACCEPT", "-j ACCEPT"]));
        d.ipsets.insert(
            src,
            set(
                IpSetKind::Net,
                Family::V4,
                (0..5).map(|j| format!("10.{}.{j}.0/24", i % 250)),
            ),
        );
        d.ipsets.insert(
            ports,
            set(
                IpSetKind::IpPort,
                Family::V4,
                [format!("10.244.0.{},tcp:80", i % 250)],
            ),
        );
        if with_routes {
            d.routes.insert(Route {
                dst: format!("10.244.0.{}/32", i + 1),
                target: RouteTarget::Interface(format!("d{i}")),
            });
        }
    }
    forward.push("-j ACCEPT".into());
    d.v4.filter.insert("cali-FORWARD".into(), forward);
    d.v4.filter
        .insert("cali-INPUT".into(), rules(&["-j ACCEPT"]));
    d.v4.filter
        .insert("cali-OUTPUT".into(), rules(&["-j ACCEPT"]));
    d.v4.nat.insert(
        "cali-POSTROUTING".into(),
        rules(&["-s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE"]),
    );
    d.v6 = Tables {
        filter: [
            (
                "cali-INPUT".to_string(),
                rules(&["-m set --match-set cali60s src -j ACCEPT"]),
            ),
            ("cali-FORWARD".to_string(), rules(&["-j ACCEPT"])),
            ("cali-OUTPUT".to_string(), rules(&["-j ACCEPT"])),
        ]
        .into(),
        nat: BTreeMap::new(),
    };
    d.ipsets.insert(
        "cali60s".into(),
        set(IpSetKind::Net, Family::V6, ["fd00::1/128".to_string()]),
    );
    if with_routes {
        d.routes.insert(Route {
            dst: "10.245.0.0/24".into(),
            target: RouteTarget::Gateway("192.168.50.2".parse::<IpAddr>().unwrap()),
        });
    }
    d
}
