//! The receptive-field picture.

use crate::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{drawn, text, CONV, INK, LINEAR, POOL, SOFTMAX};

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
                    // The same ratio as `vgg rf`'s table: the stack's weights over the kernel's.
                    "weights per C^2: {} for the stack, {} for one kernel ({:.2}x)",
                    w.stack,
                    w.single,
                    w.stack as f64 / w.single.max(1) as f64
                ),
                (kx, y0 + SIDE + 10),
                text(12, INK, HPos::Left, VPos::Top),
            )))?;
        }
        drawn(root.present())?;
    }
    Ok(svg)
}
