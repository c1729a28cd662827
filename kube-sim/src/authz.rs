//! SelfSubjectAccessReview and SelfSubjectRulesReview (`kubectl auth can-i`) and
//! SelfSubjectReview (`kubectl auth whoami`): kube-sim has no authentication or
//! authorization, so every client is the same all-powerful user and every review
//! answers "allowed" and says why. Reviews are answered, never stored.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources::ResourceType;

/// Who every client is (kube-sim does not authenticate).
pub const USER: &str = "kube-sim:anyone";

/// The reason every review carries.
pub const REASON: &str =
    "kube-sim authorizes every request (it has no authentication or authorization)";

/// The answered review for a posted `SelfSubjectAccessReview` or `SelfSubjectRulesReview`.
pub fn review(t: &ResourceType, mut obj: Value) -> Result<Value, ApiError> {
    let status = match t.kind.as_str() {
        "SelfSubjectAccessReview" => {
            let spec = obj.get("spec");
            let has_attrs = spec.is_some_and(|s| {
                s.get("resourceAttributes").is_some() || s.get("nonResourceAttributes").is_some()
            });
            if !has_attrs {
                return Err(ApiError::invalid_object(&t.group, &t.kind, "", &[(
                    "spec.resourceAttributes".into(),
                    "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
                )]));
            }
            json!({"allowed": true, "reason": REASON})
        }
        "SelfSubjectReview" => json!({"userInfo": {
            "username": USER,
            "groups": ["system:masters", "system:authenticated"],
        }}),
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }),
        other => {
            return Err(ApiError::MethodNotAllowed(format!(
                "{other} cannot be created"
            )));
        }
    };
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(t.api_version()));
        o.insert("kind".into(), json!(t.kind));
        o.entry("metadata").or_insert_with(|| json!({}));
        o.insert("status".into(), status);
    }
    Ok(obj)
}
