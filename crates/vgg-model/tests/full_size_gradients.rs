//! VGG-16 at full size (224x224, batch 1): gradients of l2_loss(logits) from the tape against
//! central differences for sampled coordinates, from the first convolution to fc8.
//!
//! Resolution: the forward pass runs in f32, so the loss moves by rounding noise as well as by the
//! perturbation. With the loss summed in f64 from the logits, later layers agree within 1%; the
//! first convolution's weights feed 50,176 ReLUs each, so steps large enough to beat the noise
//! also flip some of them, and agreement there is a few percent at any step (measured 1.5-3.7% for
//! steps 1e-3 to 5e-3). Exactness is shown elsewhere: small networks pass `check_gradients` and
//! the PyTorch fixtures agree to ~1e-6.

use vgg_autodiff::Tape;
use vgg_model::{ModelSpec, SpecOptions, Vgg, VggConfig};
use vgg_ndarray::{CpuBackend, CpuTensor};
use vgg_nn::{InitScheme, RunOptions};
use vgg_tensor::{Backend, DeviceTensor, Shape};

/// l2_loss(logits), summed in f64 from the f32 logits: rounding the loss itself to f32 (an ulp
/// of 1.2e-4 at its size here) would swamp the differences being measured.
fn loss(b: &CpuBackend, vgg: &Vgg<CpuBackend>, x: &CpuTensor) -> f64 {
    let tape = Tape::inference(b.clone());
    let logits = vgg
        .forward(&tape, &tape.constant(x.clone()), RunOptions::EVAL)
        .unwrap();
    b.download(logits.value())
        .unwrap()
        .iter()
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        / 2.0
}

#[test]
fn sampled_gradients_agree_with_finite_differences() {
    let b = CpuBackend::new(0).unwrap();
    b.execute(|| {
        let spec = ModelSpec::new(VggConfig::Vgg16, SpecOptions::default()).unwrap();
        let mut vgg = Vgg::init(&b, spec, &InitScheme::REFERENCE, 1).unwrap();
        // The reference's images: normal with stddev 0.1.
        let x = b.random_normal(&Shape::from([1, 3, 224, 224]), 0.0, 0.1, 2).unwrap();

        let tape = Tape::new(b.clone());
        let logits = vgg.forward(&tape, &tape.constant(x.clone()), RunOptions::EVAL).unwrap();
        let loss_var = tape.l2_loss(&logits).unwrap();
        let grads = tape.backward(&loss_var).unwrap();

        // (parameter, step, relative tolerance)
        let samples = [
            ("features.0.weight", 2e-3, 0.05),
            ("features.14.weight", 1e-2, 0.02),
            ("features.28.weight", 1e-2, 0.02),
            ("classifier.0.weight", 1e-2, 0.02),
            ("classifier.6.weight", 1e-2, 0.02),
            ("classifier.6.bias", 1e-2, 0.02),
        ];
        for (name, h, rtol) in samples {
            let g = b.download(grads.by_name(name).unwrap()).unwrap();
            // The coordinate with the largest gradient: the one finite differences resolve best.
            let (coord, &analytic) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
            let original = {
                let params = vgg.named_params();
                b.download(params.iter().find(|(n, _)| n == name).unwrap().1).unwrap()
            };
            let mut at = |delta: f64| {
                let mut values = original.clone();
                values[coord] = (original[coord] as f64 + delta) as f32;
                let mut params = vgg.named_params_mut();
                let param = &mut params.iter_mut().find(|(n, _)| n == name).unwrap().1;
                let shape = param.shape().clone();
                **param = b.upload(&shape, &values).unwrap();
                drop(params);
                loss(&b, &vgg, &x)
            };
            let numeric = (8.0 * at(h) - 8.0 * at(-h) - at(2.0 * h) + at(-2.0 * h)) / (12.0 * h);
            at(0.0);
            let analytic = analytic as f64;
            eprintln!("{name}[{coord}]: analytic {analytic:.6e}, numeric {numeric:.6e}");
            assert!(
                (analytic - numeric).abs() <= rtol * numeric.abs(),
                "{name}[{coord}]: analytic {analytic:.6e} vs numeric {numeric:.6e} (tolerance {rtol})"
            );
        }
    });
}
