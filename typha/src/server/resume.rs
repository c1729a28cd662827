//! The handshake's decisions: which protocol version and capabilities a session uses,
//! and how a client starts (same-replica resume, cross-replica resume, or snapshot).
//!
//! Version skew: the server speaks `min(client's version, its own)` and grants the
//! capabilities both offer (unknown values from newer clients are ignored), minus those
//! the chosen version lacks (`CAPABILITY_RESOURCE_VERSIONS` needs version 2). What a
//! server offers is configurable ([`ProtocolOffer`]) so tests can run an "old" replica.
//!
//! Resume rules (docs/protocol.md): a position of this hub's epoch resumes by revision
//! while the history covers it (and, when current, the digest matches); a position of
//! another epoch that carries a version vector resumes with one rebase batch when the
//! hub's history covers the vector ([`Hub::rebase`], which waits a bounded time for this
//! replica to catch up with a client ahead of it). Anything else gets a snapshot, and
//! each refusal is counted in `typha_resume_refusals_total{reason}`.

use std::time::Duration;

use typha_proto::pb;
use typha_proto::{Digest, PROTOCOL_VERSION, Revision, VersionVector};

use crate::hub::{Hub, SessionStart};
use snapshot_cache::Rebase;

/// What a server offers in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolOffer {
    /// The highest protocol version spoken.
    pub max_version: u32,
    /// The capabilities offered.
    pub capabilities: Vec<pb::Capability>,
}

impl Default for ProtocolOffer {
    fn default() -> Self {
        ProtocolOffer {
            max_version: PROTOCOL_VERSION,
            capabilities: vec![
                pb::Capability::SnapshotZstd,
                pb::Capability::Resume,
                pb::Capability::Digest,
                pb::Capability::ResourceVersions,
            ],
        }
    }
}

impl ProtocolOffer {
    /// What a version 1 server offered (for version skew tests).
    pub fn v1() -> ProtocolOffer {
        ProtocolOffer {
            max_version: 1,
            capabilities: vec![
                pb::Capability::SnapshotZstd,
                pb::Capability::Resume,
                pb::Capability::Digest,
            ],
        }
    }

    /// The version and capabilities a session with `hello`'s client uses.
    pub fn negotiate(&self, hello: &pb::ClientHello) -> Agreed {
        let version = hello.protocol_version.min(self.max_version);
        let capabilities = self
            .capabilities
            .iter()
            .copied()
            .filter(|c| hello.capabilities.contains(&(*c as i32)))
            .filter(|c| *c != pb::Capability::ResourceVersions || version >= 2)
            .collect();
        Agreed {
            version,
            capabilities,
        }
    }
}

/// The outcome of [`ProtocolOffer::negotiate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The protocol version of the session.
    pub version: u32,
    /// The capabilities granted.
    pub capabilities: Vec<pb::Capability>,
}

impl Agreed {
    /// Whether `capability` was granted.
    pub fn has(&self, capability: pb::Capability) -> bool {
        self.capabilities.contains(&capability)
    }

    /// The wire form of the granted capabilities.
    pub fn wire_capabilities(&self) -> Vec<i32> {
        self.capabilities.iter().map(|c| *c as i32).collect()
    }
}

/// How a session starts.
#[derive(Debug)]
pub enum Start {
    /// Resume on this hub's history after this revision.
    SameReplica(Revision),
    /// Resume a client of another replica: send this batch, then continue after it.
    CrossReplica(Rebase),
    /// Send a snapshot.
    Snapshot,
}

impl Start {
    /// Whether the session resumes (`ServerHello.resumed`).
    pub fn resumed(&self) -> bool {
        !matches!(self, Start::Snapshot)
    }
}

/// Decides how a client with `hello` starts (see the module docs).
pub async fn decide(
    hub: &Hub,
    hello: &pb::ClientHello,
    agreed: &Agreed,
    catch_up: Duration,
) -> Start {
    let Some(position) = hello.resume.as_ref() else {
        return Start::Snapshot;
    };
    let outcome = if !agreed.has(pb::Capability::Resume) {
        Err("no_capability")
    } else if position.epoch == hub.epoch() {
        same_replica(hub, position).map(Start::SameReplica)
    } else if !agreed.has(pb::Capability::ResourceVersions) || position.versions.is_empty() {
        Err("no_versions")
    } else {
        let client = VersionVector::from_pb(&position.versions);
        match hub.rebase(&client, catch_up).await {
            Ok(rebase) => Ok(Start::CrossReplica(rebase)),
            Err(refusal) => {
                tracing::info!(%refusal, %client, "cannot resume from the client's versions");
                Err(refusal.as_str())
            }
        }
    };
    match outcome {
        Ok(start) => start,
        Err(reason) => {
            metrics::counter!("typha_resume_refusals_total", "reason" => reason).increment(1);
            hub.count_resume_refusal();
            tracing::info!(reason, "resume refused; sending a snapshot");
            Start::Snapshot
        }
    }
}

/// Counts a resume (metrics and the hub's counters); snapshots are counted once sent.
pub fn count(history: &impl super::history::History, start: &Start) {
    let (kind, counted) = match start {
        Start::SameReplica(_) => ("same_replica", SessionStart::SameReplica),
        Start::CrossReplica(_) => ("cross_replica", SessionStart::CrossReplica),
        Start::Snapshot => return,
    };
    metrics::counter!("typha_resumes_total", "kind" => kind).increment(1);
    history.count_start(counted);
}

/// A position in this hub's own history: resumable while the history covers it.
fn same_replica(hub: &Hub, position: &pb::ResumePosition) -> Result<Revision, &'static str> {
    let revision = Revision(position.revision);
    if !hub.covers(revision) {
        return Err("behind_history");
    }
    // Nothing to send when the client is current: resume only if it holds exactly our
    // state. Otherwise the next batch carries the digest after it, which the client
    // verifies.
    if revision == hub.revision() && Digest::from_bytes(&position.digest) != Some(hub.digest()) {
        return Err("digest_mismatch");
    }
    Ok(revision)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn hello(version: u32, capabilities: &[i32]) -> pb::ClientHello {
        pb::ClientHello {
            node_name: "n".into(),
            syncer_type: pb::SyncerType::Felix as i32,
            protocol_version: version,
            capabilities: capabilities.to_vec(),
            ..Default::default()
        }
    }

    const ALL: [i32; 4] = [1, 2, 3, 4];

    #[test]
    fn negotiation_takes_the_lower_version_and_the_common_capabilities() {
        let offer = ProtocolOffer::default();
        // A version 1 client: no vector capability offered.
        let v1 = offer.negotiate(&hello(1, &[1, 2, 3]));
        assert_eq!(v1.version, 1);
        assert!(!v1.has(pb::Capability::ResourceVersions));
        // A version 1 client that (wrongly) offers it does not get it either.
        assert!(
            !offer
                .negotiate(&hello(1, &ALL))
                .has(pb::Capability::ResourceVersions)
        );
        // A future client: version 3 and an unknown capability.
        let v3 = offer.negotiate(&hello(3, &[1, 2, 3, 4, 99]));
        assert_eq!(v3.version, PROTOCOL_VERSION);
        assert_eq!(v3.wire_capabilities(), ALL.to_vec());
        // A server configured as version 1 facing a version 2 client.
        let old = ProtocolOffer::v1().negotiate(&hello(2, &ALL));
        assert_eq!(old.version, 1);
        assert_eq!(old.wire_capabilities(), vec![1, 2, 3]);
    }
}
