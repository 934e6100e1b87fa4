//! BatchNorm2d as torchvision's `_bn` VGG models have it after every convolution: a learned
//! scale (`weight`) and shift (`bias`) per channel, and running averages of the batches'
//! statistics (`running_mean`, `running_var`, `num_batches_tracked`) that evaluation uses.
//! Training normalises by the batch's own statistics and updates the running ones, as PyTorch's
//! `train()` mode does; evaluation folds the running statistics into the convolution before it,
//! so the fused convolution, ReLU and max-pool kernels serve `_bn` models too.

use std::sync::{Mutex, PoisonError};

use vgg_autodiff::{Tape, Var};
use vgg_tensor::{Backend, Shape, TensorError};

use crate::io::HostTensor;

/// PyTorch's default epsilon, added to the variance.
pub const EPS: f32 = 1e-5;
/// PyTorch's default weight of a new batch's statistics in the running averages.
pub const MOMENTUM: f32 = 0.1;
/// The names of the running statistics in a state dict, after the module's prefix.
pub const BUFFERS: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// The shapes of the running statistics of `channels`, in `BUFFERS` order: `[C]`, `[C]` and a
/// scalar.
pub fn buffer_shapes(channels: usize) -> [Vec<usize>; 3] {
    [vec![channels], vec![channels], vec![]]
}

/// Why `values` cannot be the running statistic `buffer` (one of `BUFFERS`) of any training
/// run: a negative variance (its square root would make every output NaN) or a count of batches
/// that is not a whole number. None where they can.
pub fn impossible_statistic(buffer: &str, values: &[f32]) -> Option<String> {
    match buffer {
        "running_var" => {
            let negative = values.iter().filter(|v| **v < 0.0).count();
            (negative > 0)
                .then(|| format!("holds {negative} negative variances; the file is corrupt"))
        }
        "num_batches_tracked" => {
            let bad = values.iter().find(|v| !(**v >= 0.0 && v.fract() == 0.0))?;
            Some(format!("is {bad}, not a count of batches"))
        }
        _ => None,
    }
}

/// The running averages a BatchNorm keeps for evaluation.
pub struct RunningStats<B: Backend> {
    /// Per-channel mean, `[C]`.
    pub mean: B::Tensor,
    /// Per-channel unbiased variance, `[C]`.
    pub var: B::Tensor,
    /// Batches averaged so far.
    pub batches: u64,
}

/// Batch normalisation over the channels of an NCHW activation.
pub struct BatchNorm2d<B: Backend> {
    /// The scale per channel (gamma), `[C]`.
    pub weight: B::Tensor,
    /// The shift per channel (beta), `[C]`.
    pub bias: B::Tensor,
    /// Updated by every forward pass in training, which borrows the network immutably (as a
    /// PyTorch module's forward updates its buffers).
    pub running: Mutex<RunningStats<B>>,
}

impl<B: Backend> BatchNorm2d<B> {
    /// PyTorch's initial state for `channels`: scale 1, shift 0, mean 0, variance 1.
    pub fn new(backend: &B, channels: usize) -> vgg_tensor::Result<BatchNorm2d<B>> {
        let c = Shape::from([channels]);
        Ok(BatchNorm2d {
            weight: backend.full(&c, 1.0)?,
            bias: backend.zeros(&c)?,
            running: Mutex::new(RunningStats {
                mean: backend.zeros(&c)?,
                var: backend.full(&c, 1.0)?,
                batches: 0,
            }),
        })
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, RunningStats<B>> {
        // The statistics are replaced whole, never left half-updated, so a poisoned lock's
        // contents are still consistent.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The running mean and variance, `[C]` each.
    pub fn running_mean_var(&self) -> (B::Tensor, B::Tensor) {
        let s = self.stats();
        (s.mean.clone(), s.var.clone())
    }

    /// The running statistics in `BUFFERS` order (the count as a float scalar).
    pub fn buffers(&self, backend: &B) -> vgg_tensor::Result<Vec<B::Tensor>> {
        let s = self.stats();
        let batches = backend.upload(&Shape::from(Vec::new()), &[s.batches as f32])?;
        Ok(vec![s.mean.clone(), s.var.clone(), batches])
    }

    /// Replaces the running statistics with `values` (in `BUFFERS` order, shapes already
    /// checked), refusing impossible ones (`impossible_statistic`).
    pub fn set_buffers(&self, backend: &B, values: [&HostTensor; 3]) -> vgg_tensor::Result<()> {
        for (buffer, t) in BUFFERS.iter().zip(values) {
            if let Some(why) = impossible_statistic(buffer, &t.data) {
                return Err(TensorError::InvalidArgument {
                    op: "batch_norm",
                    message: format!("{buffer} {why}"),
                });
            }
        }
        let [mean, var, batches] = values;
        let count = batches.data.first().copied().unwrap_or(0.0);
        let upload = |t: &HostTensor| backend.upload(&Shape::from(t.shape.clone()), &t.data);
        *self.stats() = RunningStats {
            mean: upload(mean)?,
            var: upload(var)?,
            batches: count as u64,
        };
        Ok(())
    }

    /// The batch-normalised `z` with the batch's statistics, whose running averages it updates
    /// (PyTorch's: momentum 0.1, the variance unbiased).
    pub fn forward_training(
        &self,
        tape: &Tape<B>,
        z: &Var<B>,
        gamma: &Var<B>,
        beta: &Var<B>,
    ) -> vgg_autodiff::Result<Var<B>> {
        let out = tape.batch_norm(z, gamma, beta, EPS)?;
        let b = tape.backend();
        let dims = z.shape().dims();
        let n = (z.shape().elements() / dims.get(1).copied().unwrap_or(1).max(1)) as f32;
        let unbiased = b.scale(&out.var, n / (n - 1.0).max(1.0))?;
        let blend = |running: &B::Tensor, batch: &B::Tensor| {
            b.add(
                &b.scale(running, 1.0 - MOMENTUM)?,
                &b.scale(batch, MOMENTUM)?,
            )
        };
        let mut s = self.stats();
        let mean = blend(&s.mean, &out.mean)?;
        let var = blend(&s.var, &unbiased)?;
        *s = RunningStats {
            mean,
            var,
            batches: s.batches.saturating_add(1),
        };
        Ok(out.y)
    }

    /// The convolution weight and bias that compute conv(x, w) + b followed by this
    /// normalisation with the running statistics: w * s and (b - mean) * s + beta per output
    /// channel, s = gamma / sqrt(var + eps). Gradients reach w, b, gamma and beta through them.
    pub fn fold_into(
        &self,
        tape: &Tape<B>,
        w: &Var<B>,
        b: &Var<B>,
        gamma: &Var<B>,
        beta: &Var<B>,
    ) -> vgg_autodiff::Result<(Var<B>, Var<B>)> {
        let backend = tape.backend();
        let (mean, var) = self.running_mean_var();
        let inv_std = vgg_autodiff::inverse_std(backend, &var, EPS)?;
        let s = tape.mul(gamma, &tape.constant(inv_std))?;
        let out_channels = w.shape().dims().first().copied().unwrap_or(1);
        let mut per_filter = vec![1; w.shape().rank()];
        per_filter[0] = out_channels;
        let folded_w = tape.mul(w, &tape.reshape(&s, &Shape::from(per_filter))?)?;
        let centred = tape.sub(b, &tape.constant(mean))?;
        let folded_b = tape.add(&tape.mul(&centred, &s)?, beta)?;
        Ok((folded_w, folded_b))
    }
}
