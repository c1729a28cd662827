//! Which typha to connect to: the candidate list ([`TyphaSource`]: a fixed
//! `--typha-addr` list, or a Service's ready endpoints followed through
//! [`edge::discovery`]) and the order they are tried in ([`Picker`]).
//!
//! Why a picker: thousands of agents must spread over the replicas (shuffle), an agent
//! should prefer the typha on its own node (no cross-node hop, and it survives losing
//! other nodes), and a replica that said goodbye (rebalance, shutdown) must not be the
//! next one tried while others exist.
//!
//! Invariants of [`Picker`]:
//! - it only ever returns a candidate of the latest list it was given (a removed
//!   endpoint is never tried again; a new one joins at once, as the list is reshuffled);
//! - within a round every candidate is returned once: those on this node first, then
//!   the others, each group shuffled;
//! - `next(Some(x))` does not return `x` unless `x` is the only candidate.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use edge::discovery::{Discovery, DiscoveryState, TyphaEndpoint};
use rand::seq::SliceRandom;
use tokio::sync::watch;

/// One typha to try.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// HOST:PORT.
    pub addr: String,
    /// The node it runs on, when known (discovery only).
    pub node_name: Option<String>,
}

impl From<&TyphaEndpoint> for Candidate {
    fn from(endpoint: &TyphaEndpoint) -> Candidate {
        Candidate {
            addr: endpoint.host_port(),
            node_name: endpoint.node_name.clone(),
        }
    }
}

/// Where the candidates come from.
#[derive(Clone)]
enum Kind {
    Fixed(Vec<Candidate>),
    Watched {
        endpoints: watch::Receiver<Vec<TyphaEndpoint>>,
        state: Option<watch::Receiver<DiscoveryState>>,
        /// Keeps the watch running as long as a source refers to it.
        _owner: Option<Arc<Discovery>>,
    },
}

/// The candidate list: fixed, or following a discovery watch.
#[derive(Clone)]
pub struct TyphaSource {
    kind: Kind,
    description: String,
}

impl fmt::Debug for TyphaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl TyphaSource {
    /// A fixed list of HOST:PORT addresses (`--typha-addr`).
    pub fn fixed(addresses: Vec<String>) -> TyphaSource {
        let description = format!("typha addresses {}", addresses.join(","));
        let candidates = addresses
            .into_iter()
            .map(|addr| Candidate {
                addr,
                node_name: None,
            })
            .collect();
        TyphaSource {
            kind: Kind::Fixed(candidates),
            description,
        }
    }

    /// The ready endpoints of a running discovery watch (`--typha-service`).
    pub fn discovered(discovery: Discovery) -> TyphaSource {
        let description = discovery.config().to_string();
        TyphaSource {
            kind: Kind::Watched {
                endpoints: discovery.endpoints(),
                state: Some(discovery.state()),
                _owner: Some(Arc::new(discovery)),
            },
            description,
        }
    }

    /// Any endpoint list (tests, or a caller that owns the watch).
    pub fn watching(
        endpoints: watch::Receiver<Vec<TyphaEndpoint>>,
        description: impl Into<String>,
    ) -> TyphaSource {
        TyphaSource {
            kind: Kind::Watched {
                endpoints,
                state: None,
                _owner: None,
            },
            description: description.into(),
        }
    }

    /// A fixed list with no address: a configuration error, not something to wait on.
    pub fn is_empty_fixed(&self) -> bool {
        matches!(&self.kind, Kind::Fixed(c) if c.is_empty())
    }

    /// The current candidates (marks the list seen for [`TyphaSource::changed`]).
    pub fn current(&mut self) -> Vec<Candidate> {
        match &mut self.kind {
            Kind::Fixed(candidates) => candidates.clone(),
            Kind::Watched { endpoints, .. } => endpoints
                .borrow_and_update()
                .iter()
                .map(Candidate::from)
                .collect(),
        }
    }

    /// Resolves when the list may have changed since [`TyphaSource::current`]; never
    /// for a fixed list or a watch whose sender is gone.
    pub async fn changed(&mut self) {
        if let Kind::Watched { endpoints, .. } = &mut self.kind
            && endpoints.changed().await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }

    /// What is followed, and how discovery is doing (for logs and errors).
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Fixed(_) => self.description.clone(),
            Kind::Watched {
                endpoints, state, ..
            } => {
                let ready = endpoints.borrow().len();
                let mut text = format!("{}: {ready} ready endpoint(s) now", self.description);
                if let Some(state) = state {
                    let state = state.borrow();
                    if !state.listed {
                        text.push_str(", EndpointSlices never listed");
                    }
                    if let Some(error) = &state.last_error {
                        text.push_str(&format!(
                            ", {} watch error(s), last: {error}",
                            state.watch_errors
                        ));
                    }
                }
                text
            }
        }
    }
}

/// The order candidates are tried in (see the module invariants). Pure but for the
/// shuffle's randomness.
#[derive(Debug)]
pub struct Picker {
    node_name: String,
    known: Vec<Candidate>,
    round: VecDeque<String>,
}

impl Picker {
    /// A picker preferring endpoints on `node_name`.
    pub fn new(node_name: impl Into<String>) -> Picker {
        Picker {
            node_name: node_name.into(),
            known: Vec::new(),
            round: VecDeque::new(),
        }
    }

    /// Takes the latest candidate list; a different set starts a new round. Returns
    /// whether it changed.
    pub fn update(&mut self, mut candidates: Vec<Candidate>) -> bool {
        candidates.sort();
        candidates.dedup_by(|a, b| a.addr == b.addr);
        if candidates == self.known {
            return false;
        }
        self.known = candidates;
        self.round.clear();
        true
    }

    /// The candidates known now.
    pub fn candidates(&self) -> &[Candidate] {
        &self.known
    }

    /// The next address to try, not `avoid` unless it is the only candidate; `None`
    /// when there is no candidate.
    pub fn next(&mut self, avoid: Option<&str>) -> Option<String> {
        if self.known.is_empty() {
            return None;
        }
        let avoid = avoid.filter(|a| self.known.len() > 1 || self.known[0].addr != *a);
        for _ in 0..2 {
            if self.round.is_empty() {
                self.round = self.new_round();
            }
            match avoid {
                None => return self.round.pop_front(),
                Some(avoid) => {
                    if let Some(i) = self.round.iter().position(|a| a != avoid) {
                        return self.round.remove(i);
                    }
                    // Only `avoid` is left in this round: start the next one.
                    self.round.clear();
                }
            }
        }
        // Unreachable with more than one candidate; keep a sane answer anyway.
        self.known.first().map(|c| c.addr.clone())
    }

    fn new_round(&self) -> VecDeque<String> {
        let mut rng = rand::rng();
        let (mut local, mut remote): (Vec<_>, Vec<_>) = self
            .known
            .iter()
            .partition(|c| c.node_name.as_deref() == Some(self.node_name.as_str()));
        local.shuffle(&mut rng);
        remote.shuffle(&mut rng);
        local
            .into_iter()
            .chain(remote)
            .map(|c| c.addr.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn c(addr: &str, node: Option<&str>) -> Candidate {
        Candidate {
            addr: addr.into(),
            node_name: node.map(str::to_string),
        }
    }

    fn round(p: &mut Picker, n: usize) -> Vec<String> {
        (0..n).map(|_| p.next(None).unwrap()).collect()
    }

    #[test]
    fn every_round_tries_all_local_first() {
        let mut p = Picker::new("me");
        assert_eq!(p.next(None), None);
        p.update(vec![
            c("a:1", Some("n1")),
            c("b:1", Some("me")),
            c("c:1", None),
            c("d:1", Some("n2")),
        ]);
        let mut firsts = BTreeSet::new();
        for _ in 0..50 {
            let r = round(&mut p, 4);
            assert_eq!(r[0], "b:1");
            firsts.insert(r[1].clone());
            let set: BTreeSet<_> = r.into_iter().collect();
            assert_eq!(set.len(), 4);
        }
        // The remote ones are shuffled (50 rounds: all three lead at some point).
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn removed_never_returned_added_joins() {
        let mut p = Picker::new("me");
        p.update(vec![c("a:1", None), c("b:1", None)]);
        let _ = p.next(None);
        assert!(p.update(vec![c("b:1", None), c("new:1", None)]));
        assert!(!p.update(vec![c("new:1", None), c("b:1", None)]));
        let r: BTreeSet<_> = round(&mut p, 2).into_iter().collect();
        assert_eq!(r, BTreeSet::from(["b:1".to_string(), "new:1".to_string()]));
        for _ in 0..20 {
            assert_ne!(p.next(None).unwrap(), "a:1");
        }
        p.update(vec![]);
        assert_eq!(p.next(None), None);
    }

    #[test]
    fn avoid_is_respected_unless_alone() {
        let mut p = Picker::new("me");
        p.update(vec![c("a:1", Some("me")), c("b:1", None), c("c:1", None)]);
        for _ in 0..50 {
            assert_ne!(p.next(Some("a:1")).unwrap(), "a:1");
            assert_ne!(p.next(Some("b:1")).unwrap(), "b:1");
        }
        p.update(vec![c("a:1", None)]);
        assert_eq!(p.next(Some("a:1")).unwrap(), "a:1");
    }

    #[tokio::test]
    async fn sources_follow_their_watch() {
        let fixed = TyphaSource::fixed(vec!["x:1".into(), "y:2".into()]);
        assert!(!fixed.is_empty_fixed());
        assert!(TyphaSource::fixed(vec![]).is_empty_fixed());
        assert_eq!(fixed.describe(), "typha addresses x:1,y:2");

        let (tx, rx) = watch::channel(Vec::new());
        let mut source = TyphaSource::watching(rx, "test");
        assert!(source.current().is_empty());
        tx.send_replace(vec![TyphaEndpoint {
            address: "10.0.0.1".into(),
            port: 5473,
            node_name: Some("n".into()),
        }]);
        source.changed().await;
        assert_eq!(source.current(), vec![c("10.0.0.1:5473", Some("n"))]);
        assert!(source.describe().contains("1 ready endpoint"));
    }
}
