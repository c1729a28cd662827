//! `--plot FILE.svg`: per scenario, propagation latency over time (p50, p99, max of the
//! changes written in each second) and connections per replica, with the scenario's
//! events (churn start, kill, converged) as vertical marks. Hand-written SVG: two line
//! charts need no plotting library.

use std::fmt::Write;

use crate::report::{Report, ScenarioReport};

const WIDTH: f64 = 900.0;
const PANEL: f64 = 180.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

struct Axes {
    top: f64,
    t_max: f64,
    y_max: f64,
}

impl Axes {
    fn x(&self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t / self.t_max.max(1e-9))
    }

    fn y(&self, v: f64) -> f64 {
        self.top + PANEL - PANEL * (v / self.y_max.max(1e-9)).min(1.0)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn polyline(
    out: &mut String,
    axes: &Axes,
    points: &[(f64, f64)],
    color: &str,
    label: &str,
    slot: usize,
) {
    if points.is_empty() {
        return;
    }
    let path: Vec<String> = points
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", axes.x(*t), axes.y(*v)))
        .collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
        path.join(" ")
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.0}" y="{:.0}" fill="{color}" font-size="11">{}</text>"#,
        WIDTH - RIGHT - 150.0,
        axes.top + 14.0 + 13.0 * slot as f64,
        escape(label)
    );
}

fn frame(out: &mut String, axes: &Axes, title: &str, unit: &str, marks: &[(f64, String)]) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (axes.top, axes.top + PANEL);
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{PANEL}" fill="none" stroke="#888"/>"##,
        x1 - x0
    );
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        y0 - 6.0,
        escape(title)
    );
    for i in 0..=4 {
        let v = axes.y_max * f64::from(i) / 4.0;
        let y = axes.y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" x2="{x1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" font-size="10" text-anchor="end">{v:.0} {unit}</text>"#,
            x0 - 4.0,
            y + 3.0
        );
    }
    for i in 0..=5 {
        let t = axes.t_max * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{t:.0} s</text>"#,
            axes.x(t),
            y1 + 12.0
        );
    }
    for (t, label) in marks {
        let x = axes.x(*t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}" stroke="#aaa" stroke-dasharray="4 3"/>"##
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{}" font-size="9" fill="#666" transform="rotate(-90 {:.1} {})">{}</text>"##,
            x + 3.0,
            y1 - 4.0,
            x + 3.0,
            y1 - 4.0,
            escape(label)
        );
    }
}

fn scenario(out: &mut String, s: &ScenarioReport, top: f64) {
    let latency = &s.series.latency;
    let conns = &s.series.connections;
    let t_max = latency
        .iter()
        .map(|p| p.t + 1.0)
        .chain(conns.iter().map(|p| p.t))
        .chain(s.series.marks.iter().map(|m| m.0))
        .fold(1.0, f64::max);
    let y_max = latency.iter().map(|p| p.latency_ms.max).fold(1.0, f64::max);
    let axes = Axes {
        top,
        t_max,
        y_max: nice(y_max),
    };
    let title = format!(
        "{}: propagation latency by write time ({} clients)",
        s.name, s.clients
    );
    frame(out, &axes, &title, "ms", &s.series.marks);
    let series = |f: fn(&crate::latency::Percentiles) -> f64| -> Vec<(f64, f64)> {
        latency
            .iter()
            .map(|p| (p.t + 0.5, f(&p.latency_ms)))
            .collect()
    };
    polyline(out, &axes, &series(|l| l.p50), COLORS[0], "p50", 0);
    polyline(out, &axes, &series(|l| l.p99), COLORS[4], "p99", 1);
    polyline(out, &axes, &series(|l| l.max), COLORS[1], "max", 2);

    let replicas = conns.iter().map(|p| p.per_replica.len()).max().unwrap_or(0);
    let c_max = conns
        .iter()
        .flat_map(|p| p.per_replica.iter().flatten())
        .fold(1.0f64, |a, b| a.max(*b));
    let axes = Axes {
        top: top + PANEL + 50.0,
        t_max,
        y_max: nice(c_max),
    };
    frame(
        out,
        &axes,
        &format!("{}: connections per replica", s.name),
        "",
        &s.series.marks,
    );
    for r in 0..replicas {
        let points: Vec<(f64, f64)> = conns
            .iter()
            .map(|p| (p.t, p.per_replica.get(r).copied().flatten().unwrap_or(0.0)))
            .collect();
        polyline(
            out,
            &axes,
            &points,
            COLORS[(r + 2) % COLORS.len()],
            &format!("typha-{r}"),
            r,
        );
    }
}

/// A round axis maximum at or above `v`.
fn nice(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.max(1e-9).log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= v {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// The SVG document for the report.
pub fn render(report: &Report) -> String {
    let per = 2.0 * PANEL + 110.0;
    let height = 30.0 + per * report.scenarios.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, s) in report.scenarios.iter().enumerate() {
        scenario(&mut out, s, 40.0 + per * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_rounds_up() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(101.0), 200.0);
        assert_eq!(nice(0.3), 0.5);
        assert_eq!(nice(1.0), 1.0);
    }
}
