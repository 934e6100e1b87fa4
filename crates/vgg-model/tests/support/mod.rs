//! One training step as the network tests take it.

use vgg_autodiff::Tape;
use vgg_model::{ModelSpec, Vgg};
use vgg_nn::{InitScheme, RunOptions};
use vgg_tensor::prelude::*;

/// (logits, loss, every parameter's (name, gradient)) of one step, on the host.
pub type Step = (Vec<f32>, f32, Vec<(String, Vec<f32>)>);

/// Logits, cross-entropy loss and every parameter's gradient of one forward-backward step of
/// `spec` (the reference's init, seed 7) on 32x32 RGB `images`, dropout keeping `keep_prob`.
pub fn step<B: Backend>(
    b: &B,
    spec: &ModelSpec,
    images: &[f32],
    labels: &[usize],
    keep_prob: f32,
) -> Step {
    let vgg = Vgg::init(b, spec.clone(), &InitScheme::REFERENCE, 7).unwrap();
    let tape = Tape::new(b.clone());
    let x = b
        .upload(&Shape::from([labels.len(), 3, 32, 32]), images)
        .unwrap();
    let run = RunOptions {
        keep_prob,
        seed: 11,
        training: keep_prob < 1.0,
    };
    let logits = vgg.forward(&tape, &tape.constant(x), run).unwrap();
    let values = b.download(logits.value()).unwrap();
    let loss = tape.cross_entropy(&logits, labels).unwrap();
    let loss_value = b.scalar_value(loss.value()).unwrap();
    let grads = tape
        .backward(&loss)
        .unwrap()
        .into_named()
        .into_iter()
        .map(|(n, g)| (n, b.download(&g).unwrap()))
        .collect();
    (values, loss_value, grads)
}
