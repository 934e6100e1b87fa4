//! Figures, drawn as SVG with plotters: the network diagram (`summary --format svg`) and the
//! training curves (`train --plot`). SVG text is laid out by the viewer, so no font is needed here.

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use vgg_model::{LayerOp, LayerSpec, ModelSpec};

use crate::table::si;

const CONV: RGBColor = RGBColor(78, 121, 167);
const POOL: RGBColor = RGBColor(225, 87, 89);
const LINEAR: RGBColor = RGBColor(89, 161, 79);
const SOFTMAX: RGBColor = RGBColor(242, 142, 43);
const INK: RGBColor = RGBColor(40, 40, 40);
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const TEST: RGBColor = RGBColor(214, 39, 40);

/// Plotters' errors borrow the backend's; ours own a message.
fn drawn<T, E: std::fmt::Debug>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("drawing the figure: {e:?}"))
}

fn text(size: u32, colour: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    ("sans-serif", size)
        .into_font()
        .color(&colour)
        .pos(Pos::new(h, v))
}

/// One drawn block: a layer, or the softmax after the last.
struct Block<'a> {
    layer: Option<&'a LayerSpec>,
    x: i32,
    width: i32,
    height: i32,
    colour: RGBColor,
    label: String,
}

/// The network as the VGG figures draw it: one block per layer, its height the spatial size, its
/// width the channels (logarithmically), coloured by kind and labelled with the output shape;
/// above each stage (the layers up to a pool), its parameters and the receptive field after it.
pub fn network_diagram(spec: &ModelSpec) -> Result<String> {
    const TOP: i32 = 78;
    const MAX_HEIGHT: i32 = 220;
    const GAP: i32 = 6;
    const STAGE_GAP: i32 = 18;
    const MARGIN: i32 = 24;
    let input = spec.input();
    let tallest = input.height.max(1) as f64;
    let mut blocks = Vec::new();
    let mut x = MARGIN;
    for layer in &spec.layers {
        let out = layer.output;
        let (colour, width, height) = match layer.op {
            LayerOp::Linear => (LINEAR, 16, 150),
            LayerOp::Conv { .. } | LayerOp::MaxPool { .. } => {
                let colour = if layer.is_conv() { CONV } else { POOL };
                let channels = out.channels.max(1) as f64;
                let width = 10 + (5.0 * channels.log2()).round() as i32;
                // Square-root scale: pool5's 7 stays visible beside conv1's 224.
                let height = (MAX_HEIGHT as f64 * (out.height as f64 / tallest).sqrt()) as i32;
                (colour, width, height.max(18))
            }
        };
        let label = match layer.op {
            LayerOp::Linear => format!("{} {}", layer.name, out.channels),
            _ => format!(
                "{} {}x{}x{}",
                layer.name, out.height, out.width, out.channels
            ),
        };
        blocks.push(Block {
            layer: Some(layer),
            x,
            width,
            height,
            colour,
            label,
        });
        x += width
            + if matches!(layer.op, LayerOp::MaxPool { .. }) {
                STAGE_GAP
            } else {
                GAP
            };
    }
    let classes = spec.options.classes;
    blocks.push(Block {
        layer: None,
        x,
        width: 16,
        height: 100,
        colour: SOFTMAX,
        label: format!("softmax {classes}"),
    });
    x += 16 + MARGIN;
    let label_room = blocks
        .iter()
        .map(|b| b.label.len() as i32 * 6)
        .max()
        .unwrap_or(0);
    let width = x.max(560) as u32;
    let middle = TOP + MAX_HEIGHT / 2;
    let height = (TOP + MAX_HEIGHT + 12 + label_room + 40) as u32;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let title = format!(
            "{} (paper config {}), input {}x{}x{}: {} parameters, {} MACs per image",
            spec.model.name(),
            spec.model.paper_letter(),
            input.height,
            input.width,
            input.channels,
            crate::table::thousands(spec.params()),
            si(spec.macs()),
        );
        drawn(root.draw(&Text::new(
            title,
            (MARGIN, 10),
            text(15, INK, HPos::Left, VPos::Top),
        )))?;
        draw_stages(&root, &blocks, TOP)?;
        for b in &blocks {
            let top = middle - b.height / 2;
            drawn(root.draw(&Rectangle::new(
                [(b.x, top), (b.x + b.width, top + b.height)],
                b.colour.filled(),
            )))?;
            drawn(root.draw(&Rectangle::new(
                [(b.x, top), (b.x + b.width, top + b.height)],
                INK.stroke_width(1),
            )))?;
            let style =
                text(11, INK, HPos::Right, VPos::Center).transform(FontTransform::Rotate270);
            drawn(root.draw(&Text::new(
                b.label.clone(),
                (b.x + b.width / 2, TOP + MAX_HEIGHT + 10),
                style,
            )))?;
        }
        draw_legend(&root, MARGIN, height as i32 - 22)?;
        drawn(root.present())?;
    }
    Ok(svg)
}

/// Each stage's parameters and receptive field, above its blocks.
fn draw_stages(root: &DrawingArea<SVGBackend, Shift>, blocks: &[Block], top: i32) -> Result<()> {
    let mut stage = 1;
    let mut start: Option<i32> = None;
    let mut params = 0u64;
    for b in blocks {
        let Some(layer) = b.layer else { continue };
        if !matches!(layer.op, LayerOp::Conv { .. } | LayerOp::MaxPool { .. }) {
            continue;
        }
        let first = *start.get_or_insert(b.x);
        params += layer.params;
        if let LayerOp::MaxPool { .. } = layer.op {
            let centre = (first + b.x + b.width) / 2;
            let rf = layer
                .receptive_field
                .map(|rf| format!("RF {}", rf.size))
                .unwrap_or_default();
            drawn(root.draw(&Text::new(
                format!("stage {stage}"),
                (centre, top - 44),
                text(12, INK, HPos::Center, VPos::Top),
            )))?;
            drawn(root.draw(&Text::new(
                format!("{} params", si(params)),
                (centre, top - 30),
                text(11, INK, HPos::Center, VPos::Top),
            )))?;
            drawn(root.draw(&Text::new(
                rf,
                (centre, top - 17),
                text(11, INK, HPos::Center, VPos::Top),
            )))?;
            stage += 1;
            start = None;
            params = 0;
        }
    }
    Ok(())
}

fn draw_legend(root: &DrawingArea<SVGBackend, Shift>, x: i32, y: i32) -> Result<()> {
    let entries = [
        (CONV, "convolution + ReLU"),
        (POOL, "max-pool"),
        (LINEAR, "fully connected"),
        (SOFTMAX, "softmax"),
    ];
    let mut at = x;
    for (colour, name) in entries {
        drawn(root.draw(&Rectangle::new(
            [(at, y), (at + 12, y + 12)],
            colour.filled(),
        )))?;
        drawn(root.draw(&Text::new(
            name,
            (at + 18, y + 6),
            text(12, INK, HPos::Left, VPos::Center),
        )))?;
        at += 18 + name.len() as i32 * 7 + 24;
    }
    Ok(())
}

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

/// One layer's field for the receptive-field picture.
pub struct FieldStep {
    /// The layer, as the table names it.
    pub layer: String,
    /// Its receptive field, in input pixels.
    pub size: usize,
}

/// What one kernel of the stack's whole field costs, against the stack: the stack's weights and
/// the single kernel's, per C^2.
pub struct WeightComparison {
    /// Weights of the stack's convolutions per C^2.
    pub stack: usize,
    /// Weights of one kernel of the same field per C^2.
    pub single: usize,
}

/// How the field grows layer by layer: nested squares, centred, over the input pixels (a grid of
/// pixels when the field is small enough to count them); with `weights`, one kernel of the same
/// field beside it, and what each costs.
pub fn receptive_fields(
    title: &str,
    steps: &[FieldStep],
    input: Option<usize>,
    weights: Option<WeightComparison>,
) -> Result<String> {
    const SIDE: i32 = 320;
    const TOP: i32 = 56;
    const LEFT: i32 = 24;
    let palette = [
        CONV,
        POOL,
        LINEAR,
        SOFTMAX,
        RGBColor(118, 183, 178),
        RGBColor(176, 122, 161),
    ];
    let largest = steps.iter().map(|s| s.size).max().unwrap_or(1);
    // The frame: the input image, or the largest field with a pixel's margin around it.
    let frame = input.unwrap_or(0).max(largest + 2);
    let scale = SIDE as f64 / frame as f64;
    let px = |v: usize| (v as f64 * scale).round() as i32;
    let with_kernel = weights.is_some();
    let width = LEFT + SIDE + 40 + if with_kernel { SIDE + 40 } else { 0 } + 260;
    let rows = steps.len() as i32;
    let height = (TOP + SIDE + 60).max(TOP + 24 * rows + 60);

    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        drawn(root.draw(&Text::new(
            title.to_string(),
            (LEFT, 12),
            text(15, INK, HPos::Left, VPos::Top),
        )))?;
        let (x0, y0) = (LEFT, TOP);
        let frame_style = RGBColor(230, 230, 230);
        drawn(root.draw(&Rectangle::new(
            [(x0, y0), (x0 + SIDE, y0 + SIDE)],
            frame_style.filled(),
        )))?;
        if frame <= 40 {
            // Few enough to count: every input pixel.
            for i in 0..=frame {
                let at = px(i);
                let grid = RGBColor(200, 200, 200);
                drawn(root.draw(&PathElement::new(
                    [(x0 + at, y0), (x0 + at, y0 + SIDE)],
                    grid.stroke_width(1),
                )))?;
                drawn(root.draw(&PathElement::new(
                    [(x0, y0 + at), (x0 + SIDE, y0 + at)],
                    grid.stroke_width(1),
                )))?;
            }
        }
        let legend_x = x0 + SIDE + 40 + if with_kernel { SIDE + 40 } else { 0 };
        // Largest first, so each smaller field is drawn over the larger.
        for (i, step) in steps.iter().enumerate().rev() {
            let colour = palette[i % palette.len()];
            let side = px(step.size);
            // Centred on the frame's centre (on a pixel's centre when both are odd).
            let start = x0 + (SIDE - side) / 2;
            let top = y0 + (SIDE - side) / 2;
            drawn(root.draw(&Rectangle::new(
                [(start, top), (start + side, top + side)],
                colour.mix(0.25).filled(),
            )))?;
            drawn(root.draw(&Rectangle::new(
                [(start, top), (start + side, top + side)],
                colour.stroke_width(2),
            )))?;
        }
        for (i, step) in steps.iter().enumerate() {
            let colour = palette[i % palette.len()];
            let y = TOP + 24 * i as i32;
            drawn(root.draw(&Rectangle::new(
                [(legend_x, y), (legend_x + 14, y + 14)],
                colour.filled(),
            )))?;
            drawn(root.draw(&Text::new(
                format!("after {}: {}x{}", step.layer, step.size, step.size),
                (legend_x + 20, y + 7),
                text(12, INK, HPos::Left, VPos::Center),
            )))?;
        }
        drawn(root.draw(&Text::new(
            match input {
                Some(n) => format!("input {n}x{n} pixels (grey)"),
                None => format!("{frame}x{frame} input pixels"),
            },
            (x0, y0 + SIDE + 10),
            text(12, INK, HPos::Left, VPos::Top),
        )))?;
        if let Some(w) = weights {
            let kx = x0 + SIDE + 40;
            drawn(root.draw(&Rectangle::new(
                [(kx, y0), (kx + SIDE, y0 + SIDE)],
                frame_style.filled(),
            )))?;
            let side = px(largest);
            let (start, top) = (kx + (SIDE - side) / 2, y0 + (SIDE - side) / 2);
            drawn(root.draw(&Rectangle::new(
                [(start, top), (start + side, top + side)],
                INK.mix(0.35).filled(),
            )))?;
            drawn(root.draw(&Text::new(
                format!("one {largest}x{largest} kernel: the same field"),
                (kx, y0 - 16),
                text(12, INK, HPos::Left, VPos::Top),
            )))?;
            drawn(root.draw(&Text::new(
                format!(
                    "weights per C^2: {} for the stack, {} for one kernel ({:.2}x)",
                    w.stack,
                    w.single,
                    w.single as f64 / w.stack.max(1) as f64
                ),
                (kx, y0 + SIDE + 10),
                text(12, INK, HPos::Left, VPos::Top),
            )))?;
        }
        drawn(root.present())?;
    }
    Ok(svg)
}
