//! The reference's benchmark, generic over the backend: batch 32 of random-normal (stddev 0.1)
//! 224x224x3 images, seeded Xavier init, 10 burn-in steps, 100 timed steps. **Forward** is the
//! prediction (softmax and argmax) with keep_prob 1.0 on an inference tape; **forward-backward** is
//! the gradient of `l2_loss(fc8)` for every parameter with keep_prob 0.5, no optimiser step.
//! Every timed step counts toward the statistics, and each step's clock stops only after the
//! device has finished its work.

mod parallel;
mod peak;
pub mod record;
mod stats;
pub mod system;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vgg_autodiff::Tape;
use vgg_model::{
    LayerCost, LayerOp, LayerSpec, ModelError, ModelSpec, SpecOptions, Vgg, VggConfig, Workload,
};
use vgg_nn::{InitScheme, RunOptions};
use vgg_tensor::{Backend, Conv2dParams, ConvGeometry, ConvPass, Shape};

pub use parallel::{ParallelOptions, ParallelReport, ParallelStep};
pub use peak::{measure_matmul_peak, measure_memory_bandwidth, MatmulPeak, MemoryBandwidth};
pub use stats::Stats;
pub use system::Machine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
/// What one timed step runs.
pub enum Mode {
    /// Inference only: logits of the batch.
    Forward,
    /// Forward, then gradients of l2_loss(fc8) with respect to every parameter.
    ForwardBackward,
}

impl Mode {
    /// The reference's label.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Forward => "Forward",
            Mode::ForwardBackward => "Forward-backward",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// What to benchmark: the network, the input and the number of steps.
pub struct BenchConfig {
    /// The VGG configuration.
    pub model: VggConfig,
    /// Images per step.
    pub batch: usize,
    /// Timed steps per mode.
    pub num_batches: usize,
    /// Untimed warm-up steps before the timed ones.
    pub burn_in: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Outputs of the last layer.
    pub classes: usize,
    /// Multiplier of every convolution's channel count.
    pub width_mult: f64,
    /// Width of the two hidden fully connected layers.
    pub hidden: usize,
    /// torchvision's adaptive average pool before fc6, to this side; None as the reference.
    #[serde(default)]
    pub adaptive_pool: Option<usize>,
    /// Seed of the random weights and input.
    pub seed: u64,
    /// Also time every layer apart (slower; the steps are synchronised per layer).
    pub per_layer: bool,
}

impl Default for BenchConfig {
    /// The reference's settings.
    fn default() -> Self {
        BenchConfig {
            model: VggConfig::Vgg16,
            batch: 32,
            num_batches: 100,
            burn_in: 10,
            height: 224,
            width: 224,
            classes: 1000,
            width_mult: 1.0,
            hidden: 4096,
            adaptive_pool: None,
            seed: 0,
            per_layer: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
/// Why a benchmark could not be set up or run.
pub enum BenchError {
    #[error(transparent)]
    /// The network could not be built.
    Model(#[from] ModelError),
    #[error(transparent)]
    /// The configuration describes no valid network.
    Spec(#[from] vgg_model::SpecError),
    #[error(transparent)]
    /// The tape failed.
    Autodiff(#[from] vgg_autodiff::AutodiffError),
    #[error(transparent)]
    /// A backend op failed.
    Tensor(#[from] vgg_tensor::TensorError),
    #[error(transparent)]
    /// The ranks of a data-parallel run failed to work together.
    Dist(#[from] vgg_dist::DistError),
    #[error("{0} must be at least 1")]
    /// A count that must be at least 1 was 0.
    Zero(&'static str),
    #[error(
        "the FLOPs of a step on a batch of {batch} do not fit in 64 bits; use a smaller batch"
    )]
    /// A step's FLOPs overflow a counter.
    TooManyFlops {
        /// Images per step.
        batch: usize,
    },
    #[error("{burn_in} burn-in steps and {timed} timed steps are too many to count")]
    /// Burn-in plus timed steps overflow a counter.
    TooManySteps {
        /// Warm-up steps asked for.
        burn_in: usize,
        /// Timed steps asked for.
        timed: usize,
    },
}

impl BenchConfig {
    /// Burn-in plus timed steps, refusing counts that would wrap.
    pub fn total_steps(&self) -> Result<usize, BenchError> {
        self.burn_in
            .checked_add(self.num_batches)
            .ok_or(BenchError::TooManySteps {
                burn_in: self.burn_in,
                timed: self.num_batches,
            })
    }

    /// The layer-by-layer spec of the configured network.
    pub fn spec(&self) -> Result<ModelSpec, BenchError> {
        if self.batch == 0 {
            return Err(BenchError::Zero("the batch size"));
        }
        if self.num_batches == 0 {
            return Err(BenchError::Zero("the number of timed steps"));
        }
        self.total_steps()?;
        Ok(ModelSpec::new(
            self.model,
            SpecOptions {
                height: self.height,
                width: self.width,
                in_channels: 3,
                classes: self.classes,
                width_mult: self.width_mult,
                hidden: self.hidden,
                adaptive_pool: self.adaptive_pool,
            },
        )?)
    }
}

/// What a run of `modes` does, for the spec's memory estimate: the weights once, the images, and
/// with forward-backward what the tape keeps plus the gradients.
pub fn workload(modes: &[Mode]) -> Workload {
    if modes.contains(&Mode::ForwardBackward) {
        Workload::Training { copies: 1 }
    } else {
        Workload::Inference { copies: 1 }
    }
}

/// Refuses, before allocating anything, a batch whose estimate exceeds `available` bytes.
pub fn check_memory(
    spec: &ModelSpec,
    batch: usize,
    modes: &[Mode],
    available: u64,
) -> Result<(), BenchError> {
    Ok(spec.check_memory(batch, workload(modes), available)?)
}

/// One step as it finishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepEvent {
    /// The mode the step ran.
    pub mode: Mode,
    /// Burn-in steps count from 0, and so do timed steps.
    pub index: usize,
    /// Whether the step was a warm-up step (not counted in the statistics).
    pub burn_in: bool,
    /// Wall-clock seconds of the step, including a device synchronisation.
    pub seconds: f64,
}

/// Time spent in one layer, per timed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerTime {
    /// The layer's name, as in the summary.
    pub layer: String,
    /// Mean milliseconds of the layer's forward over the timed steps.
    pub forward_ms: f64,
    /// Mean milliseconds of the layer's backward (0 in forward mode).
    pub backward_ms: f64,
    /// FLOPs and bytes of the layer's passes for the batch (`vgg_model::cost`), for its achieved
    /// rates and its place on a roofline; 0 in records made before they were kept, and in peers'.
    #[serde(default)]
    pub forward_flops: u64,
    /// Bytes the forward pass moves at least.
    #[serde(default)]
    pub forward_bytes: u64,
    /// FLOPs of the backward pass (0 in forward mode).
    #[serde(default)]
    pub backward_flops: u64,
    /// Bytes the backward pass moves at least (0 in forward mode).
    #[serde(default)]
    pub backward_bytes: u64,
    /// FLOPs the backend executes for the forward pass by the method it reports per convolution
    /// (`Convolution::conv_method`: Winograd F(4x4, 3x3) does a quarter of the direct method's
    /// products); None where it does not report one, in peers' records and in older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_executed_flops: Option<u64>,
    /// FLOPs the backend executes for the backward pass, as `forward_executed_flops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backward_executed_flops: Option<u64>,
}

impl LayerTime {
    /// Achieved 10^9 FLOP/s of the forward pass (None where unknown or untimed).
    pub fn forward_gflops(&self) -> Option<f64> {
        rate_of(self.forward_flops, self.forward_ms)
    }

    /// Achieved 10^9 FLOP/s of the backward pass.
    pub fn backward_gflops(&self) -> Option<f64> {
        rate_of(self.backward_flops, self.backward_ms)
    }

    /// Executed 10^9 FLOP/s of the forward pass: the products the backend's methods perform.
    pub fn forward_executed_gflops(&self) -> Option<f64> {
        rate_of(self.forward_executed_flops?, self.forward_ms)
    }

    /// Executed 10^9 FLOP/s of the backward pass.
    pub fn backward_executed_gflops(&self) -> Option<f64> {
        rate_of(self.backward_executed_flops?, self.backward_ms)
    }

    /// FLOPs of the forward pass as performed: executed where the backend says, else the direct
    /// method's.
    pub fn forward_performed_flops(&self) -> u64 {
        self.forward_executed_flops.unwrap_or(self.forward_flops)
    }

    /// FLOPs of the backward pass as performed, as `forward_performed_flops`.
    pub fn backward_performed_flops(&self) -> u64 {
        self.backward_executed_flops.unwrap_or(self.backward_flops)
    }

    /// 10^9 FLOP/s of the forward pass as performed (`forward_performed_flops`).
    pub fn forward_performed_gflops(&self) -> Option<f64> {
        rate_of(self.forward_performed_flops(), self.forward_ms)
    }

    /// 10^9 FLOP/s of the backward pass as performed.
    pub fn backward_performed_gflops(&self) -> Option<f64> {
        rate_of(self.backward_performed_flops(), self.backward_ms)
    }

    /// Achieved 10^9 bytes/s of the forward pass's least traffic.
    pub fn forward_gbytes(&self) -> Option<f64> {
        rate_of(self.forward_bytes, self.forward_ms)
    }

    /// Achieved 10^9 bytes/s of the backward pass's least traffic.
    pub fn backward_gbytes(&self) -> Option<f64> {
        rate_of(self.backward_bytes, self.backward_ms)
    }
}

/// `count` per `ms` milliseconds in 10^9 per second.
fn rate_of(count: u64, ms: f64) -> Option<f64> {
    (count > 0 && ms > 0.0).then(|| count as f64 / (ms * 1e-3) / 1e9)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// The results of one mode.
pub struct ModeReport {
    /// The mode timed.
    pub mode: Mode,
    /// Seconds of each warm-up step.
    pub burn_in_seconds: Vec<f64>,
    /// Every timed step, in order.
    pub step_seconds: Vec<f64>,
    /// Statistics of the timed steps, in seconds per batch.
    pub stats: Stats,
    /// FLOPs of one step (see `step_flops`).
    pub flops_per_step: u64,
    /// Images per second at the mean step time.
    pub images_per_second: f64,
    /// Floating-point operations per second at the mean step time, in units of 10^9.
    pub gflops_per_second: f64,
    /// The process's peak resident memory during this mode, where the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Stopped early (Ctrl-C): the statistics cover the steps measured.
    pub interrupted: bool,
    /// Per-layer times, when asked for.
    pub per_layer: Vec<LayerTime>,
}

/// FLOPs of one step, the sum of `ModelSpec::costs`: forward is the spec's (1 MAC = 2 FLOPs)
/// times the batch; backward costs two forwards (input and weight gradients) for each convolution
/// and linear layer, less the first convolution's input gradient, which is never computed. None
/// where the count does not fit in 64 bits.
pub fn step_flops(spec: &ModelSpec, batch: usize, mode: Mode) -> Option<u64> {
    spec.costs(batch).ok()?.iter().try_fold(0u64, |sum, c| {
        let step = match mode {
            Mode::Forward => c.forward_flops,
            Mode::ForwardBackward => c.forward_flops.checked_add(c.backward_flops())?,
        };
        sum.checked_add(step)
    })
}

/// FLOPs `backend` executes for `passes` of one layer at `batch`: a convolution's by the method
/// the backend reports for each pass, any other layer's as `cost` counts them (the direct method);
/// a pass `cost` does not count (the first convolution's input gradient) is not added. None where
/// a convolution's method is unreported or a count overflows.
pub fn executed_flops<B: Backend>(
    backend: &B,
    layer: &LayerSpec,
    cost: &LayerCost,
    batch: usize,
    passes: &[ConvPass],
) -> Option<u64> {
    let counted = |pass: &ConvPass| match pass {
        ConvPass::Forward => cost.forward_flops,
        ConvPass::InputGradient => cost.input_gradient_flops,
        ConvPass::WeightGradient => cost.weight_gradient_flops,
    };
    let LayerOp::Conv {
        stride, padding, ..
    } = layer.op
    else {
        return passes.iter().map(counted).try_fold(0u64, u64::checked_add);
    };
    let input = Shape::from([
        batch,
        layer.input.channels,
        layer.input.height,
        layer.input.width,
    ]);
    let g = ConvGeometry::new(
        &input,
        &Shape::new(layer.weight_shape()?),
        Conv2dParams { stride, padding },
    )
    .ok()?;
    passes
        .iter()
        .filter(|pass| counted(pass) > 0)
        .map(|&pass| backend.conv_method(&g, pass).executed_flops(&g, pass))
        .try_fold(0u64, |sum, flops| sum.checked_add(flops?))
}

/// The model and images of a benchmark, built once for all modes.
pub struct Bench<B: Backend> {
    /// The backend the network runs on.
    pub backend: B,
    /// What is benchmarked.
    pub config: BenchConfig,
    /// The network with its random weights.
    pub model: Vgg<B>,
    images: B::Tensor,
}

impl<B: Backend> Bench<B> {
    /// Builds the network with random weights on `backend`, checking first that it fits in memory.
    pub fn new(backend: B, config: BenchConfig) -> Result<Bench<B>, BenchError> {
        let spec = config.spec()?;
        let model = Vgg::init(&backend, spec, &InitScheme::REFERENCE, config.seed)?;
        let images = backend.random_normal(
            &Shape::from([config.batch, 3, config.height, config.width]),
            0.0,
            0.1,
            vgg_nn::init::param_seed(config.seed, usize::MAX),
        )?;
        Ok(Bench {
            backend,
            config,
            model,
            images,
        })
    }

    /// One step; per-layer times are added to `layers` when given.
    fn step(
        &self,
        mode: Mode,
        step: usize,
        layers: Option<&mut BTreeMap<String, (f64, f64)>>,
    ) -> Result<(), BenchError> {
        let b = &self.backend;
        let mut layers = layers;
        let mut clock = Instant::now();
        let mut forward_timer = |name: &str| {
            if let Some(layers) = layers.as_deref_mut() {
                let _ = b.synchronize();
                layers.entry(name.to_string()).or_default().0 += clock.elapsed().as_secs_f64();
                clock = Instant::now();
            }
        };
        match mode {
            Mode::Forward => {
                let tape = Tape::inference(b.clone());
                let x = tape.constant(self.images.clone());
                let logits =
                    self.model
                        .forward_observed(&tape, &x, RunOptions::EVAL, &mut forward_timer)?;
                // The reference's target: predictions = argmax(softmax(fc8)).
                let probabilities = b.softmax_rows(logits.value())?;
                drop(logits);
                let _predictions = b.argmax_rows(&probabilities)?;
            }
            Mode::ForwardBackward => {
                let tape = Tape::new(b.clone());
                let x = tape.constant(self.images.clone());
                let run = RunOptions {
                    keep_prob: 0.5,
                    seed: vgg_nn::init::param_seed(self.config.seed, step),
                    training: true,
                };
                let logits = self
                    .model
                    .forward_observed(&tape, &x, run, &mut forward_timer)?;
                let loss = tape.l2_loss(&logits)?;
                drop(logits);
                let per_layer = layers.is_some();
                let mut backward_clock = Instant::now();
                let mut backward_times: Vec<(Option<String>, f64)> = Vec::new();
                let grads = tape.backward_observed(&loss, |s| {
                    if per_layer {
                        let _ = b.synchronize();
                        let layer = s
                            .label
                            .as_deref()
                            .and_then(|l| self.model.layer_of_label(l))
                            .map(str::to_string);
                        backward_times.push((layer, backward_clock.elapsed().as_secs_f64()));
                        backward_clock = Instant::now();
                    }
                })?;
                if let Some(layers) = layers {
                    for (layer, seconds) in backward_times {
                        let name = layer.unwrap_or_else(|| "loss and other".to_string());
                        layers.entry(name).or_default().1 += seconds;
                    }
                }
                drop(grads);
            }
        }
        b.synchronize()?;
        Ok(())
    }

    /// Runs `burn_in` then `num_batches` steps of `mode`, reporting each to `on_step`, which can
    /// stop the run early (the report then covers the steps measured).
    pub fn run(
        &self,
        mode: Mode,
        on_step: &mut dyn FnMut(StepEvent) -> ControlFlow<()>,
    ) -> Result<ModeReport, BenchError> {
        system::reset_peak_rss();
        let mut burn_in_seconds = Vec::new();
        let mut step_seconds = Vec::new();
        let mut layers: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        let mut interrupted = false;
        let total = self.config.total_steps()?;
        for i in 0..total {
            let burn_in = i < self.config.burn_in;
            let per_layer = (self.config.per_layer && !burn_in).then_some(&mut layers);
            let start = Instant::now();
            self.step(mode, i, per_layer)?;
            let seconds = start.elapsed().as_secs_f64();
            let index = if burn_in { i } else { i - self.config.burn_in };
            if burn_in {
                burn_in_seconds.push(seconds);
            } else {
                step_seconds.push(seconds);
            }
            if on_step(StepEvent {
                mode,
                index,
                burn_in,
                seconds,
            })
            .is_break()
            {
                interrupted = true;
                break;
            }
        }
        let spec = self.model.spec();
        let flops = step_flops(spec, self.config.batch, mode).ok_or(BenchError::TooManyFlops {
            batch: self.config.batch,
        })?;
        let stats = Stats::of(&step_seconds);
        let steps = step_seconds.len().max(1) as f64;
        // Counts that fit for the whole step fit for each layer.
        let costs = spec.costs(self.config.batch).unwrap_or_default();
        let order: Vec<String> = spec.layers.iter().map(|l| l.name.clone()).collect();
        let backward = mode == Mode::ForwardBackward;
        let mut per_layer: Vec<LayerTime> = layers
            .into_iter()
            .map(|(layer, (f, bw))| {
                let cost = costs.iter().find(|c| c.layer == layer);
                let executed = |passes: &[ConvPass]| {
                    let (spec_layer, cost) = (spec.layers.iter().find(|l| l.name == layer)?, cost?);
                    executed_flops(&self.backend, spec_layer, cost, self.config.batch, passes)
                };
                LayerTime {
                    forward_executed_flops: executed(&[ConvPass::Forward]),
                    backward_executed_flops: if backward {
                        executed(&[ConvPass::InputGradient, ConvPass::WeightGradient])
                    } else {
                        Some(0)
                    },
                    forward_flops: cost.map_or(0, |c| c.forward_flops),
                    forward_bytes: cost.map_or(0, |c| c.forward_bytes()),
                    backward_flops: cost.filter(|_| backward).map_or(0, |c| c.backward_flops()),
                    backward_bytes: cost.filter(|_| backward).map_or(0, |c| c.backward_bytes()),
                    layer,
                    forward_ms: 1e3 * f / steps,
                    backward_ms: 1e3 * bw / steps,
                }
            })
            .collect();
        per_layer.sort_by_key(|t| {
            order
                .iter()
                .position(|n| *n == t.layer)
                .unwrap_or(usize::MAX)
        });
        Ok(ModeReport {
            mode,
            burn_in_seconds,
            images_per_second: if stats.mean > 0.0 {
                self.config.batch as f64 / stats.mean
            } else {
                0.0
            },
            gflops_per_second: if stats.mean > 0.0 {
                flops as f64 / stats.mean / 1e9
            } else {
                0.0
            },
            step_seconds,
            stats,
            flops_per_step: flops,
            peak_rss_bytes: system::peak_rss_bytes(),
            interrupted,
            per_layer,
        })
    }
}
