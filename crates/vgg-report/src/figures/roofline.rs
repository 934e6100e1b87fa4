//! The roofline (Williams, Waterman and Patterson, 2009): each layer a point at its arithmetic
//! intensity (FLOPs per byte it must move) and its achieved rate, under the two roofs a machine
//! sets, its memory bandwidth times the intensity and its peak arithmetic rate. A point near a
//! roof runs as fast as the machine lets it; one far below leaves speed on the table.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{drawn, text, INK, TEST, TRAIN};
use crate::Result;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 560;
/// The memory roof's colour (the compute roof's is the report's peak red).
const BANDWIDTH: RGBColor = RGBColor(120, 120, 120);
const PEAK: RGBColor = RGBColor(214, 39, 40);

/// One layer in one pass.
pub struct RooflinePoint<'a> {
    /// The layer's name, written beside the point.
    pub label: &'a str,
    /// FLOPs per byte of least traffic.
    pub intensity: f64,
    /// Achieved 10^9 FLOP per second.
    pub gflops: f64,
    /// A backward pass (drawn as a triangle) rather than a forward one (a circle).
    pub backward: bool,
}

/// The roofs: the measured matrix-product rate (GFLOP/s) and memory bandwidth (GB/s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roofs {
    /// The compute roof, 10^9 FLOP/s.
    pub peak_gflops: Option<f64>,
    /// The memory roof's slope, 10^9 bytes/s.
    pub bandwidth_gbs: Option<f64>,
}

/// Log-log axes that hold every point and the ridge where the roofs meet, in whole decades.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.1, 1000.0);
    }
    // At least one decade, so that a single value still has axes around it.
    let bottom = 10f64.powf(lo.log10().floor());
    (bottom, 10f64.powf(hi.log10().ceil()).max(10.0 * bottom))
}

/// The chart, as SVG.
pub fn roofline(title: &str, points: &[RooflinePoint], roofs: Roofs) -> Result<String> {
    let ridge = match (roofs.peak_gflops, roofs.bandwidth_gbs) {
        (Some(p), Some(b)) if b > 0.0 => Some(p / b),
        _ => None,
    };
    let (x_lo, x_hi) = range(points.iter().map(|p| p.intensity).chain(ridge));
    let (y_lo, y_hi) = range(points.iter().map(|p| p.gflops).chain(roofs.peak_gflops));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let mut chart = drawn(
            ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale()),
        )?;
        drawn(
            chart
                .configure_mesh()
                .x_desc("arithmetic intensity, FLOP per byte (direct method, least traffic)")
                .y_desc("achieved 10^9 FLOP per second")
                .label_style(("sans-serif", 12))
                .draw(),
        )?;
        if let Some(b) = roofs.bandwidth_gbs {
            // GB/s times FLOP/B is GFLOP/s: a line of slope 1, up to the compute roof.
            let top = ridge.unwrap_or(x_hi).min(x_hi);
            drawn(chart.draw_series(LineSeries::new(
                [(x_lo, b * x_lo), (top, b * top)],
                BANDWIDTH.stroke_width(2),
            )))?
            .label(format!("memory roof: {b:.1} GB/s"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BANDWIDTH.stroke_width(2)));
        }
        if let Some(p) = roofs.peak_gflops {
            drawn(chart.draw_series(LineSeries::new(
                [(ridge.unwrap_or(x_lo).max(x_lo), p), (x_hi, p)],
                PEAK.stroke_width(2),
            )))?
            .label(format!("compute roof: {p:.1} GFLOP/s (matrix product)"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], PEAK.stroke_width(2)));
        }
        let shown = |p: &&RooflinePoint| p.intensity > 0.0 && p.gflops > 0.0;
        drawn(
            chart.draw_series(
                points
                    .iter()
                    .filter(shown)
                    .filter(|p| !p.backward)
                    .map(|p| Circle::new((p.intensity, p.gflops), 5, TRAIN.filled())),
            ),
        )?
        .label("forward")
        .legend(|(x, y)| Circle::new((x + 9, y), 5, TRAIN.filled()));
        if points.iter().any(|p| p.backward) {
            drawn(
                chart.draw_series(
                    points
                        .iter()
                        .filter(shown)
                        .filter(|p| p.backward)
                        .map(|p| TriangleMarker::new((p.intensity, p.gflops), 6, TEST.filled())),
                ),
            )?
            .label("backward")
            .legend(|(x, y)| TriangleMarker::new((x + 9, y), 6, TEST.filled()));
        }
        drawn(chart.draw_series(points.iter().filter(shown).map(|p| {
            Text::new(
                p.label.to_string(),
                (p.intensity * 1.08, p.gflops),
                text(10, INK, HPos::Left, VPos::Center),
            )
        })))?;
        drawn(
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font(("sans-serif", 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw(),
        )?;
        drawn(root.present())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_hold_the_points_and_the_ridge_in_whole_decades() {
        assert_eq!(range([0.5, 12.9, 421.0].into_iter()), (0.1, 1000.0));
        assert_eq!(range([3.0].into_iter()), (1.0, 10.0));
        assert_eq!(range([0.0, f64::NAN].into_iter()), (0.1, 1000.0));
    }

    #[test]
    fn the_chart_names_both_roofs_and_every_layer() {
        let points = [
            RooflinePoint {
                label: "conv3_2",
                intensity: 421.2,
                gflops: 490.0,
                backward: false,
            },
            RooflinePoint {
                label: "fc6",
                intensity: 0.5,
                gflops: 11.8,
                backward: false,
            },
            RooflinePoint {
                label: "fc6",
                intensity: 0.5,
                gflops: 9.0,
                backward: true,
            },
            RooflinePoint {
                label: "pool1",
                intensity: 0.0,
                gflops: 0.0,
                backward: false,
            },
        ];
        let svg = roofline(
            "VGG-16",
            &points,
            Roofs {
                peak_gflops: Some(350.0),
                bandwidth_gbs: Some(43.0),
            },
        )
        .unwrap();
        assert!(svg.contains("compute roof: 350.0 GFLOP/s"));
        assert!(svg.contains("memory roof: 43.0 GB/s"));
        assert!(svg.contains("\nconv3_2\n") && svg.contains("\nfc6\n"));
        // A layer with no arithmetic (a pool) has no place on a log axis.
        assert!(!svg.contains("\npool1\n"));
        assert!(svg.contains("backward"));
    }
}
