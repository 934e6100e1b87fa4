//! Where a job's gradients are averaged: made once per job, asked for one reducer per step. The
//! training loop and the benchmark take any [`GradientExchange`], so a backend can keep its
//! gradients on its device (NCCL for CUDA tensors) while every other backend uses the host
//! buffers of [`HostExchange`].

use vgg_tensor::Backend;

use crate::{
    BucketMemory, Communicator, GradientBuckets, GradientCompression, GradientReducer, Result,
    StepReducer,
};

/// How a step's buckets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeOptions {
    /// Start each bucket while backward still runs (false: all of them after it).
    pub overlap: bool,
    /// Send 16-bit values (`None`: f32).
    pub compression: Option<GradientCompression>,
}

/// Makes each step's [`GradientReducer`] for one job, keeping what outlives a step (buffers,
/// a device communicator).
pub trait GradientExchange<B: Backend> {
    /// What carries the gradients, in words: "MPI (Open MPI v4.1.4), 2 ranks, host buffers".
    fn describe(&self) -> String;

    /// The reducer of one step. `weight` is this rank's images over the global batch's; the
    /// averages it returns are the gradients of the global batch's mean loss.
    fn reducer<'s>(
        &'s self,
        layout: &'s GradientBuckets,
        weight: f32,
        options: ExchangeOptions,
    ) -> Result<Box<dyn GradientReducer<B> + 's>>;
}

/// The exchange every backend can use: gradients copied into host buffers, summed by `comm`,
/// copied back ([`StepReducer`]); the buffers are kept from step to step.
pub struct HostExchange<'a> {
    comm: &'a dyn Communicator,
    memory: BucketMemory,
}

impl<'a> HostExchange<'a> {
    /// Host buffers over `comm`.
    pub fn new(comm: &'a dyn Communicator) -> HostExchange<'a> {
        HostExchange {
            comm,
            memory: BucketMemory::default(),
        }
    }
}

impl<B: Backend> GradientExchange<B> for HostExchange<'_> {
    fn describe(&self) -> String {
        format!("{}, host buffers", self.comm.describe())
    }

    fn reducer<'s>(
        &'s self,
        layout: &'s GradientBuckets,
        weight: f32,
        options: ExchangeOptions,
    ) -> Result<Box<dyn GradientReducer<B> + 's>> {
        Ok(Box::new(
            StepReducer::new(self.comm, layout, weight, options.overlap, &self.memory)
                .compressed(options.compression),
        ))
    }
}
