//! `vgg summary`: the spec as a table, JSON, CSV or Markdown, with a torchinfo-like footer.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;
use vgg_model::{
    Bound, Chw, LayerCost, LayerOp, LayerSpec, MemoryEstimate, ModelSpec, PartialOptions,
};

use crate::args::{self, FigureFormat, Format};
use crate::options::{InputShape, NetDefaults, NetOptions};
use crate::table::{bytes, si, thousands, Table};

#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub net: NetOptions,
    #[command(flatten)]
    pub shape: InputShape,
    /// Read the network's options from a weight file or training checkpoint's metadata (the
    /// flags above still override them)
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Images per batch, for the memory figures and the NCHW shapes
    #[arg(long, alias = "batch", default_value = "1", value_parser = args::positive)]
    pub batch_size: usize,
    /// What stdout shows: an aligned table, JSON (schema vgg-summary/1), CSV, Markdown, or SVG
    /// (the network diagram)
    #[arg(long, value_enum, default_value = "table")]
    pub format: FigureFormat,
    /// The table's columns, comma-separated, from layer, module (torchvision's name), op, input,
    /// output, weights, biases, params, macs, rf, jump, memory, and the roofline's flops, dx-flops,
    /// dw-flops (forward, input- and weight-gradient FLOPs for the batch), weight-bytes,
    /// input-bytes, output-bytes, intensity, bound, bwd-intensity, bwd-bound; or `torchinfo`
    /// (module, input, output, params, macs) or `roofline` (layer, flops, dx-flops, dw-flops, the
    /// three bytes, intensity, bound)
    /// [default: layer,op,output,weights,biases,params,macs,rf,jump,memory]
    #[arg(long, value_parser = parse_columns)]
    pub columns: Option<Columns>,
    /// The machine's balance for the bound columns: its peak FLOP/s over its memory bytes/s
    /// (`vgg bench` measures both); a layer below it is memory-bound. 10 is ~200 GFLOP/s over
    /// ~20 GB/s, a 2-core AVX-512 VM
    #[arg(long, default_value = "10", value_name = "FLOP/B", value_parser = balance, allow_negative_numbers = true)]
    pub balance: f64,
    /// How shapes are written: hwc (224x224x64) or nchw (torchinfo's [1, 64, 224, 224], with the
    /// batch)
    #[arg(long, value_enum, default_value = "hwc")]
    pub shapes: ShapeStyle,
}

/// A column of the summary table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Layer,
    Module,
    Op,
    Input,
    Output,
    Weights,
    Biases,
    Params,
    Macs,
    Rf,
    Jump,
    Memory,
    Flops,
    DxFlops,
    DwFlops,
    WeightBytes,
    InputBytes,
    OutputBytes,
    Intensity,
    Bound,
    BackwardIntensity,
    BackwardBound,
}

/// `--columns roofline`.
const ROOFLINE_COLUMNS: [Column; 9] = [
    Column::Layer,
    Column::Flops,
    Column::DxFlops,
    Column::DwFlops,
    Column::WeightBytes,
    Column::InputBytes,
    Column::OutputBytes,
    Column::Intensity,
    Column::Bound,
];

fn balance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a balance: a positive number of FLOPs per byte, e.g. 10"
        )),
    }
}

const DEFAULT_COLUMNS: [Column; 10] = [
    Column::Layer,
    Column::Op,
    Column::Output,
    Column::Weights,
    Column::Biases,
    Column::Params,
    Column::Macs,
    Column::Rf,
    Column::Jump,
    Column::Memory,
];

/// The columns asked for, in order (one value: clap would read a `Vec` as repeated flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns(pub Vec<Column>);

fn parse_columns(s: &str) -> Result<Columns, String> {
    if s.trim() == "roofline" {
        return Ok(Columns(ROOFLINE_COLUMNS.to_vec()));
    }
    if s.trim() == "torchinfo" {
        return Ok(Columns(vec![
            Column::Module,
            Column::Input,
            Column::Output,
            Column::Params,
            Column::Macs,
        ]));
    }
    s.split(',')
        .map(|c| match c.trim().to_ascii_lowercase().as_str() {
            "layer" => Ok(Column::Layer),
            "module" => Ok(Column::Module),
            "op" => Ok(Column::Op),
            "input" => Ok(Column::Input),
            "output" => Ok(Column::Output),
            "weights" => Ok(Column::Weights),
            "biases" => Ok(Column::Biases),
            "params" => Ok(Column::Params),
            "macs" => Ok(Column::Macs),
            "rf" => Ok(Column::Rf),
            "jump" => Ok(Column::Jump),
            "memory" => Ok(Column::Memory),
            "flops" => Ok(Column::Flops),
            "dx-flops" => Ok(Column::DxFlops),
            "dw-flops" => Ok(Column::DwFlops),
            "weight-bytes" => Ok(Column::WeightBytes),
            "input-bytes" => Ok(Column::InputBytes),
            "output-bytes" => Ok(Column::OutputBytes),
            "intensity" => Ok(Column::Intensity),
            "bound" => Ok(Column::Bound),
            "bwd-intensity" => Ok(Column::BackwardIntensity),
            "bwd-bound" => Ok(Column::BackwardBound),
            other => Err(format!(
                "'{other}' is not a column: use layer, module, op, input, output, weights, biases, params, macs, rf, jump, memory, flops, dx-flops, dw-flops, weight-bytes, input-bytes, output-bytes, intensity, bound, bwd-intensity, bwd-bound, or torchinfo or roofline"
            )),
        })
        .collect::<Result<_, _>>()
        .map(Columns)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShapeStyle {
    /// Height x width x channels of one image
    Hwc,
    /// [batch, channels, height, width], as PyTorch prints tensors
    Nchw,
}

pub fn run(a: &SummaryArgs) -> Result<String> {
    let (model, known) = match &a.weights {
        Some(path) => crate::net::options_of(path)?,
        None => (None, PartialOptions::default()),
    };
    let spec = a
        .net
        .spec(model, a.shape.partial().or(known), NetDefaults::default())?;
    let columns = a.columns.clone().map_or(DEFAULT_COLUMNS.to_vec(), |c| c.0);
    if columns.is_empty() {
        bail!("--columns names no column");
    }
    let Some(format) = a.format.report() else {
        return Ok(vgg_report::figures::network_diagram(&spec)?);
    };
    render(&spec, a.batch_size, format, &columns, a.shapes, a.balance)
}

/// JSON schema version; bump it when a field changes meaning or disappears.
pub const SUMMARY_SCHEMA: &str = "vgg-summary/1";

#[derive(Serialize)]
struct LayerRow<'a> {
    #[serde(flatten)]
    layer: &'a LayerSpec,
    /// torchvision's module name (`features.0`).
    module: String,
    /// This layer's output for the whole batch, f32.
    output_bytes: u64,
    /// FLOPs and bytes of each pass, for the batch (`vgg_model::cost`).
    cost: LayerCost,
    forward_intensity: f64,
    backward_intensity: f64,
    /// The roof that limits each pass on a machine of `balance` FLOP/B.
    forward_bound: Bound,
    backward_bound: Bound,
}

#[derive(Serialize)]
struct Totals {
    params: u64,
    weights: u64,
    biases: u64,
    norm_params: u64,
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
    /// The machine balance the bounds are read against, FLOP/B.
    balance: f64,
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
        LayerOp::AdaptiveAvgPool { size } => format!("avgpool to {size}x{size}"),
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
    if let Some(avgpool) = spec.layer("avgpool") {
        let (side, pool5) = (avgpool.output.height, avgpool.input);
        notes.push(format!(
            "avgpool (torchvision's AdaptiveAvgPool2d(({side}, {side}))) averages pool5's {}x{} to \
             {side}x{side}, so fc6 reads {} features at any input size{}",
            pool5.height,
            pool5.width,
            avgpool.output.elements(),
            if (pool5.height, pool5.width) == (side, side) {
                " (here it changes nothing)"
            } else {
                ""
            }
        ));
    } else if let Some(pool5) = spec.layer("pool5") {
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

fn shape_text(c: &Chw, batch: usize, style: ShapeStyle) -> String {
    match style {
        ShapeStyle::Hwc => format!("{}x{}x{}", c.height, c.width, c.channels),
        // The classifier's activations are [N, features], as PyTorch's Linear sees them.
        ShapeStyle::Nchw if c.height == 1 && c.width == 1 => format!("[{batch}, {}]", c.channels),
        ShapeStyle::Nchw => format!("[{batch}, {}, {}, {}]", c.channels, c.height, c.width),
    }
}

/// The summary's view of the spec: what it shows and for what.
struct View<'a> {
    spec: &'a ModelSpec,
    batch: usize,
    columns: &'a [Column],
    style: ShapeStyle,
    costs: &'a [LayerCost],
    balance: f64,
}

fn table(v: &View, csv: bool) -> Table {
    let (spec, batch, columns, style) = (v.spec, v.batch, v.columns, v.style);
    let num = |n: u64| if csv { n.to_string() } else { thousands(n) };
    let shape_header = match style {
        ShapeStyle::Hwc => "HxWxC",
        ShapeStyle::Nchw => "shape",
    };
    let headers: Vec<String> = columns
        .iter()
        .map(|c| match c {
            Column::Layer => "layer".into(),
            Column::Module => "module".into(),
            Column::Op => "op".into(),
            Column::Input => format!("input {shape_header}"),
            Column::Output => format!("output {shape_header}"),
            Column::Weights => "weights".into(),
            Column::Biases => "biases".into(),
            Column::Params => "params".into(),
            Column::Macs => "MACs".into(),
            Column::Rf => "RF".into(),
            Column::Jump => "jump".into(),
            Column::Memory => "memory".into(),
            Column::Flops => "FLOPs".into(),
            Column::DxFlops => "dX FLOPs".into(),
            Column::DwFlops => "dW FLOPs".into(),
            Column::WeightBytes => "weight bytes".into(),
            Column::InputBytes => "input bytes".into(),
            Column::OutputBytes => "output bytes".into(),
            Column::Intensity => "FLOP/B".into(),
            Column::Bound => "bound".into(),
            Column::BackwardIntensity => "bwd FLOP/B".into(),
            Column::BackwardBound => "bwd bound".into(),
        })
        .collect();
    let text = columns
        .iter()
        .map(|c| {
            matches!(
                c,
                Column::Layer
                    | Column::Module
                    | Column::Op
                    | Column::Input
                    | Column::Output
                    | Column::Bound
                    | Column::BackwardBound
            )
        })
        .collect();
    let mut t = Table::new(headers).with_text_mask(text);
    let size = |n: u64| if csv { n.to_string() } else { bytes(n) };
    for (l, cost) in spec.layers.iter().zip(v.costs) {
        let (fwd, bwd) = (cost.forward_intensity(), cost.backward_intensity());
        let out_bytes = l.output.elements() * batch as u64 * vgg_model::F32_BYTES;
        let field = |f: fn(&vgg_model::ReceptiveField) -> usize| {
            l.receptive_field
                .as_ref()
                .map_or("-".to_string(), |r| f(r).to_string())
        };
        t.push(
            columns
                .iter()
                .map(|c| match c {
                    Column::Layer => l.name.clone(),
                    Column::Module => l.torch_module(),
                    Column::Op => op_text(l),
                    Column::Input => shape_text(&l.input, batch, style),
                    Column::Output => shape_text(&l.output, batch, style),
                    Column::Weights => num(l.weights),
                    Column::Biases => num(l.biases),
                    Column::Params => num(l.params),
                    Column::Macs => num(l.macs),
                    Column::Rf => field(|r| r.size),
                    Column::Jump => field(|r| r.jump),
                    Column::Memory => size(out_bytes),
                    Column::Flops => num(cost.forward_flops),
                    Column::DxFlops => num(cost.input_gradient_flops),
                    Column::DwFlops => num(cost.weight_gradient_flops),
                    Column::WeightBytes => size(cost.weight_bytes),
                    Column::InputBytes => size(cost.input_bytes),
                    Column::OutputBytes => size(cost.output_bytes),
                    Column::Intensity => format!("{fwd:.2}"),
                    Column::Bound => LayerCost::bound(fwd, v.balance).word().into(),
                    Column::BackwardIntensity => format!("{bwd:.2}"),
                    Column::BackwardBound => LayerCost::bound(bwd, v.balance).word().into(),
                })
                .collect(),
        );
    }
    t
}

fn footer(spec: &ModelSpec, batch: usize, m: &MemoryEstimate, macs_batch: u64) -> String {
    let input = spec.input();
    let mut lines = vec![
        format!(
            "{} (paper config {}{}), input {}x{}x{}, {} classes, batch {}",
            spec.model,
            spec.model.paper_letter(),
            if spec.model.batch_norm() {
                " with BatchNorm after every convolution"
            } else {
                ""
            },
            input.height,
            input.width,
            input.channels,
            spec.options.classes,
            batch
        ),
        format!(
            "Total params: {} ({} weights + {} biases{}), {} as f32",
            thousands(spec.params()),
            thousands(spec.weights()),
            thousands(spec.biases()),
            match spec.norm_params() {
                0 => String::new(),
                n => format!(" + {} BatchNorm scales and shifts", thousands(n)),
            },
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
            "Kept for backward (input, outputs but those pooled or recomputed, pool indices): {}",
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

/// The roofline's line of the footer: where the layers stand against the machine's balance.
fn roofline_line(costs: &[LayerCost], balance: f64) -> String {
    let memory_bound: Vec<&str> = costs
        .iter()
        .filter(|c| c.forward_bytes() > 0)
        .filter(|c| LayerCost::bound(c.forward_intensity(), balance) == Bound::Memory)
        .map(|c| c.layer.as_str())
        .collect();
    format!(
        "Roofline (--columns roofline): FLOPs per byte moved (direct method, f32, each tensor read or \
         written once per pass); at a balance of {balance} FLOP/B (--balance) the forward pass of {} \
         is memory-bound",
        if memory_bound.is_empty() {
            "no layer".to_string()
        } else {
            memory_bound.join(", ")
        }
    )
}

pub fn render(
    spec: &ModelSpec,
    batch: usize,
    format: Format,
    columns: &[Column],
    style: ShapeStyle,
    balance: f64,
) -> Result<String> {
    let m = spec.memory(batch)?;
    let costs = spec.costs(batch)?;
    let view = View {
        spec,
        batch,
        columns,
        style,
        costs: &costs,
        balance,
    };
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
    let footer = format!(
        "{}\n{}",
        footer(spec, batch, &m, macs_batch),
        roofline_line(&costs, balance)
    );
    Ok(match format {
        Format::Table => format!("{}{}\n", table(&view, false).text(), footer),
        Format::Markdown => format!(
            "{}\n{}\n",
            table(&view, false).markdown(),
            footer
                .lines()
                .map(|l| format!("- {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Format::Csv => table(&view, true).csv(),
        Format::Json => {
            let json = SummaryJson {
                schema: SUMMARY_SCHEMA,
                model: spec.model.name(),
                paper_config: spec.model.paper_letter().to_string(),
                options: &spec.options,
                batch,
                balance,
                layers: spec
                    .layers
                    .iter()
                    .zip(&costs)
                    .map(|(layer, cost)| LayerRow {
                        layer,
                        module: layer.torch_module(),
                        output_bytes: layer.output.elements() * batch as u64 * vgg_model::F32_BYTES,
                        forward_intensity: cost.forward_intensity(),
                        backward_intensity: cost.backward_intensity(),
                        forward_bound: LayerCost::bound(cost.forward_intensity(), balance),
                        backward_bound: LayerCost::bound(cost.backward_intensity(), balance),
                        cost: cost.clone(),
                    })
                    .collect(),
                totals: Totals {
                    params: spec.params(),
                    weights: spec.weights(),
                    biases: spec.biases(),
                    norm_params: spec.norm_params(),
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
