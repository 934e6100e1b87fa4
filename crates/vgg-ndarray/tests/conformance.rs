//! The CPU backend against the reference backend: the conformance suite every backend runs, with
//! one thread and with two, on every vector unit this machine has, and with each convolution
//! algorithm.

use vgg_ndarray::{ConvAlgorithm, CpuBackend, CpuConfig, Isa};
use vgg_tensor::conformance::{assert_conforms, Tolerance};

#[test]
fn the_cpu_backend_conforms() {
    for threads in [1, 2] {
        assert_conforms(&CpuBackend::new(threads).unwrap(), Tolerance::F32);
    }
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        if isa > Isa::detected() {
            continue;
        }
        for convolution in [ConvAlgorithm::Auto, ConvAlgorithm::Im2col] {
            let config = CpuConfig {
                isa: Some(isa),
                convolution,
                ..CpuConfig::detect(2)
            };
            assert_conforms(&CpuBackend::with_config(config).unwrap(), Tolerance::F32);
        }
    }
}
