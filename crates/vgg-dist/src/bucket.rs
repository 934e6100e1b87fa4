//! Gradient averaging in buckets: the parameters are grouped, in the order backward produces
//! their gradients, into buckets of about a given size; a bucket's allreduce starts as soon as
//! its last gradient is in, so communication runs while backward computes the layers below.
//! Buckets start in a fixed order on every rank (a later bucket waits for the earlier ones), as
//! every rank must start the same collectives in the same order.

use std::collections::HashMap;
use std::time::Instant;

use vgg_tensor::{Backend, DeviceTensor, Shape};

use crate::{Communicator, DistError, GradientCompression, PendingReduce, Result};

/// Which parameters go into which bucket, the same on every rank.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientBuckets {
    /// Per bucket, its parameters (name, shape, offset in the bucket).
    buckets: Vec<Vec<(String, Shape, usize)>>,
    /// Elements per bucket.
    lens: Vec<usize>,
    /// Parameter name to (bucket, index within it).
    index: HashMap<String, (usize, usize)>,
}

impl GradientBuckets {
    /// Buckets of about `bucket_bytes` (at least one parameter each) over `params` given in the
    /// order their gradients are expected (backward's order: the last layer first). With
    /// `bucket_bytes` of `usize::MAX` everything is one bucket, reduced after backward.
    pub fn new(params: &[(String, Shape)], bucket_bytes: usize) -> GradientBuckets {
        let limit = (bucket_bytes / 4).max(1);
        let mut buckets: Vec<Vec<(String, Shape, usize)>> = Vec::new();
        let mut lens = Vec::new();
        let mut index = HashMap::new();
        for (name, shape) in params {
            let elements = shape.elements();
            let open = lens.last().is_some_and(|&len: &usize| len < limit);
            if !open {
                buckets.push(Vec::new());
                lens.push(0);
            }
            let b = buckets.len() - 1;
            index.insert(name.clone(), (b, buckets[b].len()));
            buckets[b].push((name.clone(), shape.clone(), lens[b]));
            lens[b] += elements;
        }
        GradientBuckets {
            buckets,
            lens,
            index,
        }
    }

    /// How many buckets there are.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether there are no parameters at all.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Elements in each bucket.
    pub fn bucket_elements(&self) -> &[usize] {
        &self.lens
    }

    /// A description of the layout that must be the same on every rank.
    pub fn fingerprint(&self) -> String {
        self.buckets
            .iter()
            .map(|b| {
                b.iter()
                    .map(|(n, s, _)| format!("{n}{s}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// Where a step's communication time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommTimes {
    /// Seconds the collectives took, start to end, added over the buckets.
    pub total: f64,
    /// Seconds the step waited for them after backward: the communication not hidden behind
    /// computation.
    pub exposed: f64,
    /// The part of `exposed` spent inside backward, starting buckets (a communicator that
    /// cannot overlap reduces right there).
    pub in_backward: f64,
    /// Seconds spent copying gradients into buckets and the averages back.
    pub copies: f64,
}

impl std::ops::AddAssign for CommTimes {
    fn add_assign(&mut self, other: CommTimes) {
        self.total += other.total;
        self.exposed += other.exposed;
        self.in_backward += other.in_backward;
        self.copies += other.copies;
    }
}

impl CommTimes {
    /// Seconds of communication that ran while backward was still computing.
    pub fn overlapped(&self) -> f64 {
        (self.total - self.exposed).max(0.0)
    }
}

/// What the training loop does with a step's gradients on several ranks: hand each one over as
/// backward produces it, then take the averages. A device-side implementation (NCCL on CUDA
/// tensors) would implement this for its backend.
pub trait GradientReducer<B: Backend> {
    /// The gradient of `name`, final, on this rank.
    fn add(&mut self, backend: &B, name: &str, grad: &B::Tensor) -> Result<()>;

    /// Waits for every bucket and returns the averaged gradients by name, and the step's timings.
    fn finish(self, backend: &B) -> Result<(HashMap<String, B::Tensor>, CommTimes)>;
}

/// The buckets' host buffers, kept from one step to the next: after the first step a step
/// allocates no bucket memory, so none is faulted in again (528 MiB a step for VGG-16).
#[derive(Debug, Default)]
pub struct BucketMemory {
    buffers: Vec<Vec<f32>>,
}

/// The host-buffer reducer for any backend and any [`Communicator`]: each gradient is copied
/// into its bucket, scaled by this rank's share of the global batch (`weight`), and the bucket
/// summed over the ranks; the sums are the gradients of the global batch's mean loss.
pub struct StepReducer<'a, C: Communicator + ?Sized> {
    comm: &'a C,
    layout: &'a GradientBuckets,
    weight: f32,
    /// Each bucket's buffer, until its reduction starts.
    buffers: Vec<Option<Vec<f32>>>,
    /// Gradients still missing per bucket.
    missing: Vec<usize>,
    /// Which members of each bucket have their gradient.
    arrived: Vec<Vec<bool>>,
    /// Where the buffers come from and go back to.
    memory: &'a mut BucketMemory,
    /// Reductions started, in bucket order.
    pending: Vec<PendingReduce>,
    /// Whether buckets start during backward (false: all after it).
    overlap: bool,
    /// How the buckets travel: f32, or 16 bits.
    compression: Option<GradientCompression>,
    times: CommTimes,
}

impl<'a, C: Communicator + ?Sized> StepReducer<'a, C> {
    /// A reducer for one step. `weight` is this rank's images over the global batch's (0 for a
    /// rank with no images, which still takes part). With `overlap` off every bucket starts only
    /// in `finish`, after backward: the comparison that shows what overlapping saves. The
    /// buffers come from, and go back to, `memory`.
    pub fn new(
        comm: &'a C,
        layout: &'a GradientBuckets,
        weight: f32,
        overlap: bool,
        memory: &'a mut BucketMemory,
    ) -> StepReducer<'a, C> {
        memory.buffers.resize_with(layout.len(), Vec::new);
        let buffers = layout
            .lens
            .iter()
            .zip(&mut memory.buffers)
            .map(|(&n, kept)| {
                let buffer = std::mem::take(kept);
                // Every element is written before the bucket goes: no need to clear it.
                Some(if buffer.len() == n {
                    buffer
                } else {
                    vec![0.0; n]
                })
            })
            .collect();
        StepReducer {
            comm,
            layout,
            weight,
            buffers,
            missing: layout.buckets.iter().map(Vec::len).collect(),
            arrived: layout
                .buckets
                .iter()
                .map(|b| vec![false; b.len()])
                .collect(),
            memory,
            pending: Vec::new(),
            overlap,
            compression: None,
            times: CommTimes::default(),
        }
    }

    /// Sends the buckets in 16 bits (`Some`) instead of f32: half the bytes, each gradient
    /// rounded to the format (see [`GradientCompression`]).
    pub fn compressed(mut self, compression: Option<GradientCompression>) -> Self {
        self.compression = compression;
        self
    }

    /// Starts the complete buckets (every bucket with `all`) in bucket order. Time spent inside
    /// the start counts as exposed: a communicator that cannot overlap reduces right there.
    fn start_ready(&mut self, all: bool) -> Result<f64> {
        let mut seconds = 0.0;
        while let Some(slot) = self.buffers.get_mut(self.pending.len()) {
            if !(all || self.missing[self.pending.len()] == 0) {
                break;
            }
            let b = self.pending.len();
            let mut buffer = slot.take().unwrap_or_default();
            // Parameters the loss did not reach send zeros; a rank without images sends only zeros.
            for ((_, shape, offset), &arrived) in
                self.layout.buckets[b].iter().zip(&self.arrived[b])
            {
                if !arrived {
                    buffer[*offset..*offset + shape.elements()].fill(0.0);
                }
            }
            tracing::trace!(
                bucket = self.pending.len(),
                elements = buffer.len(),
                "allreduce"
            );
            let started = Instant::now();
            self.pending.push(match self.compression {
                Some(format) => self.comm.start_allreduce_compressed(buffer, format)?,
                None => self.comm.start_allreduce(buffer)?,
            });
            seconds += started.elapsed().as_secs_f64();
        }
        self.times.exposed += seconds;
        Ok(seconds)
    }
}

impl<B: Backend, C: Communicator + ?Sized> GradientReducer<B> for StepReducer<'_, C> {
    fn add(&mut self, backend: &B, name: &str, grad: &B::Tensor) -> Result<()> {
        let Some(&(b, i)) = self.layout.index.get(name) else {
            return Err(DistError::Layout(format!(
                "a gradient for '{name}', which is in no bucket"
            )));
        };
        let start = Instant::now();
        let (_, shape, offset) = &self.layout.buckets[b][i];
        if grad.shape() != shape {
            return Err(DistError::Layout(format!(
                "the gradient of '{name}' has shape {}, its bucket expects {shape}",
                grad.shape()
            )));
        }
        let (Some(buffer), false) = (self.buffers[b].as_mut(), self.arrived[b][i]) else {
            return Err(DistError::Layout(format!(
                "a second gradient for '{name}' in one step"
            )));
        };
        let part = &mut buffer[*offset..*offset + shape.elements()];
        backend.download_into(grad, part)?;
        if self.weight != 1.0 {
            let weight = self.weight;
            part.iter_mut().for_each(|v| *v *= weight);
        }
        self.arrived[b][i] = true;
        self.missing[b] -= 1;
        self.times.copies += start.elapsed().as_secs_f64();
        if self.overlap {
            self.times.in_backward += self.start_ready(false)?;
        }
        Ok(())
    }

    fn finish(mut self, backend: &B) -> Result<(HashMap<String, B::Tensor>, CommTimes)> {
        self.start_ready(true)?;
        let start = Instant::now();
        let mut grads = HashMap::new();
        let mut copies = 0.0;
        let pending = std::mem::take(&mut self.pending);
        for ((pending, members), kept) in pending
            .into_iter()
            .zip(&self.layout.buckets)
            .zip(&mut self.memory.buffers)
        {
            let reduced = pending.wait()?;
            self.times.total += reduced.seconds;
            let copy = Instant::now();
            for (name, shape, offset) in members {
                let n = shape.elements();
                let t = backend.upload(shape, &reduced.data[*offset..*offset + n])?;
                grads.insert(name.clone(), t);
            }
            *kept = reduced.data;
            copies += copy.elapsed().as_secs_f64();
        }
        self.times.copies += copies;
        self.times.exposed += (start.elapsed().as_secs_f64() - copies).max(0.0);
        Ok((grads, self.times))
    }
}
