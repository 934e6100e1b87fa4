//! Grad-CAM and saliency against PyTorch (hooks on the same layers, the same formulas:
//! tests/fixtures/explain, made by `scripts/make_fixtures.py --explain` on the classify
//! fixture's VGG-11 and picture), SmoothGrad against its definition, and refusals by name.

use std::path::{Path, PathBuf};

use vgg_model::model::options_from_metadata;
use vgg_model::{ModelError, ModelSpec, Question, SmoothGrad, Vgg};
use vgg_ndarray::CpuBackend;
use vgg_nn::io::{self, HostTensor, TensorFile};
use vgg_tensor::prelude::*;
use vgg_tensor::{Backend, Shape};

/// Norm-relative error bound against PyTorch f32 (measured on this fixture: Grad-CAM 0.9e-6 to
/// 5.3e-6, the same order as f32 rounding; saliency alike).
const BOUND: f64 = 5e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn expected() -> TensorFile {
    io::load_safetensors(&fixtures().join("explain/expected.safetensors")).unwrap()
}

fn tensor<'a>(file: &'a TensorFile, name: &str) -> &'a HostTensor {
    &file.tensors.iter().find(|(n, _)| n == name).unwrap().1
}

fn network(b: &CpuBackend) -> Vgg<CpuBackend> {
    let file = io::load_safetensors(&fixtures().join("classify/weights.safetensors")).unwrap();
    let (model, options) = options_from_metadata(&file.metadata);
    let spec = ModelSpec::new(model.unwrap(), options.resolve()).unwrap();
    Vgg::from_tensors(b, spec, &file).unwrap()
}

fn relative_error(ours: &HostTensor, theirs: &HostTensor) -> f64 {
    assert_eq!(ours.shape, theirs.shape);
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (a, b) in ours.data.iter().zip(&theirs.data) {
        diff += (*a as f64 - *b as f64).powi(2);
        norm += (*b as f64).powi(2);
    }
    (diff / norm).sqrt()
}

fn question(layer: &str, class: Option<usize>) -> Question {
    Question {
        cam_layer: layer.into(),
        class,
        features: vec![],
        smooth_grad: None,
    }
}

#[test]
fn grad_cam_and_saliency_match_pytorch() {
    let b = CpuBackend::new(2).unwrap();
    let vgg = network(&b);
    let want = expected();
    let input = tensor(&want, "input");
    let x = b
        .upload(&Shape::from(input.shape.clone()), &input.data)
        .unwrap();
    let top: usize = want.metadata["top_class"].parse().unwrap();
    let cases = [
        ("conv5_2", None, "cam_conv5_2_top", Some("saliency_top")),
        (
            "pool4",
            Some(7),
            "cam_pool4_class7",
            Some("saliency_class7"),
        ),
        ("conv3_1", None, "cam_conv3_1_top", None),
    ];
    for (layer, class, cam, saliency) in cases {
        let e = vgg.explain(&b, &x, &question(layer, class)).unwrap();
        assert_eq!(e.class, class.unwrap_or(top), "{layer}");
        let err = relative_error(&e.cam, tensor(&want, cam));
        assert!(err < BOUND, "{cam}: {err:.2e}");
        assert!(e.cam.data.iter().any(|&v| v > 0.0), "{cam} is all zero");
        if let Some(saliency) = saliency {
            let err = relative_error(&e.saliency, tensor(&want, saliency));
            assert!(err < BOUND, "{saliency}: {err:.2e}");
        }
        if layer == "conv5_2" {
            let err = relative_error(&e.cam_on_input, tensor(&want, "cam_conv5_2_top_224"));
            assert!(err < BOUND, "cam on the input: {err:.2e}");
            let err = relative_error(
                &e.cam_plus_plus_on_input,
                tensor(&want, "campp_conv5_2_top_224"),
            );
            assert!(err < BOUND, "Grad-CAM++ on the input: {err:.2e}");
        }
        // Grad-CAM++ (pytorch-grad-cam's formula, in the fixture script) at the first two.
        if layer != "conv3_1" {
            let campp = format!("campp_{}", &cam[4..]);
            let err = relative_error(&e.cam_plus_plus, tensor(&want, &campp));
            assert!(err < BOUND, "{campp}: {err:.2e}");
            assert!(
                e.cam_plus_plus.data.iter().any(|&v| v > 0.0),
                "{campp} is all zero"
            );
            eprintln!("{layer}: Grad-CAM++ within {err:.1e} of PyTorch");
        }
        eprintln!(
            "{layer}: Grad-CAM within {:.1e} of PyTorch",
            relative_error(&e.cam, tensor(&want, cam))
        );
    }
}

#[test]
fn smooth_grad_is_the_mean_saliency_of_noisy_copies_and_features_are_the_activations() {
    let b = CpuBackend::new(2).unwrap();
    let vgg = network(&b);
    let want = expected();
    let input = tensor(&want, "input");
    let shape = Shape::from(input.shape.clone());
    let x = b.upload(&shape, &input.data).unwrap();
    let s = SmoothGrad {
        samples: 2,
        noise: 0.1,
        seed: 5,
    };
    let q = Question {
        smooth_grad: Some(s),
        features: vec!["conv1_1".into(), "pool5".into()],
        ..question("conv5_2", None)
    };
    let e = vgg.explain(&b, &x, &q).unwrap();
    // The same noisy copies, explained one by one as plain saliency.
    let range = input.data.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        - input.data.iter().cloned().fold(f32::INFINITY, f32::min);
    let mut mean = vec![0.0f32; 224 * 224];
    for i in 0..2 {
        let mut noisy = b.random_normal(&shape, 0.0, 0.1 * range, 5 + i).unwrap();
        b.axpy(&mut noisy, 1.0, &x).unwrap();
        let one = vgg
            .explain(&b, &noisy, &question("conv5_2", Some(e.class)))
            .unwrap();
        mean.iter_mut()
            .zip(&one.saliency.data)
            .for_each(|(m, v)| *m += v / 2.0);
    }
    let smooth = e.smooth_grad.as_ref().unwrap();
    let expected = HostTensor {
        shape: vec![224, 224],
        data: mean,
    };
    assert!(relative_error(smooth, &expected) < 1e-6);
    // Noise changes the map.
    assert!(relative_error(smooth, &e.saliency) > 1e-2);
    // conv1_1's activations (after ReLU) and pool5's, in the order asked.
    let names: Vec<&str> = e.features.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["conv1_1", "pool5"]);
    assert_eq!(e.features[0].1.shape, [8, 224, 224]);
    assert_eq!(e.features[1].1.shape, [64, 7, 7]);
    assert!(e.features[0].1.data.iter().all(|&v| v >= 0.0));
    // The probabilities are the network's.
    let p = vgg.predict(&b, &x).unwrap();
    assert_eq!(b.download(&p.probabilities).unwrap(), e.probabilities);
}

#[test]
fn bad_questions_are_refused_by_name() {
    let b = CpuBackend::new(1).unwrap();
    let vgg = network(&b);
    let x = b.zeros(&Shape::from([1, 3, 224, 224])).unwrap();
    let err = |q: Question| vgg.explain(&b, &x, &q).unwrap_err().to_string();
    let e = err(question("conv9_9", None));
    assert!(
        e.contains("no layer named 'conv9_9'") && e.contains("conv5_2"),
        "{e}"
    );
    let e = err(question("fc6", None));
    assert!(e.contains("fc6 is fully connected"), "{e}");
    let e = err(question("conv5_2", Some(1000)));
    assert!(
        e.contains("class 1000 is out of range") && e.contains("1000 classes"),
        "{e}"
    );
    let e = err(Question {
        features: vec!["fc8".into()],
        ..question("conv5_2", None)
    });
    assert!(e.contains("fc8 is fully connected"), "{e}");
    let small = b.zeros(&Shape::from([1, 3, 32, 32])).unwrap();
    let e = vgg
        .explain(&b, &small, &question("conv5_2", None))
        .unwrap_err();
    assert!(
        matches!(e, ModelError::Input(_)) && e.to_string().contains("32x32"),
        "{e}"
    );
    let two = b.zeros(&Shape::from([2, 3, 224, 224])).unwrap();
    let e = vgg
        .explain(&b, &two, &question("conv5_2", None))
        .unwrap_err();
    assert!(e.to_string().contains("one image at a time"), "{e}");
}
