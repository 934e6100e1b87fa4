//! `vgg summary`: the spec as a table, JSON, CSV or Markdown, with a torchinfo-like footer.

use anyhow::Result;
use serde::Serialize;
use vgg_model::{LayerOp, LayerSpec, MemoryEstimate, ModelSpec};

use crate::args::Format;
use crate::table::{bytes, si, thousands, Table};

/// JSON schema version; bump it when a field changes meaning or disappears.
pub const SUMMARY_SCHEMA: &str = "vgg-summary/1";

#[derive(Serialize)]
struct LayerRow<'a> {
    #[serde(flatten)]
    layer: &'a LayerSpec,
    /// This layer's output for the whole batch, f32.
    output_bytes: u64,
}

#[derive(Serialize)]
struct Totals {
    params: u64,
    weights: u64,
    biases: u64,
    param_bytes: u64,
    macs_per_image: u64,
    flops_per_image: u64,
    macs_per_batch: u64,
    flops_per_batch: u64,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    schema: &'static str,
    model: &'static str,
    paper_config: String,
    options: &'a vgg_model::SpecOptions,
    batch: usize,
    layers: Vec<LayerRow<'a>>,
    totals: Totals,
    memory: MemoryEstimate,
    notes: Vec<String>,
}

fn op_text(layer: &LayerSpec) -> String {
    match layer.op {
        LayerOp::Conv {
            kernel,
            stride,
            padding,
        } => format!("conv{kernel}x{kernel}/{stride} p{padding}"),
        LayerOp::MaxPool { kernel, stride } => format!("maxpool{kernel}x{kernel}/{stride}"),
        LayerOp::Linear => "linear".to_string(),
    }
}

/// Notes that explain surprising rows: floored pools and the classifier's input size.
pub fn notes(spec: &ModelSpec) -> Vec<String> {
    let mut notes: Vec<String> = spec
        .layers
        .iter()
        .filter(|l| l.floored)
        .map(|l| {
            format!(
                "{} floors its odd input {}x{} to {}x{} (the last row/column is dropped)",
                l.name, l.input.height, l.input.width, l.output.height, l.output.width
            )
        })
        .collect();
    if let Some(pool5) = spec.layer("pool5") {
        if (pool5.output.height, pool5.output.width) != (7, 7) {
            notes.push(format!(
                "fc6 reads pool5 flattened: {}x{}x{} = {} features (7x7x512 at 224x224)",
                pool5.output.height,
                pool5.output.width,
                pool5.output.channels,
                pool5.output.elements()
            ));
        }
    }
    notes
}

fn table(spec: &ModelSpec, batch: usize, csv: bool) -> Table {
    let num = |n: u64| if csv { n.to_string() } else { thousands(n) };
    let mut t = Table::new([
        "layer",
        "op",
        "output HxWxC",
        "weights",
        "biases",
        "params",
        "MACs",
        "RF",
        "jump",
        "memory",
    ])
    .with_text_columns(2);
    for l in &spec.layers {
        let (rf, jump) = match l.receptive_field {
            Some(f) => (f.size.to_string(), f.jump.to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        let out_bytes = l.output.elements() * batch as u64 * vgg_model::F32_BYTES;
        t.push(vec![
            l.name.clone(),
            op_text(l),
            format!(
                "{}x{}x{}",
                l.output.height, l.output.width, l.output.channels
            ),
            num(l.weights),
            num(l.biases),
            num(l.params),
            num(l.macs),
            rf,
            jump,
            if csv {
                out_bytes.to_string()
            } else {
                bytes(out_bytes)
            },
        ]);
    }
    t
}

fn footer(spec: &ModelSpec, batch: usize, m: &MemoryEstimate, macs_batch: u64) -> String {
    let input = spec.input();
    let mut lines = vec![
        format!(
            "{} (paper config {}), input {}x{}x{}, {} classes, batch {}",
            spec.model,
            spec.model.paper_letter(),
            input.height,
            input.width,
            input.channels,
            spec.options.classes,
            batch
        ),
        format!(
            "Total params: {} ({} weights + {} biases), {} as f32",
            thousands(spec.params()),
            thousands(spec.weights()),
            thousands(spec.biases()),
            bytes(m.param_bytes)
        ),
        format!(
            "Total MACs: {} per image ({}), {} for the batch",
            thousands(spec.macs()),
            si(spec.macs()),
            si(macs_batch)
        ),
        format!(
            "Total FLOPs: {} per image ({}; 1 MAC = 2 FLOPs), {} for the batch",
            thousands(spec.flops()),
            si(spec.flops()),
            si(2 * macs_batch)
        ),
        format!("Input size: {}", bytes(m.input_bytes)),
        format!(
            "Forward activations (every layer's output): {}",
            bytes(m.forward_activation_bytes)
        ),
        format!(
            "Inference peak activations (largest input+output pair): {}",
            bytes(m.inference_peak_activation_bytes)
        ),
        format!(
            "Kept for backward (input, outputs, pool indices): {}",
            bytes(m.saved_for_backward_bytes)
        ),
        format!("Params + gradients: {}", bytes(m.params_and_grads_bytes)),
        format!(
            "Estimated total for forward-backward: {}",
            bytes(m.estimated_forward_backward_bytes)
        ),
    ];
    lines.extend(notes(spec).into_iter().map(|n| format!("note: {n}")));
    lines.join("\n")
}

pub fn render(spec: &ModelSpec, batch: usize, format: Format) -> Result<String> {
    let m = spec.memory(batch)?;
    // FLOPs of a batch's forward-backward (three passes, two FLOPs a MAC) must fit too.
    let macs_batch = spec
        .macs()
        .checked_mul(batch as u64)
        .filter(|macs| macs.checked_mul(6).is_some())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "a batch of {batch} has too many MACs to count in 64 bits: use a smaller batch"
            )
        })?;
    let footer = footer(spec, batch, &m, macs_batch);
    Ok(match format {
        Format::Table => format!("{}{}\n", table(spec, batch, false).text(), footer),
        Format::Markdown => format!(
            "{}\n{}\n",
            table(spec, batch, false).markdown(),
            footer
                .lines()
                .map(|l| format!("- {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Format::Csv => table(spec, batch, true).csv(),
        Format::Json => {
            let json = SummaryJson {
                schema: SUMMARY_SCHEMA,
                model: spec.model.name(),
                paper_config: spec.model.paper_letter().to_string(),
                options: &spec.options,
                batch,
                layers: spec
                    .layers
                    .iter()
                    .map(|layer| LayerRow {
                        layer,
                        output_bytes: layer.output.elements() * batch as u64 * vgg_model::F32_BYTES,
                    })
                    .collect(),
                totals: Totals {
                    params: spec.params(),
                    weights: spec.weights(),
                    biases: spec.biases(),
                    param_bytes: spec.params() * vgg_model::F32_BYTES,
                    macs_per_image: spec.macs(),
                    flops_per_image: spec.flops(),
                    macs_per_batch: macs_batch,
                    flops_per_batch: 2 * macs_batch,
                },
                memory: m,
                notes: notes(spec),
            };
            // Serialising plain numbers and strings cannot fail.
            serde_json::to_string_pretty(&json).expect("summary serialises") + "\n"
        }
    })
}
