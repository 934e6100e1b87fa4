//! A backend written from the primitives alone (vgg_tensor's plain-loops reference) runs VGG-11's
//! forward-backward, dropout included, and matches the CPU backend's fused kernels.

mod support;

use support::step;
use vgg_model::{ModelSpec, SpecOptions, VggConfig};
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;
use vgg_tensor::reference::ReferenceBackend;

#[test]
fn vgg11_forward_backward_on_primitives_alone_matches_the_cpu() {
    let spec = ModelSpec::new(
        VggConfig::Vgg11,
        SpecOptions {
            height: 32,
            width: 32,
            classes: 5,
            width_mult: 0.125,
            hidden: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let mut images = vec![0.0f32; 2 * 3 * 32 * 32];
    vgg_tensor::random::fill_normal(&mut images, 3, 0, 0.0, 1.0);
    let labels = [1, 4];
    let cpu = CpuBackend::new(2).unwrap();
    let (logits_c, loss_c, grads_c) = cpu.execute(|| step(&cpu, &spec, &images, &labels, 0.5));
    let (logits_r, loss_r, grads_r) = step(&ReferenceBackend, &spec, &images, &labels, 0.5);
    let close = |what: &str, got: &[f32], want: &[f32], tol: f32| {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f32::max);
        assert!(
            worst <= tol * scale,
            "{what}: worst {worst:e} of scale {scale:e}"
        );
    };
    close("logits", &logits_r, &logits_c, 1e-4);
    assert!(
        (loss_r - loss_c).abs() <= 1e-5 * loss_c.abs().max(1.0),
        "{loss_r} vs {loss_c}"
    );
    assert_eq!(grads_r.len(), 22);
    for ((name_r, g_r), (name_c, g_c)) in grads_r.iter().zip(&grads_c) {
        assert_eq!(name_r, name_c);
        close(name_r, g_r, g_c, 1e-3);
    }
}
