//! The MLP example reaches 100% on the two spirals: the tape stands on its own.

#[path = "../examples/mlp_spirals.rs"]
mod mlp_spirals;

use vgg_tensor::Device;

#[test]
fn mlp_learns_two_spirals_perfectly() {
    let backend = vgg_ndarray::CpuBackend::new(2).unwrap();
    let (loss, accuracy) = backend
        .execute(|| mlp_spirals::train(&backend, 3000, 0.2, false))
        .unwrap();
    assert_eq!(accuracy, 1.0, "training accuracy {accuracy} (loss {loss})");
}
