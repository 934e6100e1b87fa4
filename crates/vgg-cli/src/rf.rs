//! `vgg rf`: receptive field, jump and start per layer, for a model or an ad-hoc stack.

use serde::Serialize;
use vgg_model::{
    stack_fields, stack_weights_per_c2, ModelSpec, ReceptiveField, SpecOptions, StackKind,
    StackLayer, VggConfig,
};

use crate::args::{self, FigureFormat, Format};
use crate::table::Table;
use vgg_report::figures::{FieldStep, WeightComparison};

/// JSON schema version of `--format json`; bump it when a field changes meaning or disappears.
pub const RF_SCHEMA: &str = "vgg-rf/1";

#[derive(clap::Args, Debug)]
pub struct RfArgs {
    /// The configuration: vgg11 (A), vgg13 (B), vgg16c (C), vgg16 (D) or vgg19 (E) of the paper,
    /// or torchvision's vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn (BatchNorm after every convolution)
    #[arg(long, default_value = "vgg16", value_parser = args::model)]
    pub model: VggConfig,
    /// An ad-hoc stack instead of a model, e.g. conv3,conv3,conv3: comma-separated convK, convK/S
    /// (convolutions padded to keep the size, stride S), poolK or poolK/S (stride K by default)
    #[arg(long)]
    pub layers: Option<String>,
    /// What stdout shows: an aligned table, JSON (schema vgg-rf/1), CSV, Markdown, or SVG (the
    /// fields drawn over the input pixels; for a stack, beside one kernel of the same field)
    #[arg(long, value_enum, default_value = "table")]
    pub format: FigureFormat,
    /// Accepted for old command lines; receptive fields depend on none of these
    #[arg(
        long,
        hide = true,
        num_args = 1,
        alias = "input",
        alias = "image-size",
        alias = "classes",
        alias = "hidden",
        alias = "width-mult",
        alias = "channels"
    )]
    pub ignored: Vec<String>,
}

pub fn run(a: &RfArgs) -> anyhow::Result<String> {
    if !a.ignored.is_empty() {
        tracing::warn!(
            "--image-size, --channels, --classes, --hidden and --width-mult do not change receptive fields: ignored"
        );
    }
    let Some(format) = a.format.report() else {
        return match &a.layers {
            Some(layers) => stack_picture(layers, &vgg_model::parse_stack(layers)?),
            None => model_picture(&ModelSpec::new(a.model, SpecOptions::default())?),
        };
    };
    match &a.layers {
        Some(layers) => stack(layers, &vgg_model::parse_stack(layers)?, format),
        None => Ok(model(
            &ModelSpec::new(a.model, SpecOptions::default())?,
            format,
        )),
    }
}

fn model_picture(spec: &ModelSpec) -> anyhow::Result<String> {
    // The first layer and the end of each stage: every layer's square would crowd the picture.
    let steps: Vec<FieldStep> = spec
        .layers
        .iter()
        .enumerate()
        .filter(|(i, l)| *i == 0 || matches!(l.op, vgg_model::LayerOp::MaxPool { .. }))
        .filter_map(|(_, l)| {
            Some(FieldStep {
                layer: l.name.clone(),
                size: l.receptive_field?.size,
            })
        })
        .collect();
    let input = spec.input();
    vgg_report::figures::receptive_fields(
        &format!(
            "{}: the receptive field after each stage, over a {}x{} input",
            spec.model.name(),
            input.height,
            input.width
        ),
        &steps,
        Some(input.height.max(input.width)),
        None,
    )
    .map_err(Into::into)
}

fn stack_picture(text: &str, stack: &[StackLayer]) -> anyhow::Result<String> {
    let fields = stack_fields(stack)?;
    let steps: Vec<FieldStep> = stack
        .iter()
        .zip(&fields)
        .map(|(layer, field)| FieldStep {
            layer: layer.to_string(),
            size: field.size,
        })
        .collect();
    let convs = stack.iter().filter(|l| l.kind == StackKind::Conv).count();
    let last = fields.last().expect("a parsed stack is never empty").size;
    let weights = match (convs, last.checked_mul(last)) {
        (1.., Some(single)) => Some(WeightComparison {
            stack: stack_weights_per_c2(stack)?,
            single,
        }),
        _ => None,
    };
    vgg_report::figures::receptive_fields(
        &format!("{text}: how the receptive field grows"),
        &steps,
        None,
        weights,
    )
    .map_err(Into::into)
}

#[derive(Serialize)]
struct RfJson<'a> {
    schema: &'static str,
    /// The model's name, or the stack as given.
    of: String,
    layers: &'a [RfRow],
    /// For stacks: weights of the convolutions per C^2 (C channels in and out).
    #[serde(skip_serializing_if = "Option::is_none")]
    weights_per_c2: Option<usize>,
}

#[derive(Serialize)]
struct RfRow {
    layer: String,
    kernel: usize,
    stride: usize,
    padding: usize,
    #[serde(flatten)]
    field: ReceptiveField,
}

fn render_rows(of: &str, rows: &[RfRow], weights_per_c2: Option<usize>, format: Format) -> String {
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
        Format::Json => {
            let json = RfJson {
                schema: RF_SCHEMA,
                of: of.to_string(),
                layers: rows,
                weights_per_c2,
            };
            serde_json::to_string_pretty(&json).expect("rows serialise") + "\n"
        }
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
                vgg_model::LayerOp::Linear | vgg_model::LayerOp::AdaptiveAvgPool { .. } => {
                    return None
                }
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
    let mut out = render_rows(spec.model.name(), &rows, None, format);
    if format == Format::Table {
        out.push_str("fc6-fc8 see the whole image. start: centre of the first unit's field, in input pixels.\n");
    }
    out
}

pub fn stack(text: &str, stack: &[StackLayer], format: Format) -> anyhow::Result<String> {
    let fields = stack_fields(stack)?;
    let per_c2 = stack_weights_per_c2(stack)?;
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
    let mut out = render_rows(text, &rows, Some(per_c2), format);
    if format == Format::Table {
        let last = fields.last().expect("a parsed stack is never empty");
        let convs = stack.iter().filter(|l| l.kind == StackKind::Conv).count();
        // Only a ratio is printed, so the square is taken in floating point.
        let single = last.size as f64 * last.size as f64;
        out.push_str(&format!(
            "{} ({}) see {}x{} input pixels, jump {}.\n",
            crate::table::plural(stack.len(), "layer"),
            crate::table::plural(convs, "convolution"),
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
