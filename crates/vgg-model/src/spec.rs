//! The static layer spec: every layer's op, shapes, parameter counts, MACs and receptive field,
//! computed from a configuration and an input size. The runtime model is built from this, so
//! `vgg summary` and the network that runs can never disagree.

use serde::Serialize;

use crate::config::{Stage, VggConfig};
use vgg_tensor::memory::human_bytes;

use crate::rf::ReceptiveField;
use crate::SpecError;

/// Bytes of one f32.
pub const F32_BYTES: u64 = 4;

/// What a spec is computed for. `width_mult` and `hidden` exist for small experiments and fixtures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpecOptions {
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Channels of the input image (3 for RGB).
    pub in_channels: usize,
    /// Outputs of the last layer.
    pub classes: usize,
    /// Multiplies every convolution's channel count (rounded, at least 1).
    pub width_mult: f64,
    /// Width of fc6 and fc7.
    pub hidden: usize,
    /// torchvision's `AdaptiveAvgPool2d((s, s))` between pool5 and fc6, so that fc6 reads s x s
    /// positions whatever the input size (the identity at 224 with s = 7). None: fc6 reads pool5
    /// as it is, as the paper's and the reference's network do.
    pub adaptive_pool: Option<usize>,
}

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            height: 224,
            width: 224,
            in_channels: 3,
            classes: 1000,
            width_mult: 1.0,
            hidden: 4096,
            adaptive_pool: None,
        }
    }
}

/// What a layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum LayerOp {
    /// Convolution (OIHW weights) followed by bias and ReLU.
    Conv {
        /// Side of the square filter.
        kernel: usize,
        /// Step between windows.
        stride: usize,
        /// Zero padding on each side.
        padding: usize,
    },
    /// Max-pool; sizes are floored.
    MaxPool {
        /// Side of the square window.
        kernel: usize,
        /// Step between windows.
        stride: usize,
    },
    /// Fully connected ([out, in] weights) with bias; ReLU and dropout on fc6 and fc7 only.
    Linear,
    /// Average-pool to `size` x `size` whatever the input's size (torchvision's `avgpool`).
    AdaptiveAvgPool {
        /// The output's side.
        size: usize,
    },
}

/// Channels, height, width of one image's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Chw {
    /// Channels.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl Chw {
    /// Elements of one image's activation. A spec's shapes were checked to fit when it was built;
    /// for others this saturates instead of wrapping.
    pub fn elements(&self) -> u64 {
        self.checked_elements().unwrap_or(u64::MAX)
    }

    /// Elements, or None when the count does not fit in 64 bits.
    pub fn checked_elements(&self) -> Option<u64> {
        (self.channels as u64)
            .checked_mul(self.height as u64)?
            .checked_mul(self.width as u64)
    }
}

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSpec {
    /// The torchvision-style name (conv1_1, pool1, fc6).
    pub name: String,
    #[serde(flatten)]
    /// What the layer computes.
    pub op: LayerOp,
    /// ReLU after this layer (all convolutions, fc6 and fc7; fc8 is linear).
    pub relu: bool,
    /// Dropout after this layer (fc6 and fc7).
    pub dropout: bool,
    /// The shape of one image's input to the layer.
    pub input: Chw,
    /// The shape of one image's output of the layer.
    pub output: Chw,
    /// BatchNorm follows this convolution (the `_bn` models), as torchvision's module
    /// `torch_index + 1`, before the ReLU.
    pub batch_norm: bool,
    /// Weight count.
    pub weights: u64,
    /// Bias count.
    pub biases: u64,
    /// The BatchNorm's scale and shift, one each per channel; 0 without one.
    pub norm_params: u64,
    /// Weights, biases and BatchNorm parameters (its running statistics are not parameters).
    pub params: u64,
    /// Multiply-accumulates for one image.
    pub macs: u64,
    /// None for the fully connected layers, which see the whole image.
    pub receptive_field: Option<ReceptiveField>,
    /// A pool that dropped the last row or column of an odd-sized input.
    pub floored: bool,
    /// Index of this layer's module in torchvision's `features` or `classifier` Sequential.
    pub torch_index: usize,
}

impl LayerSpec {
    /// Whether the layer is a convolution.
    pub fn is_conv(&self) -> bool {
        matches!(self.op, LayerOp::Conv { .. })
    }

    /// Whether the layer is fully connected.
    pub fn is_linear(&self) -> bool {
        matches!(self.op, LayerOp::Linear)
    }

    /// Whether the layer has weights.
    pub fn has_params(&self) -> bool {
        self.params > 0
    }

    /// The torchvision state-dict prefix of this layer's parameters (`features.0`, `classifier.6`).
    pub fn torch_prefix(&self) -> Option<String> {
        match self.op {
            LayerOp::Conv { .. } => Some(format!("features.{}", self.torch_index)),
            LayerOp::Linear => Some(format!("classifier.{}", self.torch_index)),
            LayerOp::MaxPool { .. } | LayerOp::AdaptiveAvgPool { .. } => None,
        }
    }

    /// A layer without parameters or arithmetic counted (a pool) from `input` to `output`; its
    /// receptive field, flooring and module index left for the caller.
    fn pool(name: String, op: LayerOp, input: Chw, output: Chw) -> LayerSpec {
        LayerSpec {
            name,
            op,
            relu: false,
            dropout: false,
            input,
            output,
            batch_norm: false,
            weights: 0,
            biases: 0,
            norm_params: 0,
            params: 0,
            macs: 0,
            receptive_field: None,
            floored: false,
            torch_index: 0,
        }
    }

    /// The torchvision state-dict prefix of the BatchNorm after this convolution (`features.1`).
    pub fn norm_prefix(&self) -> Option<String> {
        self.batch_norm
            .then(|| format!("features.{}", self.torch_index + 1))
    }

    /// Index of the torchvision module whose output is this layer's (after its BatchNorm and
    /// ReLU), in `features` or `classifier`.
    pub fn output_module(&self) -> usize {
        self.torch_index + usize::from(self.batch_norm) + usize::from(self.relu)
    }

    /// The torchvision module this layer is (`features.0`, `features.4` for a pool,
    /// `classifier.6`), as torchinfo names rows.
    pub fn torch_module(&self) -> String {
        match self.op {
            LayerOp::Linear => format!("classifier.{}", self.torch_index),
            LayerOp::AdaptiveAvgPool { .. } => "avgpool".to_string(),
            _ => format!("features.{}", self.torch_index),
        }
    }

    /// Shape of the weight tensor: OIHW for convolutions, [out, in] for linear layers.
    pub fn weight_shape(&self) -> Option<Vec<usize>> {
        match self.op {
            LayerOp::Conv { kernel, .. } => Some(vec![
                self.output.channels,
                self.input.channels,
                kernel,
                kernel,
            ]),
            LayerOp::Linear => Some(vec![self.output.channels, self.input.elements() as usize]),
            LayerOp::MaxPool { .. } | LayerOp::AdaptiveAvgPool { .. } => None,
        }
    }
}

/// Activation and parameter memory for a batch, in bytes (f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// The batch the estimate is for.
    pub batch: usize,
    /// The input batch.
    pub input_bytes: u64,
    /// Every layer's output for the batch (torchinfo's "forward pass size").
    pub forward_activation_bytes: u64,
    /// Inference keeps only one layer's input and output at a time: the largest such pair.
    pub inference_peak_activation_bytes: u64,
    /// What a forward-backward pass keeps for backward: the input, every layer's output (ReLU
    /// outputs double as their masks) except a convolution's right before a max-pool (the pooled
    /// output's sign is its mask where gradients flow) and one the tape recomputes (a first
    /// layer's, from 64 MiB: `vgg_autodiff::Recompute`), and one index per pooled output.
    pub saved_for_backward_bytes: u64,
    /// The parameters.
    pub param_bytes: u64,
    /// Parameters plus one gradient per parameter.
    pub params_and_grads_bytes: u64,
    /// Saved activations + params and grads + the largest activation gradients alive at once
    /// (two, four with BatchNorm).
    pub estimated_forward_backward_bytes: u64,
}

/// The whole network's spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    /// The configuration.
    pub model: VggConfig,
    /// The options the spec was computed for.
    pub options: SpecOptions,
    /// Every layer, input to output.
    pub layers: Vec<LayerSpec>,
}

impl ModelSpec {
    /// Computes the spec, refusing sizes that would shrink to nothing.
    /// Every count (shapes, parameters, MACs, their totals) is checked to fit in 64 bits, so the
    /// spec's arithmetic never wraps.
    pub fn new(model: VggConfig, options: SpecOptions) -> Result<ModelSpec, SpecError> {
        validate_options(&options)?;
        let layers = build_layers(model, &options)?.ok_or_else(|| SpecError::InputTooSmall {
            model: model.name(),
            height: options.height,
            width: options.width,
            min: smallest_input(model),
        })?;
        let total = |what: &str, f: fn(&LayerSpec) -> u64| {
            layers
                .iter()
                .try_fold(0u64, |acc, l| acc.checked_add(f(l)))
                .and_then(|t| t.checked_mul(F32_BYTES).map(|_| t))
                .ok_or_else(|| too_large(format!("the network's total {what}")))
        };
        total("parameters", |l| l.params)?;
        // Forward-backward counts three passes of MACs, at two FLOPs each.
        total("MACs", |l| l.macs)?
            .checked_mul(6)
            .ok_or_else(|| too_large("the network's FLOPs".to_string()))?;
        total("activations", |l| l.output.elements())?;
        Ok(ModelSpec {
            model,
            options,
            layers,
        })
    }

    /// The shape of one input image.
    pub fn input(&self) -> Chw {
        Chw {
            channels: self.options.in_channels,
            height: self.options.height,
            width: self.options.width,
        }
    }

    /// The layer named `name`, if any.
    pub fn layer(&self, name: &str) -> Option<&LayerSpec> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// The number of parameters.
    pub fn params(&self) -> u64 {
        self.layers.iter().map(|l| l.params).sum()
    }

    /// The number of weights.
    pub fn weights(&self) -> u64 {
        self.layers.iter().map(|l| l.weights).sum()
    }

    /// The number of biases.
    pub fn biases(&self) -> u64 {
        self.layers.iter().map(|l| l.biases).sum()
    }

    /// The number of BatchNorm scales and shifts.
    pub fn norm_params(&self) -> u64 {
        self.layers.iter().map(|l| l.norm_params).sum()
    }

    /// Multiply-accumulates of one image's forward pass.
    pub fn macs(&self) -> u64 {
        self.layers.iter().map(|l| l.macs).sum()
    }

    /// FLOPs of one image's forward pass (1 MAC = 2 FLOPs).
    pub fn flops(&self) -> u64 {
        2 * self.macs()
    }

    /// True when some pool floored an odd size.
    pub fn any_floored(&self) -> bool {
        self.layers.iter().any(|l| l.floored)
    }

    /// Memory for a batch, or an error naming the batch when a figure would not fit in 64 bits.
    pub fn memory(&self, batch: usize) -> Result<MemoryEstimate, SpecError> {
        let overflow = || too_large(format!("the memory of a batch of {batch}"));
        let b = batch as u64;
        let bytes = |elements: u64| {
            elements
                .checked_mul(b)
                .and_then(|v| v.checked_mul(F32_BYTES))
                .ok_or_else(overflow)
        };
        let sum = |v: Vec<u64>| {
            v.into_iter()
                .try_fold(0u64, |a, x| a.checked_add(x))
                .ok_or_else(overflow)
        };
        let input_bytes = bytes(self.input().elements())?;
        let outputs = sum(self.layers.iter().map(|l| l.output.elements()).collect())?;
        let pooled = sum(self
            .layers
            .iter()
            .filter(|l| matches!(l.op, LayerOp::MaxPool { .. }))
            .map(|l| l.output.elements())
            .collect())?;
        let largest_pair = self
            .layers
            .iter()
            .map(|l| l.input.elements().saturating_add(l.output.elements()))
            .max()
            .unwrap_or(0);
        let largest_output = self
            .layers
            .iter()
            .map(|l| l.output.elements().max(l.input.elements()))
            .max()
            .unwrap_or(0);
        // A convolution followed by a max-pool is one tape node keeping only the pooled output;
        // with BatchNorm between them (training) it is not.
        let before_pools = sum(self
            .layers
            .windows(2)
            .filter(|w| {
                w[0].is_conv() && !w[0].batch_norm && matches!(w[1].op, LayerOp::MaxPool { .. })
            })
            .map(|w| w[0].output.elements())
            .collect())?;
        // A small first layer's large output is recomputed in backward (the tape's default
        // `Recompute`), not kept.
        let policy = vgg_autodiff::Recompute::default();
        let recomputed = sum(self
            .layers
            .windows(2)
            .filter(|w| {
                w[0].is_conv()
                    && w[0].relu
                    && !w[0].batch_norm
                    && !matches!(w[1].op, LayerOp::MaxPool { .. })
            })
            .filter(|w| {
                let bytes = bytes(w[0].output.elements()).unwrap_or(u64::MAX);
                let shape = vgg_tensor::Shape::from(w[0].weight_shape().unwrap_or_default());
                policy.applies(&shape, usize::try_from(bytes).unwrap_or(usize::MAX))
            })
            .map(|w| w[0].output.elements())
            .collect())?;
        let kept = outputs - before_pools - recomputed;
        // Batch statistics keep one more activation per convolution: the normalised input.
        let normalised = sum(self
            .layers
            .iter()
            .filter(|l| l.batch_norm)
            .map(|l| l.output.elements())
            .collect())?;
        let saved = sum(vec![
            input_bytes,
            bytes(kept)?,
            bytes(normalised)?,
            bytes(pooled)?,
        ])?;
        let param_bytes = self.params() * F32_BYTES;
        let params_and_grads = param_bytes.checked_mul(2).ok_or_else(overflow)?;
        // BatchNorm's backward holds four activation-sized tensors at once, where the rest hold two.
        let alive = if self.model.batch_norm() { 4 } else { 2 };
        let largest_gradients = bytes(largest_output.checked_mul(alive).ok_or_else(overflow)?)?;
        Ok(MemoryEstimate {
            batch,
            input_bytes,
            forward_activation_bytes: bytes(outputs)?,
            inference_peak_activation_bytes: bytes(largest_pair)?,
            saved_for_backward_bytes: saved,
            param_bytes,
            params_and_grads_bytes: params_and_grads,
            estimated_forward_backward_bytes: sum(vec![
                saved,
                params_and_grads,
                largest_gradients,
            ])?,
        })
    }

    /// Bytes that `work` on a batch of `batch` images needs, estimated from the spec.
    pub fn estimated_bytes(&self, batch: usize, work: Workload) -> Result<u64, SpecError> {
        let m = self.memory(batch)?;
        let copies = |n: u64| m.param_bytes.checked_mul(n);
        let total = match work {
            Workload::Weights { copies: n } => copies(n),
            Workload::Inference { copies: n } => copies(n)
                .and_then(|p| p.checked_add(m.input_bytes))
                .and_then(|p| p.checked_add(m.inference_peak_activation_bytes)),
            // The estimate already holds the weights and one gradient each.
            Workload::Training { copies: n } => copies(n.saturating_sub(1))
                .and_then(|p| p.checked_add(m.input_bytes))
                .and_then(|p| p.checked_add(m.estimated_forward_backward_bytes)),
        };
        total.ok_or_else(|| too_large(format!("the memory of a batch of {batch}")))
    }

    /// Refuses, before anything is allocated, `work` that would need more than `available` bytes.
    /// When the batch is what makes it too large, the error names the largest batch that fits.
    pub fn check_memory(
        &self,
        batch: usize,
        work: Workload,
        available: u64,
    ) -> Result<(), SpecError> {
        let fits = |b: usize| matches!(self.estimated_bytes(b, work), Ok(n) if n <= available);
        if fits(batch) {
            return Ok(());
        }
        let needed = self.estimated_bytes(batch, work).ok();
        // The estimate grows with the batch, so the largest batch that fits is found by bisection.
        let largest_batch = match work {
            Workload::Weights { .. } => None,
            _ if !fits(1) => None,
            _ => {
                let (mut lo, mut hi) = (1usize, batch);
                while lo < hi {
                    let mid = lo + (hi - lo).div_ceil(2);
                    if fits(mid) {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                Some(lo)
            }
        };
        Err(SpecError::OutOfMemory {
            what: match work {
                Workload::Weights { .. } => {
                    format!("creating or loading the weights of {}", self.describe())
                }
                Workload::Inference { .. } => {
                    format!("{} on a batch of {batch} (inference)", self.describe())
                }
                Workload::Training { .. } => format!(
                    "{} on a batch of {batch} (forward and backward)",
                    self.describe()
                ),
            },
            needed: needed.map_or("more than 16 EiB".to_string(), human_bytes),
            available: human_bytes(available),
            largest_batch,
        })
    }

    /// "vgg16", or "vgg11 (width x0.25, hidden 128, 10 classes, 32x32x1 input)": every option
    /// that differs from the paper's network, the input included.
    pub fn describe(&self) -> String {
        self.describe_parts(true)
    }

    /// `describe` without the input size, for reports that print it beside.
    pub fn describe_network(&self) -> String {
        self.describe_parts(false)
    }

    fn describe_parts(&self, input: bool) -> String {
        let o = &self.options;
        let d = SpecOptions::default();
        let mut parts = Vec::new();
        if o.width_mult != d.width_mult {
            parts.push(format!("width x{}", o.width_mult));
        }
        if o.hidden != d.hidden {
            parts.push(format!("hidden {}", o.hidden));
        }
        if o.classes != d.classes {
            parts.push(format!("{} classes", o.classes));
        }
        if let Some(side) = o.adaptive_pool {
            parts.push(format!("avgpool {side}x{side}"));
        }
        if input && (o.height, o.width, o.in_channels) != (d.height, d.width, d.in_channels) {
            parts.push(format!("{}x{}x{} input", o.height, o.width, o.in_channels));
        }
        if parts.is_empty() {
            self.model.name().to_string()
        } else {
            format!("{} ({})", self.model.name(), parts.join(", "))
        }
    }
}

/// What a command does with a network, for its memory estimate. `copies` counts the
/// parameter-sized buffers it holds at once: the weights on the device, host copies, file bytes,
/// optimiser slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Creating, loading or saving weights, without running the network.
    Weights {
        /// Parameter-sized buffers held at once.
        copies: u64,
    },
    /// A forward pass without a tape: one layer's input and output alive at a time.
    Inference {
        /// Parameter-sized buffers held at once.
        copies: u64,
    },
    /// A forward pass that keeps what backward needs, the backward pass and a gradient per
    /// parameter (counted apart from `copies`).
    Training {
        /// Parameter-sized buffers held at once, besides the gradients.
        copies: u64,
    },
}

pub(crate) fn too_large(what: String) -> SpecError {
    SpecError::TooLarge { what }
}

fn validate_options(o: &SpecOptions) -> Result<(), SpecError> {
    let positive = [
        ("input height", o.height),
        ("input width", o.width),
        ("channels", o.in_channels),
        ("classes", o.classes),
        ("hidden width", o.hidden),
        ("adaptive pool size", o.adaptive_pool.unwrap_or(1)),
    ];
    if let Some((what, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(SpecError::Zero { what });
    }
    if !(o.width_mult.is_finite() && o.width_mult > 0.0 && o.width_mult <= 16.0) {
        return Err(SpecError::BadWidthMult(o.width_mult));
    }
    Ok(())
}

/// Channels after the width multiplier: rounded, never zero.
fn scaled(channels: usize, width_mult: f64) -> usize {
    ((channels as f64 * width_mult).round() as usize).max(1)
}

/// The layers, or None when some activation would shrink to zero; an error when a count would
/// not fit in 64 bits.
fn build_layers(model: VggConfig, o: &SpecOptions) -> Result<Option<Vec<LayerSpec>>, SpecError> {
    let product = |name: &str, what: &str, factors: &[u64]| {
        factors
            .iter()
            .try_fold(1u64, |acc, &f| acc.checked_mul(f))
            .ok_or_else(|| too_large(format!("{name}'s {what}")))
    };
    let elements = |name: &str, c: Chw| {
        c.checked_elements()
            .ok_or_else(|| too_large(format!("{name}'s activation")))
    };
    let mut layers = Vec::new();
    let mut shape = Chw {
        channels: o.in_channels,
        height: o.height,
        width: o.width,
    };
    elements("the input", shape)?;
    let mut rf = ReceptiveField::INPUT;
    let mut torch_index = 0;
    for (block, stages) in model.stages().iter().enumerate() {
        let mut conv_in_block = 0;
        for stage in stages {
            let input = shape;
            let layer = match *stage {
                Stage::Conv {
                    out_channels,
                    kernel,
                } => {
                    conv_in_block += 1;
                    let padding = (kernel - 1) / 2;
                    let (Some(height), Some(width)) = (
                        window_out(input.height, kernel, 1, padding),
                        window_out(input.width, kernel, 1, padding),
                    ) else {
                        return Ok(None);
                    };
                    let out = Chw {
                        channels: scaled(out_channels, o.width_mult),
                        height,
                        width,
                    };
                    let name = format!("conv{}_{}", block + 1, conv_in_block);
                    elements(&name, out)?;
                    let k = kernel as u64;
                    let weights = product(
                        &name,
                        "weights",
                        &[out.channels as u64, input.channels as u64, k, k],
                    )?;
                    let macs = product(
                        &name,
                        "MACs",
                        &[weights, out.height as u64, out.width as u64],
                    )?;
                    rf = rf.then(kernel, 1, padding)?;
                    let batch_norm = model.batch_norm();
                    let norm_params = if batch_norm {
                        2 * out.channels as u64
                    } else {
                        0
                    };
                    let layer = LayerSpec {
                        name,
                        op: LayerOp::Conv {
                            kernel,
                            stride: 1,
                            padding,
                        },
                        relu: true,
                        dropout: false,
                        input,
                        output: out,
                        batch_norm,
                        weights,
                        biases: out.channels as u64,
                        norm_params,
                        params: weights + out.channels as u64 + norm_params,
                        macs,
                        receptive_field: Some(rf),
                        floored: false,
                        torch_index,
                    };
                    // Conv2d, [BatchNorm2d,] ReLU
                    torch_index += 2 + usize::from(batch_norm);
                    layer
                }
                Stage::Pool => {
                    let (kernel, stride) = (2, 2);
                    let (Some(height), Some(width)) = (
                        window_out(input.height, kernel, stride, 0),
                        window_out(input.width, kernel, stride, 0),
                    ) else {
                        return Ok(None);
                    };
                    let out = Chw {
                        channels: input.channels,
                        height,
                        width,
                    };
                    rf = rf.then(kernel, stride, 0)?;
                    let layer = LayerSpec {
                        receptive_field: Some(rf),
                        floored: !(input.height - kernel).is_multiple_of(stride)
                            || !(input.width - kernel).is_multiple_of(stride),
                        torch_index,
                        ..LayerSpec::pool(
                            format!("pool{}", block + 1),
                            LayerOp::MaxPool { kernel, stride },
                            input,
                            out,
                        )
                    };
                    torch_index += 1;
                    layer
                }
            };
            shape = layer.output;
            layers.push(layer);
        }
    }
    // torchvision's average pool to a fixed size, else the classifier reads pool5 flattened,
    // whatever its spatial size (as the reference computes it).
    if let Some(size) = o.adaptive_pool {
        let input = shape;
        let output = Chw {
            channels: input.channels,
            height: size,
            width: size,
        };
        elements("avgpool", output)?;
        layers.push(LayerSpec::pool(
            "avgpool".to_string(),
            LayerOp::AdaptiveAvgPool { size },
            input,
            output,
        ));
        shape = output;
    }
    let fcs = [
        ("fc6", o.hidden, true),
        ("fc7", o.hidden, true),
        ("fc8", o.classes, false),
    ];
    for (i, (name, out_features, hidden)) in fcs.into_iter().enumerate() {
        let input = shape;
        let in_features = input.elements();
        let weights = product(name, "weights", &[in_features, out_features as u64])?;
        let output = Chw {
            channels: out_features,
            height: 1,
            width: 1,
        };
        layers.push(LayerSpec {
            name: name.to_string(),
            op: LayerOp::Linear,
            relu: hidden,
            dropout: hidden,
            input,
            output,
            batch_norm: false,
            weights,
            biases: out_features as u64,
            norm_params: 0,
            params: weights + out_features as u64,
            macs: weights,
            receptive_field: None,
            floored: false,
            // torchvision: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear.
            torch_index: 3 * i,
        });
        shape = output;
    }
    Ok(Some(layers))
}

/// Output length of a sliding window, None when nothing fits.
fn window_out(len: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = len.checked_add(2 * padding)?;
    (padded >= kernel).then(|| (padded - kernel) / stride + 1)
}

/// The smallest square input the model accepts (every pool keeps at least one pixel).
pub fn smallest_input(model: VggConfig) -> usize {
    let o = SpecOptions::default();
    (1..=4096)
        .find(|&s| {
            build_layers(
                model,
                &SpecOptions {
                    height: s,
                    width: s,
                    ..o
                },
            )
            .is_ok_and(|layers| layers.is_some())
        })
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(model: VggConfig) -> ModelSpec {
        ModelSpec::new(model, SpecOptions::default()).unwrap()
    }

    #[test]
    fn vgg16_totals() {
        let s = spec(VggConfig::Vgg16);
        assert_eq!(s.params(), 138_357_544);
        assert_eq!(s.macs(), 15_470_264_320);
        assert_eq!(s.params() * F32_BYTES, 553_430_176);
        assert_eq!(s.layers.len(), 21);
    }

    #[test]
    fn batch_norm_totals_match_torchvision() {
        // torchvision's documented parameter counts of the `_bn` models.
        for (model, params) in [
            (VggConfig::Vgg11Bn, 132_868_840),
            (VggConfig::Vgg13Bn, 133_053_736),
            (VggConfig::Vgg16Bn, 138_365_992),
            (VggConfig::Vgg19Bn, 143_678_248),
        ] {
            let s = spec(model);
            assert_eq!(s.params(), params, "{model}");
            let plain = spec(model.without_batch_norm());
            assert_eq!(s.macs(), plain.macs(), "{model}");
            assert_eq!(s.params() - plain.params(), s.norm_params(), "{model}");
        }
        let s = spec(VggConfig::Vgg16Bn);
        let pools: Vec<String> = s
            .layers
            .iter()
            .filter(|l| !l.has_params())
            .map(|l| l.torch_module())
            .collect();
        assert_eq!(
            pools,
            [
                "features.6",
                "features.13",
                "features.23",
                "features.33",
                "features.43"
            ]
        );
        let conv1_2 = s.layer("conv1_2").unwrap();
        assert_eq!(conv1_2.torch_prefix().as_deref(), Some("features.3"));
        assert_eq!(conv1_2.norm_prefix().as_deref(), Some("features.4"));
        assert_eq!(conv1_2.output_module(), 5);
        assert!(
            s.memory(8).unwrap().saved_for_backward_bytes
                > spec(VggConfig::Vgg16)
                    .memory(8)
                    .unwrap()
                    .saved_for_backward_bytes
        );
    }

    #[test]
    fn torchvision_module_indices() {
        let s = spec(VggConfig::Vgg16);
        let prefixes: Vec<String> = s.layers.iter().filter_map(|l| l.torch_prefix()).collect();
        assert_eq!(prefixes[0], "features.0");
        assert_eq!(prefixes[1], "features.2");
        assert_eq!(prefixes[2], "features.5");
        assert_eq!(prefixes[12], "features.28");
        assert_eq!(
            prefixes[13..],
            ["classifier.0", "classifier.3", "classifier.6"]
        );
    }

    #[test]
    fn odd_sizes_floor_and_say_so() {
        let s = ModelSpec::new(
            VggConfig::Vgg11,
            SpecOptions {
                height: 225,
                width: 100,
                ..Default::default()
            },
        )
        .unwrap();
        let pool1 = s.layer("pool1").unwrap();
        assert_eq!((pool1.output.height, pool1.output.width), (112, 50));
        assert!(pool1.floored);
        let pool5 = s.layer("pool5").unwrap();
        assert_eq!((pool5.output.height, pool5.output.width), (7, 3));
        assert_eq!(s.layer("fc6").unwrap().weights, 7 * 3 * 512 * 4096);
        assert!(s.any_floored());
    }

    #[test]
    fn too_small_names_the_minimum() {
        let err = ModelSpec::new(
            VggConfig::Vgg16,
            SpecOptions {
                height: 16,
                width: 16,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("at least 32x32"), "{err}");
        assert_eq!(smallest_input(VggConfig::Vgg16), 32);
    }

    #[test]
    fn width_multiplier_and_hidden_width() {
        let s = ModelSpec::new(
            VggConfig::Vgg11,
            SpecOptions {
                height: 32,
                width: 32,
                classes: 10,
                width_mult: 0.125,
                hidden: 256,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.layer("conv1_1").unwrap().output.channels, 8);
        assert_eq!(s.layer("conv5_2").unwrap().output.channels, 64);
        assert_eq!(
            s.layer("fc6").unwrap().weight_shape().unwrap(),
            vec![256, 64]
        );
        assert_eq!(s.layer("fc8").unwrap().params, 256 * 10 + 10);
    }

    #[test]
    fn zero_sizes_are_refused() {
        for o in [
            SpecOptions {
                height: 0,
                ..Default::default()
            },
            SpecOptions {
                classes: 0,
                ..Default::default()
            },
            SpecOptions {
                width_mult: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(ModelSpec::new(VggConfig::Vgg16, o).is_err());
        }
    }

    #[test]
    fn memory_scales_with_batch() {
        let s = spec(VggConfig::Vgg16);
        let one = s.memory(1).unwrap();
        let eight = s.memory(8).unwrap();
        assert_eq!(
            eight.forward_activation_bytes,
            8 * one.forward_activation_bytes
        );
        assert_eq!(one.param_bytes, 553_430_176);
        assert!(eight.estimated_forward_backward_bytes > eight.saved_for_backward_bytes);
        // Kept for backward, by hand: everything but conv1_2, conv2_2, conv3_3, conv4_3 and
        // conv5_3's outputs (64x224^2 + 128x112^2 + 256x56^2 + 512x28^2 + 512x14^2 floats), plus
        // an index per pooled output (a quarter of those).
        let before_pools = 4 * (3_211_264 + 1_605_632 + 802_816 + 401_408 + 100_352);
        assert_eq!(
            one.saved_for_backward_bytes,
            one.input_bytes + one.forward_activation_bytes - before_pools + before_pools / 4
        );
        // From batch 32 conv1_1's output (411 MB) is recomputed in backward instead of kept.
        let batch32 = s.memory(32).unwrap();
        assert_eq!(
            32 * one.saved_for_backward_bytes - batch32.saved_for_backward_bytes,
            32 * 4 * 3_211_264
        );
        // Overflow is an error, not a wrapped or saturated figure.
        let e = s.memory(usize::MAX).unwrap_err().to_string();
        assert!(e.contains("does not fit in 64 bits"), "{e}");
    }

    #[test]
    fn counts_that_would_wrap_are_errors() {
        for o in [
            SpecOptions {
                in_channels: usize::MAX,
                ..Default::default()
            },
            SpecOptions {
                classes: usize::MAX / 2,
                ..Default::default()
            },
            SpecOptions {
                height: usize::MAX / 4,
                width: 3,
                ..Default::default()
            },
        ] {
            let e = ModelSpec::new(VggConfig::Vgg16, o).unwrap_err();
            assert!(matches!(e, SpecError::TooLarge { .. }), "{e}");
        }
    }

    #[test]
    fn memory_checks_name_the_largest_batch_that_fits() {
        let s = spec(VggConfig::Vgg16);
        let work = Workload::Training { copies: 1 };
        let one = s.estimated_bytes(1, work).unwrap();
        let eight = s.estimated_bytes(8, work).unwrap();
        assert!(s.check_memory(8, work, eight).is_ok());
        let e = s.check_memory(32, work, eight).unwrap_err();
        assert!(
            matches!(
                e,
                SpecError::OutOfMemory {
                    largest_batch: Some(8),
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("largest batch that fits is 8"),
            "{e}"
        );
        // Not even one image: the network is what is too large.
        let e = s.check_memory(4, work, one - 1).unwrap_err();
        assert!(e.to_string().contains("make the network smaller"), "{e}");
        let weights = Workload::Weights { copies: 3 };
        assert_eq!(
            s.estimated_bytes(1, weights).unwrap(),
            3 * s.params() * F32_BYTES
        );
        // Absurd batches are refused, not wrapped.
        assert!(s.check_memory(usize::MAX, work, u64::MAX).is_err());
    }

    #[test]
    fn descriptions_name_what_differs_from_the_paper() {
        assert_eq!(spec(VggConfig::Vgg16).describe(), "vgg16");
        let small = ModelSpec::new(
            VggConfig::Vgg11,
            SpecOptions {
                height: 32,
                width: 32,
                classes: 10,
                width_mult: 0.125,
                hidden: 256,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            small.describe(),
            "vgg11 (width x0.125, hidden 256, 10 classes, 32x32x3 input)"
        );
        assert_eq!(
            small.describe_network(),
            "vgg11 (width x0.125, hidden 256, 10 classes)"
        );
    }
}
