//! calc: the pure half of the dataplane. It indexes the synced model (endpoints,
//! profiles, policies, nodes, pools, network sets) and computes, for this node, what the
//! kernel should hold: iptables chains for the local workload endpoints, this node's
//! host endpoints ([`hosts`]) and the policies selecting them, the ipsets those rules reference (with their members from the whole
//! cluster), and the routes. No I/O: [`crate::dataplane`] writes the result.
//!
//! Contract with the dataplane (see [`Desired`]): chain names start with `cali-` and are
//! at most 28 characters; ipset names start with `cali` and are at most 31 characters;
//! the root chains `cali-INPUT`, `cali-FORWARD`, `cali-OUTPUT` (filter) and
//! `cali-POSTROUTING` (nat) always exist, and the dataplane hooks them from the kernel's
//! built-in chains. Rules are iptables rule arguments without the `-A <chain>` prefix
//! and without a comment; the dataplane adds a hash comment per rule.
//!
//! Mark bits: policy chains set [`names::MARK_ACCEPT`] (0x10000) on allow and
//! [`names::MARK_PASS`] (0x20000) on pass; endpoint chains clear both on entry. Nothing
//! outside calc's chains needs to read them: a return from a dispatch chain means
//! "allowed" (see render.rs). ipset members are canonical CIDRs (`10.0.0.1/32`) and
//! `ip,proto:port`; an `Arc::ptr_eq` between the member sets of two [`Desired`]s proves
//! them equal (members are updated copy-on-write).
//!
//! Layout: `objects` (endpoints and network sets as labelled objects, compact
//! addresses), `store` (every object once, by slot id, with interned labels: `intern`,
//! and id sets: `idset`), `selectors` (active selectors and their matches), `sets`
//! (ipset specs and members), `index` (the three together: what an update or a new set
//! does), `rules` (one policy's rules to iptables), `policy` (a policy's rendered
//! state), `render` (tables), `engine` (update rules and caches), [`names`] (every name
//! and mark).
//! Determinism: every output is ordered (BTreeMap) and every name a hash of what it
//! names, so the same state gives a byte-identical [`Desired`] whatever the update order.

mod engine;
pub mod hosts;
mod idset;
mod index;
mod intern;
pub mod names;
mod objects;
mod policy;
mod render;
mod rules;
mod selectors;
mod sets;
mod store;
#[cfg(test)]
mod tests;
pub mod tunnels;

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
    /// Via `gateway` out of a tunnel device, onlink (see [`tunnels`]).
    Tunnel {
        /// The device (`vxlan.calico`, `tunl0`).
        device: String,
        /// The next hop.
        gateway: IpAddr,
    },
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
    /// Tunnel devices and VXLAN peers.
    pub tunnels: tunnels::Tunnels,
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
    /// Workload interface prefixes: the root chains send traffic of every interface
    /// starting with one of them through the dispatch chains.
    pub interface_prefixes: netmodel::InterfacePrefixes,
}

/// The incremental calculation: fold model updates in with [`Calc::apply`], read the
/// result with [`Calc::desired`].
pub struct Calc {
    engine: engine::Engine,
}

impl std::fmt::Debug for Calc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calc")
            .field("active_selectors", &self.engine.active_selectors())
            .finish_non_exhaustive()
    }
}

impl Calc {
    /// A calculation with no state.
    pub fn new(config: CalcConfig) -> Calc {
        Calc::with_hosts(config, hosts::HostConfig::default())
    }

    /// A calculation with no state and these host endpoint settings (failsafe ports,
    /// automatic host endpoints).
    pub fn with_hosts(config: CalcConfig, hosts: hosts::HostConfig) -> Calc {
        Calc {
            engine: engine::Engine::new(config, hosts),
        }
    }

    /// Folds changes in (in order; deletions have `value: None`). Cost: an endpoint
    /// update evaluates the active selectors of its namespace plus unscoped ones; a
    /// policy update evaluates its selector on the local endpoints and scans the
    /// cluster (or one namespace) once per selector no active policy used before.
    pub fn apply(&mut self, updates: &[Update]) {
        self.engine.apply(updates);
    }

    /// What the kernel should hold now. Cost: cloning the cached tables and routes and
    /// one `Arc` per ipset; never proportional to the cluster's endpoints.
    pub fn desired(&self) -> Desired {
        self.engine.desired()
    }

    /// The number of selectors whose matches are maintained (for metrics and tests).
    pub fn active_selectors(&self) -> usize {
        self.engine.active_selectors()
    }
}
