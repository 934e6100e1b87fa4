//! The training curves.

use crate::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{drawn, TEST, TRAIN};

/// One epoch's figures for the training curves.
pub struct EpochPoint {
    /// Mean training loss.
    pub train_loss: f64,
    /// Mean test loss.
    pub test_loss: f64,
    /// Training accuracy, 0 to 1.
    pub train_accuracy: f64,
    /// Test accuracy, 0 to 1.
    pub test_accuracy: f64,
}

/// Loss and accuracy against the epoch, side by side, train and test in each.
pub fn training_curves(points: &[EpochPoint]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 300)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let (left, right) = root.split_horizontally(380);
        let max_loss = points
            .iter()
            .flat_map(|p| [p.train_loss, p.test_loss])
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-6);
        curves(
            &left,
            "cross-entropy loss",
            points,
            0.0..max_loss * 1.05,
            |p| (p.train_loss, p.test_loss),
            SeriesLabelPosition::UpperRight,
        )?;
        curves(
            &right,
            "accuracy",
            points,
            0.0..1.0,
            |p| (p.train_accuracy, p.test_accuracy),
            SeriesLabelPosition::LowerRight,
        )?;
        drawn(root.present())?;
    }
    Ok(svg)
}

fn curves(
    area: &DrawingArea<SVGBackend, Shift>,
    caption: &str,
    points: &[EpochPoint],
    y: std::ops::Range<f64>,
    value: impl Fn(&EpochPoint) -> (f64, f64),
    legend: SeriesLabelPosition,
) -> Result<()> {
    let epochs = points.len().max(2) as f64;
    let mut chart = drawn(
        ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(46)
            .build_cartesian_2d(1.0..epochs, y),
    )?;
    drawn(
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels(points.len().clamp(2, 10))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_labels(6)
            .draw(),
    )?;
    for (name, colour, pick) in [("train", TRAIN, 0usize), ("test", TEST, 1usize)] {
        let series = points.iter().enumerate().map(|(i, p)| {
            let (train, test) = value(p);
            ((i + 1) as f64, if pick == 0 { train } else { test })
        });
        drawn(chart.draw_series(LineSeries::new(series, colour.stroke_width(2))))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    drawn(
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw(),
    )?;
    Ok(())
}
