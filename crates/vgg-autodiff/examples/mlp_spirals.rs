//! A two-layer MLP learns two interleaved spirals with plain SGD: the tape on its own, no VGG.
//!
//! `cargo run --release -p vgg-autodiff --example mlp_spirals`

use vgg_autodiff::{Tape, Var};
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;

/// Points of two spirals, 1.5 turns each: (coordinates [2n, 2], labels).
pub fn spirals(per_class: usize) -> (Vec<f32>, Vec<usize>) {
    let mut xy = Vec::with_capacity(4 * per_class);
    let mut labels = Vec::with_capacity(2 * per_class);
    for class in 0..2 {
        for i in 0..per_class {
            let t = i as f32 / per_class as f32;
            let angle = 1.5 * std::f32::consts::TAU * t + class as f32 * std::f32::consts::PI;
            let radius = 0.1 + 0.9 * t;
            xy.extend([radius * angle.cos(), radius * angle.sin()]);
            labels.push(class);
        }
    }
    (xy, labels)
}

/// A two-layer perceptron whose weights live on any backend.
pub struct Mlp<B: Backend> {
    /// (name, weight [out, in] or bias [out]).
    pub params: Vec<(String, B::Tensor)>,
}

impl<B: Backend> Mlp<B> {
    /// 2 -> hidden -> hidden -> 2, He-normal weights and zero biases.
    pub fn new(backend: &B, hidden: usize, seed: u64) -> vgg_tensor::Result<Mlp<B>> {
        let dims = [2, hidden, hidden, 2];
        let mut params = Vec::new();
        for (i, d) in dims.windows(2).enumerate() {
            let std = (2.0 / d[0] as f32).sqrt();
            let w = backend.random_normal(&Shape::from([d[1], d[0]]), 0.0, std, seed + i as u64)?;
            params.push((format!("fc{i}.weight"), w));
            params.push((format!("fc{i}.bias"), backend.zeros(&Shape::from([d[1]]))?));
        }
        Ok(Mlp { params })
    }

    /// The logits of a batch, recorded on `tape`.
    pub fn forward(
        &self,
        tape: &Tape<B>,
        x: &Var<B>,
    ) -> vgg_autodiff::Result<(Var<B>, Vec<Var<B>>)> {
        let vars: Vec<Var<B>> = self
            .params
            .iter()
            .map(|(n, t)| tape.param(n.clone(), t.clone()))
            .collect();
        let mut h = x.clone();
        let layers = vars.len() / 2;
        for (i, wb) in vars.chunks(2).enumerate() {
            h = tape.linear(&h, &wb[0], &wb[1])?;
            if i + 1 < layers {
                h = tape.relu(&h)?;
            }
        }
        Ok((h, vars))
    }
}

/// Trains with full-batch SGD and returns (final loss, training accuracy).
pub fn train<B: Backend>(
    backend: &B,
    steps: usize,
    lr: f32,
    verbose: bool,
) -> vgg_autodiff::Result<(f32, f32)> {
    let (xy, labels) = spirals(100);
    let x = backend.upload(&Shape::from([labels.len(), 2]), &xy)?;
    let mut mlp = Mlp::new(backend, 64, 7)?;
    let mut loss_value = f32::NAN;
    for step in 0..steps {
        let tape = Tape::new(backend.clone());
        let (logits, vars) = mlp.forward(&tape, &tape.constant(x.clone()))?;
        let loss = tape.cross_entropy(&logits, &labels)?;
        loss_value = backend.scalar_value(loss.value())?;
        let grads = tape.backward(&loss)?;
        for ((_, param), var) in mlp.params.iter_mut().zip(&vars) {
            backend.axpy(param, -lr, &grads.get(var)?)?;
        }
        if verbose && step % 500 == 0 {
            println!("step {step:>5}: loss {loss_value:.4}");
        }
    }
    let tape = Tape::inference(backend.clone());
    let (logits, _) = mlp.forward(&tape, &tape.constant(x))?;
    let predicted = backend.argmax_rows(logits.value())?;
    let correct = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok((loss_value, correct as f32 / labels.len() as f32))
}

#[allow(dead_code)]
fn main() -> vgg_autodiff::Result<()> {
    let backend = CpuBackend::new(0)?;
    let (loss, accuracy) = backend.execute(|| train(&backend, 3000, 0.2, true))?;
    println!(
        "final loss {loss:.4}, training accuracy {:.1}%",
        100.0 * accuracy
    );
    Ok(())
}
