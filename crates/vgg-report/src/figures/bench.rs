//! The benchmark report's charts: step times as a series and as a distribution, throughput
//! against the measured matrix-product peak, and time per layer.

use crate::Result;
use plotters::coord::ranged1d::{SegmentValue, SegmentedCoord};
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{drawn, text, CONV, INK, SOFTMAX};

/// Width and height of the step charts, which sit side by side on the page.
const STEP_CHART: (u32, u32) = (560, 320);
/// Width of the bar charts, a row per bar.
const BAR_CHART_WIDTH: u32 = 1120;
/// Height of a bar chart's row.
const BAR_ROW: u32 = 22;

/// Colours of the frameworks, ours first: each keeps its colour in every chart of a page. Nine,
/// so that ours and the peers `cargo xtask bench --peers` runs (six) never share one; the
/// Category10 palette less its red, which marks the measured peak.
pub const FRAMEWORK_COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// The forward half of a layer's bar.
pub const FORWARD: RGBColor = CONV;
/// The backward half of a layer's bar.
pub const BACKWARD: RGBColor = SOFTMAX;
/// The measured peak's line.
pub const PEAK: RGBColor = RGBColor(214, 39, 40);

/// One framework's timed steps in one mode.
pub struct StepSeries<'a> {
    /// The framework, as the legend names it.
    pub name: &'a str,
    /// Its colour.
    pub colour: RGBColor,
    /// Seconds of every timed step, in order.
    pub seconds: &'a [f64],
}

/// A finite, non-empty value range with room above: plotters needs start < end.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let span = (hi - lo).max(hi.abs() * 0.05).max(1e-9);
    lo..hi + 0.08 * span
}

/// Decimals that tell apart ticks across `span`: about three significant digits of the span.
fn decimals(span: f64) -> usize {
    if span > 0.0 && span.is_finite() {
        (2.0 - span.log10().floor()).clamp(0.0, 9.0) as usize
    } else {
        3
    }
}

/// A tick on a count axis: whole numbers only, so few steps never label "0 0 1 1 2".
fn whole(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

fn finite(values: &[f64]) -> impl Iterator<Item = f64> + '_ {
    values.iter().copied().filter(|v| v.is_finite())
}

/// Seconds of each step against its index, a line per framework; each series holds every
/// `stride`-th step.
pub fn step_times(title: &str, series: &[StepSeries], stride: usize) -> Result<String> {
    let stride = stride.max(1);
    let steps = series.iter().map(|s| s.seconds.len()).max().unwrap_or(0) * stride;
    let top = series
        .iter()
        .flat_map(|s| finite(s.seconds))
        .fold(0.0f64, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, STEP_CHART).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let mut chart = drawn(
            framed(&root, title, 56)
                .build_cartesian_2d(0.0..(steps.max(2) - 1) as f64, padded(0.0, top)),
        )?;
        drawn(
            chart
                .configure_mesh()
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .x_desc("timed step")
                .y_desc("seconds")
                .x_labels(steps.clamp(2, 11))
                .x_label_formatter(&whole)
                .y_label_formatter(&|y| format!("{y:.*}", decimals(top)))
                .draw(),
        )?;
        for s in series {
            let colour = s.colour;
            let points = s
                .seconds
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| ((i * stride) as f64, v));
            drawn(chart.draw_series(LineSeries::new(points, colour.stroke_width(2))))?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            if s.seconds.len() == 1 {
                // A single step draws no line: mark it.
                drawn(chart.draw_series(std::iter::once(Circle::new(
                    (0.0, s.seconds[0]),
                    4,
                    colour.filled(),
                ))))?;
            }
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        drawn(root.present())?;
    }
    Ok(svg)
}

/// How many steps took how long: a histogram per framework over shared bins, the median marked.
pub fn step_distribution(title: &str, series: &[StepSeries]) -> Result<String> {
    let all: Vec<f64> = series.iter().flat_map(|s| finite(s.seconds)).collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo < hi {
        (lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    } else if lo.is_finite() {
        // One value: a bin around it.
        (lo * 0.95, lo * 1.05 + 1e-9)
    } else {
        (0.0, 1.0)
    };
    let most = series.iter().map(|s| s.seconds.len()).max().unwrap_or(0);
    let bins = ((most as f64).sqrt().ceil() as usize).clamp(5, 30);
    let width = (hi - lo) / bins as f64;
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|s| {
            let mut c = vec![0usize; bins];
            for v in finite(s.seconds) {
                c[(((v - lo) / width) as usize).min(bins - 1)] += 1;
            }
            c
        })
        .collect();
    let tallest = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, STEP_CHART).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let mut chart =
            drawn(framed(&root, title, 56).build_cartesian_2d(lo..hi, 0.0..tallest as f64 * 1.12))?;
        drawn(
            chart
                .configure_mesh()
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .x_desc("seconds per step")
                .y_desc("steps")
                .x_labels(6)
                .x_label_formatter(&|x| format!("{x:.*}", decimals(hi - lo)))
                .y_labels((tallest + 1).clamp(2, 11))
                .y_label_formatter(&whole)
                .draw(),
        )?;
        // Several frameworks overlap where their times do: translucent fills, solid edges.
        let fill = if series.len() > 1 { 0.45 } else { 0.8 };
        for (s, c) in series.iter().zip(&counts) {
            let colour = s.colour;
            let bars = c.iter().enumerate().filter(|(_, &n)| n > 0).map(|(i, &n)| {
                let x0 = lo + i as f64 * width;
                [(x0, 0.0), (x0 + width, n as f64)]
            });
            drawn(
                chart.draw_series(
                    bars.clone()
                        .map(|corners| Rectangle::new(corners, colour.mix(fill).filled())),
                ),
            )?
            .label(s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
            drawn(
                chart.draw_series(
                    bars.map(|corners| Rectangle::new(corners, colour.stroke_width(1))),
                ),
            )?;
            let timed: Vec<f64> = finite(s.seconds).collect();
            if !timed.is_empty() {
                let median = vgg_bench::Stats::of(&timed).median;
                drawn(chart.draw_series(DashedLineSeries::new(
                    [(median, 0.0), (median, tallest as f64 * 1.05)],
                    6,
                    4,
                    colour.stroke_width(2),
                )))?;
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        drawn(root.present())?;
    }
    Ok(svg)
}

/// The frame of every report chart: caption, margin, and room for the axes' labels.
fn framed<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    caption: &str,
    y_label_area: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(y_label_area);
    builder
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<()> {
    drawn(
        chart
            .configure_series_labels()
            .position(position)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw(),
    )
}

/// One bar of the throughput chart: a framework in a mode.
pub struct Rate {
    /// What the bar shows, e.g. "vgg forward".
    pub label: String,
    /// The framework's colour.
    pub colour: RGBColor,
    /// Effective 10^9 FLOP per second: the direct method's arithmetic over the mean step time.
    pub gflops_per_second: f64,
}

/// Effective GFLOP/s per framework and mode, against the measured matrix-product rate (a line,
/// and each bar's share of it).
pub fn throughput(rates: &[Rate], peak: Option<(f64, &str)>) -> Result<String> {
    let most = rates
        .iter()
        .map(|r| r.gflops_per_second)
        .chain(peak.map(|p| p.0))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let rows = rates.len().max(1);
    // Empty rows on top hold the legend.
    let segments = rows + 2;
    let height = 90 + BAR_ROW * segments as u32;
    let labels: Vec<String> = rates.iter().map(|r| r.label.clone()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (BAR_CHART_WIDTH, height)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let caption = match peak {
            Some((_, what)) => format!("effective GFLOP/s against {what}"),
            None => "effective GFLOP/s".to_string(),
        };
        // Room right of the longest bar for its label.
        let mut chart = bar_chart(
            &root,
            &caption,
            &labels,
            segments,
            most * 1.3,
            "10^9 FLOP per second (the direct method's arithmetic over the mean step)",
        )?;
        for (i, r) in rates.iter().enumerate() {
            let value = length(r.gflops_per_second);
            drawn(chart.draw_series(std::iter::once(bar(rows, i, 0.0, value, r.colour))))?;
            let share = match peak {
                Some((p, _)) if p > 0.0 => {
                    format!("{value:.1}  ({:.0}% of peak)", 100.0 * value / p)
                }
                _ => format!("{value:.1}"),
            };
            drawn(chart.draw_series(std::iter::once(Text::new(
                share,
                (value, SegmentValue::CenterOf(position(rows, i))),
                text(12, INK, HPos::Left, VPos::Center),
            ))))?;
        }
        if let Some((p, what)) = peak {
            drawn(chart.draw_series(DashedLineSeries::new(
                [
                    (p, SegmentValue::Exact(0)),
                    (p, SegmentValue::Exact(segments)),
                ],
                8,
                4,
                PEAK.stroke_width(2),
            )))?
            .label(format!("{what}: {p:.1}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], PEAK.stroke_width(2)));
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        drawn(root.present())?;
    }
    Ok(svg)
}

/// One layer's mean time per timed step.
pub struct LayerBar<'a> {
    /// The layer's name.
    pub layer: &'a str,
    /// Milliseconds forward.
    pub forward_ms: f64,
    /// Milliseconds backward (0 in forward mode).
    pub backward_ms: f64,
}

/// Forward and (stacked after it) backward milliseconds per layer, a row per layer.
pub fn layer_times(title: &str, layers: &[LayerBar], backward: bool) -> Result<String> {
    let most = layers
        .iter()
        .map(|l| length(l.forward_ms) + length(l.backward_ms))
        .fold(0.0f64, f64::max);
    let rows = layers.len().max(1);
    // Empty rows on top hold the legend, one per entry.
    let segments = rows + if backward { 2 } else { 1 };
    let height = 100 + BAR_ROW * segments as u32;
    let labels: Vec<String> = layers.iter().map(|l| l.layer.to_string()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (BAR_CHART_WIDTH, height)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let mut chart = bar_chart(
            &root,
            title,
            &labels,
            segments,
            most * 1.15,
            "milliseconds per timed step",
        )?;
        let forward = layers
            .iter()
            .enumerate()
            .map(|(i, l)| bar(rows, i, 0.0, length(l.forward_ms), FORWARD));
        drawn(chart.draw_series(forward))?
            .label("forward")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], FORWARD.filled()));
        if backward {
            let back = layers.iter().enumerate().map(|(i, l)| {
                let f = length(l.forward_ms);
                bar(rows, i, f, f + length(l.backward_ms), BACKWARD)
            });
            drawn(chart.draw_series(back))?
                .label("backward")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BACKWARD.filled()));
        }
        for (i, l) in layers.iter().enumerate() {
            let total = length(l.forward_ms) + length(l.backward_ms);
            drawn(chart.draw_series(std::iter::once(Text::new(
                format!(" {total:.2}"),
                (total, SegmentValue::CenterOf(position(rows, i))),
                text(11, INK, HPos::Left, VPos::Center),
            ))))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        drawn(root.present())?;
    }
    Ok(svg)
}

/// A bar's length: what cannot be drawn (negative, not finite) draws as none.
fn length(v: f64) -> f64 {
    if v.is_finite() {
        v.max(0.0)
    } else {
        0.0
    }
}

type BarChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, SegmentedCoord<RangedCoordusize>>>;

/// A chart of horizontal bars, a row per label from the top, the rows past the labels (up to
/// `segments`) left empty above them for the legend; x from 0 to `x_end`.
fn bar_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    labels: &[String],
    segments: usize,
    x_end: f64,
    x_desc: &str,
) -> Result<BarChart<'a, 'b>> {
    let rows = labels.len().max(1);
    let mut chart = drawn(
        framed(root, caption, label_room(labels))
            .build_cartesian_2d(0.0..x_end.max(1e-9), (0..segments).into_segmented()),
    )?;
    drawn(
        chart
            .configure_mesh()
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 13))
            .disable_y_mesh()
            .y_labels(segments)
            .y_label_formatter(&|v| row_label(labels, rows, v))
            .x_desc(x_desc)
            .draw(),
    )?;
    Ok(chart)
}

/// Row `i` of `rows` counted from the top, as a segment counted from the bottom (the axis's
/// order); the segments above the rows are left empty for the legend.
fn position(rows: usize, i: usize) -> usize {
    rows - 1 - i
}

/// A horizontal bar in row `row` (from the top) from `from` to `to`, filling most of the row.
fn bar(
    rows: usize,
    row: usize,
    from: f64,
    to: f64,
    colour: RGBColor,
) -> Rectangle<(f64, SegmentValue<usize>)> {
    let row = position(rows, row);
    let mut r = Rectangle::new(
        [
            (from, SegmentValue::Exact(row)),
            (to, SegmentValue::Exact(row + 1)),
        ],
        colour.filled(),
    );
    r.set_margin(3, 3, 0, 0);
    r
}

/// Room for the longest row label, at about 7 px a character.
fn label_room(labels: &[String]) -> u32 {
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4);
    (longest as u32 * 7 + 16).clamp(60, 360)
}

fn row_label(labels: &[String], rows: usize, v: &SegmentValue<usize>) -> String {
    match v {
        SegmentValue::CenterOf(s) if *s < rows => {
            labels.get(position(rows, *s)).cloned().unwrap_or_default()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts of an SVG that are whole numbers, in order.
    fn whole_number_labels(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                t.split_once('>')
                    .and_then(|(_, rest)| rest.split_once("</text>"))
            })
            .map(|(text, _)| text.trim().to_string())
            .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
            .collect()
    }

    /// The page of `cargo xtask bench --peers` shows ours and six peers; two that shared a colour
    /// could not be told apart in its charts (ncnn once took ours).
    #[test]
    fn every_framework_of_a_full_peer_run_has_its_own_colour() {
        let peers_run_by_xtask = 6;
        assert!(FRAMEWORK_COLOURS.len() > peers_run_by_xtask);
        for (i, a) in FRAMEWORK_COLOURS.iter().enumerate() {
            assert_ne!(*a, PEAK, "colour {i} is the peak line's");
            for b in &FRAMEWORK_COLOURS[i + 1..] {
                assert_ne!(a, b, "colour {i} repeats");
            }
        }
    }

    #[test]
    fn few_steps_label_each_step_once() {
        for steps in [2, 3, 5, 9] {
            let seconds: Vec<f64> = (0..steps).map(|i| 0.1 + 0.01 * i as f64).collect();
            let series = [StepSeries {
                name: "vgg",
                colour: FORWARD,
                seconds: &seconds,
            }];
            let svg = step_times("t", &series, 1).unwrap();
            let labels = whole_number_labels(&svg);
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(
                labels, unique,
                "{steps} steps: repeated tick labels {labels:?}"
            );
            assert!(labels.len() >= 2, "{steps} steps: {labels:?}");
            let counts = whole_number_labels(&step_distribution("d", &series).unwrap());
            let mut unique = counts.clone();
            unique.dedup();
            assert_eq!(
                counts, unique,
                "{steps} steps: repeated count labels {counts:?}"
            );
        }
    }

    #[test]
    fn tick_decimals_follow_the_span() {
        assert_eq!(decimals(15.0), 1);
        assert_eq!(decimals(0.5), 3);
        assert_eq!(decimals(0.002), 5);
        assert_eq!(decimals(0.0), 3);
        assert_eq!(decimals(f64::NAN), 3);
        assert_eq!(decimals(1e6), 0);
    }
}
