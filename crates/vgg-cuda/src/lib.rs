//! The CUDA backend: `vgg_tensor::Backend` on an NVIDIA GPU through cudarc, with cuDNN
//! convolutions, cuBLAS matrix products and NVRTC-compiled kernels.
//!
//! Nothing CUDA is needed to build it: cudarc loads libcuda, cuBLAS, cuDNN and NVRTC with dlopen
//! when first used, and panics if one is missing, so every entry point probes them first and turns
//! absence into [`CudaError`].

mod backend;
mod dnn;
mod elementwise;
mod fused;
mod layers;
mod layout;
mod memory;
mod raw;
mod reduce;

use std::sync::Arc;

use cudarc::driver::CudaContext;
use vgg_tensor::TensorError;

pub use backend::{compile_kernels, CudaBackend, CudaOptions, CudaPoolIndices, CudaTensor};
pub use raw::device_count;

/// Turns a CUDA library's error into the tensor error that says what was being done.
pub(crate) fn device_error<E: std::fmt::Debug>(what: &str) -> impl Fn(E) -> TensorError + '_ {
    move |e| TensorError::Device(format!("{what}: {e:?}"))
}

/// Why the CUDA backend cannot run here. Each message names what is missing and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    #[error(
        "CUDA backend unavailable: {} not found; install the NVIDIA driver for libcuda, and put the CUDA 13 \
         libraries (e.g. PyTorch's site-packages/nvidia/*/lib) on LD_LIBRARY_PATH; or run on the CPU backend",
        missing.join(", ")
    )]
    /// The CUDA driver or runtime libraries could not be loaded.
    LibrariesMissing {
        /// The libraries not found.
        missing: Vec<&'static str>,
    },
    #[error("CUDA backend unavailable: the NVIDIA driver sees no GPU; run on the CPU backend")]
    /// The driver loaded but reports no GPU.
    NoDevice,
    #[error("CUDA backend unavailable: {0}; run on the CPU backend")]
    /// A driver call failed.
    Driver(String),
}

/// A GPU that the CUDA backend can use.
pub struct CudaDevice {
    /// The CUDA context of the device.
    pub context: Arc<CudaContext>,
    /// The device's name, as the driver reports it.
    pub name: String,
    /// The device's ordinal (0 for the first GPU).
    pub ordinal: usize,
}

/// cudarc's check that a library can be loaded.
type Probe = unsafe fn() -> bool;

/// The CUDA libraries the backend needs, with a probe for each.
fn libraries() -> [(&'static str, Probe); 4] {
    [
        (
            "libcuda (the NVIDIA driver)",
            cudarc::driver::sys::is_culib_present,
        ),
        ("cuBLAS 13", cudarc::cublas::sys::is_culib_present),
        ("cuDNN 9", cudarc::cudnn::sys::is_culib_present),
        ("NVRTC 13", cudarc::nvrtc::sys::is_culib_present),
    ]
}

/// The libraries that cannot be loaded here.
pub fn missing_libraries() -> Vec<&'static str> {
    libraries()
        .into_iter()
        // SAFETY: the probe only tries to dlopen the library by its usual names (running its
        // initialisers, as any use would) and drops the handle.
        .filter(|(_, present)| !unsafe { present() })
        .map(|(name, _)| name)
        .collect()
}

/// Finds GPU `ordinal`, or says precisely why there is none to use.
pub fn probe(ordinal: usize) -> Result<CudaDevice, CudaError> {
    let missing = missing_libraries();
    if !missing.is_empty() {
        return Err(CudaError::LibrariesMissing { missing });
    }
    let count = CudaContext::device_count().map_err(|e| CudaError::Driver(e.to_string()))?;
    if count <= 0 || ordinal >= count as usize {
        return Err(CudaError::NoDevice);
    }
    let context = CudaContext::new(ordinal).map_err(|e| CudaError::Driver(e.to_string()))?;
    let name = context
        .name()
        .map_err(|e| CudaError::Driver(e.to_string()))?;
    Ok(CudaDevice {
        context,
        name,
        ordinal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On every machine: either a usable GPU, or an error naming what is missing. Never a panic.
    #[test]
    fn probing_never_panics_and_names_what_is_missing() {
        match probe(0) {
            Ok(device) => assert!(!device.name.is_empty()),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.starts_with("CUDA backend unavailable") && text.contains("CPU backend"),
                    "{text}"
                );
                if let CudaError::LibrariesMissing { missing } = &e {
                    assert!(!missing.is_empty());
                }
            }
        }
    }

    /// Every kernel the backend loads is in the PTX that NVRTC makes of `kernels.cu`.
    #[test]
    #[ignore = "needs NVRTC 13 (e.g. PyTorch's nvidia/cu13/lib on LD_LIBRARY_PATH)"]
    fn the_kernels_compile() {
        let ptx = compile_kernels().unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        for name in backend::KERNEL_NAMES {
            assert!(
                text.contains(&format!(".entry {name}(")),
                "{name} is missing from the PTX"
            );
        }
    }

    /// Without a GPU, the backend says why instead of panicking.
    #[test]
    fn the_backend_names_what_is_missing() {
        if let Err(e) = CudaBackend::new(CudaOptions::default()) {
            let text = e.to_string();
            assert!(text.starts_with("CUDA backend unavailable"), "{text}");
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn finds_the_gpu() {
        let device = probe(0).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("GPU 0: {}", device.name);
        assert!(!device.name.is_empty());
    }
}
