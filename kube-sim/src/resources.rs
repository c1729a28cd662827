//! The registry of servable resource types (group/version/plural -> kind, scope, verbs).
//!
//! Built-in kinds are listed once in [`BUILTINS`]; Calico's CRD kinds in [`CALICO`] are
//! registered as if their CRDs were installed (configurable). Creating a
//! `CustomResourceDefinition` registers its kind at runtime. A [`ResourceId`] is an index
//! into the registry and never changes meaning: entries are only ever appended, and
//! "uninstalling" a kind flips its `served` flag.

/// Stable index of a resource type in the [`Registry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(pub u32);

/// One servable resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Lower-case plural used in URLs, e.g. `pods`.
    pub plural: String,
    /// Lower-case singular name, e.g. `pod`.
    pub singular: String,
    /// The object kind, e.g. `Pod`.
    pub kind: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names, e.g. `po`.
    pub short_names: Vec<String>,
    /// Whether a `/status` subresource exists (then main-resource writes keep `.status`).
    pub status_subresource: bool,
    /// Whether the type is currently served (false after its CRD is deleted).
    pub served: bool,
    /// A CRD kind's `openAPIV3Schema` (built-in kinds: see [`crate::schemas`]).
    pub schema: Option<std::sync::Arc<serde_json::Value>>,
}

impl ResourceType {
    /// `v1` for the core group, `<group>/<version>` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `<plural>` or `<plural>.<group>`, the name used in error messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// (group, version, plural, kind, namespaced, short names, status subresource)
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
);

/// Kinds a real cluster always serves.
pub const BUILTINS: &[Builtin] = &[
    ("", "v1", "pods", "Pod", true, &["po"], true),
    ("", "v1", "namespaces", "Namespace", false, &["ns"], true),
    (
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
    ),
    ("", "v1", "nodes", "Node", false, &["no"], true),
    ("", "v1", "services", "Service", true, &["svc"], true),
    ("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
    ("", "v1", "secrets", "Secret", true, &[], false),
    ("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
    ("", "v1", "events", "Event", true, &["ev"], false),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        &["netpol"],
        false,
    ),
    (
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
    ),
    ("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true),
    (
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        true,
        &["rs"],
        true,
    ),
    (
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
        &[],
        false,
    ),
    (
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
        &[],
        false,
    ),
    (
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        false,
    ),
    (
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        true,
    ),
    (
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        &[],
        false,
    ),
    (
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    ),
];

/// The API group of Calico's CRDs.
pub const CALICO_GROUP: &str = "crd.projectcalico.org";

/// Calico's CRD kinds (group `crd.projectcalico.org`, version `v1`).
pub const CALICO: &[Builtin] = &[
    (
        CALICO_GROUP,
        "v1",
        "globalnetworkpolicies",
        "GlobalNetworkPolicy",
        false,
        &["gnp"],
        false,
    ),
    (
        CALICO_GROUP,
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        &["cnp"],
        false,
    ),
    (
        CALICO_GROUP,
        "v1",
        "globalnetworksets",
        "GlobalNetworkSet",
        false,
        &[],
        false,
    ),
    (
        CALICO_GROUP,
        "v1",
        "networksets",
        "NetworkSet",
        true,
        &[],
        false,
    ),
    (
        CALICO_GROUP,
        "v1",
        "hostendpoints",
        "HostEndpoint",
        false,
        &["hep"],
        false,
    ),
    (CALICO_GROUP, "v1", "ippools", "IPPool", false, &[], false),
    (
        CALICO_GROUP,
        "v1",
        "felixconfigurations",
        "FelixConfiguration",
        false,
        &[],
        false,
    ),
    (
        CALICO_GROUP,
        "v1",
        "clusterinformations",
        "ClusterInformation",
        false,
        &[],
        false,
    ),
];

/// All resource types known to the server, served or not.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: Vec<ResourceType>,
}

fn from_builtin(b: &Builtin, served: bool) -> ResourceType {
    let (group, version, plural, kind, namespaced, short, status) = *b;
    ResourceType {
        group: group.to_string(),
        version: version.to_string(),
        plural: plural.to_string(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.to_string(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        status_subresource: status,
        served,
        schema: None,
    }
}

impl Registry {
    /// The built-in kinds plus Calico's kinds (served if `calico_crds`).
    pub fn new(calico_crds: bool) -> Self {
        let mut types: Vec<ResourceType> = BUILTINS.iter().map(|b| from_builtin(b, true)).collect();
        types.extend(CALICO.iter().map(|b| from_builtin(b, calico_crds)));
        Registry { types }
    }

    /// The type behind an id.
    pub fn get(&self, id: ResourceId) -> Option<&ResourceType> {
        self.types.get(id.0 as usize)
    }

    /// All types with their ids, served or not.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceId, &ResourceType)> {
        self.types
            .iter()
            .enumerate()
            .map(|(i, t)| (ResourceId(i as u32), t))
    }

    /// The served type at `group/version/plural`.
    pub fn by_path(&self, group: &str, version: &str, plural: &str) -> Option<ResourceId> {
        self.iter()
            .find(|(_, t)| {
                t.served && t.group == group && t.version == version && t.plural == plural
            })
            .map(|(id, _)| id)
    }

    /// The served type with this `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<ResourceId> {
        self.iter()
            .find(|(_, t)| t.served && t.kind == kind && t.api_version() == api_version)
            .map(|(id, _)| id)
    }

    /// Registers (or re-serves) a type; returns its id. An existing entry with the same
    /// group/version/plural is updated in place so its stored objects keep their id.
    pub fn register(&mut self, mut t: ResourceType) -> ResourceId {
        t.served = true;
        if let Some(i) = self
            .types
            .iter()
            .position(|e| e.group == t.group && e.version == t.version && e.plural == t.plural)
        {
            self.types[i] = t;
            return ResourceId(i as u32);
        }
        self.types.push(t);
        ResourceId((self.types.len() - 1) as u32)
    }

    /// Sets whether the type at `group`/`plural` (all versions) is served; returns the ids.
    pub fn set_served(&mut self, group: &str, plural: &str, served: bool) -> Vec<ResourceId> {
        let mut ids = Vec::new();
        for (i, t) in self.types.iter_mut().enumerate() {
            if t.group == group && t.plural == plural {
                t.served = served;
                ids.push(ResourceId(i as u32));
            }
        }
        ids
    }

    /// Served API groups (core excluded) with their served versions, in registry order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in self
            .types
            .iter()
            .filter(|t| t.served && !t.group.is_empty())
        {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => {
                    versions.push(t.version.clone())
                }
                Some(_) => {}
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    /// Served types of one group/version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<&ResourceType> {
        self.types
            .iter()
            .filter(|t| t.served && t.group == group && t.version == version)
            .collect()
    }
}

/// Builds the type a `CustomResourceDefinition` object declares (first served version).
pub fn from_crd(crd: &serde_json::Value) -> Option<ResourceType> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let versions = spec.get("versions")?.as_array()?;
    let version = versions
        .iter()
        .find(|v| v.get("served").and_then(|s| s.as_bool()).unwrap_or(true))?;
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    Some(ResourceType {
        group: spec.get("group")?.as_str()?.to_string(),
        version: version.get("name")?.as_str()?.to_string(),
        singular: names
            .get("singular")
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_ascii_lowercase()),
        plural,
        kind,
        namespaced: spec.get("scope").and_then(|s| s.as_str()) != Some("Cluster"),
        short_names: names
            .get("shortNames")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        status_subresource: version.pointer("/subresources/status").is_some(),
        served: true,
        schema: version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .map(std::sync::Arc::new),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn lookups_respect_served_flag() {
        let mut r = Registry::new(false);
        assert!(r.by_path("", "v1", "pods").is_some());
        assert!(r.by_path(CALICO_GROUP, "v1", "ippools").is_none());
        r.set_served(CALICO_GROUP, "ippools", true);
        let id = r.by_kind("crd.projectcalico.org/v1", "IPPool");
        assert!(id.is_some());
        assert_eq!(r.by_path(CALICO_GROUP, "v1", "ippools"), id);
    }

    #[test]
    fn crd_registers_kind() {
        let crd = serde_json::json!({"spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "subresources": {"status": {}}}]}});
        let t = from_crd(&crd).unwrap();
        assert_eq!(t.api_version(), "example.com/v1");
        assert!(t.namespaced && t.status_subresource);
        let mut r = Registry::new(true);
        let id = r.register(t);
        assert_eq!(r.by_kind("example.com/v1", "Widget"), Some(id));
    }
}
