//! netlab: a network-namespace test bench for the dataplane, and the NetworkPolicy
//! oracle its end-to-end tests are checked against.
//!
//! - [`topology`]: nodes and pods as network namespaces (a switch namespace joins the
//!   nodes on one L2 segment; each pod hangs off its node through a `cali...` veth, as a
//!   CNI plugin would leave it). Everything is deleted on drop, even during a panic.
//! - [`underlay`]: nodes on several subnets (one segment each) joined by a router
//!   namespace that knows no pod CIDR, for encapsulation tests.
//! - [`listen`] and [`probe`]: TCP and UDP listeners in every pod, concurrent probes
//!   between pods, and a [`probe::Matrix`] of results with a readable diff.
//! - [`policy`] and [`oracle`]: Kubernetes NetworkPolicy as small structs, and an
//!   independent implementation of its semantics that computes the expected matrix.
//! - [`flow`]: long-lived TCP connections with checked exchanges both ways (does a
//!   connection survive a restart, an outage, a repair?).
//! - [`cni`]: running a CNI plugin as a container runtime does; the bench can wire its
//!   pods through one ([`TopologyBuilder::wiring`]).
//! - [`kube`]: the same pods, namespaces, nodes and policies as Kubernetes JSON objects
//!   to write into kube-sim.
//!
//! Needs root (namespaces, veths). Nothing here touches the root namespace's links,
//! routes or firewall.

pub mod cmd;
pub mod cni;
pub mod flow;
pub mod kube;
pub mod listen;
pub mod netns;
pub mod oracle;
pub mod policy;
pub mod probe;
pub mod specs;
pub mod stack;
pub mod topology;
pub mod underlay;

pub use cmd::NetlabError;
pub use oracle::{Cluster, ClusterPod, expected};
pub use policy::{
    IpBlock, LabelSelector, NamedPort, Operator, Peer, Policy, PolicyPort, PolicyType, PortValue,
    Protocol, Requirement, Rule,
};
pub use probe::{Matrix, Mismatch, ProbeKey};
pub use stack::{IpFamily, Stack};
pub use topology::{NodeInfo, PodInfo, PodSpec, Topology, TopologyBuilder};
