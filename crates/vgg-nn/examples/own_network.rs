//! Your own network in about 30 lines: a small CNN, its parameters in a `ParamStore`, trained
//! with Adam to tell which quarter of a noisy 8x8 image holds a bright spot. Runs on any backend.
//!
//! `cargo run --release -p vgg-nn --example own_network`

use vgg_autodiff::{Tape, Var};
use vgg_nn::{Attached, Init, OptimizerKind, ParamId, ParamStore};
use vgg_tensor::prelude::*;

/// The network: conv 3x3 (1 -> 8), ReLU, 2x2 max-pool, conv 3x3 (8 -> 16), ReLU, global average
/// pool, linear (16 -> 4). Returns the accuracy on held-out images after `steps` steps.
pub fn train<B: Backend>(b: &B, steps: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let mut store = ParamStore::new(OptimizerKind::adam());
    let w1 = store.init(b, "conv1.weight", [8, 1, 3, 3], Init::KaimingNormalFanIn, 1)?;
    let b1 = store.init(b, "conv1.bias", [8], Init::Constant(0.0), 0)?;
    let w2 = store.init(
        b,
        "conv2.weight",
        [16, 8, 3, 3],
        Init::KaimingNormalFanIn,
        2,
    )?;
    let b2 = store.init(b, "conv2.bias", [16], Init::Constant(0.0), 0)?;
    let w3 = store.init(b, "fc.weight", [4, 16], Init::XavierUniform, 3)?;
    let b3 = store.init(b, "fc.bias", [4], Init::Constant(0.0), 0)?;
    let ids = [w1, b1, w2, b2, w3, b3];
    for step in 0..steps {
        let (x, labels) = spots(b, 32, step as u64)?;
        let tape = Tape::new(b.clone());
        let p = store.attach(&tape);
        let loss = tape.cross_entropy(&logits(&tape, &p, &ids, &x)?, &labels)?;
        let grads = tape.backward(&loss)?;
        store.step(b, &p, &grads, 1e-2)?;
    }
    let (x, labels) = spots(b, 256, u64::MAX)?;
    let tape = Tape::inference(b.clone());
    let y = logits(&tape, &store.attach(&tape), &ids, &x)?;
    let predicted = b.argmax_rows(y.value())?;
    let right = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(right as f64 / labels.len() as f64)
}

/// The forward pass on a batch of [N, 1, 8, 8] images: [N, 4] logits.
fn logits<B: Backend>(
    tape: &Tape<B>,
    p: &Attached<B>,
    [w1, b1, w2, b2, w3, b3]: &[ParamId; 6],
    x: &B::Tensor,
) -> vgg_autodiff::Result<Var<B>> {
    let same = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let pool = Pool2dParams {
        kernel: 2,
        stride: 2,
    };
    let h = tape.conv2d_bias_act(&tape.constant(x.clone()), &p[*w1], &p[*b1], same, true)?;
    let h = tape.conv2d_bias_act(&tape.max_pool2d(&h, pool)?, &p[*w2], &p[*b2], same, true)?;
    tape.linear(&tape.global_avg_pool(&h)?, &p[*w3], &p[*b3])
}

/// `n` noisy 8x8 images, each with a bright 2x2 spot in one quarter (its label), from `seed`.
pub fn spots<B: Backend>(
    b: &B,
    n: usize,
    seed: u64,
) -> vgg_tensor::Result<(B::Tensor, Vec<usize>)> {
    let mut pixels = vec![0.0f32; n * 64];
    vgg_tensor::random::fill_normal(&mut pixels, seed, 0, 0.0, 0.3);
    let pick =
        |i: usize, k: u64, m: u64| (vgg_tensor::random::bits(seed ^ k, i as u64) % m) as usize;
    let labels: Vec<usize> = (0..n).map(|i| pick(i, 1, 4)).collect();
    for (i, &label) in labels.iter().enumerate() {
        let (row, col) = (
            4 * (label / 2) + pick(i, 2, 3),
            4 * (label % 2) + pick(i, 3, 3),
        );
        for (r, c) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            pixels[i * 64 + (row + r) * 8 + col + c] += 1.5;
        }
    }
    Ok((b.upload(&Shape::from([n, 1, 8, 8]), &pixels)?, labels))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let b = vgg_ndarray::CpuBackend::new(0)?;
    let accuracy = b.execute(|| train(&b, 300).map_err(|e| e.to_string()))?;
    println!("held-out accuracy {:.1}%", 100.0 * accuracy);
    Ok(())
}
