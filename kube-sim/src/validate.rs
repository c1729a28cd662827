//! Object validation as the API server does it: names per kind (RFC 1123 label or
//! subdomain, RFC 1035 label, path segment), immutable fields, and unknown fields
//! (`fieldValidation=Strict|Warn|Ignore`) checked against the kind's schema.
//!
//! Error texts are the API server's, because kubectl prints them verbatim.

use serde_json::Value;

use crate::error::ApiError;
use crate::resources::ResourceType;

/// How a kind's names are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
    /// RFC 1035 label (services).
    Dns1035,
    /// Path segment: anything but `.`, `..`, `/` and `%` (RBAC kinds).
    PathSegment,
}

/// The name rule of a kind.
pub fn name_rule(t: &ResourceType) -> NameRule {
    match (t.group.as_str(), t.kind.as_str()) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or \
'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
(e.g. 'example.com', regex used for validation is \
'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters \
or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. \
'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.chars().all(|c| alnum(c) || c == '-')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// Checks `name` against the rule; returns the API server's messages (empty: valid).
pub fn name_problems(name: &str, rule: NameRule) -> Vec<String> {
    let invalid = |msg: &str| format!("Invalid value: \"{name}\": {msg}");
    let mut out = Vec::new();
    match rule {
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                out.push(invalid(&format!("may not be '{name}'")));
            }
            for bad in ["/", "%"] {
                if name.contains(bad) {
                    out.push(invalid(&format!("may not contain '{bad}'")));
                }
            }
        }
        NameRule::Label | NameRule::Dns1035 => {
            if name.len() > 63 {
                out.push(invalid("must be no more than 63 characters"));
            }
            let ok = is_label(name)
                && (rule == NameRule::Label || name.starts_with(|c: char| c.is_ascii_lowercase()));
            if !ok {
                out.push(invalid(if rule == NameRule::Label {
                    LABEL_MSG
                } else {
                    DNS1035_MSG
                }));
            }
        }
        NameRule::Subdomain => {
            if name.len() > 253 {
                out.push(invalid("must be no more than 253 characters"));
            }
            if !name.split('.').all(is_label) {
                out.push(invalid(SUBDOMAIN_MSG));
            }
        }
    }
    out
}

/// Validates an object's name for its kind: the 422 `The <Kind> "<name>" is invalid`.
pub fn validate_name(t: &ResourceType, name: &str) -> Result<(), ApiError> {
    let problems = name_problems(name, name_rule(t));
    if problems.is_empty() {
        return Ok(());
    }
    let causes: Vec<(String, String)> = problems
        .into_iter()
        .map(|m| ("metadata.name".to_string(), m))
        .collect();
    Err(ApiError::invalid_object(&t.group, &t.kind, name, &causes))
}

/// What to do with unknown fields (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Keep going, but answer with a warning per field (the server default).
    #[default]
    Warn,
    /// Refuse the request (400).
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter (absent: Warn, as the API server).
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation parameter unsupported: {other}"
            ))),
        }
    }
}

/// The unknown-field outcome for `obj`: Ok(warnings) or the Strict error.
pub fn check_fields(
    t: &ResourceType,
    obj: &Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let unknown = crate::schemas::unknown_fields(t, obj);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match mode {
        FieldValidation::Strict => Err(ApiError::BadRequest(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
            texts.join(", "),
            kind = t.kind,
            v = t.version,
        ))),
        _ => Ok(texts),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kind_rule() {
        assert!(name_problems("web-1.a", NameRule::Subdomain).is_empty());
        assert!(name_problems("a..b", NameRule::Subdomain).len() == 1);
        assert!(name_problems("web.a", NameRule::Label).len() == 1);
        assert!(name_problems("1web", NameRule::Label).is_empty());
        assert!(name_problems("1web", NameRule::Dns1035).len() == 1);
        assert!(name_problems("system:controller", NameRule::PathSegment).is_empty());
        assert!(name_problems("a/b", NameRule::PathSegment).len() == 1);
        let long = "a".repeat(64);
        assert_eq!(name_problems(&long, NameRule::Label).len(), 1);
        let p = name_problems("Bad_Name", NameRule::Label);
        assert!(p[0].starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 label"));
    }

    #[test]
    fn field_validation_parses() {
        assert_eq!(FieldValidation::parse(None).unwrap(), FieldValidation::Warn);
        assert_eq!(
            FieldValidation::parse(Some("Strict")).unwrap(),
            FieldValidation::Strict
        );
        assert!(FieldValidation::parse(Some("strict")).is_err());
    }
}
