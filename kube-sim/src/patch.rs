//! JSON merge patch (RFC 7386) and a pragmatic strategic merge patch.
//!
//! Strategic merge is merge patch plus: lists whose field has a known merge key
//! (containers by `name`, conditions by `type`, ...) are merged element-wise by that key,
//! `$patch: delete|replace` directives, `$deleteFromPrimitiveList/<field>`, and the
//! `$setElementOrder/<field>` and `$retainKeys` hints (which are accepted and dropped).
//! That covers what `kubectl apply|label|annotate|patch` send. Other lists are replaced.

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The merge key of a list-valued field, for the list fields kubectl patches in practice.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "readinessGates" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "addresses" => "type",
        "taints" => "key",
        _ => return None,
    })
}

/// Primitive lists with `patchStrategy: merge` (union instead of replace).
fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Applies a strategic merge patch to `target`.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = p.clone();
            replaced.remove("$patch");
            *target = strip_directives(Value::Object(replaced));
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(del)) = (t.get_mut(field), v.as_array()) {
                items.retain(|i| !del.contains(i));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(cur)), Value::Array(new)) => merge_list(k, cur, new),
            (Some(cur @ Value::Object(_)), Value::Object(_)) => {
                strategic_merge_patch(cur, v);
                if cur.is_null() {
                    t.remove(k);
                }
            }
            _ => {
                t.insert(k.clone(), strip_directives(v.clone()));
            }
        }
    }
}

fn merge_list(field: &str, cur: &mut Vec<Value>, patch: &[Value]) {
    if is_set_list(field) {
        for item in patch {
            if !cur.contains(item) {
                cur.push(item.clone());
            }
        }
        return;
    }
    let Some(key) = merge_key(field) else {
        *cur = patch.iter().cloned().map(strip_directives).collect();
        return;
    };
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *cur = patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .map(strip_directives)
            .collect();
        return;
    }
    for item in patch {
        let id = item.get(key);
        let pos = id.and_then(|id| cur.iter().position(|c| c.get(key) == Some(id)));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_patch(&mut cur[i], item),
            (None, false) => cur.push(strip_directives(item.clone())),
        }
    }
}

/// Removes `$`-directives from a value that is inserted whole.
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut t,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            t,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut t = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}]}});
        let p = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "a:2"}, {"name": "b", "$patch": "delete"},
                           {"name": "c", "image": "c:1"}]}});
        strategic_merge_patch(&mut t, &p);
        assert_eq!(
            t,
            json!({"spec": {"containers": [
            {"name": "a", "image": "a:2", "ports": [{"containerPort": 80}]},
            {"name": "c", "image": "c:1"}]}})
        );
    }

    #[test]
    fn strategic_labels_and_directives() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
                           "spec": {"tolerations": [{"key": "k"}]}});
        let p = json!({"metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["y"],
                                    "$deleteFromPrimitiveList/finalizers": ["x"]},
                       "spec": {"tolerations": [{"key": "z"}], "$retainKeys": ["tolerations"]}});
        strategic_merge_patch(&mut t, &p);
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}, "finalizers": ["y"]},
                             "spec": {"tolerations": [{"key": "z"}]}})
        );
    }

    #[test]
    fn strategic_replace_directive() {
        let mut t = json!({"spec": {"selector": {"a": "1", "b": "2"}}});
        strategic_merge_patch(
            &mut t,
            &json!({"spec": {"selector": {"$patch": "replace", "c": "3"}}}),
        );
        assert_eq!(t, json!({"spec": {"selector": {"c": "3"}}}));
    }
}
