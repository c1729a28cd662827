//! Field tables of the protobuf messages kube-sim decodes (see [`crate::protobuf`]): for
//! each message, field number -> JSON name and how the value maps to JSON. Field numbers
//! are those of the Kubernetes `generated.proto` files (k8s.io/api v0.33).
//!
//! Covered: the kinds kubectl's typed commands send (`create namespace|serviceaccount|
//! configmap|secret|service|deployment|role|clusterrole|rolebinding|clusterrolebinding|
//! poddisruptionbudget`, `run`, `auth can-i`, `scale`) with the fields a pod template
//! commonly uses. `Opt*` kinds are Go pointer fields, whose zero value is
//! meaningful and kept.

/// How a field's wire value becomes JSON.
#[derive(Debug, Clone, Copy)]
pub enum K {
    /// string, omitted when empty.
    Str,
    /// string pointer, kept when empty.
    OptStr,
    /// integer, omitted when zero.
    Int,
    /// integer pointer, kept when zero.
    OptInt,
    /// bool, omitted when false.
    Bool,
    /// bool pointer, kept when false.
    OptBool,
    /// `metav1.Time` -> RFC 3339 (omitted when zero).
    Time,
    /// `intstr.IntOrString` -> number or string.
    IntOrStr,
    /// `resource.Quantity` -> string.
    Quantity,
    /// A nested message.
    Msg(&'static [F]),
    /// A message whose fields are inlined into the parent (Go embedded structs).
    Inline(&'static [F]),
    /// repeated string.
    RepStr,
    /// repeated message.
    RepMsg(&'static [F]),
    /// map<string, string>.
    MapStr,
    /// map<string, bytes> -> base64 strings.
    MapBytes,
    /// map<string, Quantity>.
    MapQty,
}

/// One field: number, JSON name, kind.
#[derive(Debug, Clone, Copy)]
pub struct F {
    /// Field number.
    pub tag: u32,
    /// JSON name.
    pub name: &'static str,
    /// Value mapping.
    pub k: K,
}

const fn f(tag: u32, name: &'static str, k: K) -> F {
    F { tag, name, k }
}

use K::*;

const OWNER_REF: &[F] = &[
    f(1, "kind", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    f(6, "controller", OptBool),
    f(7, "blockOwnerDeletion", OptBool),
];

const OBJECT_META: &[F] = &[
    f(1, "name", Str),
    f(2, "generateName", Str),
    f(3, "namespace", Str),
    f(4, "selfLink", Str),
    f(5, "uid", Str),
    f(6, "resourceVersion", Str),
    f(7, "generation", Int),
    f(8, "creationTimestamp", Time),
    f(9, "deletionTimestamp", Time),
    f(10, "deletionGracePeriodSeconds", OptInt),
    f(11, "labels", MapStr),
    f(12, "annotations", MapStr),
    f(13, "ownerReferences", RepMsg(OWNER_REF)),
    f(14, "finalizers", RepStr),
];

const SELECTOR_REQ: &[F] = &[
    f(1, "key", Str),
    f(2, "operator", Str),
    f(3, "values", RepStr),
];
const LABEL_SELECTOR: &[F] = &[
    f(1, "matchLabels", MapStr),
    f(2, "matchExpressions", RepMsg(SELECTOR_REQ)),
];
const LOCAL_REF: &[F] = &[f(1, "name", Str)];
const OBJECT_REF: &[F] = &[
    f(1, "kind", Str),
    f(2, "namespace", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    f(6, "resourceVersion", Str),
    f(7, "fieldPath", Str),
];

const KEY_SELECTOR: &[F] = &[
    f(1, "", Inline(LOCAL_REF)),
    f(2, "key", Str),
    f(3, "optional", OptBool),
];
const FIELD_SELECTOR: &[F] = &[f(1, "apiVersion", Str), f(2, "fieldPath", Str)];
const RESOURCE_SELECTOR: &[F] = &[
    f(1, "containerName", Str),
    f(2, "resource", Str),
    f(3, "divisor", Quantity),
];
const ENV_SOURCE: &[F] = &[
    f(1, "fieldRef", Msg(FIELD_SELECTOR)),
    f(2, "resourceFieldRef", Msg(RESOURCE_SELECTOR)),
    f(3, "configMapKeyRef", Msg(KEY_SELECTOR)),
    f(4, "secretKeyRef", Msg(KEY_SELECTOR)),
];
const ENV_VAR: &[F] = &[
    f(1, "name", Str),
    f(2, "value", Str),
    f(3, "valueFrom", Msg(ENV_SOURCE)),
];
const ENV_FROM_REF: &[F] = &[f(1, "", Inline(LOCAL_REF)), f(2, "optional", OptBool)];
const ENV_FROM: &[F] = &[
    f(1, "prefix", Str),
    f(2, "configMapRef", Msg(ENV_FROM_REF)),
    f(3, "secretRef", Msg(ENV_FROM_REF)),
];
const CONTAINER_PORT: &[F] = &[
    f(1, "name", Str),
    f(2, "hostPort", Int),
    f(3, "containerPort", Int),
    f(4, "protocol", Str),
    f(5, "hostIP", Str),
];
const RESOURCES: &[F] = &[f(1, "limits", MapQty), f(2, "requests", MapQty)];
const VOLUME_MOUNT: &[F] = &[
    f(1, "name", Str),
    f(2, "readOnly", Bool),
    f(3, "mountPath", Str),
    f(4, "subPath", Str),
    f(5, "mountPropagation", OptStr),
    f(6, "subPathExpr", Str),
    f(7, "recursiveReadOnly", OptStr),
];
const HTTP_HEADER: &[F] = &[f(1, "name", Str), f(2, "value", Str)];
const HTTP_GET: &[F] = &[
    f(1, "path", Str),
    f(2, "port", IntOrStr),
    f(3, "host", Str),
    f(4, "scheme", Str),
    f(5, "httpHeaders", RepMsg(HTTP_HEADER)),
];
const TCP_SOCKET: &[F] = &[f(1, "port", IntOrStr), f(2, "host", Str)];
const EXEC: &[F] = &[f(1, "command", RepStr)];
const PROBE_HANDLER: &[F] = &[
    f(1, "exec", Msg(EXEC)),
    f(2, "httpGet", Msg(HTTP_GET)),
    f(3, "tcpSocket", Msg(TCP_SOCKET)),
];
const PROBE: &[F] = &[
    f(1, "", Inline(PROBE_HANDLER)),
    f(2, "initialDelaySeconds", Int),
    f(3, "timeoutSeconds", Int),
    f(4, "periodSeconds", Int),
    f(5, "successThreshold", Int),
    f(6, "failureThreshold", Int),
    f(7, "terminationGracePeriodSeconds", OptInt),
];
const CAPABILITIES: &[F] = &[f(1, "add", RepStr), f(2, "drop", RepStr)];
const SECURITY_CONTEXT: &[F] = &[
    f(1, "capabilities", Msg(CAPABILITIES)),
    f(2, "privileged", OptBool),
    f(4, "runAsUser", OptInt),
    f(5, "runAsNonRoot", OptBool),
    f(6, "readOnlyRootFilesystem", OptBool),
    f(7, "allowPrivilegeEscalation", OptBool),
    f(8, "runAsGroup", OptInt),
];
const CONTAINER: &[F] = &[
    f(1, "name", Str),
    f(2, "image", Str),
    f(3, "command", RepStr),
    f(4, "args", RepStr),
    f(5, "workingDir", Str),
    f(6, "ports", RepMsg(CONTAINER_PORT)),
    f(7, "env", RepMsg(ENV_VAR)),
    f(8, "resources", Msg(RESOURCES)),
    f(9, "volumeMounts", RepMsg(VOLUME_MOUNT)),
    f(10, "livenessProbe", Msg(PROBE)),
    f(11, "readinessProbe", Msg(PROBE)),
    f(13, "terminationMessagePath", Str),
    f(14, "imagePullPolicy", Str),
    f(15, "securityContext", Msg(SECURITY_CONTEXT)),
    f(16, "stdin", Bool),
    f(17, "stdinOnce", Bool),
    f(18, "tty", Bool),
    f(19, "envFrom", RepMsg(ENV_FROM)),
    f(20, "terminationMessagePolicy", Str),
    f(22, "startupProbe", Msg(PROBE)),
    f(24, "restartPolicy", OptStr),
];
const KEY_TO_PATH: &[F] = &[f(1, "key", Str), f(2, "path", Str), f(3, "mode", OptInt)];
const HOST_PATH: &[F] = &[f(1, "path", Str), f(2, "type", OptStr)];
const EMPTY_DIR: &[F] = &[f(1, "medium", Str), f(2, "sizeLimit", Quantity)];
const SECRET_VOLUME: &[F] = &[
    f(1, "secretName", Str),
    f(2, "items", RepMsg(KEY_TO_PATH)),
    f(3, "defaultMode", OptInt),
    f(4, "optional", OptBool),
];
const PVC_VOLUME: &[F] = &[f(1, "claimName", Str), f(2, "readOnly", Bool)];
const CONFIGMAP_VOLUME: &[F] = &[
    f(1, "", Inline(LOCAL_REF)),
    f(2, "items", RepMsg(KEY_TO_PATH)),
    f(3, "defaultMode", OptInt),
    f(4, "optional", OptBool),
];
const VOLUME_SOURCE: &[F] = &[
    f(1, "hostPath", Msg(HOST_PATH)),
    f(2, "emptyDir", Msg(EMPTY_DIR)),
    f(6, "secret", Msg(SECRET_VOLUME)),
    f(10, "persistentVolumeClaim", Msg(PVC_VOLUME)),
    f(19, "configMap", Msg(CONFIGMAP_VOLUME)),
];
const VOLUME: &[F] = &[f(1, "name", Str), f(2, "", Inline(VOLUME_SOURCE))];
const TOLERATION: &[F] = &[
    f(1, "key", Str),
    f(2, "operator", Str),
    f(3, "value", Str),
    f(4, "effect", Str),
    f(5, "tolerationSeconds", OptInt),
];
const POD_SECURITY_CONTEXT: &[F] = &[
    f(2, "runAsUser", OptInt),
    f(3, "runAsNonRoot", OptBool),
    f(5, "fsGroup", OptInt),
    f(6, "runAsGroup", OptInt),
];
const POD_SPEC: &[F] = &[
    f(1, "volumes", RepMsg(VOLUME)),
    f(2, "containers", RepMsg(CONTAINER)),
    f(3, "restartPolicy", Str),
    f(4, "terminationGracePeriodSeconds", OptInt),
    f(5, "activeDeadlineSeconds", OptInt),
    f(6, "dnsPolicy", Str),
    f(7, "nodeSelector", MapStr),
    f(8, "serviceAccountName", Str),
    f(9, "serviceAccount", Str),
    f(10, "nodeName", Str),
    f(11, "hostNetwork", Bool),
    f(12, "hostPID", Bool),
    f(13, "hostIPC", Bool),
    f(14, "securityContext", Msg(POD_SECURITY_CONTEXT)),
    f(15, "imagePullSecrets", RepMsg(LOCAL_REF)),
    f(16, "hostname", Str),
    f(17, "subdomain", Str),
    f(19, "schedulerName", Str),
    f(20, "initContainers", RepMsg(CONTAINER)),
    f(21, "automountServiceAccountToken", OptBool),
    f(22, "tolerations", RepMsg(TOLERATION)),
    f(24, "priorityClassName", Str),
    f(25, "priority", OptInt),
    f(30, "enableServiceLinks", OptBool),
    f(31, "preemptionPolicy", OptStr),
];
const POD_IP: &[F] = &[f(1, "ip", Str)];
const POD_CONDITION: &[F] = &[
    f(1, "type", Str),
    f(2, "status", Str),
    f(3, "lastProbeTime", Time),
    f(4, "lastTransitionTime", Time),
    f(5, "reason", Str),
    f(6, "message", Str),
];
const POD_STATUS: &[F] = &[
    f(1, "phase", Str),
    f(2, "conditions", RepMsg(POD_CONDITION)),
    f(3, "message", Str),
    f(4, "reason", Str),
    f(5, "hostIP", Str),
    f(6, "podIP", Str),
    f(7, "startTime", Time),
    f(9, "qosClass", Str),
    f(12, "podIPs", RepMsg(POD_IP)),
    f(16, "hostIPs", RepMsg(POD_IP)),
];
const POD: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(POD_SPEC)),
    f(3, "status", Msg(POD_STATUS)),
];
const POD_TEMPLATE: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(POD_SPEC)),
];

const NAMESPACE: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(&[f(1, "finalizers", RepStr)])),
    f(3, "status", Msg(&[f(1, "phase", Str)])),
];
const SERVICE_ACCOUNT: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "secrets", RepMsg(OBJECT_REF)),
    f(3, "imagePullSecrets", RepMsg(LOCAL_REF)),
    f(4, "automountServiceAccountToken", OptBool),
];
const CONFIG_MAP: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "data", MapStr),
    f(3, "binaryData", MapBytes),
    f(4, "immutable", OptBool),
];
const SECRET: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "data", MapBytes),
    f(3, "type", Str),
    f(4, "stringData", MapStr),
    f(5, "immutable", OptBool),
];
const SERVICE_PORT: &[F] = &[
    f(1, "name", Str),
    f(2, "protocol", Str),
    f(3, "port", Int),
    f(4, "targetPort", IntOrStr),
    f(5, "nodePort", Int),
    f(6, "appProtocol", OptStr),
];
const SERVICE_SPEC: &[F] = &[
    f(1, "ports", RepMsg(SERVICE_PORT)),
    f(2, "selector", MapStr),
    f(3, "clusterIP", Str),
    f(4, "type", Str),
    f(5, "externalIPs", RepStr),
    f(7, "sessionAffinity", Str),
    f(8, "loadBalancerIP", Str),
    f(9, "loadBalancerSourceRanges", RepStr),
    f(10, "externalName", Str),
    f(11, "externalTrafficPolicy", Str),
    f(12, "healthCheckNodePort", Int),
    f(13, "publishNotReadyAddresses", Bool),
    f(
        14,
        "sessionAffinityConfig",
        Msg(&[f(1, "clientIP", Msg(&[f(1, "timeoutSeconds", OptInt)]))]),
    ),
    f(17, "ipFamilyPolicy", OptStr),
    f(18, "clusterIPs", RepStr),
    f(19, "ipFamilies", RepStr),
    f(20, "allocateLoadBalancerNodePorts", OptBool),
    f(21, "loadBalancerClass", OptStr),
    f(22, "internalTrafficPolicy", OptStr),
    f(23, "trafficDistribution", OptStr),
];
const SERVICE: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(SERVICE_SPEC)),
    f(3, "status", Msg(&[f(1, "loadBalancer", Msg(&[]))])),
];
const ROLLING_UPDATE: &[F] = &[f(1, "maxUnavailable", IntOrStr), f(2, "maxSurge", IntOrStr)];
const STRATEGY: &[F] = &[
    f(1, "type", Str),
    f(2, "rollingUpdate", Msg(ROLLING_UPDATE)),
];
const DEPLOYMENT_SPEC: &[F] = &[
    f(1, "replicas", OptInt),
    f(2, "selector", Msg(LABEL_SELECTOR)),
    f(3, "template", Msg(POD_TEMPLATE)),
    f(4, "strategy", Msg(STRATEGY)),
    f(5, "minReadySeconds", Int),
    f(6, "revisionHistoryLimit", OptInt),
    f(7, "paused", Bool),
    f(9, "progressDeadlineSeconds", OptInt),
];
const DEPLOYMENT_STATUS: &[F] = &[
    f(1, "observedGeneration", Int),
    f(2, "replicas", Int),
    f(3, "updatedReplicas", Int),
    f(4, "availableReplicas", Int),
    f(5, "unavailableReplicas", Int),
    f(7, "readyReplicas", Int),
];
const DEPLOYMENT: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(DEPLOYMENT_SPEC)),
    f(3, "status", Msg(DEPLOYMENT_STATUS)),
];
const RESOURCE_ATTRIBUTES: &[F] = &[
    f(1, "namespace", Str),
    f(2, "verb", Str),
    f(3, "group", Str),
    f(4, "version", Str),
    f(5, "resource", Str),
    f(6, "subresource", Str),
    f(7, "name", Str),
];
const NON_RESOURCE_ATTRIBUTES: &[F] = &[f(1, "path", Str), f(2, "verb", Str)];
const ACCESS_STATUS: &[F] = &[
    f(1, "allowed", Bool),
    f(2, "reason", Str),
    f(3, "evaluationError", Str),
    f(4, "denied", Bool),
];
const SSAR: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Msg(&[
            f(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
        ]),
    ),
    f(3, "status", Msg(ACCESS_STATUS)),
];
const SSRR: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(&[f(1, "namespace", Str)])),
    f(
        3,
        "status",
        Msg(&[f(3, "incomplete", Bool), f(4, "evaluationError", Str)]),
    ),
];
const USER_INFO: &[F] = &[
    f(1, "username", Str),
    f(2, "uid", Str),
    f(3, "groups", RepStr),
];
const SSR: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "status", Msg(&[f(1, "userInfo", Msg(USER_INFO))])),
];
const SCALE: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(&[f(1, "replicas", Int)])),
    f(
        3,
        "status",
        Msg(&[f(1, "replicas", Int), f(2, "selector", Str)]),
    ),
];

const POLICY_RULE: &[F] = &[
    f(1, "verbs", RepStr),
    f(2, "apiGroups", RepStr),
    f(3, "resources", RepStr),
    f(4, "resourceNames", RepStr),
    f(5, "nonResourceURLs", RepStr),
];
const ROLE: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "rules", RepMsg(POLICY_RULE)),
];
const CLUSTER_ROLE: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "rules", RepMsg(POLICY_RULE)),
    f(
        3,
        "aggregationRule",
        Msg(&[f(1, "clusterRoleSelectors", RepMsg(LABEL_SELECTOR))]),
    ),
];
const SUBJECT: &[F] = &[
    f(1, "kind", Str),
    f(2, "apiGroup", Str),
    f(3, "name", Str),
    f(4, "namespace", Str),
];
const ROLE_REF: &[F] = &[f(1, "apiGroup", Str), f(2, "kind", Str), f(3, "name", Str)];
const BINDING: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "subjects", RepMsg(SUBJECT)),
    f(3, "roleRef", Msg(ROLE_REF)),
];
const PDB: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Msg(&[
            f(1, "minAvailable", IntOrStr),
            f(2, "selector", Msg(LABEL_SELECTOR)),
            f(3, "maxUnavailable", IntOrStr),
            f(4, "unhealthyPodEvictionPolicy", OptStr),
        ]),
    ),
    f(
        3,
        "status",
        Msg(&[
            f(1, "observedGeneration", Int),
            f(3, "disruptionsAllowed", Int),
            f(4, "currentHealthy", Int),
            f(5, "desiredHealthy", Int),
            f(6, "expectedPods", Int),
        ]),
    ),
];

/// The field table of the kind `apiVersion`/`kind`, if kube-sim decodes it.
pub fn kind_message(api_version: &str, kind: &str) -> Option<&'static [F]> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Service") => SERVICE,
        ("v1", "Pod") => POD,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SSAR,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => SSRR,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => SSR,
        ("autoscaling/v1", "Scale") => SCALE,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => BINDING,
        ("policy/v1", "PodDisruptionBudget") => PDB,
        _ => return None,
    })
}
