//! `--plot FILE.svg`: per scenario, three charts drawn with `plotters`' SVG backend:
//! propagation latency over time (p50, p99 and max of the changes written in each
//! second), connections per replica, and the latency CDF (share of samples at or below a
//! latency, log-scale latency axis).
//!
//! The scenario's events (churn start, kill, converged, ...) are vertical lines numbered
//! in time order; the numbers are staggered into rows so that no two overlap, and a key
//! under the charts spells each out with its time. Each chart's legend sits in a column
//! right of its plot, so it never covers the numbers or the data. plotters is built without its `ttf`
//! feature: text is laid out by its built-in size estimate and written as SVG `<text>`, so
//! rendering needs no system fonts (no fontconfig) on the machine that runs it.

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::latency::Percentiles;
use crate::report::ScenarioReport;

const WIDTH: u32 = 960;
const LATENCY_HEIGHT: u32 = 280;
const CONNECTIONS_HEIGHT: u32 = 220;
const CDF_HEIGHT: u32 = 280;
const KEY_ROW: u32 = 16;
/// The legend column right of each plot.
const LEGEND_WIDTH: u32 = 110;
/// Roughly how many pixels a character of the key's 12 px text takes.
const KEY_CHAR: u32 = 7;
/// Mark numbers closer than this share of the time axis go to different rows.
const MARK_GAP: f64 = 0.03;
/// Each row of mark numbers takes this share of the value axis, from the top.
const MARK_ROW: f64 = 0.075;
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One percentile of a second's latency.
type Percentile = fn(&Percentiles) -> f64;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type LinearChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The SVG document for the report's scenarios.
pub fn render(scenarios: &[ScenarioReport]) -> anyhow::Result<String> {
    let mut out = String::new();
    let heights: Vec<u32> = scenarios.iter().map(scenario_height).collect();
    let total = heights.iter().sum::<u32>().max(1);
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, total)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut rest = root.clone();
        for (s, height) in scenarios.iter().zip(heights) {
            let (area, below) = rest.split_vertically(height);
            scenario(&area, s)?;
            rest = below;
        }
        root.present()?;
    }
    Ok(out)
}

fn scenario_height(s: &ScenarioReport) -> u32 {
    LATENCY_HEIGHT + CONNECTIONS_HEIGHT + CDF_HEIGHT + KEY_ROW * (key_lines(s).len() as u32 + 1)
}

fn scenario(area: &Area<'_>, s: &ScenarioReport) -> anyhow::Result<()> {
    let (latency, rest) = area.split_vertically(LATENCY_HEIGHT);
    let (connections, rest) = rest.split_vertically(CONNECTIONS_HEIGHT);
    let (cdf, key) = rest.split_vertically(CDF_HEIGHT);
    let t_max = time_span(s);
    latency_chart(&latency, s, t_max)?;
    connections_chart(&connections, s, t_max)?;
    cdf_chart(&cdf, s)?;
    for (i, line) in key_lines(s).iter().enumerate() {
        let y = (KEY_ROW * i as u32 + 4) as i32;
        key.draw(&Text::new(
            line.clone(),
            (70, y),
            ("sans-serif", 12).into_font(),
        ))?;
    }
    Ok(())
}

/// The time axis' end: the last latency second, connection sample or mark.
fn time_span(s: &ScenarioReport) -> f64 {
    let series = &s.series;
    series
        .latency
        .iter()
        .map(|p| p.t + 1.0)
        .chain(series.connections.iter().map(|p| p.t))
        .chain(series.marks.iter().map(|m| m.0))
        .fold(1.0, f64::max)
}

/// A tick label: the value rounded to three decimals, without trailing zeros.
fn tick(v: &f64) -> String {
    format!("{}", (v * 1000.0).round() / 1000.0 + 0.0)
}

fn latency_chart(area: &Area<'_>, s: &ScenarioReport, t_max: f64) -> anyhow::Result<()> {
    let points = &s.series.latency;
    let y_max = points.iter().map(|p| p.latency_ms.max).fold(1.0, f64::max) * 1.05;
    let caption = format!(
        "{}: propagation latency by write time ({} clients)",
        s.name, s.clients
    );
    let (plot, side) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = builder(&plot, caption).build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
    mesh(
        &mut chart,
        "seconds since the scenario started (by write time)",
        "ms",
    )?;
    let lines: [(&str, Percentile); 3] =
        [("p50", |l| l.p50), ("p99", |l| l.p99), ("max", |l| l.max)];
    for (i, (_, of)) in lines.iter().enumerate() {
        let line = points.iter().map(|p| (p.t + 0.5, of(&p.latency_ms)));
        chart.draw_series(LineSeries::new(line, COLORS[i].stroke_width(2)))?;
    }
    marks(&mut chart, s, (t_max, y_max))?;
    let labels: Vec<String> = lines.iter().map(|(l, _)| l.to_string()).collect();
    legend(&side, &labels, 0)
}

fn connections_chart(area: &Area<'_>, s: &ScenarioReport, t_max: f64) -> anyhow::Result<()> {
    let conns = &s.series.connections;
    let replicas = conns.iter().map(|p| p.per_replica.len()).max().unwrap_or(0);
    let per_replica = conns.iter().flat_map(|p| p.per_replica.iter().flatten());
    let y_max = per_replica.fold(1.0f64, |a, b| a.max(*b)) * 1.1;
    let (plot, side) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let caption = format!("{}: connections per replica", s.name);
    let mut chart = builder(&plot, caption).build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
    mesh(
        &mut chart,
        "seconds since the scenario started",
        "connections",
    )?;
    for r in 0..replicas {
        let line = conns
            .iter()
            .map(|p| (p.t, p.per_replica.get(r).copied().flatten().unwrap_or(0.0)));
        let color = COLORS[(r + 3) % COLORS.len()];
        chart.draw_series(LineSeries::new(line, color.stroke_width(2)))?;
    }
    marks(&mut chart, s, (t_max, y_max))?;
    let labels: Vec<String> = (0..replicas).map(|r| format!("typha-{r}")).collect();
    legend(&side, &labels, 3)
}

fn cdf_chart(area: &Area<'_>, s: &ScenarioReport) -> anyhow::Result<()> {
    let cdf = &s.latency_cdf;
    let l = &s.latency_ms;
    let low = cdf.first().map_or(0.1, |c| c.0).max(0.01) * 0.9;
    let high = (l.max * 1.2).max(low * 10.0);
    let caption = match l.count {
        0 => format!("{}: latency CDF (no samples)", s.name),
        n => format!(
            "{}: latency CDF ({n} samples; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
            s.name, l.p50, l.p99, l.max
        ),
    };
    let (plot, side) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart =
        builder(&plot, caption).build_cartesian_2d((low..high).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("share of samples at or below")
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()?;
    let steps = cdf.iter().scan(0.0, |below, &(ms, share)| {
        let step = [(ms, *below), (ms, share)];
        *below = share;
        Some(step)
    });
    chart.draw_series(LineSeries::new(steps.flatten(), COLORS[0].stroke_width(2)))?;
    legend(&side, &["latency CDF".to_string()], 0)
}

/// A chart with its caption and room for the axes' labels.
fn builder<'a, 'b>(plot: &'a Area<'b>, caption: String) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(plot);
    builder
        .caption(caption, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(64);
    builder
}

/// Axes, grid and tick labels of a linear chart.
fn mesh(chart: &mut LinearChart<'_, '_>, x: &str, y: &str) -> anyhow::Result<()> {
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()?;
    Ok(())
}

/// The legend column: a coloured line and the label of each series (colours from
/// `first` on, as the series were drawn).
fn legend(side: &Area<'_>, labels: &[String], first: usize) -> anyhow::Result<()> {
    for (i, label) in labels.iter().enumerate() {
        let color = COLORS[(first + i) % COLORS.len()];
        let y = 40 + 18 * i as i32;
        side.draw(&PathElement::new(
            vec![(4, y), (24, y)],
            color.stroke_width(2),
        ))?;
        let text = Text::new(label.clone(), (30, y - 6), ("sans-serif", 12).into_font());
        side.draw(&text)?;
    }
    Ok(())
}

/// The row of each mark's number: the first row whose last number is at least
/// [`MARK_GAP`] of the time axis earlier.
fn mark_rows(times: &[f64], t_max: f64) -> Vec<usize> {
    let mut last_in_row: Vec<f64> = Vec::new();
    let mut rows = Vec::with_capacity(times.len());
    for t in times {
        let row = last_in_row
            .iter()
            .position(|last| t - last >= MARK_GAP * t_max)
            .unwrap_or(last_in_row.len());
        match last_in_row.get_mut(row) {
            Some(last) => *last = *t,
            None => last_in_row.push(*t),
        }
        rows.push(row);
    }
    rows
}

/// The scenario's marks as numbered vertical lines.
fn marks(
    chart: &mut LinearChart<'_, '_>,
    s: &ScenarioReport,
    (t_max, y_max): (f64, f64),
) -> anyhow::Result<()> {
    let times: Vec<f64> = s.series.marks.iter().map(|m| m.0).collect();
    let grey = BLACK.mix(0.35);
    chart.draw_series(
        times
            .iter()
            .map(|t| PathElement::new(vec![(*t, 0.0), (*t, y_max)], grey)),
    )?;
    let font = ("sans-serif", 11).into_font().color(&BLACK.mix(0.7));
    let numbers = times.iter().zip(mark_rows(&times, t_max)).enumerate();
    chart.draw_series(numbers.map(|(i, (t, row))| {
        let y = y_max * (1.0 - MARK_ROW * (row as f64 + 0.2));
        // Beside the line, on its left near the right edge (inside the plot).
        let x = match *t > t_max * 0.96 {
            true => t - t_max * 0.018,
            false => t + t_max * 0.004,
        };
        Text::new(format!("{}", i + 1), (x, y), font.clone())
    }))?;
    Ok(())
}

/// The key to the mark numbers, packed into lines that fit the width.
fn key_lines(s: &ScenarioReport) -> Vec<String> {
    let fits = ((WIDTH - 90) / KEY_CHAR) as usize;
    let mut lines: Vec<String> = Vec::new();
    for (i, (t, what)) in s.series.marks.iter().enumerate() {
        let entry = format!("{} {what} ({t:.1} s)", i + 1);
        match lines.last_mut() {
            Some(line) if line.len() + 5 + entry.len() <= fits => {
                line.push_str("  ·  ");
                line.push_str(&entry);
            }
            _ => lines.push(entry),
        }
    }
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
