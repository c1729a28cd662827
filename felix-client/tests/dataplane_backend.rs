//! Root-only: `--iptables-backend auto` programs the iptables flavour that holds the
//! host's existing rules (legacy when iptables-legacy has more, nft otherwise), each
//! test in a fresh network namespace with both Debian tools (`iptables-legacy`,
//! `iptables-nft`). The agent's chains must land in the chosen flavour only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dataplane_support;

use dataplane_support::{Netns, node, root};

/// Seeds `rules` foreign rules through `seed` (a program such as `iptables-legacy`),
/// applies a node's desired state with the default (auto) backend, and answers whether
/// the agent's chains are in (legacy, nft).
async fn agent_chains_after(seed: Option<(&str, usize)>) -> (bool, bool) {
    let ns = Netns::new(1);
    if let Some((program, rules)) = seed {
        for i in 0..rules {
            let src = format!("192.0.2.{}", i + 1);
            ns.exec(program, &["-A", "INPUT", "-s", &src, "-j", "DROP"]);
        }
    }
    let mut dp = ns.dataplane().await;
    let report = dp.apply(&node(1, true)).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let has = |save: &str| {
        ns.save(save, "filter")
            .iter()
            .any(|l| l.starts_with(":cali-FORWARD"))
    };
    (has("iptables-legacy-save"), has("iptables-nft-save"))
}

#[tokio::test]
async fn auto_picks_legacy_when_the_host_rules_are_legacy() {
    if !root() {
        return;
    }
    assert_eq!(
        agent_chains_after(Some(("iptables-legacy", 3))).await,
        (true, false)
    );
}

#[tokio::test]
async fn auto_picks_nft_when_the_host_rules_are_nft_or_absent() {
    if !root() {
        return;
    }
    assert_eq!(
        agent_chains_after(Some(("iptables-nft", 3))).await,
        (false, true)
    );
    assert_eq!(agent_chains_after(None).await, (false, true));
}
