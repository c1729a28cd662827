//! Memory benchmark: bytes held per key by the mirror and per endpoint by the calc, for a
//! 150,000-pod cluster (see `tests/memory_support` for the cluster and the method: a
//! counting global allocator, a mirror synced from a real snapshot, the calc folding its
//! changes). A report, not an assertion (tests/memory_budget.rs asserts).
//!
//! Run with `cargo bench -p felix-client --bench memory` (`PODS=20000` for a smaller run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/memory_support/mod.rs"]
mod memory_support;

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let pods: usize = std::env::var("PODS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(150_000);
    let m = memory_support::measure(pods);
    let keys = m.keys;
    println!("cluster: {pods} pods, {keys} keys");
    println!(
        "mirror: {:.1} MiB live = {} bytes/key (own accounting {} bytes/key)",
        mib(m.mirror_live),
        m.mirror_live / keys as isize,
        m.mirror_accounted / keys.max(1),
    );
    println!(
        "calc: {:.1} MiB live incl. one Desired = {} bytes/endpoint ({} ipsets, {} members)",
        mib(m.calc_live),
        m.calc_live / pods as isize,
        m.ipsets,
        m.members,
    );
}
