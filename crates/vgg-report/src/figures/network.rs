//! The network diagram.

use crate::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use vgg_model::{LayerOp, LayerSpec, ModelSpec};

use super::{drawn, text, CONV, INK, LINEAR, POOL, SOFTMAX};
use crate::numbers::si;

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
            LayerOp::Conv { .. } | LayerOp::MaxPool { .. } | LayerOp::AdaptiveAvgPool { .. } => {
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
    // The legend, then a line saying what the blocks' sizes mean.
    let height = (TOP + MAX_HEIGHT + 12 + label_room + 58) as u32;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let title = format!(
            "{} (paper config {}{}), input {}x{}x{}: {} parameters, {} MACs per image",
            spec.model.name(),
            spec.model.paper_letter(),
            if spec.model.batch_norm() {
                " with BatchNorm"
            } else {
                ""
            },
            input.height,
            input.width,
            input.channels,
            crate::numbers::thousands(spec.params()),
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
        draw_legend(&root, MARGIN, height as i32 - 40)?;
        drawn(root.draw(&Text::new(
            "convolution and pool blocks: height the output's side (square-root scale), width its channels (log scale)",
            (MARGIN, height as i32 - 14),
            text(12, INK, HPos::Left, VPos::Center),
        )))?;
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
