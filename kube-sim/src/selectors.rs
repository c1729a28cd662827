//! Label and field selectors, parsed from their query-string form.
//!
//! Label selectors support `=`, `==`, `!=`, `in (..)`, `notin (..)`, `key` (exists) and
//! `!key` (does not exist), comma-separated and ANDed, like the real API server. Field
//! selectors support `=`, `==` and `!=` on dotted paths (`metadata.name`,
//! `metadata.namespace`, `spec.nodeName`, any other path is looked up in the JSON).
//! A missing field compares as the empty string, matching the server's behaviour.

use std::collections::BTreeMap;

use crate::error::ApiError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: all requirements must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The ANDed requirements.
    pub requirements: Vec<LabelRequirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn bad(sel: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unable to parse requirement: invalid selector: '{sel}'"
    ))
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(whole))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_requirement(part: &str) -> Result<LabelRequirement, ApiError> {
    let p = part.trim();
    if let Some(key) = p.strip_prefix('!') {
        let key = key.trim();
        return if valid_key(key) {
            Ok(LabelRequirement::DoesNotExist(key.to_string()))
        } else {
            Err(bad(p))
        };
    }
    if let Some((k, v)) = p.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(
            k.trim().to_string(),
            v.trim().to_string(),
        ));
    }
    if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
        return Ok(LabelRequirement::Equals(
            k.trim().to_string(),
            v.trim().to_string(),
        ));
    }
    if let Some(idx) = p.find(" notin ").or_else(|| p.find(" notin(")) {
        let set = parse_set(&p[idx + 6..], p)?;
        return Ok(LabelRequirement::NotIn(p[..idx].trim().to_string(), set));
    }
    if let Some(idx) = p.find(" in ").or_else(|| p.find(" in(")) {
        let set = parse_set(&p[idx + 3..], p)?;
        return Ok(LabelRequirement::In(p[..idx].trim().to_string(), set));
    }
    if valid_key(p) {
        Ok(LabelRequirement::Exists(p.to_string()))
    } else {
        Err(bad(p))
    }
}

impl LabelSelector {
    /// Parses `app=web,tier in (a,b),!legacy`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let requirements = split_top_level(s)
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            LabelRequirement::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// One term of a field selector: `path=value` (`equal = true`) or `path!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted path, e.g. `spec.nodeName`.
    pub path: String,
    /// The value to compare against.
    pub value: String,
    /// `=`/`==` when true, `!=` when false.
    pub equal: bool,
}

/// A parsed field selector: all terms must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The ANDed terms.
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses `spec.nodeName=node-1,metadata.name!=x`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, value, equal) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, v, true)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector: '{part}'"
                )));
            };
            requirements.push(FieldRequirement {
                path: path.trim().to_string(),
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether every term holds; `field` returns the value at a dotted path (None = absent).
    pub fn matches(&self, field: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field(&r.path).unwrap_or_default();
            (actual == r.value) == r.equal
        })
    }
}

/// Looks up a dotted path in a JSON object and renders scalars as strings.
pub fn json_field(obj: &serde_json::Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    match cur {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_operators() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("tier in (fe,be)", true),
            ("tier in (be)", false),
            ("tier notin (be)", true),
            ("missing notin (be)", true),
            ("tier notin (fe)", false),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,tier in (fe, be),!legacy", true),
            ("app=web,tier=be", false),
            ("", true),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn bad_label_selectors_are_rejected() {
        for sel in ["tier in fe", "a b", "!"] {
            let err = LabelSelector::parse(sel).unwrap_err();
            assert_eq!(err.code(), 400, "{sel}");
        }
    }

    #[test]
    fn field_selectors() {
        let obj = serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        let f = |p: &str| json_field(&obj, p);
        assert!(FieldSelector::parse("spec.nodeName=n1").unwrap().matches(f));
        assert!(
            FieldSelector::parse("spec.nodeName==n1,metadata.name=p")
                .unwrap()
                .matches(f)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1")
                .unwrap()
                .matches(f)
        );
        assert!(FieldSelector::parse("spec.missing=").unwrap().matches(f));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
