//! The ResNet example of vgg-autodiff, unchanged, on the GPU: one training step matches the CPU
//! backend, and a short run learns the digits. Needs a GPU (`scripts/gpu-check.sh`).

#[path = "../../vgg-autodiff/examples/resnet_digits.rs"]
#[allow(dead_code)]
mod resnet_digits;

use resnet_digits::{load_digits, train, ResNet, Settings};
use vgg_autodiff::Tape;
use vgg_cuda::{CudaBackend, CudaOptions};
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;

fn gpu() -> CudaBackend {
    CudaBackend::new(CudaOptions {
        ordinal: 0,
        allow_tf32: false,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn one_step<B: Backend>(b: &B, images: &[f32], labels: &[usize]) -> Vec<Vec<f32>> {
    let mut net = ResNet::new(b, &[8, 16], 10, 5).unwrap();
    let tape = Tape::new(b.clone());
    let x = b
        .upload(&Shape::from([labels.len(), 1, 8, 8]), images)
        .unwrap();
    let (logits, vars) = net.forward(&tape, &tape.constant(x), true).unwrap();
    let mut out = vec![b.download(logits.value()).unwrap()];
    let loss = tape.cross_entropy(&logits, labels).unwrap();
    let grads = tape.backward(&loss).unwrap();
    for v in &vars {
        out.push(b.download(&grads.get(v).unwrap()).unwrap());
    }
    out
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_resnet_step_matches_the_cpu() {
    let (train_set, _) = load_digits(&resnet_digits::digits_dir(), 0.2).unwrap();
    let images = &train_set.images[..32 * 64];
    let labels = &train_set.labels[..32];
    let cpu = CpuBackend::new(2).unwrap();
    let want = cpu.execute(|| one_step(&cpu, images, labels));
    let got = one_step(&gpu(), images, labels);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let scale = w.iter().fold(1e-2f32, |m, v| m.max(v.abs()));
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, c)| (a - c).abs())
            .fold(0.0, f32::max);
        assert!(
            worst <= 1e-3 * scale,
            "tensor {i}: worst {worst:e} of scale {scale:e}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_resnet_learns_the_digits_on_the_gpu() {
    let b = gpu();
    let (train_set, test_set) = load_digits(&resnet_digits::digits_dir(), 0.2).unwrap();
    let mut last = 0.0;
    let settings = Settings {
        epochs: 5,
        ..Settings::default()
    };
    train(&b, &train_set, &test_set, settings, |_, _, acc| last = acc).unwrap();
    assert!(last >= 0.97, "held-out accuracy {last}");
}
