//! The CUDA backend against the reference backend: the conformance suite every backend runs, with
//! TF32 off (f32 tolerance) and on (TF32's for products). Needs a GPU (`scripts/gpu-check.sh`
//! runs it with `--ignored`); and the tape's gradient suite on its kernels.

use vgg_cuda::{CudaBackend, CudaOptions};
use vgg_tensor::conformance::{assert_conforms, Tolerance};

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_cuda_backend_conforms() {
    for (allow_tf32, tolerance) in [(false, Tolerance::F32), (true, Tolerance::TF32)] {
        let gpu = CudaBackend::new(CudaOptions {
            ordinal: 0,
            allow_tf32,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_conforms(&gpu, tolerance);
    }
}

/// The tape's gradient suite on the GPU: every op's backward rule, run on the CUDA kernels,
/// against finite differences (in full f32: TF32's 10-bit products are too coarse for them).
#[test]
#[ignore = "needs a CUDA GPU"]
fn the_cuda_backend_passes_the_gradient_suite() {
    let gpu = CudaBackend::new(CudaOptions {
        ordinal: 0,
        allow_tf32: false,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vgg_autodiff::conformance::assert_conforms(&gpu);
}
