//! The calculation's state and its update rules: which endpoints are local, which
//! policies select them (and are therefore active: only their rules' ipsets are kept),
//! routes, pools; and the cached output tables, re-rendered at the end of a batch only
//! when something they depend on changed (remote endpoint churn changes ipset members,
//! never chains). Node routes and tunnels are recomputed from all nodes and pools when
//! a node or pool changed (see `tunnels`: a pool's mode change re-routes every node).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use typha_proto::{Key, Kind, Update, Value, pb};

use super::hosts::{HostConfig, HostInput, Hosts};
use super::idset::ObjId;
use super::index::Index;
use super::names::usable_interface;
use super::objects::NewObj;
use super::policy::{PolicyState, SortKey};
use super::render::{FilterInput, filter_table, nat};
use super::tunnels::{self, Tunnels};
use super::{CalcConfig, CalcMode, Desired, Family, IpSet, Route, RouteTarget, Tables};

/// Who wants a route (a local endpoint wins over a node for the same destination).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum RouteOwner {
    Endpoint(Key),
    Node(String),
}

/// A local endpoint: its object's slot in the index and its interface.
pub(super) struct Local {
    /// The slot of its object (labels, profiles, addresses).
    pub id: ObjId,
    /// Its host-side interface.
    pub iface: String,
}

/// The whole calculation state.
pub(super) struct Engine {
    config: CalcConfig,
    index: Index,
    /// Boxed: most are inactive, and a map slot then costs a pointer.
    policies: HashMap<Key, Box<PolicyState>>,
    order: BTreeSet<SortKey>,
    local: BTreeMap<Key, Local>,
    pools: BTreeMap<String, pb::IpPool>,
    /// Other nodes by name (networking mode).
    nodes: BTreeMap<String, pb::Node>,
    /// This node.
    own_node: Option<pb::Node>,
    tunnels: Tunnels,
    hosts: Hosts,
    routes: BTreeMap<String, BTreeMap<RouteOwner, RouteTarget>>,
    route_dsts: HashMap<RouteOwner, Vec<String>>,
    v4: Tables,
    v6: Tables,
    pool_sets: BTreeMap<String, IpSet>,
    filter_dirty: bool,
    nat_dirty: bool,
    nodes_dirty: bool,
}

impl Engine {
    pub fn new(config: CalcConfig, hosts: HostConfig) -> Engine {
        let mut engine = Engine {
            hosts: Hosts::new(&config.node_name, hosts),
            config,
            index: Index::default(),
            policies: HashMap::new(),
            order: BTreeSet::new(),
            local: BTreeMap::new(),
            pools: BTreeMap::new(),
            nodes: BTreeMap::new(),
            own_node: None,
            tunnels: Tunnels::default(),
            routes: BTreeMap::new(),
            route_dsts: HashMap::new(),
            v4: Tables::default(),
            v6: Tables::default(),
            pool_sets: BTreeMap::new(),
            filter_dirty: true,
            nat_dirty: true,
            nodes_dirty: false,
        };
        engine.render();
        engine
    }

    pub fn apply(&mut self, updates: &[Update]) {
        for update in updates {
            self.apply_one(update);
        }
        self.render();
    }

    fn apply_one(&mut self, update: &Update) {
        let key = &update.key;
        match (key.kind(), &update.value) {
            (Kind::WorkloadEndpoint, Some(Value::WorkloadEndpoint(wep))) => {
                self.set_endpoint(key, Some(wep))
            }
            (Kind::WorkloadEndpoint, None) => self.set_endpoint(key, None),
            (Kind::Profile, Some(Value::Profile(p))) => {
                self.set_profile(key.name(), Some(p.labels.clone().into_iter().collect()))
            }
            (Kind::Profile, None) => self.set_profile(key.name(), None),
            (
                Kind::K8sNetworkPolicy | Kind::NetworkPolicy | Kind::GlobalNetworkPolicy,
                Some(Value::Policy(p)),
            ) => self.set_policy(key, Some(p)),
            (Kind::K8sNetworkPolicy | Kind::NetworkPolicy | Kind::GlobalNetworkPolicy, None) => {
                self.set_policy(key, None)
            }
            (Kind::NetworkSet | Kind::GlobalNetworkSet, Some(Value::NetworkSet(s))) => {
                self.index
                    .set_object(key, Some(&NewObj::network_set(key, s)));
            }
            (Kind::NetworkSet | Kind::GlobalNetworkSet, None) => {
                self.index.set_object(key, None);
            }
            (Kind::Node, value) => self.on_node(key, value.as_ref()),
            (Kind::IpPool, value) => self.on_pool(key, value.as_ref()),
            (Kind::HostEndpoint, value) => self.on_host_endpoint(key, value.as_ref()),
            (Kind::FelixConfiguration | Kind::ClusterInformation, _) => {}
            (kind, Some(value)) => {
                tracing::debug!(
                    ?kind,
                    value = typha_proto::model::value_type(value),
                    "ignored mismatched update"
                );
            }
        }
    }

    /// A node: automatic host endpoints, then (in networking mode) routes and tunnels.
    fn on_node(&mut self, key: &Key, value: Option<&Value>) {
        let node = match value {
            Some(Value::Node(n)) => Some(n),
            _ => None,
        };
        if self.hosts.set_node(key.name(), node, &mut self.index) {
            self.refresh_hosts();
        }
        self.set_node(key.name(), node);
    }

    /// An IP pool: NAT rules and node routes are recomputed.
    fn on_pool(&mut self, key: &Key, value: Option<&Value>) {
        match value {
            Some(Value::IpPool(p)) => self.pools.insert(key.name().to_string(), p.clone()),
            _ => self.pools.remove(key.name()),
        };
        self.nat_dirty = true;
        self.nodes_dirty = true;
    }

    /// A host endpoint.
    fn on_host_endpoint(&mut self, key: &Key, value: Option<&Value>) {
        let hep = match value {
            Some(Value::HostEndpoint(h)) => Some(h),
            _ => None,
        };
        if self.hosts.set_endpoint(key, hep, &mut self.index) {
            self.refresh_hosts();
        }
    }

    fn set_endpoint(&mut self, key: &Key, wep: Option<&pb::WorkloadEndpoint>) {
        let is_local = wep.is_some_and(|w| {
            let local = w.node == self.config.node_name;
            if local && !usable_interface(&w.interface_name) {
                tracing::warn!(endpoint = %key, iface = w.interface_name, "local endpoint without a usable interface");
            }
            local && usable_interface(&w.interface_name)
        });
        let obj = wep.map(NewObj::endpoint);
        let id = self.index.set_object(key, obj.as_ref());
        if !is_local && !self.local.contains_key(key) {
            return;
        }
        let owner = RouteOwner::Endpoint(key.clone());
        self.remove_routes(&owner);
        match (id.filter(|_| is_local), wep, &obj) {
            (Some(id), Some(w), Some(obj)) => {
                let target = RouteTarget::Interface(w.interface_name.clone());
                let routes = obj.addrs.nets().map(|n| (n.text(), target.clone()));
                self.add_routes(owner, routes.collect());
                let iface = w.interface_name.clone();
                self.local.insert(key.clone(), Local { id, iface });
            }
            _ => {
                self.local.remove(key);
            }
        }
        self.refresh_local(key);
    }

    /// Re-evaluates every policy's selector on local endpoint `key`.
    fn refresh_local(&mut self, key: &Key) {
        self.filter_dirty = true;
        let store = self.index.store();
        let obj = self.local.get(key).and_then(|l| store.get(l.id));
        let mut acquire = Vec::new();
        let mut release = Vec::new();
        for (pkey, policy) in &mut self.policies {
            let now = match (obj, &policy.selector) {
                (Some(o), Some(sel)) => sel.matches(&store.lookup(o)),
                _ => false,
            };
            let was_active = policy.is_active();
            if now {
                policy.local.insert(key.clone());
            } else {
                policy.local.remove(key);
            }
            match (was_active, policy.is_active()) {
                (false, true) => acquire.push(pkey.clone()),
                (true, false) => release.push(pkey.clone()),
                _ => {}
            }
        }
        self.set_activity(acquire, release);
    }

    /// Re-evaluates every policy on the local host endpoints (after one changed).
    fn refresh_hosts(&mut self) {
        self.filter_dirty = true;
        let mut acquire = Vec::new();
        let mut release = Vec::new();
        for (pkey, policy) in &mut self.policies {
            let was_active = policy.is_active();
            policy.hosts = self.hosts.reselect(pkey, policy.selector.as_ref());
            match (was_active, policy.is_active()) {
                (false, true) => acquire.push(pkey.clone()),
                (true, false) => release.push(pkey.clone()),
                _ => {}
            }
        }
        self.set_activity(acquire, release);
    }

    /// Renders the policies that became active and takes their sets; drops the
    /// rendering and the sets of those that became inactive.
    fn set_activity(&mut self, acquire: Vec<Key>, release: Vec<Key>) {
        for pkey in acquire {
            if let Some(p) = self.policies.get_mut(&pkey) {
                p.activate().iter().for_each(|s| self.index.acquire_set(s));
            }
        }
        for pkey in release {
            if let Some(p) = self.policies.get_mut(&pkey) {
                p.deactivate()
                    .iter()
                    .for_each(|s| self.index.release_set(s));
            }
        }
    }

    fn set_profile(&mut self, name: &str, labels: Option<BTreeMap<String, String>>) {
        self.index.set_profile(name, labels);
        let store = self.index.store();
        let inherits = |l: &Local| {
            let obj = store.get(l.id);
            obj.is_some_and(|o| store.profile_names(o).any(|p| p == name))
        };
        let affected: Vec<Key> = self
            .local
            .iter()
            .filter(|(_, l)| inherits(l))
            .map(|(k, _)| k.clone())
            .collect();
        for key in affected {
            self.refresh_local(&key);
        }
    }

    fn set_policy(&mut self, key: &Key, policy: Option<&pb::Policy>) {
        self.filter_dirty = true;
        let mut new = policy.map(|p| {
            let mut state = PolicyState::new(key, p);
            let store = self.index.store();
            if let Some(sel) = &state.selector {
                let selects = |l: &Local| {
                    store
                        .get(l.id)
                        .is_some_and(|o| sel.matches(&store.lookup(o)))
                };
                state.local = self
                    .local
                    .iter()
                    .filter(|(_, l)| selects(l))
                    .map(|(k, _)| k.clone())
                    .collect();
            }
            state
        });
        let selector = new.as_ref().and_then(|p| p.selector.as_ref());
        let selects_hosts = self.hosts.set_policy(key, policy, selector);
        if let Some(p) = new.as_mut() {
            p.hosts = selects_hosts;
        }
        // Acquire the new sets before releasing the old ones, so a selector both use is
        // never dropped and rescanned.
        match new.as_mut() {
            Some(p) if p.is_active() => {
                p.activate().iter().for_each(|s| self.index.acquire_set(s));
            }
            Some(p) => drop(p.deactivate()),
            None => {}
        }
        if let Some(old) = self.policies.remove(key) {
            self.order.remove(&old.sort);
            old.sets().for_each(|s| self.index.release_set(s));
        }
        if let Some(p) = new {
            self.order.insert(p.sort.clone());
            self.policies.insert(key.clone(), Box::new(p));
        }
    }

    fn set_node(&mut self, name: &str, node: Option<&pb::Node>) {
        if self.config.mode != CalcMode::Networking {
            return;
        }
        self.nodes_dirty = true;
        if name == self.config.node_name {
            self.own_node = node.cloned();
            return;
        }
        match node {
            Some(n) => self.nodes.insert(name.to_string(), n.clone()),
            None => {
                self.remove_routes(&RouteOwner::Node(name.to_string()));
                self.nodes.remove(name)
            }
        };
    }

    /// Recomputes every node's routes and the tunnels (after a node or pool change).
    fn route_nodes(&mut self) {
        let own = self.own_node.as_ref();
        let (routes, tunnels) =
            tunnels::plan(&self.config.node_name, own, &self.nodes, &self.pools);
        for (name, list) in routes {
            let owner = RouteOwner::Node(name);
            self.remove_routes(&owner);
            self.add_routes(owner, list);
        }
        self.tunnels = tunnels;
    }

    fn add_routes(&mut self, owner: RouteOwner, routes: Vec<(String, RouteTarget)>) {
        let mut dsts = Vec::new();
        for (dst, target) in routes {
            self.routes
                .entry(dst.clone())
                .or_default()
                .insert(owner.clone(), target);
            dsts.push(dst);
        }
        if !dsts.is_empty() {
            self.route_dsts.insert(owner, dsts);
        }
    }

    fn remove_routes(&mut self, owner: &RouteOwner) {
        for dst in self.route_dsts.remove(owner).unwrap_or_default() {
            if let Some(owners) = self.routes.get_mut(&dst) {
                owners.remove(owner);
                if owners.is_empty() {
                    self.routes.remove(&dst);
                }
            }
        }
    }

    fn render(&mut self) {
        if self.nodes_dirty {
            self.route_nodes();
            self.nodes_dirty = false;
            // The host chains accept VXLAN from the peers.
            self.filter_dirty |= self.hosts.any();
        }
        if self.filter_dirty {
            let input = FilterInput {
                local: &self.local,
                policies: &self.policies,
                order: &self.order,
                prefixes: self.config.interface_prefixes.all(),
            };
            let hosts = HostInput {
                hosts: &self.hosts,
                policies: &self.policies,
                order: &self.order,
                vxlan_peers: self.tunnels.vxlan_peers.iter().map(|p| p.node_ip).collect(),
            };
            for (family, tables) in [(Family::V4, &mut self.v4), (Family::V6, &mut self.v6)] {
                tables.filter = filter_table(family, &input);
                super::hosts::render(family, &hosts, &mut tables.filter);
            }
            self.filter_dirty = false;
        }
        if self.nat_dirty {
            let mut sets = BTreeMap::new();
            let (pools, cidrs) = (&self.pools, &self.config.cluster_cidrs);
            self.v4.nat = nat(Family::V4, self.config.mode, pools, cidrs, &mut sets);
            self.v6.nat = nat(Family::V6, self.config.mode, pools, cidrs, &mut sets);
            // Keep the old Arc for an unchanged set, so ptr_eq keeps meaning "unchanged".
            for (name, set) in &mut sets {
                if let Some(old) = self.pool_sets.get(name)
                    && old == set
                {
                    set.members = Arc::clone(&old.members);
                }
            }
            self.pool_sets = sets;
            self.nat_dirty = false;
        }
    }

    pub fn desired(&self) -> Desired {
        let mut ipsets = self.pool_sets.clone();
        self.index.ipsets(&mut ipsets);
        let routes = self
            .routes
            .iter()
            .filter_map(|(dst, owners)| {
                owners.values().next().map(|target| Route {
                    dst: dst.clone(),
                    target: target.clone(),
                })
            })
            .collect();
        Desired {
            v4: self.v4.clone(),
            v6: self.v6.clone(),
            ipsets,
            routes,
            tunnels: self.tunnels.clone(),
        }
    }

    pub fn active_selectors(&self) -> usize {
        self.index.active_selectors()
    }
}
