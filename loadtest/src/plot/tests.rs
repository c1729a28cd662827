//! The plots of a small report: every chart, series, legend entry, tick label and mark.

use super::*;
use crate::latency::SecondPoint;
use crate::report::ConnectionPoint;

/// A steady-like scenario: 40 clients on two replicas, 6 seconds of latency, marks of
/// which two are close together (their numbers must not share a row).
fn report() -> ScenarioReport {
    let mut s = ScenarioReport::empty(40);
    s.name = "steady".into();
    s.series.latency = (0..6)
        .map(|t| SecondPoint {
            t: f64::from(t),
            latency_ms: Percentiles {
                count: 100,
                p50: 2.0 + f64::from(t),
                p99: 20.0 + f64::from(t),
                max: 40.0,
            },
        })
        .collect();
    s.series.connections = (0..12)
        .map(|i| ConnectionPoint {
            t: f64::from(i) * 0.5,
            per_replica: vec![Some(20.0), if i == 5 { None } else { Some(21.0) }],
        })
        .collect();
    s.series.marks = vec![
        (0.5, "clients start".into()),
        (0.52, "all in sync".into()),
        (1.0, "churn start".into()),
        (5.5, "converged".into()),
    ];
    s.latency_ms = Percentiles {
        count: 600,
        p50: 4.0,
        p99: 24.0,
        max: 40.0,
    };
    s.latency_cdf = vec![(1.0, 0.1), (4.0, 0.5), (24.0, 0.99), (40.0, 1.0)];
    s
}

#[test]
fn every_chart_series_legend_and_mark_is_drawn() {
    let mut cold = ScenarioReport::empty(40);
    cold.name = "cold-start".into();
    let svg = render(&[report(), cold]).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    for text in [
        "steady: propagation latency by write time (40 clients)",
        "steady: connections per replica",
        "steady: latency CDF (600 samples; p50 4.0 ms, p99 24.0 ms, max 40.0 ms)",
        "cold-start: latency CDF (no samples)",
        "\np50\n</text>",
        "\np99\n</text>",
        "\nmax\n</text>",
        "\ntypha-0\n</text>",
        "\ntypha-1\n</text>",
        "\nlatency CDF\n</text>",
        "latency, ms (log scale)",
        "1 clients start (0.5 s)",
        "4 converged (5.5 s)",
    ] {
        assert!(svg.contains(text), "{text:?} missing");
    }
    // Latency p50/p99/max, two replicas, the CDF: six data lines in the first scenario.
    assert!(svg.matches("<polyline").count() >= 6, "{svg}");
    // Tick labels are rounded: no float noise such as 0.30000000000000004.
    assert!(!svg.contains("0000000"), "{svg}");
}

#[test]
fn close_marks_take_different_rows_and_ticks_are_short() {
    assert_eq!(mark_rows(&[0.5, 0.52, 1.0, 5.5], 6.0), vec![0, 1, 0, 0]);
    assert_eq!(mark_rows(&[1.0, 1.0, 1.0], 6.0), vec![0, 1, 2]);
    assert_eq!(tick(&0.30000000000000004), "0.3");
    assert_eq!(tick(&2.0), "2");
    assert_eq!(tick(&-0.0), "0");
}

#[test]
fn the_key_wraps_at_the_width() {
    let mut s = report();
    s.series.marks = (0..40)
        .map(|i| (f64::from(i), format!("mark {i}")))
        .collect();
    let lines = key_lines(&s);
    assert!(lines.len() > 1);
    let fits = ((WIDTH - 90) / KEY_CHAR) as usize;
    assert!(lines.iter().all(|l| l.chars().count() <= fits), "{lines:?}");
    assert!(lines.concat().contains("40 mark 39 (39.0 s)"));
}
