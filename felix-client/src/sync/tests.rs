use super::*;

#[test]
fn backoff_grows_to_the_cap_with_jitter() {
    let config = SyncConfig::new("n", vec!["a:1".into()]);
    assert_eq!(backoff_step(&config, 1), config.backoff_min);
    assert_eq!(backoff_step(&config, 2), config.backoff_min * 2);
    for attempt in 1..40 {
        let d = backoff(&config, attempt);
        let step = backoff_step(&config, attempt);
        assert!(step <= config.backoff_max);
        assert!(step >= backoff_step(&config, attempt - 1));
        assert!(
            d >= step / 2 && d <= step,
            "attempt {attempt}: {d:?} vs {step:?}"
        );
    }
    assert_eq!(backoff_step(&config, 30), config.backoff_max);
}

#[test]
fn tried_names_every_address() {
    let mut tried = Tried::default();
    assert!(
        tried
            .to_string()
            .contains("no typha endpoint was ever available")
    );
    tried.note("a:1", "refused".into());
    tried.note("a:1", "refused again".into());
    tried.note("b:2", "timed out".into());
    assert_eq!(
        tried.to_string(),
        "a:1 (2 attempt(s), last: refused again); b:2 (1 attempt(s), last: timed out)"
    );
}
