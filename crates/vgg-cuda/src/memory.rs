//! Device buffers recycled by size, so a training or benchmark step reuses the previous step's
//! memory instead of allocating afresh (cudarc's stream-ordered allocator hands memory back to the
//! driver at every synchronisation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{sys::CUresult, CudaSlice, CudaStream, DriverError};
use vgg_tensor::{Result, TensorError};

use crate::device_error;

/// Freed buffers by element count.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<HashMap<usize, Vec<CudaSlice<f32>>>>,
}

impl BufferPool {
    fn free_lists(&self) -> MutexGuard<'_, HashMap<usize, Vec<CudaSlice<f32>>>> {
        // A panic while holding the lock cannot leave the lists inconsistent: keep going.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `len` elements with unspecified contents: a recycled one, or a new one. When the
    /// device is out of memory, the recycled buffers are released and the allocation retried.
    pub(crate) fn take(
        self: &Arc<Self>,
        stream: &Arc<CudaStream>,
        len: usize,
    ) -> Result<DeviceBuffer> {
        let len = len.max(1);
        if let Some(slice) = self.free_lists().get_mut(&len).and_then(Vec::pop) {
            return Ok(self.wrap(slice));
        }
        // SAFETY: the contents are unspecified until written; every op writes all of its output
        // before reading it.
        let slice = match unsafe { stream.alloc::<f32>(len) } {
            Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                self.free_lists().clear();
                unsafe { stream.alloc::<f32>(len) }.map_err(|e| match e {
                    DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY) => TensorError::OutOfMemory {
                        bytes: (len * 4) as u64,
                    },
                    other => device_error("allocating device memory")(other),
                })?
            }
            other => other.map_err(device_error("allocating device memory"))?,
        };
        Ok(self.wrap(slice))
    }

    fn wrap(self: &Arc<Self>, slice: CudaSlice<f32>) -> DeviceBuffer {
        DeviceBuffer {
            slice: Some(slice),
            pool: self.clone(),
        }
    }

    /// Bytes held for reuse.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.free_lists()
            .iter()
            .map(|(len, v)| len * 4 * v.len())
            .sum()
    }
}

/// A device allocation of f32s that goes back to its pool when dropped.
#[derive(Debug)]
pub(crate) struct DeviceBuffer {
    slice: Option<CudaSlice<f32>>,
    pool: Arc<BufferPool>,
}

impl DeviceBuffer {
    pub(crate) fn slice(&self) -> &CudaSlice<f32> {
        self.slice.as_ref().expect("present until dropped")
    }

    pub(crate) fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        self.slice.as_mut().expect("present until dropped")
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            // Work already queued on the stream that reads this buffer runs before any later
            // writer, since everything runs on one stream in order.
            self.pool
                .free_lists()
                .entry(slice.len())
                .or_default()
                .push(slice);
        }
    }
}
