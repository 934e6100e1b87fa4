//! `vgg rf`: receptive field, jump and start per layer, for a model or an ad-hoc stack.

use serde::Serialize;
use vgg_model::{
    stack_fields, stack_weights_per_c2, ModelSpec, ReceptiveField, StackKind, StackLayer,
};

use crate::args::Format;
use crate::table::Table;

#[derive(Serialize)]
struct RfRow {
    layer: String,
    kernel: usize,
    stride: usize,
    padding: usize,
    #[serde(flatten)]
    field: ReceptiveField,
}

fn render_rows(rows: &[RfRow], format: Format) -> String {
    let mut t = Table::new([
        "layer", "kernel", "stride", "padding", "RF", "jump", "start",
    ]);
    for r in rows {
        t.push(vec![
            r.layer.clone(),
            r.kernel.to_string(),
            r.stride.to_string(),
            r.padding.to_string(),
            r.field.size.to_string(),
            r.field.jump.to_string(),
            format!("{}", r.field.start),
        ]);
    }
    match format {
        Format::Table => t.text(),
        Format::Markdown => t.markdown(),
        Format::Csv => t.csv(),
        Format::Json => serde_json::to_string_pretty(rows).expect("rows serialise") + "\n",
    }
}

pub fn model(spec: &ModelSpec, format: Format) -> String {
    let rows: Vec<RfRow> = spec
        .layers
        .iter()
        .filter_map(|l| {
            let field = l.receptive_field?;
            let (kernel, stride, padding) = match l.op {
                vgg_model::LayerOp::Conv {
                    kernel,
                    stride,
                    padding,
                } => (kernel, stride, padding),
                vgg_model::LayerOp::MaxPool { kernel, stride } => (kernel, stride, 0),
                vgg_model::LayerOp::Linear => return None,
            };
            Some(RfRow {
                layer: l.name.clone(),
                kernel,
                stride,
                padding,
                field,
            })
        })
        .collect();
    let mut out = render_rows(&rows, format);
    if format == Format::Table {
        out.push_str("fc6-fc8 see the whole image. start: centre of the first unit's field, in input pixels.\n");
    }
    out
}

pub fn stack(stack: &[StackLayer], format: Format) -> anyhow::Result<String> {
    let fields = stack_fields(stack)?;
    let rows: Vec<RfRow> = stack
        .iter()
        .zip(&fields)
        .map(|(layer, &field)| RfRow {
            layer: layer.to_string(),
            kernel: layer.kernel,
            stride: layer.stride,
            padding: layer.padding(),
            field,
        })
        .collect();
    let mut out = render_rows(&rows, format);
    if format == Format::Table {
        let last = fields.last().expect("a parsed stack is never empty");
        let convs = stack.iter().filter(|l| l.kind == StackKind::Conv).count();
        let per_c2 = stack_weights_per_c2(stack)?;
        // Only a ratio is printed, so the square is taken in floating point.
        let single = last.size as f64 * last.size as f64;
        out.push_str(&format!(
            "{} layers ({} convolutions) see {}x{} input pixels, jump {}.\n",
            stack.len(),
            convs,
            last.size,
            last.size,
            last.jump
        ));
        if convs > 0 {
            out.push_str(&format!(
                "Weights with C channels in and out (no biases): {per_c2}C^2 for the stack vs {single}C^2 for one {}x{} kernel ({:.2}x).\n",
                last.size,
                last.size,
                per_c2 as f64 / single
            ));
        }
    }
    Ok(out)
}
