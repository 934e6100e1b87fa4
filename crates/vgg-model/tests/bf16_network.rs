//! The bf16 math mode through a whole network: VGG-11 (width 1/4: 16 to 128 channels, the
//! direct AMX convolutions' and the emulated path's shapes) at 32x32, batch 4, its logits and
//! every parameter's gradient against the f32 run's (whose own error, ~1e-6, is negligible
//! here). Measured on a Sapphire Rapids (norm-relative, the same on either unit): logits
//! 4.4e-3; the classifier's gradients 3.9e-4 to 6.2e-3; the convolutions' 9.3e-2 to 2.4e-1,
//! because rounding flips ReLU and max-pool decisions (after a ReLU, a pooling window of zeros
//! and near-zeros), and each flip moves a whole gradient entry, more of them the deeper the
//! gradient has gone. PyTorch's bf16 autocast on the same network (its own random weights and
//! input) against its f32: logits 5.3e-3, classifier 2.4e-3 to 7.6e-3, convolutions 3.6e-2 to
//! 1.8e-1.

mod support;

use support::step;
use vgg_model::{ModelSpec, SpecOptions, VggConfig};
use vgg_ndarray::{Bf16Unit, CpuBackend, CpuConfig, Isa, Precision};
use vgg_tensor::prelude::*;

/// Logits' bound.
const LOGITS: f64 = 1e-2;
/// The classifier's gradients' bound.
const CLASSIFIER: f64 = 2e-2;
/// The convolutions' gradients' bound (see the note above: decisions flipped by rounding).
const FEATURES: f64 = 0.4;

/// Logits and gradients of one step, dropout off.
fn logits_and_gradients(
    b: &CpuBackend,
    spec: &ModelSpec,
    images: &[f32],
    labels: &[usize],
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let (logits, _, grads) = b.clone().execute(|| step(b, spec, images, labels, 1.0));
    (logits, grads)
}

fn norm_relative(got: &[f32], want: &[f32]) -> f64 {
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (diff / norm.max(1e-300)).sqrt()
}

#[test]
fn vgg11_in_bf16_stays_within_its_bounds_of_f32() {
    let spec = ModelSpec::new(
        VggConfig::Vgg11,
        SpecOptions {
            height: 32,
            width: 32,
            classes: 10,
            width_mult: 0.25,
            hidden: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let mut images = vec![0.0f32; 4 * 3 * 32 * 32];
    vgg_tensor::random::fill_normal(&mut images, 3, 0, 0.0, 1.0);
    let labels = [1, 4, 7, 9];
    let backend = |precision, isa| {
        CpuBackend::with_config(CpuConfig {
            precision,
            isa,
            ..CpuConfig::detect(2)
        })
        .unwrap()
    };
    let (logits, grads) =
        logits_and_gradients(&backend(Precision::F32, None), &spec, &images, &labels);
    let mut caps = vec![Some(Isa::Avx2)];
    if Bf16Unit::within(Isa::detected()).multiplies_in_bf16() {
        caps.push(None);
    }
    for isa in caps {
        let b = backend(Precision::Bf16, isa);
        let (logits_bf16, grads_bf16) = logits_and_gradients(&b, &spec, &images, &labels);
        let error = norm_relative(&logits_bf16, &logits);
        eprintln!("{}: logits {error:.2e}", b.name());
        assert!(error <= LOGITS, "{}: logits {error:.2e}", b.name());
        assert!(error > 1e-5, "{}: the logits are not bf16's", b.name());
        assert_eq!(grads.len(), grads_bf16.len());
        for ((name, g), (name_bf16, g_bf16)) in grads.iter().zip(&grads_bf16) {
            assert_eq!(name, name_bf16);
            let error = norm_relative(g_bf16, g);
            eprintln!("{}: {name} {error:.2e}", b.name());
            let bound = if name.starts_with("classifier") {
                CLASSIFIER
            } else {
                FEATURES
            };
            assert!(error <= bound, "{}: {name} {error:.2e}", b.name());
        }
    }
}
