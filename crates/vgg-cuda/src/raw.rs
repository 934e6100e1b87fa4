//! The backend's device memory and stream, for code that works on them directly: device-side
//! extensions such as the NCCL gradient exchange (`vgg-nccl`). Everything the backend does is
//! queued in order on [`CudaBackend::stream`]; work queued elsewhere must be ordered against it
//! with events, since the backend keeps no per-buffer events.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, CudaView};
use vgg_tensor::{Result, Shape, TensorError};

use crate::{device_error, CudaBackend, CudaError, CudaTensor};

impl CudaBackend {
    /// The stream every op of this backend is queued on, in order.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// The GPU's ordinal, counting from 0.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// A new tensor of `shape` holding a copy of `src` (queued on the stream; `src` must stay
    /// valid until the stream reaches the copy, and hold exactly `shape`'s elements).
    pub fn tensor_from_device(&self, shape: &Shape, src: &CudaView<'_, f32>) -> Result<CudaTensor> {
        let n = shape.checked_elements()?;
        if src.len() != n {
            return Err(TensorError::InvalidArgument {
                op: "tensor_from_device",
                message: format!("{} values for a tensor of shape {shape}", src.len()),
            });
        }
        self.build(shape.clone(), |out| {
            if n > 0 {
                let mut dst = out.slice_mut(0..n);
                self.inner
                    .stream
                    .memcpy_dtod(src, &mut dst)
                    .map_err(device_error("copying device memory"))?;
            }
            Ok(())
        })
    }
}

impl CudaTensor {
    /// The tensor's values in device memory (its buffer may be longer: a recycled one never is
    /// shorter). Reading them is ordered after the ops that wrote them only on the backend's stream.
    pub fn device_view(&self) -> CudaView<'_, f32> {
        self.slice().slice(0..self.shape.elements())
    }
}

/// GPUs the driver sees (an error says why there are none to count: no driver, no libraries).
pub fn device_count() -> std::result::Result<usize, CudaError> {
    // SAFETY: only tries to dlopen libcuda by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::LibrariesMissing {
            missing: vec!["libcuda (the NVIDIA driver)"],
        });
    }
    let count = CudaContext::device_count().map_err(|e| CudaError::Driver(e.to_string()))?;
    Ok(usize::try_from(count).unwrap_or(0))
}
