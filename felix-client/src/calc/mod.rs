//! calc: the pure half of the dataplane. It indexes the synced model (endpoints,
//! profiles, policies, nodes, pools, network sets) and computes, for this node, what the
//! kernel should hold: iptables chains for the local workload endpoints and the policies
//! selecting them, the ipsets those rules reference (with their members from the whole
//! cluster), and the routes. No I/O: [`crate::dataplane`] writes the result.
//!
//! Contract with the dataplane (see [`Desired`]): chain names start with `cali-` and are
//! at most 28 characters; ipset names start with `cali` and are at most 31 characters;
//! the root chains `cali-INPUT`, `cali-FORWARD`, `cali-OUTPUT` (filter) and
//! `cali-POSTROUTING` (nat) always exist, and the dataplane hooks them from the kernel's
//! built-in chains. Rules are iptables rule arguments without the `-A <chain>` prefix
//! and without a comment; the dataplane adds a hash comment per rule.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use typha_proto::Update;

/// Chains of one table: chain name -> rules, in order.
pub type Chains = BTreeMap<String, Vec<String>>;

/// The iptables tables of one IP family that the agent owns chains in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// The filter table.
    pub filter: Chains,
    /// The nat table (MASQUERADE for natOutgoing pools in networking mode).
    pub nat: Chains,
}

/// IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`inet`).
    V4,
    /// IPv6 (`inet6`).
    V6,
}

/// The ipset type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpSetKind {
    /// `hash:net`: CIDRs (a /32 or /128 for a single address).
    Net,
    /// `hash:ip,port`: members like `10.0.0.1,tcp:80` (named ports).
    IpPort,
}

/// One ipset as it should be in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpSet {
    /// The set type.
    pub kind: IpSetKind,
    /// The family.
    pub family: Family,
    /// Members in ipset's own syntax (`10.0.0.1/32`, `10.0.0.1,tcp:80`).
    pub members: Arc<BTreeSet<String>>,
}

/// Where a route sends traffic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteTarget {
    /// Out of a local interface (a pod's `cali...` interface), scope link.
    Interface(String),
    /// Via a gateway (another node's address on the shared L2).
    Gateway(IpAddr),
}

/// One route the agent owns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Destination CIDR (`10.0.1.5/32`, `10.0.2.0/24`, `fd00::5/128`).
    pub dst: String,
    /// Where it goes.
    pub target: RouteTarget,
}

/// Everything the kernel should hold, as computed from the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// iptables (IPv4).
    pub v4: Tables,
    /// ip6tables (IPv6).
    pub v6: Tables,
    /// ipsets by name.
    pub ipsets: BTreeMap<String, IpSet>,
    /// Routes the agent owns.
    pub routes: BTreeSet<Route>,
}

/// What the agent is responsible for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalcMode {
    /// Network policy only: routes to local pods, no cluster routes, no NAT.
    PolicyOnly,
    /// Policy plus routes to other nodes' pod CIDRs and natOutgoing MASQUERADE.
    Networking,
}

/// The calculation's settings.
#[derive(Clone, Debug)]
pub struct CalcConfig {
    /// This node's name: endpoints with this node are local.
    pub node_name: String,
    /// The mode.
    pub mode: CalcMode,
    /// The cluster CIDRs (pod traffic to these is not NATed), from configuration.
    pub cluster_cidrs: Vec<String>,
}

/// The incremental calculation (stub: the calc owner replaces the body).
#[derive(Debug)]
pub struct Calc {
    config: CalcConfig,
}

impl Calc {
    /// A calculation with no state.
    pub fn new(config: CalcConfig) -> Calc {
        Calc { config }
    }

    /// Folds changes in (in order; deletions have `value: None`).
    pub fn apply(&mut self, updates: &[Update]) {
        let _ = updates;
    }

    /// What the kernel should hold now.
    pub fn desired(&self) -> Desired {
        let _ = &self.config;
        Desired::default()
    }
}
