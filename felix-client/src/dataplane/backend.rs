//! backend: which iptables the agent programs. Hosts run either the legacy (x_tables)
//! or the nf_tables flavour of iptables; rules written through one are invisible to the
//! other, so the agent must use the one kube-proxy and the host already use, or its
//! chains never see the packets the host's rules accept first.
//!
//! `auto` does what Calico's `Auto` does: count the rules each flavour's save program
//! prints (IPv4 and IPv6) and pick legacy only when legacy holds more; nft otherwise
//! (also on an empty host: nft is every current distribution's default). When only one
//! flavour's programs are installed, that one; with neither, the plain `iptables-*`
//! names (whatever the host's alternatives point at).

use clap::ValueEnum;

use super::exec::Runner;
use crate::calc::Family;

/// The `--iptables-backend` choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum IptablesBackend {
    /// Detect at start from the rules the host already has.
    #[default]
    Auto,
    /// iptables over nf_tables (`iptables-nft-*`).
    Nft,
    /// Legacy x_tables (`iptables-legacy-*`).
    Legacy,
}

/// The programs one backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    /// `iptables-nft-save` and friends.
    Nft,
    /// `iptables-legacy-save` and friends.
    Legacy,
    /// Plain `iptables-save` and friends (neither flavour's programs are installed).
    Plain,
}

impl Programs {
    /// The (save, restore) programs of `family`.
    pub fn save_restore(self, family: Family) -> (&'static str, &'static str) {
        match (self, family) {
            (Programs::Nft, Family::V4) => ("iptables-nft-save", "iptables-nft-restore"),
            (Programs::Nft, Family::V6) => ("ip6tables-nft-save", "ip6tables-nft-restore"),
            (Programs::Legacy, Family::V4) => ("iptables-legacy-save", "iptables-legacy-restore"),
            (Programs::Legacy, Family::V6) => ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
            (Programs::Plain, Family::V4) => ("iptables-save", "iptables-restore"),
            (Programs::Plain, Family::V6) => ("ip6tables-save", "ip6tables-restore"),
        }
    }

    /// The name for logs and the `felix_dataplane_iptables_backend` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Programs::Nft => "nft",
            Programs::Legacy => "legacy",
            Programs::Plain => "plain",
        }
    }
}

/// Rules (`-A ...` lines) in one save program's output.
fn count_rules(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Rules one flavour holds (IPv4 + IPv6), or `None` when its programs do not run.
async fn rules_in(runner: &Runner, flavour: Programs) -> Option<usize> {
    let mut total = None;
    for family in [Family::V4, Family::V6] {
        let (save, _) = flavour.save_restore(family);
        if let Ok(out) = runner.run(save, &[], None).await {
            *total.get_or_insert(0) += count_rules(&out);
        }
    }
    total
}

/// Resolves `choice` to the programs to run (reads the kernel for `auto`).
pub(crate) async fn resolve(runner: &Runner, choice: IptablesBackend) -> Programs {
    let programs = match choice {
        IptablesBackend::Nft => Programs::Nft,
        IptablesBackend::Legacy => Programs::Legacy,
        IptablesBackend::Auto => {
            let legacy = rules_in(runner, Programs::Legacy).await;
            let nft = rules_in(runner, Programs::Nft).await;
            let picked = match (legacy, nft) {
                (Some(l), Some(n)) if l > n => Programs::Legacy,
                (Some(_), Some(_)) | (None, Some(_)) => Programs::Nft,
                (Some(_), None) => Programs::Legacy,
                (None, None) => Programs::Plain,
            };
            tracing::info!(
                ?legacy,
                ?nft,
                backend = picked.as_str(),
                "iptables backend detected"
            );
            picked
        }
    };
    metrics::gauge!("felix_dataplane_iptables_backend", "backend" => programs.as_str()).set(1.0);
    programs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_counted_from_save_output() {
        let save = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A KUBE-FIREWALL -j DROP\nCOMMIT\n";
        assert_eq!(count_rules(save), 2);
        assert_eq!(count_rules(""), 0);
    }

    #[test]
    fn each_backend_names_its_programs() {
        assert_eq!(
            Programs::Legacy.save_restore(Family::V6),
            ("ip6tables-legacy-save", "ip6tables-legacy-restore")
        );
        assert_eq!(
            Programs::Nft.save_restore(Family::V4).1,
            "iptables-nft-restore"
        );
        assert_eq!(Programs::Plain.save_restore(Family::V4).0, "iptables-save");
    }
}
