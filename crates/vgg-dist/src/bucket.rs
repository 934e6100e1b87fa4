//! Gradient averaging in buckets: the parameters are grouped, in the order backward produces
//! their gradients, into buckets of about a given size; a bucket's allreduce starts as soon as
//! its last gradient is in, so communication runs while backward computes the layers below.
//! Buckets start in a fixed order on every rank (a later bucket waits for the earlier ones), as
//! every rank must start the same collectives in the same order.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
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

    /// Bucket `b`'s parameters: name, shape and offset in the bucket, in the order they were given.
    pub fn members(&self, b: usize) -> &[(String, Shape, usize)] {
        &self.buckets[b]
    }

    /// The bucket of parameter `name` and its index among the bucket's members.
    pub fn position(&self, name: &str) -> Option<(usize, usize)> {
        self.index.get(name).copied()
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
/// backward produces it, then take the averages. [`StepReducer`] does it in host buffers for any
/// backend; a backend may do it on its device (NCCL on CUDA tensors). A
/// [`GradientExchange`](crate::GradientExchange) makes one per step.
pub trait GradientReducer<B: Backend> {
    /// The gradient of `name`, final, on this rank.
    fn add(&mut self, backend: &B, name: &str, grad: &B::Tensor) -> Result<()>;

    /// Waits for every bucket and returns the averaged gradients by name, and the step's timings.
    /// Called once, at the end of the step: the reducer is spent afterwards.
    fn finish(&mut self, backend: &B) -> Result<(HashMap<String, B::Tensor>, CommTimes)>;
}

/// Which gradients of a step have come, per bucket: what every reducer checks a gradient
/// against, and how it knows a bucket is full.
#[derive(Debug, Clone)]
pub struct Arrivals {
    /// Per bucket, which members have their gradient.
    arrived: Vec<Vec<bool>>,
    /// Per bucket, how many have not.
    missing: Vec<usize>,
}

impl Arrivals {
    /// None of `layout`'s gradients yet.
    pub fn new(layout: &GradientBuckets) -> Arrivals {
        Arrivals {
            arrived: layout
                .buckets
                .iter()
                .map(|b| vec![false; b.len()])
                .collect(),
            missing: layout.buckets.iter().map(Vec::len).collect(),
        }
    }

    /// Records `name`'s gradient, of shape `shape`, after checking that it belongs in `layout`
    /// with that shape and has not come already; returns its (bucket, index in the bucket).
    pub fn arrive(
        &mut self,
        layout: &GradientBuckets,
        name: &str,
        shape: &Shape,
    ) -> Result<(usize, usize)> {
        let Some((b, i)) = layout.position(name) else {
            return Err(DistError::Layout(format!(
                "a gradient for '{name}', which is in no bucket"
            )));
        };
        let (_, expected, _) = &layout.buckets[b][i];
        if shape != expected {
            return Err(DistError::Layout(format!(
                "the gradient of '{name}' has shape {shape}, its bucket expects {expected}"
            )));
        }
        if self.arrived[b][i] {
            return Err(DistError::Layout(format!(
                "a second gradient for '{name}' in one step"
            )));
        }
        self.arrived[b][i] = true;
        self.missing[b] -= 1;
        Ok((b, i))
    }

    /// Whether every gradient of bucket `b` has come.
    pub fn full(&self, b: usize) -> bool {
        self.missing[b] == 0
    }

    /// Bucket `b`'s members whose gradient has not come (the loss did not reach them, or the
    /// rank had no images): (shape, offset in the bucket), to be sent as zeros.
    pub fn absent<'l>(
        &'l self,
        layout: &'l GradientBuckets,
        b: usize,
    ) -> impl Iterator<Item = (&'l Shape, usize)> + 'l {
        layout.buckets[b]
            .iter()
            .zip(&self.arrived[b])
            .filter(|(_, &arrived)| !arrived)
            .map(|((_, shape, offset), _)| (shape, *offset))
    }
}

/// The buckets' host buffers, kept from one step to the next: after the first step a step
/// allocates no bucket memory, so none is faulted in again (528 MiB a step for VGG-16).
#[derive(Debug, Default)]
pub struct BucketMemory {
    buffers: Mutex<Vec<Vec<f32>>>,
}

impl BucketMemory {
    fn buffers(&self) -> MutexGuard<'_, Vec<Vec<f32>>> {
        // The buffers' contents never matter between steps: a panic cannot leave them wrong.
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }
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
    /// Which gradients have come.
    arrivals: Arrivals,
    /// Where the buffers come from and go back to.
    memory: &'a BucketMemory,
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
        memory: &'a BucketMemory,
    ) -> StepReducer<'a, C> {
        let mut kept = memory.buffers();
        kept.resize_with(layout.len(), Vec::new);
        let buffers = layout
            .lens
            .iter()
            .zip(kept.iter_mut())
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
        drop(kept);
        StepReducer {
            comm,
            layout,
            weight,
            buffers,
            arrivals: Arrivals::new(layout),
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
            let b = self.pending.len();
            if !(all || self.arrivals.full(b)) {
                break;
            }
            let mut buffer = slot.take().unwrap_or_default();
            // Parameters the loss did not reach send zeros; a rank without images sends only zeros.
            for (shape, offset) in self.arrivals.absent(self.layout, b) {
                buffer[offset..offset + shape.elements()].fill(0.0);
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
        let (b, i) = self.arrivals.arrive(self.layout, name, grad.shape())?;
        let start = Instant::now();
        let (_, shape, offset) = &self.layout.buckets[b][i];
        let Some(buffer) = self.buffers[b].as_mut() else {
            return Err(DistError::Layout(format!(
                "the gradient of '{name}' came after its bucket was sent"
            )));
        };
        let part = &mut buffer[*offset..*offset + shape.elements()];
        backend.download_into(grad, part)?;
        if self.weight != 1.0 {
            let weight = self.weight;
            part.iter_mut().for_each(|v| *v *= weight);
        }
        self.times.copies += start.elapsed().as_secs_f64();
        if self.overlap {
            self.times.in_backward += self.start_ready(false)?;
        }
        Ok(())
    }

    fn finish(&mut self, backend: &B) -> Result<(HashMap<String, B::Tensor>, CommTimes)> {
        self.start_ready(true)?;
        let start = Instant::now();
        let mut grads = HashMap::new();
        let mut copies = 0.0;
        let pending = std::mem::take(&mut self.pending);
        let mut memory = self.memory.buffers();
        for ((pending, members), kept) in pending
            .into_iter()
            .zip(&self.layout.buckets)
            .zip(memory.iter_mut())
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
