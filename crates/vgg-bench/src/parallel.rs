//! The benchmark on several ranks: the reference's forward-backward per rank, plus the gradient
//! allreduce and an SGD step, as a data-parallel training step. Each step's time is split into
//! compute, communication (exposed: waited for after backward; overlapped: ran during it) and the
//! optimiser step; a baseline of the same step on rank 0 alone, with the other ranks idle, gives
//! the scaling efficiency.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vgg_autodiff::Tape;
use vgg_dist::{
    Communicator, ExchangeOptions, GradientCompression, GradientExchange, HostExchange, Solo,
};
use vgg_nn::optim::{Optimizer, OptimizerKind};
use vgg_nn::RunOptions;
use vgg_tensor::Backend;

use crate::{Bench, BenchError, Stats};

/// The SGD step's rate: the l2 loss of random weights is large, and a tiny rate keeps the weights
/// finite over the steps (only the step's time matters here).
const LR: f32 = 1e-9;

/// Seconds of one data-parallel step, as rank 0 saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ParallelStep {
    /// Forward and backward, with the gradients' copies into the buckets.
    pub compute: f64,
    /// Waiting for the allreduces after backward, and copying the averages back.
    pub exposed_communication: f64,
    /// Allreduce time that ran while backward computed.
    pub overlapped_communication: f64,
    /// The SGD step.
    pub optimizer: f64,
    /// The whole step.
    pub total: f64,
}

/// What a data-parallel benchmark measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParallelReport {
    /// Ranks in the job.
    pub ranks: usize,
    /// What carried the gradients: the communicator, and host buffers or the device's own
    /// collectives (NCCL).
    pub communicator: String,
    /// Images per rank per step.
    pub batch_per_rank: usize,
    /// Allreduce buckets per step.
    pub buckets: usize,
    /// Whether buckets were sent during backward.
    pub overlap: bool,
    /// How the gradients travelled: "f32", "bf16" or "fp16".
    #[serde(default = "f32_gradients")]
    pub gradients_sent_as: String,
    /// Gradient bytes each rank sends into the allreduce per step.
    pub gradient_bytes: u64,
    /// Every timed step.
    pub steps: Vec<ParallelStep>,
    /// Statistics of the steps' totals.
    pub stats: Stats,
    /// Means over the timed steps.
    pub mean: ParallelStep,
    /// The same step on one rank alone (no allreduce), where measured.
    pub solo: Option<Stats>,
    /// Images per second of the whole job at the mean step time.
    pub images_per_second: f64,
    /// Solo mean step time over the job's: 1.0 is perfect weak scaling.
    pub efficiency: Option<f64>,
    /// Stopped early (Ctrl-C).
    pub interrupted: bool,
}

/// Records written before gradients could be compressed sent f32.
fn f32_gradients() -> String {
    "f32".into()
}

/// How the data-parallel benchmark runs.
#[derive(Debug, Clone, Copy)]
pub struct ParallelOptions {
    /// Bytes per bucket (`usize::MAX`: one bucket).
    pub bucket_bytes: usize,
    /// Send buckets during backward.
    pub overlap: bool,
    /// Send gradients in 16 bits (`None`: f32).
    pub compression: Option<GradientCompression>,
    /// Also time rank 0 alone, for the efficiency.
    pub solo_baseline: bool,
}

impl<B: Backend> Bench<B> {
    /// The data-parallel training step on the ranks of `comm`, `burn_in` then `num_batches`
    /// steps, each reported to `on_step` (rank 0's times; its break ends every rank's run at the
    /// same step), the gradients averaged by `exchange` (the backend's own over the same ranks,
    /// or `None`: host buffers over `comm`). Every rank must call it alike.
    pub fn run_data_parallel(
        &mut self,
        comm: &dyn Communicator,
        exchange: Option<&dyn GradientExchange<B>>,
        options: ParallelOptions,
        on_step: &mut dyn FnMut(usize, bool, f64) -> ControlFlow<()>,
    ) -> Result<ParallelReport, BenchError> {
        let layout = vgg_dist::GradientBuckets::new(
            &self
                .model
                .named_params()
                .into_iter()
                .rev()
                .map(|(n, t)| (n, vgg_tensor::DeviceTensor::shape(t).clone()))
                .collect::<Vec<_>>(),
            options.bucket_bytes,
        );
        let mut optimizer = Optimizer::new(OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
        });
        let total_steps = self.config.total_steps()?;
        let host = HostExchange::new(comm);
        let exchange = exchange.unwrap_or(&host);
        let sent = ExchangeOptions {
            overlap: options.overlap,
            compression: options.compression,
        };
        let solo = if options.solo_baseline && comm.size() > 1 {
            comm.barrier()?;
            let mut times = Vec::new();
            if comm.rank() == 0 {
                let mut solo_opt = Optimizer::new(optimizer.kind);
                let alone = HostExchange::new(&Solo);
                for i in 0..total_steps {
                    let t = self.parallel_step(&Solo, &alone, &layout, &mut solo_opt, i, sent)?;
                    if i >= self.config.burn_in {
                        times.push(t.total);
                    }
                }
            }
            // The others wait here, polling with sleeps, so rank 0 has the machine.
            comm.barrier()?;
            Some(Stats::of(&times))
        } else {
            None
        };
        let mut steps = Vec::new();
        let mut interrupted = false;
        for i in 0..total_steps {
            let t = self.parallel_step(comm, exchange, &layout, &mut optimizer, i, sent)?;
            let burn_in = i < self.config.burn_in;
            if !burn_in {
                steps.push(t);
            }
            let index = if burn_in { i } else { i - self.config.burn_in };
            let mut stop = [f64::from(u8::from(
                on_step(index, burn_in, t.total).is_break(),
            ))];
            // Every rank stops at the same step, or the others would wait for the stopped one.
            comm.allreduce_f64(&mut stop)?;
            if stop[0] > 0.0 {
                interrupted = true;
                break;
            }
        }
        let totals: Vec<f64> = steps.iter().map(|s| s.total).collect();
        let stats = Stats::of(&totals);
        let n = steps.len().max(1) as f64;
        let sum = |f: fn(&ParallelStep) -> f64| steps.iter().map(f).sum::<f64>() / n;
        let mean = ParallelStep {
            compute: sum(|s| s.compute),
            exposed_communication: sum(|s| s.exposed_communication),
            overlapped_communication: sum(|s| s.overlapped_communication),
            optimizer: sum(|s| s.optimizer),
            total: stats.mean,
        };
        let ranks = comm.size();
        let solo = solo.filter(|_| comm.rank() == 0);
        Ok(ParallelReport {
            ranks,
            communicator: exchange.describe(),
            batch_per_rank: self.config.batch,
            buckets: layout.len(),
            overlap: options.overlap,
            gradients_sent_as: options
                .compression
                .map_or("f32", GradientCompression::name)
                .into(),
            gradient_bytes: options.compression.map_or(4, |_| 2)
                * layout.bucket_elements().iter().sum::<usize>() as u64,
            efficiency: solo
                .filter(|s| s.mean > 0.0 && stats.mean > 0.0)
                .map(|s| s.mean / stats.mean),
            solo,
            images_per_second: if stats.mean > 0.0 {
                (ranks * self.config.batch) as f64 / stats.mean
            } else {
                0.0
            },
            steps,
            stats,
            mean,
            interrupted,
        })
    }

    /// One training step: forward-backward with the buckets sent as they fill, the averages,
    /// an SGD step.
    fn parallel_step(
        &mut self,
        comm: &dyn Communicator,
        exchange: &dyn GradientExchange<B>,
        layout: &vgg_dist::GradientBuckets,
        optimizer: &mut Optimizer<B>,
        step: usize,
        sent: ExchangeOptions,
    ) -> Result<ParallelStep, BenchError> {
        let Bench {
            backend: b,
            config,
            model,
            images,
        } = self;
        let start = Instant::now();
        let tape = Tape::new(b.clone());
        let x = tape.constant(images.clone());
        let run = RunOptions {
            keep_prob: 0.5,
            seed: vgg_nn::init::param_seed(
                vgg_nn::init::param_seed(config.seed, step),
                comm.rank(),
            ),
            training: true,
        };
        let logits = model.forward(&tape, &x, run)?;
        let loss = tape.l2_loss(&logits)?;
        drop(logits);
        if comm.size() == 1 {
            // The baseline: one process's step, its own gradients as they are.
            let grads: HashMap<String, B::Tensor> =
                tape.backward(&loss)?.into_named().into_iter().collect();
            b.synchronize()?;
            let computed = start.elapsed().as_secs_f64();
            optimizer.step(b, model.named_params_mut(), &grads, LR)?;
            b.synchronize()?;
            let total = start.elapsed().as_secs_f64();
            return Ok(ParallelStep {
                compute: computed,
                optimizer: total - computed,
                total,
                ..ParallelStep::default()
            });
        }
        let weight = 1.0 / comm.size() as f32;
        let mut reducer = exchange.reducer(layout, weight, sent)?;
        let grads = tape.backward_streaming(
            &loss,
            |_| {},
            |name, g| reducer.add(b, name, g).map_err(BenchError::from),
        )?;
        drop(grads);
        b.synchronize()?;
        let computed = start.elapsed().as_secs_f64();
        let (grads, times): (HashMap<String, B::Tensor>, _) = reducer.finish(b)?;
        let reduced = start.elapsed().as_secs_f64();
        optimizer.step(b, model.named_params_mut(), &grads, LR)?;
        b.synchronize()?;
        let total = start.elapsed().as_secs_f64();
        // A communicator that cannot overlap reduces inside backward: that time is exposed too.
        let blocked = times.in_backward.min(computed);
        Ok(ParallelStep {
            compute: computed - blocked,
            exposed_communication: reduced - computed + blocked,
            overlapped_communication: times.overlapped(),
            optimizer: total - reduced,
            total,
        })
    }
}
