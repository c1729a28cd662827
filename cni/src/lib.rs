//! felix-cni: the CNI plugin that wires pods for the agent, and its install-cni
//! subcommand.
//!
//! - [`config`]: the runtime's `CNI_*` environment and the network config on stdin.
//! - [`plugin`]: ADD, DEL, CHECK, VERSION (CNI 1.0; configs 0.3.0 to 1.0.0 accepted).
//! - [`ipam`]: delegation to the IPAM plugin the config names (host-local).
//! - [`link`]: the veth pair, addresses, routes and proxy ARP, through iproute2.
//! - [`names`]: the host-side interface name, the model's (`<prefix>` + sha1 prefix).
//! - [`install`]: copies the binary and writes the conflist atomically.
//! - [`error`]: errors and their CNI error results (codes in [`error::CniError::code`]).
//!
//! Invariant: stdout carries only the CNI result or error result; logs go to a file.

pub mod config;
pub mod error;
pub mod install;
pub mod ipam;
pub mod link;
pub mod names;
pub mod plugin;

pub use error::CniError;
