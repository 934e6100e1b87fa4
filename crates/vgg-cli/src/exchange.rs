//! Which gradient exchange a job of several ranks uses, per backend: host buffers over MPI on the
//! CPU; NCCL on the GPUs where every rank has it (the gradients never leave the device), else host
//! buffers there too, said in the run's description.

use anyhow::Result;
use vgg_dist::{Communicator, GradientExchange};
use vgg_tensor::Backend;

use crate::dist::DistArgs;

/// A backend's own exchange, where it has one.
pub trait DeviceExchange: Backend + Sized {
    /// The exchange for a job on `comm` (every rank calls it together), or `None` for host
    /// buffers over `comm`.
    fn device_exchange(
        &self,
        comm: &dyn Communicator,
        args: &DistArgs,
    ) -> Result<Option<Box<dyn GradientExchange<Self>>>>;
}

impl DeviceExchange for vgg_ndarray::CpuBackend {
    fn device_exchange(
        &self,
        _comm: &dyn Communicator,
        _args: &DistArgs,
    ) -> Result<Option<Box<dyn GradientExchange<Self>>>> {
        Ok(None)
    }
}

impl DeviceExchange for vgg_cuda::CudaBackend {
    fn device_exchange(
        &self,
        comm: &dyn Communicator,
        args: &DistArgs,
    ) -> Result<Option<Box<dyn GradientExchange<Self>>>> {
        if comm.size() == 1 {
            return Ok(None);
        }
        if let Some(format) = args.compression() {
            tracing::info!(
                "gradients sent in {} go through host buffers: the NCCL exchange sends f32",
                format.name()
            );
            return Ok(None);
        }
        match vgg_nccl::NcclExchange::new(self, comm, args.timeout()) {
            Ok(exchange) => Ok(Some(Box::new(exchange))),
            // Every rank learns this alike, so all go on with host buffers.
            Err(e @ vgg_nccl::NcclError::Unavailable { .. }) => {
                tracing::warn!("{e}; gradients go through host buffers over MPI instead");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// What carries a job's gradients, in words: `exchange`'s, or the host buffers' over `comm`.
pub fn describe<B: Backend>(
    exchange: Option<&dyn GradientExchange<B>>,
    comm: &dyn Communicator,
) -> String {
    exchange.map_or_else(
        || GradientExchange::<B>::describe(&vgg_dist::HostExchange::new(comm)),
        |e| e.describe(),
    )
}
