//! The ResNet example (residual blocks with batch norm, global average pooling, a custom op):
//! it learns the digits, and the plain-loops reference backend computes the same step.

#[path = "../examples/resnet_digits.rs"]
mod resnet_digits;

use resnet_digits::{load_digits, train, ResNet, Settings};
use vgg_autodiff::Tape;
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;
use vgg_tensor::reference::ReferenceBackend;

#[test]
fn the_resnet_reaches_97_percent_on_held_out_digits() {
    let b = CpuBackend::new(2).unwrap();
    let (train_set, test_set) = load_digits(&resnet_digits::digits_dir(), 0.2).unwrap();
    let mut last = 0.0;
    // Five epochs (the example runs eight) keep the suite quick.
    let settings = Settings {
        epochs: 5,
        ..Settings::default()
    };
    b.execute(|| {
        train(&b, &train_set, &test_set, settings, |epoch, loss, acc| {
            eprintln!("epoch {epoch}: loss {loss:.4}, held-out {acc:.4}");
            last = acc;
        })
    })
    .unwrap();
    assert!(last >= 0.97, "held-out accuracy {last}");
}

/// Logits, loss and gradients of one training step of a fresh network.
fn one_step<B: Backend>(b: &B, images: &[f32], labels: &[usize]) -> Vec<Vec<f32>> {
    let mut net = ResNet::new(b, &[4, 8], 10, 5).unwrap();
    let tape = Tape::new(b.clone());
    let x = b
        .upload(&Shape::from([labels.len(), 1, 8, 8]), images)
        .unwrap();
    let (logits, vars) = net.forward(&tape, &tape.constant(x), true).unwrap();
    let mut out = vec![b.download(logits.value()).unwrap()];
    let loss = tape.cross_entropy(&logits, labels).unwrap();
    out.push(b.download(loss.value()).unwrap());
    let grads = tape.backward(&loss).unwrap();
    for v in &vars {
        out.push(b.download(&grads.get(v).unwrap()).unwrap());
    }
    out
}

#[test]
fn a_backend_of_primitives_alone_computes_the_same_step() {
    let (train_set, _) = load_digits(&resnet_digits::digits_dir(), 0.2).unwrap();
    let images = &train_set.images[..6 * 64];
    let labels = &train_set.labels[..6];
    let cpu = CpuBackend::new(2).unwrap();
    let want = cpu.execute(|| one_step(&cpu, images, labels));
    let got = one_step(&ReferenceBackend, images, labels);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let scale = w.iter().fold(1e-2f32, |m, v| m.max(v.abs()));
        for (a, c) in g.iter().zip(w) {
            approx::assert_abs_diff_eq!(*a, *c, epsilon = 1e-3 * scale);
        }
        assert_eq!(g.len(), w.len(), "tensor {i}");
    }
}
