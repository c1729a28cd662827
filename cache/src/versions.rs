//! Version bookkeeping of the cache: which Kubernetes resourceVersions the state and each
//! breadcrumb stand for, so that a client that followed *another* replica can be resumed
//! here from its version vector (see docs/protocol.md, "Resume").
//!
//! Vocabulary. A resource's *version* in a vector is a lower bound: every change of that
//! resource up to it is in the state (a state may hold newer values too: that only makes
//! a resumed client receive keys it already has). The upstream marks each batch, per
//! resource it touched, with a [`ResourceMark`]: the resource's version after the batch
//! (`None` while it is not known: a list in progress, or an unparsable resourceVersion),
//! and whether the batch's changes came from a list (their own versions are unknown, so a
//! resuming client always receives them).
//!
//! Invariants:
//! - `current` only rises; it rises on no-op batches too (both replicas then agree on the
//!   vector of a state whatever their batching), and those advances ride on the next
//!   breadcrumb (`pending`);
//! - the *floor* is the vector at the oldest point the history still covers (the state at
//!   in-sync is the base; pre-base breadcrumbs never count). A resource whose changes
//!   before that point have unknown versions has an unknown floor: no cross-replica
//!   resume until a breadcrumb that settles it is evicted too;
//! - a relist raises the floor at once: what changed while the watch was down (objects
//!   created and deleted meanwhile) left no trace here, so only clients at or above the
//!   list's version can be resumed; while the list is in progress the floor is unknown;
//! - a breadcrumb is *relevant* to a client at vector `c` when it touched a resource at a
//!   version above `c`'s, or touched one through a list. Every change a client at or above
//!   the floor may lack is in a relevant breadcrumb (over-inclusion is harmless; missing
//!   one is the bug this module exists to avoid);
//! - one update without any mark switches cross-replica resume off for the cache's life
//!   (tests and harnesses that feed bare batches);
//! - a *progress* batch (bookmarks: versions advance, nothing changed) whose advances
//!   are not yet in any breadcrumb makes an empty breadcrumb carrying them, so clients'
//!   vectors follow the datastore while their resources are quiet (a replica that listed
//!   later has a higher floor, and only a client at or above it can be resumed there);
//! - a list whose version is *below* the resource's current one means the datastore was
//!   restored (resourceVersions started over lower): positions of the old history and
//!   the new one are not comparable. The resource's current version goes down to the
//!   list's (the next breadcrumb's advance carries the lower value: clients replace
//!   their entries), and the floor rises above the highest old version held, so every client
//!   at or below it (old and new numbers overlap there) gets a snapshot. A replica that
//!   starts after a restore cannot tell old positions from new ones: an old position
//!   above its current version is `Ahead` (a snapshot after the catch-up wait), and the
//!   digest check catches the rest.

use std::collections::BTreeSet;

pub use typha_proto::ResourceMark;
use typha_proto::{Revision, VersionVector};

/// How one breadcrumb touched one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touch {
    /// Watch events up to `version`: relevant to clients below it.
    Watched {
        /// The resource.
        resource: String,
        /// The batch's highest resourceVersion of it.
        version: u64,
    },
    /// List-derived or unversioned changes: relevant to every client. `settled`: the
    /// resource's version at the end of the batch, if it was known then.
    Listed {
        /// The resource.
        resource: String,
        /// The resource's version once the batch was applied, if consistent.
        settled: Option<u64>,
    },
}

/// The version facts of one breadcrumb.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrumbVersions {
    /// The vector entries that rose since the previous breadcrumb (no-op batches
    /// included): what the crumb's `DeltaBatch.versions` carries.
    pub advanced: VersionVector,
    /// The resources the crumb's changes came from.
    pub touched: Vec<Touch>,
}

impl CrumbVersions {
    /// Whether a client at `client` may lack one of this crumb's changes.
    pub fn relevant_to(&self, client: &VersionVector) -> bool {
        self.touched.iter().any(|t| match t {
            Touch::Watched { resource, version } => *version > client.get(resource),
            Touch::Listed { .. } => true,
        })
    }
}

/// Why a client cannot be resumed from its version vector here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RebaseRefusal {
    /// The history carries no usable versions (not in sync yet, or fed without marks).
    #[error("this history has no usable resource versions")]
    Unversioned,
    /// Changes of `0` older than the history's start have unknown versions.
    #[error("the history's floor for {0} is unknown")]
    FloorUnknown(String),
    /// The client is older than the history's start for `0`.
    #[error("the client is behind the history for {0}")]
    BehindHistory(String),
    /// The client has seen changes of `0` this replica has not (yet).
    #[error("the client is ahead of this replica for {0}")]
    Ahead(String),
}

impl RebaseRefusal {
    /// The `reason` label of `typha_resume_refusals_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RebaseRefusal::Unversioned | RebaseRefusal::FloorUnknown(_) => "unversioned",
            RebaseRefusal::BehindHistory(_) => "behind_history",
            RebaseRefusal::Ahead(_) => "ahead",
        }
    }
}

/// The cache's version state (see module docs).
#[derive(Debug, Default)]
pub(super) struct Ledger {
    current: VersionVector,
    pending: VersionVector,
    /// Resources whose version is not known now (list in progress, unparsable).
    unsettled: BTreeSet<String>,
    /// The revision from which the history serves cross-replica resumes (in-sync).
    base: Option<Revision>,
    floor: VersionVector,
    floor_unknown: BTreeSet<String>,
    /// A changing batch came without marks: versions cannot be trusted, for good.
    unattributed: bool,
}

impl Ledger {
    /// The current vector.
    pub fn current(&self) -> &VersionVector {
        &self.current
    }

    /// The floor (see module docs) and the resources whose floor is unknown.
    pub fn floor(&self) -> (&VersionVector, &BTreeSet<String>) {
        (&self.floor, &self.floor_unknown)
    }

    /// The base revision, once set.
    pub fn base(&self) -> Option<Revision> {
        self.base
    }

    /// Records one batch's marks; `changed`: the batch changed the state; `progress`: it
    /// holds bookmarks. Returns the version facts of the breadcrumb to make, if any (a
    /// change, or a progress batch with advances no breadcrumb carries yet).
    pub fn record(
        &mut self,
        marks: &[ResourceMark],
        changed: bool,
        progress: bool,
    ) -> Option<CrumbVersions> {
        if changed && marks.is_empty() {
            self.unattributed = true;
        }
        for mark in marks {
            match mark.version {
                Some(version) if mark.listed && version < self.current.get(&mark.resource) => {
                    self.restored(&mark.resource, version);
                }
                Some(version) => {
                    if self.current.advance(&mark.resource, version) {
                        self.pending.advance(&mark.resource, version);
                    }
                    self.unsettled.remove(&mark.resource);
                }
                None => {
                    self.unsettled.insert(mark.resource.clone());
                }
            }
            if mark.listed && self.base.is_some() {
                match mark.version {
                    Some(_) => {
                        let settled = self.current.get(&mark.resource);
                        self.floor.advance(&mark.resource, settled);
                        self.floor_unknown.remove(&mark.resource);
                    }
                    None => {
                        self.floor_unknown.insert(mark.resource.clone());
                    }
                }
            }
        }
        let announce = progress && !self.pending.is_empty() && self.base.is_some();
        if !changed && !announce {
            return None;
        }
        let touched = marks
            .iter()
            .map(|m| match (m.listed, m.version) {
                (false, Some(version)) => Touch::Watched {
                    resource: m.resource.clone(),
                    version,
                },
                (_, settled) => Touch::Listed {
                    resource: m.resource.clone(),
                    settled: settled.map(|_| self.current.get(&m.resource)),
                },
            })
            .collect();
        Some(CrumbVersions {
            advanced: self.pending.take(),
            touched,
        })
    }

    /// A list of `resource` at `version`, below its current version: a restored
    /// datastore (see the module docs).
    fn restored(&mut self, resource: &str, version: u64) {
        let held = self.current.get(resource);
        self.current.set(resource, version);
        self.pending.set(resource, version);
        self.unsettled.remove(resource);
        if self.base.is_some() {
            self.floor.advance(resource, held.saturating_add(1));
        }
    }

    /// Versions can no longer prove what a client lacks: cross-replica resume is off.
    pub fn disable(&mut self) {
        self.unattributed = true;
    }

    /// The upstream is in sync at `revision`: the history serves cross-replica resumes
    /// from here on. Only the first call counts.
    pub fn set_base(&mut self, revision: Revision) {
        if self.base.is_some() {
            return;
        }
        self.base = Some(revision);
        self.floor = self.current.clone();
        self.floor_unknown = self.unsettled.clone();
    }

    /// The oldest breadcrumb (from `from`) left the history: the floor moves past it.
    pub fn evicted(&mut self, from: Revision, versions: &CrumbVersions) {
        if self.base.is_none_or(|base| from < base) {
            return;
        }
        for (resource, version) in versions.advanced.iter() {
            self.floor.advance(resource, version);
            self.floor_unknown.remove(resource);
        }
        for touch in &versions.touched {
            if let Touch::Listed { resource, settled } = touch {
                match settled {
                    Some(version) => {
                        self.floor.advance(resource, *version);
                        self.floor_unknown.remove(resource);
                    }
                    None => {
                        self.floor_unknown.insert(resource.clone());
                    }
                }
            }
        }
    }

    /// Whether a client at `client` can be brought to the current state from the
    /// history (after the base): `Ok` or why not. `Ahead` is the only refusal that time
    /// may cure (this replica catching up).
    pub fn check(&self, client: &VersionVector) -> Result<(), RebaseRefusal> {
        if self.unattributed || self.base.is_none() {
            return Err(RebaseRefusal::Unversioned);
        }
        if let Some(resource) = self.floor_unknown.iter().next() {
            return Err(RebaseRefusal::FloorUnknown(resource.clone()));
        }
        if let Some(resource) = self.floor.first_above(client) {
            return Err(RebaseRefusal::BehindHistory(resource.to_string()));
        }
        if let Some(resource) = client.first_above(&self.current) {
            return Err(RebaseRefusal::Ahead(resource.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (r, n) in entries {
            v.advance(r, *n);
        }
        v
    }

    #[test]
    fn no_op_advances_ride_on_the_next_crumb() {
        let mut l = Ledger::default();
        assert_eq!(
            l.record(&[ResourceMark::watched("pods", 5)], false, false),
            None
        );
        let crumb = l
            .record(&[ResourceMark::watched("nodes", 7)], true, false)
            .unwrap();
        assert_eq!(crumb.advanced, vv(&[("pods", 5), ("nodes", 7)]));
        assert_eq!(
            crumb.touched,
            vec![Touch::Watched {
                resource: "nodes".into(),
                version: 7
            }]
        );
        assert_eq!(l.current(), &vv(&[("pods", 5), ("nodes", 7)]));
        // Nothing pending afterwards.
        let next = l
            .record(&[ResourceMark::watched("nodes", 8)], true, false)
            .unwrap();
        assert_eq!(next.advanced, vv(&[("nodes", 8)]));
    }

    #[test]
    fn relevance() {
        let crumb = CrumbVersions {
            advanced: VersionVector::new(),
            touched: vec![Touch::Watched {
                resource: "pods".into(),
                version: 10,
            }],
        };
        assert!(crumb.relevant_to(&vv(&[("pods", 9)])));
        assert!(!crumb.relevant_to(&vv(&[("pods", 10)])));
        let listed = CrumbVersions {
            advanced: VersionVector::new(),
            touched: vec![Touch::Listed {
                resource: "pods".into(),
                settled: Some(3),
            }],
        };
        assert!(listed.relevant_to(&vv(&[("pods", 99)])));
    }

    #[test]
    fn floor_base_eviction_and_unknowns() {
        let mut l = Ledger::default();
        // Before in sync: no cross-replica resume at all.
        l.record(&[ResourceMark::listed("pods", Some(10))], true, false);
        assert_eq!(
            l.check(&vv(&[("pods", 10)])),
            Err(RebaseRefusal::Unversioned)
        );
        l.set_base(Revision(1));
        assert_eq!(l.check(&vv(&[("pods", 10)])), Ok(()));
        assert_eq!(
            l.check(&vv(&[("pods", 9)])),
            Err(RebaseRefusal::BehindHistory("pods".into()))
        );
        assert_eq!(
            l.check(&vv(&[("pods", 11)])),
            Err(RebaseRefusal::Ahead("pods".into()))
        );
        // A pre-base crumb's eviction does not move the floor.
        l.evicted(Revision(0), &CrumbVersions::default());
        assert_eq!(l.floor().0, &vv(&[("pods", 10)]));
        // A relist in progress: unknown floor; once listed, the list's version.
        let mid = l
            .record(&[ResourceMark::listed("pods", None)], true, false)
            .unwrap();
        assert_eq!(
            l.check(&vv(&[("pods", 10)])),
            Err(RebaseRefusal::FloorUnknown("pods".into()))
        );
        let done = l
            .record(&[ResourceMark::listed("pods", Some(12))], true, false)
            .unwrap();
        assert_eq!(
            l.check(&vv(&[("pods", 11)])),
            Err(RebaseRefusal::BehindHistory("pods".into()))
        );
        let watch = l
            .record(&[ResourceMark::watched("pods", 15)], true, false)
            .unwrap();
        assert_eq!(l.check(&vv(&[("pods", 12)])), Ok(()));
        // Evicting the list's crumbs: unknown until the one that settled it goes too.
        l.evicted(Revision(1), &mid);
        assert_eq!(
            l.check(&vv(&[("pods", 15)])),
            Err(RebaseRefusal::FloorUnknown("pods".into()))
        );
        l.evicted(Revision(2), &done);
        assert_eq!(l.floor().0, &vv(&[("pods", 12)]));
        assert_eq!(l.check(&vv(&[("pods", 12)])), Ok(()));
        l.evicted(Revision(3), &watch);
        assert_eq!(
            l.check(&vv(&[("pods", 14)])),
            Err(RebaseRefusal::BehindHistory("pods".into()))
        );
        assert_eq!(l.check(&vv(&[("pods", 15)])), Ok(()));
    }

    #[test]
    fn progress_makes_a_crumb_only_with_unsent_advances() {
        let mut l = Ledger::default();
        l.record(&[ResourceMark::listed("nodes", Some(10))], true, false);
        // Before in sync: no progress crumbs.
        assert_eq!(
            l.record(&[ResourceMark::watched("nodes", 11)], false, true),
            None
        );
        l.set_base(Revision(1));
        // A no-op batch's advance waits; the next bookmark carries it and its own.
        assert_eq!(
            l.record(&[ResourceMark::watched("pods", 20)], false, false),
            None
        );
        let crumb = l
            .record(&[ResourceMark::watched("nodes", 21)], false, true)
            .unwrap();
        assert_eq!(crumb.advanced, vv(&[("pods", 20), ("nodes", 21)]));
        // A bookmark at the same version: nothing new to send.
        assert_eq!(
            l.record(&[ResourceMark::watched("nodes", 21)], false, true),
            None
        );
        // Evicting a progress crumb raises the floor.
        l.evicted(Revision(1), &crumb);
        assert_eq!(
            l.check(&vv(&[("nodes", 20), ("pods", 20)])),
            Err(RebaseRefusal::BehindHistory("nodes".into()))
        );
        assert_eq!(l.check(&vv(&[("nodes", 21), ("pods", 20)])), Ok(()));
    }

    #[test]
    fn a_restored_datastore_lowers_the_vector_and_refuses_overlapping_positions() {
        let mut l = Ledger::default();
        l.record(&[ResourceMark::listed("pods", Some(100))], true, false);
        l.set_base(Revision(1));
        assert_eq!(l.check(&vv(&[("pods", 100)])), Ok(()));
        // The relist after the restore, at version 5: nothing changed, so the lower
        // version waits for the next crumb (a bookmark's here), which carries it down.
        assert_eq!(
            l.record(&[ResourceMark::listed("pods", Some(5))], false, false),
            None
        );
        let crumb = l
            .record(&[ResourceMark::watched("pods", 5)], false, true)
            .unwrap();
        assert_eq!(crumb.advanced.get("pods"), 5);
        assert_eq!(l.current().get("pods"), 5);
        // Old positions and new ones up to the old maximum are refused.
        for old in [5, 100] {
            assert_eq!(
                l.check(&vv(&[("pods", old)])),
                Err(RebaseRefusal::BehindHistory("pods".into()))
            );
        }
        let later = l
            .record(&[ResourceMark::watched("pods", 150)], true, false)
            .unwrap();
        assert_eq!(later.advanced.get("pods"), 150);
        assert_eq!(l.check(&vv(&[("pods", 150)])), Ok(()));
    }

    #[test]
    fn unsettled_at_base_and_unmarked_batches() {
        let mut l = Ledger::default();
        l.record(&[ResourceMark::listed("pods", None)], true, false);
        l.set_base(Revision(1));
        assert_eq!(
            l.check(&VersionVector::new()),
            Err(RebaseRefusal::FloorUnknown("pods".into()))
        );
        let mut bare = Ledger::default();
        bare.record(&[], false, false);
        bare.set_base(Revision(0));
        assert_eq!(bare.check(&VersionVector::new()), Ok(()));
        bare.record(&[], true, false);
        assert_eq!(
            bare.check(&VersionVector::new()),
            Err(RebaseRefusal::Unversioned)
        );
    }
}
