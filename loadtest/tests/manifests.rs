//! The k8s/ manifests, checked against the code they deploy.
//!
//! - Each overlay renders with `kubectl kustomize`, and the rendered objects apply to
//!   kube-sim with `kubectl apply` (the CRDs first make the Calico kinds servable).
//! - typha started with the args and env of the rendered Deployment (in-cluster specifics
//!   replaced: listen addresses, kubeconfig, the mounted Secret materialised from the
//!   rendered `pki-secrets` component) serves a client configured from the rendered
//!   DaemonSet's TLS settings, and its bootstrap creates the default IPPool from the
//!   rendered cluster CIDR.
//! - RBAC grants get/list/watch on exactly what the code reads, plus exactly the writes
//!   `netmodel::bootstrap::WRITES` lists; no wildcard anywhere.
//! - The autoscaler's parameters give the sizing rule for 1 to 5,000 nodes.
//! - The CRD schemas cover every field typha's Calico spec types read.
//!
//! Requires kubectl at /usr/bin/kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::CommandFactory;
use felix_client::{SyncClient, SyncConfig, SyncEvent};
use k8s_openapi::Resource as _;
use kube_sim::{Config as SimConfig, KubeSim};
use netmodel::Resource;
use netmodel::crd::{self, CalicoKind};
use serde_json::{Value as Json, json};
use testkit::{KUBECTL, Kubectl, Scratch};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use typha_proto::{Key, Kind, Value};

const OVERLAYS: [&str; 2] = ["policy-only", "networking"];
const NAMESPACE: &str = "calico-system";
/// Generous bound on every wait: a hung test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- rendering

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn kubectl_kustomize(dir: &Path) -> String {
    assert!(
        Path::new(KUBECTL).exists(),
        "kubectl is required: install it at {KUBECTL}"
    );
    let out = Command::new(KUBECTL)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parse_yaml(text: &str) -> Vec<Json> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::from_value::<Json>(serde::Deserialize::deserialize(doc).unwrap()))
        .map(Result::unwrap)
        .filter(|doc| !doc.is_null())
        .collect()
}

fn render(overlay: &str) -> Vec<Json> {
    parse_yaml(&kubectl_kustomize(
        &k8s_dir().join("overlays").join(overlay),
    ))
}

/// Renders `overlay` plus `components` from a scratch copy of k8s/, after `prepare` ran
/// on the copy's root (to write generated files such as certificates).
fn render_with_components(
    scratch: &Scratch,
    overlay: &str,
    components: &[&str],
    prepare: impl FnOnce(&Path),
) -> Vec<Json> {
    let root = scratch.path().join("k8s");
    copy_dir(&k8s_dir(), &root);
    prepare(&root);
    let test_overlay = root.join("overlays/test");
    std::fs::create_dir_all(&test_overlay).unwrap();
    let components: Vec<String> = components
        .iter()
        .map(|c| format!("  - ../../components/{c}\n"))
        .collect();
    std::fs::write(
        test_overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - ../{overlay}\ncomponents:\n{}",
            components.concat()
        ),
    )
    .unwrap();
    parse_yaml(&kubectl_kustomize(&test_overlay))
}

fn find<'a>(objects: &'a [Json], kind: &str, name: &str) -> &'a Json {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn find_prefixed<'a>(objects: &'a [Json], kind: &str, prefix: &str) -> &'a Json {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {kind} {prefix}* in the rendered manifests"))
}

fn container<'a>(workload: &'a Json, name: &str) -> &'a Json {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A container's env as NAME -> value, resolving ConfigMap references from the rendered
/// objects and field references from `fields`.
fn resolve_env(
    objects: &[Json],
    container: &Json,
    fields: &BTreeMap<&str, &str>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_string()
        } else if let Some(cm) = var.pointer("/valueFrom/configMapKeyRef") {
            let map = find(objects, "ConfigMap", cm["name"].as_str().unwrap());
            map["data"][cm["key"].as_str().unwrap()]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: ConfigMap key {cm} missing"))
                .to_string()
        } else if let Some(path) = var.pointer("/valueFrom/fieldRef/fieldPath") {
            fields
                .get(path.as_str().unwrap())
                .unwrap_or_else(|| panic!("{name}: no test value for field {path}"))
                .to_string()
        } else {
            panic!("{name}: unsupported env source {var}");
        };
        env.insert(name, value);
    }
    env
}

/// The command line the typha container runs: its args, then `env` as flags.
fn typha_argv(container: &Json, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv = vec!["typha".to_string()];
    argv.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    argv.extend(env_to_flags(&typha_serve_command(), env));
    argv
}

/// Turns environment variables into the long flags of `command` that read them, so that
/// clap parses them exactly as it would from the environment (tests cannot set the
/// process environment). Panics on a variable no flag reads: a typo in the manifests.
fn env_to_flags(command: &clap::Command, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut flags = Vec::new();
    for (name, value) in env {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "{} has no flag reading {name}: the manifests set a variable the binary ignores",
                    command.get_name()
                )
            });
        let long = arg.get_long().unwrap();
        if arg.get_action().takes_values() {
            flags.push(format!("--{long}={value}"));
        } else if value == "true" {
            flags.push(format!("--{long}"));
        }
    }
    flags
}

fn typha_serve_command() -> clap::Command {
    typha::config::Cli::command()
        .find_subcommand("serve")
        .unwrap()
        .clone()
}

fn env_port(env: &BTreeMap<String, String>, name: &str) -> u16 {
    env[name]
        .parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .port()
}

// ---------------------------------------------------------------- render + shape

#[test]
fn overlays_render_and_differ_only_in_the_mode() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        for (kind, name) in [
            ("Namespace", NAMESPACE),
            ("Deployment", "calico-typha"),
            ("Service", "calico-typha"),
            ("PodDisruptionBudget", "calico-typha"),
            ("Deployment", "calico-typha-autoscaler"),
            ("DaemonSet", "felix-client"),
            ("ClusterRole", "calico-typha"),
            ("Role", "felix-client"),
        ] {
            let object = find(&objects, kind, name);
            if kind != "Namespace" && !kind.starts_with("Cluster") {
                assert_eq!(object["metadata"]["namespace"], NAMESPACE, "{kind} {name}");
            }
        }
        let config = find_prefixed(&objects, "ConfigMap", "calico-config");
        assert_eq!(config["data"]["felix-mode"], overlay);
        // The mode reaches the agent through its env.
        let ds = find(&objects, "DaemonSet", "felix-client");
        let env = resolve_env(
            &objects,
            container(ds, "felix-client"),
            &BTreeMap::from([("spec.nodeName", "node-0")]),
        );
        assert_eq!(env["FELIX_MODE"], overlay);
        assert_eq!(env["FELIX_CLUSTER_CIDR"], config["data"]["cluster-cidr"]);
    }
}

#[test]
fn typha_deployment_fits_its_flags_probes_service_and_drain() {
    let objects = render("policy-only");
    let deploy = find(&objects, "Deployment", "calico-typha");
    let pod = &deploy["spec"]["template"]["spec"];
    let typha = container(deploy, "calico-typha");
    let env = resolve_env(
        &objects,
        typha,
        &BTreeMap::from([
            ("metadata.name", "calico-typha-abc"),
            ("metadata.namespace", NAMESPACE),
        ]),
    );
    // Every variable is a real flag, and the whole configuration validates.
    let argv = typha_argv(typha, &env);
    let cli = typha::config::Cli::try_parse_from_checked(&argv);
    let typha::config::Command::Serve(serve) = cli.command else {
        panic!("the Deployment does not run `typha serve`: {argv:?}")
    };
    serve.validate().unwrap();
    assert_eq!(
        serve.cluster_cidr.map(|c| c.to_string()).as_deref(),
        find_prefixed(&objects, "ConfigMap", "calico-config")["data"]["cluster-cidr"].as_str()
    );

    // Host network, one per node, replaced one at a time.
    assert_eq!(pod["hostNetwork"], true);
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 0);
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "replicas belong to the autoscaler: re-applying must not reset them"
    );
    let pdb = find(&objects, "PodDisruptionBudget", "calico-typha");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deploy["spec"]["selector"]);

    // Probes hit the health listener.
    let health = env_port(&env, "TYPHA_HEALTH_LISTEN");
    assert_eq!(typha["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(typha["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(typha["readinessProbe"]["httpGet"]["port"], health);
    assert_eq!(typha["livenessProbe"]["httpGet"]["port"], health);

    // The Service reaches the gRPC listener by port name.
    let grpc = env_port(&env, "TYPHA_LISTEN");
    let service = find(&objects, "Service", "calico-typha");
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["port"].as_u64()),
        (Some("calico-typha"), Some(5473))
    );
    let named = typha["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .expect("the Service's targetPort names a container port");
    assert_eq!(named["containerPort"], grpc);
    assert_eq!(
        service["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // Replicas are counted from the rendered Service.
    assert_eq!(
        (
            env["TYPHA_SERVICE_NAMESPACE"].as_str(),
            env["TYPHA_SERVICE_NAME"].as_str()
        ),
        (
            service["metadata"]["namespace"].as_str().unwrap(),
            service["metadata"]["name"].as_str().unwrap()
        )
    );

    // The drain fits in the grace period.
    let drain = humantime::parse_duration(&env["TYPHA_DRAIN_DURATION"]).unwrap();
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        drain < grace,
        "drain {drain:?} must end before the grace period {grace:?}"
    );

    // The TLS files come from the mounted Secret.
    let mount = typha["volumeMounts"][0]["mountPath"].as_str().unwrap();
    for var in ["TYPHA_TLS_CA", "TYPHA_TLS_CERT", "TYPHA_TLS_KEY"] {
        assert!(
            env[var].starts_with(mount),
            "{var} outside the Secret mount"
        );
    }
}

/// `Cli::try_parse_from` with a readable failure.
trait ParseChecked: Sized {
    fn try_parse_from_checked(argv: &[String]) -> Self;
}

impl<T: clap::Parser> ParseChecked for T {
    fn try_parse_from_checked(argv: &[String]) -> Self {
        T::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }
}

/// The install-cni init container of the rendered DaemonSet.
fn init_container<'a>(workload: &'a Json, name: &str) -> &'a Json {
    workload["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap_or_else(|| panic!("no init containers"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no init container {name}"))
}

#[test]
fn install_cni_init_container_fits_its_flags_and_host_paths() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let ds = find(&objects, "DaemonSet", "felix-client");
        let init = init_container(ds, "install-cni");
        assert_eq!(
            init["command"],
            json!(["/usr/local/bin/felix-cni", "install"])
        );
        let env = resolve_env(
            &objects,
            init,
            &BTreeMap::from([("spec.nodeName", "node-0")]),
        );
        let command = felix_cni::cli::InstallArgs::command();
        let mut argv = vec!["install".to_string()];
        argv.extend(env_to_flags(&command, &env));
        let args = felix_cni::cli::InstallArgs::try_parse_from_checked(&argv);
        assert_eq!(
            args.node_name.as_deref(),
            Some("node-0"),
            "the pod CIDR comes from the Node"
        );
        // The directories it writes are the host's CNI directories.
        let volumes = ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        for (dir, host) in [
            (&args.bin_dir, "/opt/cni/bin"),
            (&args.conf_dir, "/etc/cni/net.d"),
        ] {
            let mount = init["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == dir.to_str().unwrap())
                .unwrap_or_else(|| panic!("{overlay}: {} is not mounted", dir.display()));
            let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
            assert_eq!(volume["hostPath"]["path"], host, "{overlay}");
        }
        // One prefix list for the plugin, the agent and typha.
        let felix = resolve_env(
            &objects,
            container(ds, "felix-client"),
            &BTreeMap::from([("spec.nodeName", "node-0")]),
        );
        let deploy = find(&objects, "Deployment", "calico-typha");
        let typha = resolve_env(
            &objects,
            container(deploy, "calico-typha"),
            &BTreeMap::from([("metadata.name", "x"), ("metadata.namespace", NAMESPACE)]),
        );
        assert_eq!(
            env["FELIX_INTERFACE_PREFIX"],
            felix["FELIX_INTERFACE_PREFIX"]
        );
        assert_eq!(
            env["FELIX_INTERFACE_PREFIX"],
            typha["TYPHA_INTERFACE_PREFIX"]
        );
    }
}

#[test]
fn felix_daemonset_fits_its_flags_and_typha_identity() {
    let objects = render("networking");
    let ds = find(&objects, "DaemonSet", "felix-client");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let felix = container(ds, "felix-client");
    let caps: BTreeSet<&str> = felix["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(caps, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(felix["securityContext"]["privileged"], false);
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "the agent must run on every node, tainted or not"
    );
    let env = resolve_env(
        &objects,
        felix,
        &BTreeMap::from([("spec.nodeName", "node-0")]),
    );
    let mut argv = vec!["felix-client".to_string()];
    argv.extend(env_to_flags(&felix_client::config::Cli::command(), &env));
    let cli = felix_client::config::Cli::try_parse_from_checked(&argv);
    cli.validate().unwrap();
    // Probes reach the agent's health listener from the host network namespace.
    let health = env_port(&env, "FELIX_HEALTH_LISTEN");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let get = &felix[probe]["httpGet"];
        assert_eq!(
            (get["path"].as_str(), get["port"].as_u64()),
            (Some(path), Some(u64::from(health)))
        );
        let listen: std::net::SocketAddr = env["FELIX_HEALTH_LISTEN"].parse().unwrap();
        assert_eq!(
            get["host"].as_str().map(|h| h.parse().unwrap()),
            Some(listen.ip()),
            "{probe}"
        );
    }

    // The identities each side checks are the ones the development certificates carry,
    // and each side's expectation is the other's certificate.
    let deploy = find(&objects, "Deployment", "calico-typha");
    let typha_env = resolve_env(
        &objects,
        container(deploy, "calico-typha"),
        &BTreeMap::from([("metadata.name", "x"), ("metadata.namespace", NAMESPACE)]),
    );
    assert_eq!(env["FELIX_TYPHA_CN"], edge::certs::DEFAULT_SERVER_CN);
    assert_eq!(
        env["FELIX_TYPHA_URI_SAN"],
        edge::certs::DEFAULT_SERVER_URI_SAN
    );
    assert_eq!(typha_env["TYPHA_CLIENT_CN"], edge::certs::DEFAULT_CLIENT_CN);
    assert_eq!(
        typha_env["TYPHA_CLIENT_URI_SAN"],
        edge::certs::DEFAULT_CLIENT_URI_SAN
    );
    // The discovered Service is the rendered one.
    let service = find(&objects, "Service", "calico-typha");
    assert_eq!(
        env["FELIX_TYPHA_SERVICE"],
        format!(
            "{}/{}",
            service["metadata"]["namespace"].as_str().unwrap(),
            service["metadata"]["name"].as_str().unwrap()
        )
    );
}

#[test]
fn typha_host_policy_component_renders_and_its_settings_parse() {
    let scratch = Scratch::new("typha-host-policy");
    let objects = render_with_components(&scratch, "networking", &["typha-host-policy"], |_| {});
    let policy = find(&objects, "GlobalNetworkPolicy", "typha-port-from-nodes");
    assert_eq!(policy["apiVersion"], "crd.projectcalico.org/v1");
    let ds = find(&objects, "DaemonSet", "felix-client");
    let env = resolve_env(
        &objects,
        container(ds, "felix-client"),
        &BTreeMap::from([("spec.nodeName", "node-0")]),
    );
    let mut argv = vec!["felix-client".to_string()];
    argv.extend(env_to_flags(&felix_client::config::Cli::command(), &env));
    let config = felix_client::config::Cli::try_parse_from_checked(&argv)
        .validate()
        .unwrap();
    assert!(config.hosts.auto_host_endpoints);
    let inbound: Vec<u16> = config
        .hosts
        .failsafe_inbound
        .iter()
        .map(|p| p.port)
        .collect();
    assert!(
        !inbound.contains(&5473) && inbound.contains(&22) && inbound.contains(&6443),
        "{inbound:?}"
    );
    // The rest of the agent's settings are the overlay's.
    assert_eq!(env["FELIX_MODE"], "networking");
}

#[test]
fn cert_manager_component_issues_the_secrets_the_workloads_mount() {
    let scratch = Scratch::new("manifests-cert-manager");
    let objects = render_with_components(&scratch, "policy-only", &["cert-manager"], |_| {});
    let certificate = |secret: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == "Certificate" && o["spec"]["secretName"] == secret)
            .unwrap_or_else(|| panic!("no Certificate writes Secret {secret}"))
    };
    let mounted = |kind: &str, name: &str| {
        find(&objects, kind, name)["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|v| v["secret"]["secretName"].as_str())
            .unwrap()
            .to_string()
    };
    let server = certificate(&mounted("Deployment", "calico-typha"));
    assert_eq!(server["spec"]["commonName"], edge::certs::DEFAULT_SERVER_CN);
    assert_eq!(
        server["spec"]["uris"][0],
        edge::certs::DEFAULT_SERVER_URI_SAN
    );
    let client = certificate(&mounted("DaemonSet", "felix-client"));
    assert_eq!(client["spec"]["commonName"], edge::certs::DEFAULT_CLIENT_CN);
    assert_eq!(
        client["spec"]["uris"][0],
        edge::certs::DEFAULT_CLIENT_URI_SAN
    );
    // Both leaves chain to the same CA, so each side's ca.crt verifies the other.
    assert_eq!(server["spec"]["issuerRef"], client["spec"]["issuerRef"]);
}

// ---------------------------------------------------------------- RBAC

/// (API group, resource plural) of every resource typha watches, from the kube types the
/// upstream watches them through. A new `Resource` variant fails to compile here.
fn watched(resource: Resource) -> (String, String) {
    let api = resource.api();
    (api.group.to_string(), api.plural.to_string())
}

type Grants = BTreeSet<(String, String, String)>;

fn grants(role: &Json) -> Grants {
    let mut out = Grants::new();
    for rule in role["rules"].as_array().unwrap() {
        let list = |field: &str| -> Vec<String> {
            rule[field]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "wildcard in {}",
                        role["metadata"]["name"]
                    );
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

fn reads(group: &str, plural: &str) -> Grants {
    ["get", "list", "watch"]
        .into_iter()
        .map(|v| (group.to_string(), plural.to_string(), v.to_string()))
        .collect()
}

/// The roles bound to a ServiceAccount: (ClusterRole grants, namespaced Role grants).
fn bound_to(objects: &[Json], account: &str) -> (Grants, Grants) {
    let mut cluster = Grants::new();
    let mut namespaced = Grants::new();
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let binds = binding["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == NAMESPACE
        });
        if !binds {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
        let role = find(
            objects,
            role_kind,
            binding["roleRef"]["name"].as_str().unwrap(),
        );
        match role_kind {
            "ClusterRole" if binding["kind"] == "ClusterRoleBinding" => {
                cluster.extend(grants(role))
            }
            _ => {
                assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
                namespaced.extend(grants(role))
            }
        }
    }
    (cluster, namespaced)
}

#[test]
fn rbac_grants_exactly_what_the_code_reads_and_writes() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices = (EndpointSlice::GROUP, EndpointSlice::URL_PATH_SEGMENT);
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let sa = |kind: &str, name: &str| {
            find(&objects, kind, name)["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap()
                .to_string()
        };

        // typha: every watched resource cluster-wide, its bootstrap writes, and its own
        // Service's EndpointSlices (edge::discovery) in its namespace.
        let (cluster, namespaced) = bound_to(&objects, &sa("Deployment", "calico-typha"));
        let mut expected = Grants::new();
        for resource in Resource::ALL {
            let (group, plural) = watched(resource);
            expected.extend(reads(&group, &plural));
        }
        for write in netmodel::bootstrap::WRITES {
            for verb in write.verbs {
                expected.insert((write.group.into(), write.plural.into(), verb.to_string()));
            }
        }
        let missing: Vec<_> = expected.difference(&cluster).collect();
        let extra: Vec<_> = cluster.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "typha ClusterRole: missing {missing:?}, beyond the code {extra:?}"
        );
        assert_eq!(namespaced, reads(slices.0, slices.1), "typha Role");

        // felix-client reads only the typha Service's EndpointSlices (it syncs from typha);
        // its install-cni init container gets its own Node (the pod CIDR).
        let (cluster, namespaced) = bound_to(&objects, &sa("DaemonSet", "felix-client"));
        let node_get: Grants = [("".into(), "nodes".into(), "get".into())].into();
        assert_eq!(cluster, node_get, "felix-client cluster-wide access");
        assert_eq!(namespaced, reads(slices.0, slices.1), "felix-client Role");

        // The autoscaler counts nodes and scales only the typha Deployment.
        let (cluster, namespaced) =
            bound_to(&objects, &sa("Deployment", "calico-typha-autoscaler"));
        assert_eq!(cluster, reads("", "nodes"));
        let expected: Grants = [
            ("", "configmaps", "get"),
            ("apps", "deployments/scale", "get"),
            ("apps", "deployments/scale", "update"),
        ]
        .into_iter()
        .map(|(g, r, v)| (g.into(), r.into(), v.into()))
        .collect();
        assert_eq!(namespaced, expected);
        let role = find(&objects, "Role", "calico-typha-autoscaler");
        for rule in role["rules"].as_array().unwrap() {
            assert!(
                rule["resourceNames"]
                    .as_array()
                    .is_some_and(|n| !n.is_empty()),
                "autoscaler rules are limited to named objects: {rule}"
            );
        }
    }
}

// ---------------------------------------------------------------- sizing

/// The sizing rule: one replica per 200 nodes, at least 3 once there are 3 nodes, never
/// more than the nodes (one per node), at most 20.
fn sizing_rule(nodes: u64) -> u64 {
    nodes.min(nodes.div_ceil(200).clamp(3, 20))
}

/// cluster-proportional-autoscaler's ladder mode: the entry with the largest threshold
/// at or below the node count (the first entry below the lowest threshold).
fn ladder_replicas(mut steps: Vec<(u64, u64)>, nodes: u64) -> u64 {
    steps.sort();
    let pos = steps.partition_point(|(threshold, _)| *threshold <= nodes);
    steps[pos.saturating_sub(1)].1
}

#[test]
fn autoscaler_parameters_follow_the_sizing_rule_from_1_to_5000_nodes() {
    assert_eq!(
        [1, 2, 3, 200, 600, 601, 3800, 3801, 5000].map(sizing_rule),
        [1, 2, 3, 3, 3, 4, 19, 20, 20],
        "the rule itself"
    );
    let objects = render("policy-only");
    let autoscaler = find(&objects, "Deployment", "calico-typha-autoscaler");
    let args: Vec<&str> = container(autoscaler, "autoscaler")["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("autoscaler without --{name}"))
    };
    assert_eq!(flag("target"), "deployment/calico-typha");
    assert_eq!(flag("namespace"), NAMESPACE);
    find(&objects, "Deployment", "calico-typha");
    let params = find(&objects, "ConfigMap", flag("configmap"));
    assert!(params["data"].get("linear").is_none(), "one mode only");
    let ladder: Json = serde_json::from_str(params["data"]["ladder"].as_str().unwrap()).unwrap();
    assert_eq!(ladder["includeUnschedulableNodes"], false);
    assert!(ladder.get("coresToReplicas").is_none(), "nodes only");
    let steps: Vec<(u64, u64)> = ladder["nodesToReplicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
        .collect();
    for nodes in 1..=5000 {
        assert_eq!(
            ladder_replicas(steps.clone(), nodes),
            sizing_rule(nodes),
            "replicas for {nodes} nodes"
        );
    }
}

// ---------------------------------------------------------------- CRDs

/// Keys of a spec type's JSON form: every field the type reads.
fn fields_of<T: Default + serde::Serialize>() -> BTreeSet<String> {
    serde_json::to_value(T::default())
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn schema_properties(schema: &Json) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn assert_covers(schema: &Json, fields: BTreeSet<String>, what: &str) {
    let declared = schema_properties(schema);
    let missing: Vec<_> = fields.difference(&declared).collect();
    assert!(missing.is_empty(), "{what}: schema lacks {missing:?}");
}

/// Structural: every node says its type (or is int-or-string / preserves unknown fields).
fn assert_structural(schema: &Json, path: &str) {
    let typed = schema.get("type").is_some()
        || schema["x-kubernetes-int-or-string"] == true
        || schema["x-kubernetes-preserve-unknown-fields"] == true;
    assert!(typed, "{path}: no type");
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            assert_structural(sub, &format!("{path}.{name}"));
        }
    }
    if let Some(items) = schema.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
}

/// The CRD of `K` declares every field of `K`'s spec (what the model reads).
fn assert_crd_covers<K: CalicoKind>(objects: &[Json])
where
    K::Spec: Default + serde::Serialize,
{
    assert_covers(&crd_for::<K>(objects), fields_of::<K::Spec>(), K::KIND);
}

fn crd_for<K: CalicoKind>(objects: &[Json]) -> Json {
    let name = format!("{}.{}", K::PLURAL, crd::GROUP);
    let crd = find(objects, "CustomResourceDefinition", &name);
    assert_eq!(crd["spec"]["group"], crd::GROUP);
    assert_eq!(crd["spec"]["names"]["kind"], K::KIND);
    assert_eq!(crd["spec"]["names"]["plural"], K::PLURAL);
    let namespaced = std::any::TypeId::of::<K::Scope>()
        == std::any::TypeId::of::<k8s_openapi::NamespaceResourceScope>();
    assert_eq!(
        crd["spec"]["scope"],
        if namespaced { "Namespaced" } else { "Cluster" },
        "{name}"
    );
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        (&version["name"], &version["served"], &version["storage"]),
        (&json!(crd::VERSION), &json!(true), &json!(true))
    );
    let schema = version["schema"]["openAPIV3Schema"].clone();
    assert_structural(&schema, &name);
    schema["properties"]["spec"].clone()
}

#[test]
fn crds_declare_every_kind_and_field_typha_reads() {
    use netmodel::crd::*;
    let objects = render("policy-only");
    for spec in [
        crd_for::<NetworkPolicy>(&objects),
        crd_for::<GlobalNetworkPolicy>(&objects),
    ] {
        let rule = &spec["properties"]["ingress"]["items"];
        assert_eq!(rule, &spec["properties"]["egress"]["items"]);
        assert_covers(rule, fields_of::<RuleSpec>(), "rule");
        assert_covers(&rule["properties"]["icmp"], fields_of::<IcmpSpec>(), "icmp");
        for side in ["source", "destination"] {
            assert_covers(&rule["properties"][side], fields_of::<EntitySpec>(), side);
        }
    }
    assert_crd_covers::<GlobalNetworkPolicy>(&objects);
    let global_only = [
        "namespaceSelector",
        "doNotTrack",
        "preDNAT",
        "applyOnForward",
    ];
    assert_covers(
        &crd_for::<NetworkPolicy>(&objects),
        fields_of::<PolicySpec>()
            .into_iter()
            .filter(|f| !global_only.contains(&f.as_str()))
            .collect(),
        "NetworkPolicy",
    );
    assert_crd_covers::<NetworkSet>(&objects);
    assert_crd_covers::<GlobalNetworkSet>(&objects);
    assert_crd_covers::<HostEndpoint>(&objects);
    assert_covers(
        &crd_for::<HostEndpoint>(&objects)["properties"]["ports"]["items"],
        fields_of::<EndpointPortSpec>(),
        "HostEndpoint port",
    );
    assert_crd_covers::<IPPool>(&objects);
    assert_crd_covers::<ClusterInformation>(&objects);
    // FelixConfiguration keeps every field: the schema must not prune any.
    assert_eq!(
        crd_for::<FelixConfiguration>(&objects)["x-kubernetes-preserve-unknown-fields"],
        true
    );
    let calico_crds = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .count();
    let watched_crds = Resource::ALL.iter().filter(|r| r.is_crd()).count();
    assert_eq!(calico_crds, watched_crds, "one CRD per watched Calico kind");
}

// ---------------------------------------------------------------- apply + run

/// `kubectl apply -f manifest`, which must succeed without a warning; its stdout.
async fn apply(kubectl: &Kubectl, manifest: &Path) -> String {
    let manifest = manifest.to_str().unwrap();
    let out = kubectl
        .command(&["apply", "-f", manifest])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply failed: {stderr}");
    assert!(stderr.trim().is_empty(), "kubectl apply warned: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// A loopback port no other listener of this test process was given.
fn free_port() -> u16 {
    loadtest::procs::free_port().unwrap()
}

/// Writes a rendered Secret's keys as files, as the kubelet mounts them.
fn materialize_secret(secret: &Json, dir: &Path) {
    // kustomize wraps long base64 values; the API server's decoder skips the newlines.
    let mut secret = secret.clone();
    for value in secret["data"].as_object_mut().unwrap().values_mut() {
        *value = Json::String(value.as_str().unwrap().split_whitespace().collect());
    }
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(secret).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for (key, bytes) in secret.data.unwrap() {
        std::fs::write(dir.join(key), bytes.0).unwrap();
    }
}

/// Rewrites env paths under `mount` to the same files under `dir`.
fn remount(env: &mut BTreeMap<String, String>, mount: &str, dir: &Path) {
    for value in env.values_mut() {
        if let Some(rest) = value.strip_prefix(mount) {
            *value = dir.join(rest.trim_start_matches('/')).display().to_string();
        }
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_apply_to_kube_sim_and_typha_from_them_serves_a_client() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scratch = Scratch::new("manifests-apply");

    // Render policy-only with Secrets generated from `typha certs` output.
    let objects = render_with_components(&scratch, "policy-only", &["pki-secrets"], |root| {
        let pki = root.join("components/pki-secrets/pki");
        edge::certs::DevPki::generate()
            .unwrap()
            .write_to_dir(&pki, true)
            .unwrap();
    });
    assert!(
        objects
            .iter()
            .all(|o| o["kind"] != "Secret" || o["data"].get("ca.key").is_none()),
        "the CA key must stay out of the cluster"
    );

    // Apply to a kube-sim without Calico kinds: the CRDs must register them.
    let sim = KubeSim::start(SimConfig {
        calico_crds: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let kubectl = Kubectl::in_dir(&sim.url(), scratch.path());
    let manifest = scratch.path().join("rendered.yaml");
    let yaml: String = objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect();
    std::fs::write(&manifest, yaml).unwrap();
    let applied = apply(&kubectl, &manifest).await;
    assert_eq!(
        applied.lines().filter(|l| l.ends_with(" created")).count(),
        objects.len(),
        "every object created: {applied}"
    );
    // Both modes apply over each other (switching modes is an apply).
    let networking = scratch.path().join("networking.yaml");
    std::fs::write(
        &networking,
        kubectl_kustomize(&k8s_dir().join("overlays/networking")),
    )
    .unwrap();
    apply(&kubectl, &networking).await;
    let store = sim.store();
    for object in &objects {
        let api_version = object["apiVersion"].as_str().unwrap();
        let kind = object["kind"].as_str().unwrap();
        let name = &object["metadata"]["name"];
        assert!(
            store
                .list_objects(api_version, kind)
                .iter()
                .any(|o| &o["metadata"]["name"] == name),
            "{kind} {name} not stored"
        );
    }
    kube_sim::seed(
        store,
        &kube_sim::SeedConfig {
            nodes: 3,
            pods_per_node: 2,
            namespaces: 2,
            policies_per_namespace: 1,
            host_network_every: 0,
        },
    )
    .unwrap();
    // An empty datastore for what typha bootstraps: drop the seeded pools and
    // ClusterInformation.
    for kind in ["IPPool", "ClusterInformation"] {
        for object in store.list_objects("crd.projectcalico.org/v1", kind) {
            let name = object["metadata"]["name"].as_str().unwrap();
            store
                .delete_object("crd.projectcalico.org/v1", kind, "", name)
                .unwrap();
        }
    }

    // typha, configured exactly as the Deployment configures it.
    let deploy = find(&objects, "Deployment", "calico-typha");
    let typha_container = container(deploy, "calico-typha");
    let mut env = resolve_env(
        &objects,
        typha_container,
        &BTreeMap::from([
            ("metadata.name", "calico-typha-test"),
            ("metadata.namespace", NAMESPACE),
        ]),
    );
    let typha_mount = typha_container["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    let typha_secret = deploy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
        .as_str()
        .unwrap();
    let typha_tls = scratch.path().join("typha-tls");
    materialize_secret(find(&objects, "Secret", typha_secret), &typha_tls);
    remount(&mut env, typha_mount, &typha_tls);
    let (grpc, health) = (free_port(), free_port());
    env.insert("TYPHA_LISTEN".into(), format!("127.0.0.1:{grpc}"));
    env.insert("TYPHA_HEALTH_LISTEN".into(), format!("127.0.0.1:{health}"));
    let metrics_port = free_port();
    env.insert(
        "TYPHA_METRICS_LISTEN".into(),
        format!("127.0.0.1:{metrics_port}"),
    );
    env.insert(
        "KUBECONFIG".into(),
        kubectl.kubeconfig().display().to_string(),
    );
    let argv = typha_argv(typha_container, &env);
    // The binary's own entry point; it runs until the test process ends.
    std::thread::spawn(move || typha::cli::run(argv));

    // A client configured as the DaemonSet configures felix-client.
    let ds = find(&objects, "DaemonSet", "felix-client");
    let felix_container = container(ds, "felix-client");
    let mut felix_env = resolve_env(
        &objects,
        felix_container,
        &BTreeMap::from([("spec.nodeName", "node-0")]),
    );
    let felix_mount = felix_container["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    let felix_secret = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .unwrap();
    let felix_tls = scratch.path().join("felix-tls");
    materialize_secret(find(&objects, "Secret", felix_secret), &felix_tls);
    remount(&mut felix_env, felix_mount, &felix_tls);
    // Discovery is replaced by the address (kube-sim runs no endpoints controller).
    felix_env.remove("FELIX_TYPHA_SERVICE");
    felix_env.insert("FELIX_TYPHA_ADDR".into(), format!("127.0.0.1:{grpc}"));
    felix_env.insert("FELIX_DATAPLANE".into(), "none".into());
    let mut felix_argv = vec!["felix-client".to_string()];
    felix_argv.extend(env_to_flags(
        &felix_client::config::Cli::command(),
        &felix_env,
    ));
    let config = felix_client::config::Cli::try_parse_from_checked(&felix_argv)
        .validate()
        .unwrap();
    let felix_client::config::Source::Typha {
        target: felix_client::config::TyphaTarget::Addresses(addresses),
        transport: edge::tls::TransportChoice::Tls(files, identity),
    } = config.source
    else {
        panic!("the DaemonSet does not configure mutual TLS to typha")
    };
    let material = edge::tls::TlsMaterial::load(&files).unwrap();
    let mut sync = SyncConfig::new(config.node_name.clone(), addresses);
    sync.tls = Some(edge::tls::client_config(&material, &identity).unwrap());
    sync.backoff_min = Duration::from_millis(50);
    sync.backoff_max = Duration::from_millis(500);

    let (tx, mut rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let client = tokio::spawn(SyncClient::new(sync).run(tx, shutdown.clone()));
    let cidr = find_prefixed(&objects, "ConfigMap", "calico-config")["data"]["cluster-cidr"]
        .as_str()
        .unwrap()
        .to_string();
    let pool_key = Key::cluster(Kind::IpPool, "default-ipv4-ippool").unwrap();
    let info_key = Key::cluster(Kind::ClusterInformation, "default").unwrap();
    let mut state: BTreeMap<Key, Value> = BTreeMap::new();
    let mut synced = false;
    let converged = tokio::time::timeout(LIMIT, async {
        while let Some(event) = rx.recv().await {
            match event {
                SyncEvent::Changes { updates, .. } => {
                    for update in updates {
                        match update.value {
                            Some(value) => state.insert(update.key, value),
                            None => state.remove(&update.key),
                        };
                    }
                }
                SyncEvent::InSync { .. } => synced = true,
                _ => {}
            }
            let pool_ok = matches!(state.get(&pool_key),
                Some(Value::IpPool(p)) if p.cidr == cidr && p.nat_outgoing);
            let info_ok = matches!(state.get(&info_key),
                Some(Value::ClusterInformation(c)) if c.datastore_ready);
            let nodes = state.keys().filter(|k| k.kind() == Kind::Node).count();
            if synced && pool_ok && info_ok && nodes == 3 {
                return;
            }
        }
        panic!("the client stopped");
    })
    .await;
    assert!(
        converged.is_ok(),
        "no default pool / ready ClusterInformation / nodes at the client: {:?}",
        state.keys().collect::<Vec<_>>()
    );
    // The probes' endpoints answer as the Deployment expects.
    let health_port = health;
    let (ready, live) = tokio::task::spawn_blocking(move || {
        (
            http_get(health_port, "/readyz"),
            http_get(health_port, "/livez"),
        )
    })
    .await
    .unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "/readyz: {ready}");
    assert!(live.starts_with("HTTP/1.1 200"), "/livez: {live}");
    // The metrics port serves Prometheus text from the binary's recorder: HELP for every
    // family, histograms with buckets, process and build metrics.
    let scraped = tokio::task::spawn_blocking(move || http_get(metrics_port, "/metrics"))
        .await
        .unwrap();
    assert!(scraped.starts_with("HTTP/1.1 200"), "/metrics: {scraped}");
    for name in [
        "typha_build_info{",
        "process_resident_memory_bytes ",
        "typha_upstream_events_total{",
    ] {
        assert!(scraped.contains(name), "{name} missing: {scraped}");
    }
    // The in-process sync client records felix_* families into the same process-global
    // recorder; they are felix-client's to describe (its own test checks them).
    let problems: Vec<String> = edge::metrics::lint(&scraped)
        .into_iter()
        .filter(|p| !p.starts_with("felix_"))
        .collect();
    assert_eq!(problems, Vec::<String>::new(), "{scraped}");

    shutdown.cancel();
    let _ = client.await;
    sim.shutdown().await;
}

// ---------------------------------------------------------------- install fixes

/// Parses a Kubernetes quantity of bytes (`384Mi`, `1Gi`, `1536Mi`, plain bytes).
fn mebibytes(quantity: &str) -> f64 {
    let (number, unit) = quantity
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((quantity, ""), |i| quantity.split_at(i));
    let number: f64 = number.parse().unwrap_or_else(|e| panic!("{quantity}: {e}"));
    let scale = match unit {
        "" => 1.0 / (1024.0 * 1024.0),
        "Ki" => 1.0 / 1024.0,
        "Mi" => 1.0,
        "Gi" => 1024.0,
        other => panic!("{quantity}: unexpected unit {other}"),
    };
    number * scale
}

/// Whether a process with `uid`, primary group `gid` and supplementary `groups` (and no
/// CAP_DAC_OVERRIDE: every container here drops ALL capabilities or runs as non-root)
/// may read a file owned by `owner`:`group` with permission bits `mode`.
fn may_read(uid: u64, gid: u64, groups: &[u64], (owner, group, mode): (u64, u64, u64)) -> bool {
    if uid == owner {
        mode & 0o400 != 0
    } else if gid == group || groups.contains(&group) {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    }
}

/// A mounted Secret file: (owner uid, group gid, permission bits).
type SecretFile = (u64, u64, u64);
/// A container's (uid, primary gid, supplementary groups).
type Reader = (u64, u64, Vec<u64>);

/// For each Secret volume a container mounts: (file owner, group, mode) as the kubelet
/// creates them (owner root; group the pod's fsGroup, else root; mode the volume's
/// defaultMode, else 0644) and the container's (uid, gid, supplementary groups).
fn secret_files_and_reader(workload: &Json, name: &str) -> Vec<(SecretFile, Reader)> {
    let pod = &workload["spec"]["template"]["spec"];
    let c = container(workload, name);
    let field = |key: &str| {
        c["securityContext"][key]
            .as_u64()
            .or_else(|| pod["securityContext"][key].as_u64())
    };
    let uid = field("runAsUser").expect("runAsUser set: the image's user must not decide");
    let gid = field("runAsGroup").unwrap_or(0);
    let fs_group = pod["securityContext"]["fsGroup"].as_u64();
    let mut groups: Vec<u64> = pod["securityContext"]["supplementalGroups"]
        .as_array()
        .map(|g| g.iter().map(|g| g.as_u64().unwrap()).collect())
        .unwrap_or_default();
    groups.extend(fs_group);
    let mut out = Vec::new();
    for mount in c["volumeMounts"].as_array().unwrap() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        if volume.get("secret").is_none() {
            continue;
        }
        let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
        let file = (0, fs_group.unwrap_or(0), mode);
        out.push((file, (uid, gid, groups.clone())));
    }
    out
}

#[test]
fn every_container_can_read_its_secret_files_and_no_one_else_can() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        for (kind, name, container_name) in [
            ("Deployment", "calico-typha", "calico-typha"),
            ("DaemonSet", "felix-client", "felix-client"),
        ] {
            let workload = find(&objects, kind, name);
            let secrets = secret_files_and_reader(workload, container_name);
            assert!(!secrets.is_empty(), "{name} mounts its TLS Secret");
            for (file, (uid, gid, groups)) in secrets {
                assert!(
                    may_read(uid, gid, &groups, file),
                    "{overlay}: {name} (uid {uid}, gid {gid}, groups {groups:?}) cannot read \
                     its Secret files (owner {}, group {}, mode {:o})",
                    file.0,
                    file.1,
                    file.2
                );
                assert_eq!(
                    file.2 & 0o007,
                    0,
                    "{name}: a private key must not be world-readable"
                );
            }
        }
        // typha runs as non-root: without the fsGroup it could not read 0440 root files.
        let typha = find(&objects, "Deployment", "calico-typha");
        assert_eq!(
            typha["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
            true
        );
    }
    // The model itself: root-owned 0440 without a matching group is unreadable.
    assert!(!may_read(65532, 65532, &[], (0, 0, 0o440)));
    assert!(may_read(65532, 65532, &[65532], (0, 65532, 0o440)));
    assert!(may_read(0, 0, &[], (0, 0, 0o400)));
}

/// (working set, request, limit) in MiB for each cluster size in the sizing table of
/// docs/operations.md.
fn felix_sizing_table() -> BTreeMap<u64, (String, f64, f64)> {
    let doc = std::fs::read_to_string(k8s_dir().join("../docs/operations.md")).unwrap();
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in doc.lines() {
        if line.starts_with("| cluster pods | felix-client working set") {
            in_table = true;
            continue;
        }
        if in_table && !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if !in_table || cells[0].starts_with("---") {
            continue;
        }
        let pods: u64 = cells[0].replace(',', "").parse().unwrap();
        rows.insert(
            pods,
            (
                cells[1].to_string(),
                mebibytes(cells[2]),
                mebibytes(cells[3]),
            ),
        );
    }
    rows
}

/// The felix-client VmHWM figures (MiB) of docs/benchmarks.md's 150,000-pod RSS table.
fn benchmark_peaks() -> Vec<f64> {
    let doc = std::fs::read_to_string(k8s_dir().join("../docs/benchmarks.md")).unwrap();
    let start = doc
        .find("| felix-client | VmHWM | VmRSS |")
        .expect("the RSS table");
    doc[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            cells[1].trim_end_matches(" MiB").parse().unwrap()
        })
        .collect()
}

#[test]
fn felix_memory_follows_the_measured_sizing_table() {
    let table = felix_sizing_table();
    assert_eq!(
        table.keys().copied().collect::<Vec<_>>(),
        [10_000, 50_000, 150_000]
    );
    let peaks = benchmark_peaks();
    assert_eq!(peaks.len(), 3, "mirror, calc + dataplane, local mode");
    let measured = peaks.iter().copied().fold(0.0, f64::max);
    let (working, _, _) = &table[&150_000];
    assert!(
        working.contains(&format!("{measured:.0} MiB")),
        "the 150,000-pod row states the measured {measured} MiB: {working}"
    );
    let mut last = (0.0, 0.0);
    for (pods, (working, request, limit)) in &table {
        let working: f64 = working
            .trim_start_matches('~')
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            working <= *request && request < limit,
            "{pods} pods: {working} / {request} / {limit}"
        );
        assert!(
            *request > last.0 && *limit > last.1,
            "{pods} pods: grows with the cluster"
        );
        last = (*request, *limit);
    }
    assert!(
        table[&150_000].2 > measured,
        "no limit below the benchmark's peak"
    );
    // The DaemonSet's defaults are rows of the table, and its limit holds the benchmark.
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let felix = container(find(&objects, "DaemonSet", "felix-client"), "felix-client");
        let request = mebibytes(felix["resources"]["requests"]["memory"].as_str().unwrap());
        let limit = mebibytes(felix["resources"]["limits"]["memory"].as_str().unwrap());
        assert!(
            table.values().any(|row| row.1 == request),
            "request {request} MiB not in the table"
        );
        assert!(
            table.values().any(|row| row.2 == limit),
            "limit {limit} MiB not in the table"
        );
        assert!(
            limit > measured,
            "{overlay}: limit {limit} MiB below the measured {measured} MiB"
        );
    }
}

#[test]
fn metrics_ports_logs_and_the_pod_monitor_component() {
    let scratch = Scratch::new("manifests-pod-monitor");
    let objects = render_with_components(&scratch, "policy-only", &["pod-monitor"], |_| {});
    for (kind, name, container_name, env_var, port, format_var) in [
        (
            "Deployment",
            "calico-typha",
            "calico-typha",
            "TYPHA_METRICS_LISTEN",
            9093,
            "TYPHA_LOG_FORMAT",
        ),
        (
            "DaemonSet",
            "felix-client",
            "felix-client",
            "FELIX_METRICS_LISTEN",
            9091,
            "FELIX_LOG_FORMAT",
        ),
    ] {
        let workload = find(&objects, kind, name);
        let c = container(workload, container_name);
        let env = resolve_env(
            &objects,
            c,
            &BTreeMap::from([
                ("metadata.name", "x"),
                ("metadata.namespace", NAMESPACE),
                ("spec.nodeName", "node-0"),
            ]),
        );
        // Calico's ports, on every address (Prometheus scrapes from off the node), and
        // not the probes' port.
        let listen: std::net::SocketAddr = env[env_var].parse().unwrap();
        assert_eq!(listen.port(), port, "{name}");
        assert!(listen.ip().is_unspecified(), "{name}: {listen}");
        let named = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "metrics")
            .unwrap_or_else(|| panic!("{name}: no port named metrics"));
        assert_eq!(named["containerPort"], port);
        assert_ne!(c["readinessProbe"]["httpGet"]["port"], port);
        assert!(["text", "json"].contains(&env[format_var].as_str()));
        // The PodMonitor selects the workload's pods and scrapes the named port.
        let monitor = find(&objects, "PodMonitor", name);
        assert_eq!(monitor["metadata"]["namespace"], NAMESPACE);
        assert_eq!(
            monitor["spec"]["selector"]["matchLabels"],
            workload["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
        assert_eq!(
            monitor["spec"]["podMetricsEndpoints"][0]["path"],
            "/metrics"
        );
    }
    // Optional: the overlays alone have no PodMonitor (its CRD may not be installed).
    assert!(
        render("policy-only")
            .iter()
            .all(|o| o["kind"] != "PodMonitor")
    );
}
