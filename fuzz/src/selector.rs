//! Fuzz target `selector`: Calico selector parsing, printing and evaluation.
//!
//! Input: selector text, then optionally a NUL byte and labels as `key=value` lines.
//! Checked: no panic; printing is canonical (print -> parse gives the same tree and the
//! same text), also after rewriting into a profile scope; evaluation on the labels is
//! total and `!s` matches exactly when `s` does not; nesting beyond
//! `selector::MAX_NESTING` is refused instead of overflowing the stack.

use std::collections::BTreeMap;

use netmodel::selector::{NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX, Selector};

/// Fuzz target `selector` (see the module docs).
pub fn selector(data: &[u8]) {
    let (text, labels) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(Some(parsed)) = Selector::parse(text) else {
        return;
    };
    assert_canonical(&parsed, false);
    for prefix in [NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX] {
        // Scoping turns `global()` into `!has(..)`: one level deeper, which may cross
        // the nesting bound (felix-client then refuses that one selector: fails closed).
        assert_canonical(&parsed.clone().into_profile_scope(prefix), true);
    }
    let labels: BTreeMap<String, String> = String::from_utf8_lossy(labels)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |key: &str| labels.get(key).map(String::as_str);
    let matched = parsed.matches(&get);
    let _ = parsed.required_namespace();
    let negated = Selector::Not(Box::new(parsed));
    assert_eq!(negated.matches(&get), !matched);
}

fn assert_canonical(selector: &Selector, deeper: bool) {
    let printed = selector.to_string();
    match Selector::parse(&printed) {
        Ok(Some(again)) => {
            assert_eq!(&again, selector, "printed as {printed:?}");
            assert_eq!(again.to_string(), printed);
        }
        Err(e) if deeper && e.reason.contains("nested deeper") => {}
        other => panic!("{selector:?} printed as {printed:?} does not parse back: {other:?}"),
    }
}
