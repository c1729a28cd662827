//! A small iptables interpreter over [`Desired`]: walks chains for one packet, with the
//! match modules and targets calc emits (anything else panics, so a new construct
//! cannot go unchecked). Tests assert reachability through it rather than on rule text,
//! so they prove semantics (AND/OR, marks, gotos) and not spelling.

use std::net::IpAddr;

use crate::calc::objects::Net;
use crate::calc::{Desired, IpSetKind, Tables};

/// One packet, as the netfilter hooks see it (conntrack state NEW).
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp`, `sctp`, `icmp`, `ipv6-icmp`.
    pub proto: &'static str,
    pub sport: u16,
    pub dport: u16,
    pub icmp: (u8, u8),
    pub iif: Option<String>,
    pub oif: Option<String>,
}

/// The end of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    /// Fell off the root chain (the kernel's own chain continues).
    Continue,
}

enum Outcome {
    Accept,
    Drop,
    Return,
}

struct Walk<'a> {
    desired: &'a Desired,
    tables: &'a Tables,
    packet: &'a Packet,
    mark: u32,
    /// LOG targets hit.
    logs: usize,
}

fn hex(s: &str) -> u32 {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

fn mark_mask(s: &str) -> (u32, u32) {
    let (v, m) = s.split_once('/').unwrap();
    (hex(v), hex(m))
}

fn net_contains(net: &str, ip: IpAddr) -> bool {
    let n = Net::parse(net).unwrap_or_else(|| panic!("bad net {net}"));
    let host = Net::parse(&format!("{ip}/{}", n.prefix)).unwrap();
    host.addr == n.addr && host.family == n.family
}

fn iface_matches(pattern: &str, iface: Option<&String>) -> bool {
    let Some(iface) = iface else { return false };
    match pattern.strip_suffix('+') {
        Some(prefix) => iface.starts_with(prefix),
        None => iface == pattern,
    }
}

impl Walk<'_> {
    fn in_set(&self, name: &str, dirs: &str) -> bool {
        let set = self
            .desired
            .ipsets
            .get(name)
            .unwrap_or_else(|| panic!("rule references missing ipset {name}"));
        let p = self.packet;
        let (ip, port) = if dirs.starts_with("src") {
            (p.src, p.sport)
        } else {
            (p.dst, p.dport)
        };
        match set.kind {
            IpSetKind::Net => set.members.iter().any(|m| net_contains(m, ip)),
            IpSetKind::IpPort => set.members.contains(&format!("{ip},{}:{port}", p.proto)),
        }
    }

    fn ports_match(list: &str, port: u16) -> bool {
        list.split(',').any(|item| match item.split_once(':') {
            Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse().unwrap()).contains(&port),
            None => item.parse::<u16>().unwrap() == port,
        })
    }

    fn icmp_matches(&self, spec: &str) -> bool {
        let (t, c) = self.packet.icmp;
        match spec.split_once('/') {
            Some((ty, code)) => ty.parse::<u8>().unwrap() == t && code.parse::<u8>().unwrap() == c,
            None => spec.parse::<u8>().unwrap() == t,
        }
    }

    fn chain(&mut self, name: &str, depth: usize) -> Outcome {
        assert!(depth < 16, "chain loop at {name}");
        let rules = self
            .tables
            .filter
            .get(name)
            .unwrap_or_else(|| panic!("jump to missing chain {name}"));
        for rule in rules {
            let t: Vec<&str> = rule.split_whitespace().collect();
            let mut i = 0;
            let mut all = true;
            let mut negate = false;
            let mut target: Option<(&str, &[&str])> = None;
            while i < t.len() {
                let p = self.packet;
                let (hit, used) = match t[i] {
                    "!" => {
                        negate = true;
                        i += 1;
                        continue;
                    }
                    "-m" => {
                        i += 2;
                        continue;
                    }
                    "-s" => (net_contains(t[i + 1], p.src), 2),
                    "-d" => (net_contains(t[i + 1], p.dst), 2),
                    "-i" => (iface_matches(t[i + 1], p.iif.as_ref()), 2),
                    "-o" => (iface_matches(t[i + 1], p.oif.as_ref()), 2),
                    "-p" => (t[i + 1] == p.proto, 2),
                    "--ctstate" => (t[i + 1].split(',').any(|s| s == "NEW"), 2),
                    "--mark" => {
                        let (v, m) = mark_mask(t[i + 1]);
                        (self.mark & m == v, 2)
                    }
                    "--match-set" => (self.in_set(t[i + 1], t[i + 2]), 3),
                    "--dports" => (Self::ports_match(t[i + 1], p.dport), 2),
                    "--dport" => (t[i + 1].parse::<u16>().unwrap() == p.dport, 2),
                    "--sports" => (Self::ports_match(t[i + 1], p.sport), 2),
                    "--icmp-type" | "--icmpv6-type" => (self.icmp_matches(t[i + 1]), 2),
                    "-j" | "-g" => {
                        target = Some((t[i], &t[i + 1..]));
                        break;
                    }
                    other => panic!("sim does not know {other:?} in {rule:?}"),
                };
                all &= hit != negate;
                negate = false;
                i += used;
            }
            if !all {
                continue;
            }
            let Some((how, args)) = target else {
                panic!("rule without target: {rule}")
            };
            match (how, args[0]) {
                (_, "ACCEPT") => return Outcome::Accept,
                (_, "DROP") => return Outcome::Drop,
                (_, "RETURN") => return Outcome::Return,
                (_, "LOG") => self.logs += 1,
                (_, "MARK") => {
                    assert_eq!(args[1], "--set-xmark");
                    let (v, m) = mark_mask(args[2]);
                    self.mark = (self.mark & !m) ^ v;
                }
                ("-j", chain) => match self.chain(chain, depth + 1) {
                    Outcome::Return => {}
                    done => return done,
                },
                ("-g", chain) => return self.chain(chain, depth + 1),
                other => panic!("unknown target {other:?}"),
            }
        }
        Outcome::Return
    }
}

/// Walks `root` (a filter chain) for `packet`.
pub fn run(desired: &Desired, root: &str, packet: &Packet) -> Verdict {
    run_logged(desired, root, packet).0
}

/// Walks `root` for `packet`; also returns how many LOG targets the packet hit.
pub fn run_logged(desired: &Desired, root: &str, packet: &Packet) -> (Verdict, usize) {
    let tables = match packet.src {
        IpAddr::V4(_) => &desired.v4,
        IpAddr::V6(_) => &desired.v6,
    };
    let mut walk = Walk {
        desired,
        tables,
        packet,
        mark: 0,
        logs: 0,
    };
    let verdict = match walk.chain(root, 0) {
        Outcome::Accept => Verdict::Accept,
        Outcome::Drop => Verdict::Drop,
        Outcome::Return => Verdict::Continue,
    };
    (verdict, walk.logs)
}
