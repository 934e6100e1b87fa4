//! The runtime model: built from the spec, named like torchvision, loading and checking weights.

use vgg_autodiff::Tape;
use vgg_model::model::{expected_params, metadata};
use vgg_model::{ModelError, ModelSpec, SpecOptions, Vgg, VggConfig};
use vgg_ndarray::CpuBackend;
use vgg_nn::{InitScheme, RunOptions};
use vgg_tensor::prelude::*;
use vgg_tensor::{Backend, Shape};

fn cpu() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

fn small(model: VggConfig) -> ModelSpec {
    ModelSpec::new(
        model,
        SpecOptions {
            height: 32,
            width: 32,
            classes: 10,
            width_mult: 0.125,
            hidden: 32,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn parameter_count_equals_the_spec_for_every_config() {
    let b = cpu();
    for model in VggConfig::ALL {
        let spec = small(model);
        let vgg = Vgg::init(&b, spec.clone(), &InitScheme::REFERENCE, 1).unwrap();
        assert_eq!(vgg.param_count(), spec.params(), "{model}");
        let mut names: Vec<String> = vgg.named_params().into_iter().map(|(n, _)| n).collect();
        let buffers = vgg.named_buffers(&b).unwrap();
        assert_eq!(buffers.is_empty(), !model.batch_norm(), "{model}");
        names.extend(buffers.into_iter().map(|(n, _)| n));
        let expected: Vec<String> = expected_params(&spec).into_keys().collect();
        names.sort();
        assert_eq!(names, expected, "{model}");
    }
}

#[test]
fn full_size_vgg16_has_138_357_544_parameters_named_like_torchvision() {
    let b = cpu();
    let spec = ModelSpec::new(VggConfig::Vgg16, SpecOptions::default()).unwrap();
    let vgg = Vgg::init(&b, spec, &InitScheme::KAIMING, 0).unwrap();
    assert_eq!(vgg.param_count(), 138_357_544);
    let names: Vec<String> = vgg.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[0], "features.0.weight");
    assert_eq!(names[2], "features.2.weight");
    assert_eq!(names[4], "features.5.weight");
    assert_eq!(names[25], "features.28.bias");
    assert_eq!(
        names[26..],
        [
            "classifier.0.weight",
            "classifier.0.bias",
            "classifier.3.weight",
            "classifier.3.bias",
            "classifier.6.weight",
            "classifier.6.bias"
        ]
    );
}

#[test]
fn reference_init_is_seeded_with_the_reference_biases() {
    let b = cpu();
    let a = Vgg::init(&b, small(VggConfig::Vgg11), &InitScheme::REFERENCE, 3).unwrap();
    let c = Vgg::init(&b, small(VggConfig::Vgg11), &InitScheme::REFERENCE, 3).unwrap();
    let d = Vgg::init(&b, small(VggConfig::Vgg11), &InitScheme::REFERENCE, 4).unwrap();
    let host = |v: &Vgg<CpuBackend>, i: usize| b.download(v.named_params()[i].1).unwrap();
    assert_eq!(host(&a, 0), host(&c, 0));
    assert_ne!(host(&a, 0), host(&d, 0));
    assert!(host(&a, 1).iter().all(|&v| v == 0.0), "conv biases are 0");
    let fc_bias = a
        .named_params()
        .iter()
        .position(|(n, _)| n == "classifier.0.bias")
        .unwrap();
    assert!(
        host(&a, fc_bias).iter().all(|&v| v == 0.1),
        "fc biases are 0.1"
    );
    // Xavier uniform: |w| <= sqrt(6 / (fan_in + fan_out)), fan = 3*9 and 8*9 for conv1_1.
    let limit = (6.0f32 / (27.0 + 72.0)).sqrt();
    assert!(host(&a, 0).iter().all(|v| v.abs() <= limit));
}

#[test]
fn forward_gives_logits_and_predict_softmax_and_argmax() {
    let b = cpu();
    let vgg = Vgg::init(&b, small(VggConfig::Vgg13), &InitScheme::REFERENCE, 1).unwrap();
    let x = b
        .random_normal(&Shape::from([3, 3, 32, 32]), 0.0, 1.0, 9)
        .unwrap();
    let tape = Tape::inference(b.clone());
    let logits = vgg
        .forward(&tape, &tape.constant(x.clone()), RunOptions::EVAL)
        .unwrap();
    assert_eq!(logits.shape().dims(), [3, 10]);
    let p = vgg.predict(&b, &x).unwrap();
    let probs = b.download(&p.probabilities).unwrap();
    for row in probs.chunks(10) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(p.classes, b.argmax_rows(logits.value()).unwrap());
    // fc8 is linear: logits can be negative.
    assert!(b.download(logits.value()).unwrap().iter().any(|&v| v < 0.0));
}

#[test]
fn dropout_changes_training_forwards_only() {
    let b = cpu();
    let vgg = Vgg::init(&b, small(VggConfig::Vgg11), &InitScheme::REFERENCE, 1).unwrap();
    let x = b
        .random_normal(&Shape::from([2, 3, 32, 32]), 0.0, 1.0, 9)
        .unwrap();
    let run = |keep_prob, seed| {
        let tape = Tape::inference(b.clone());
        let y = vgg
            .forward(
                &tape,
                &tape.constant(x.clone()),
                vgg_nn::RunOptions {
                    keep_prob,
                    seed,
                    training: false,
                },
            )
            .unwrap();
        b.download(y.value()).unwrap()
    };
    assert_eq!(run(1.0, 1), run(1.0, 2));
    assert_eq!(run(0.5, 1), run(0.5, 1));
    assert_ne!(run(0.5, 1), run(0.5, 2));
    assert_ne!(run(0.5, 1), run(1.0, 1));
}

#[test]
fn weights_round_trip_and_mismatches_are_all_reported() {
    let b = cpu();
    let spec = small(VggConfig::Vgg11);
    let vgg = Vgg::init(&b, spec.clone(), &InitScheme::REFERENCE, 1).unwrap();
    let file = vgg.to_tensor_file(&b).unwrap();
    assert_eq!(file.metadata, metadata(&spec));
    let back = Vgg::from_tensors(&b, spec.clone(), &file).unwrap();
    for ((n1, t1), (n2, t2)) in vgg.named_params().iter().zip(back.named_params()) {
        assert_eq!(n1, &n2);
        assert_eq!(b.download(t1).unwrap(), b.download(t2).unwrap());
    }

    let mut broken = file.clone();
    broken.tensors.retain(|(n, _)| n != "features.0.bias");
    broken
        .tensors
        .iter_mut()
        .find(|(n, _)| n == "classifier.6.weight")
        .unwrap()
        .1
        .shape = vec![5, 64];
    broken
        .tensors
        .push(("features.99.weight".into(), broken.tensors[0].1.clone()));
    let err = Vgg::from_tensors(&b, spec, &broken).err().unwrap();
    let text = err.to_string();
    assert!(matches!(err, ModelError::Weights { .. }));
    for needle in [
        "missing features.0.bias",
        "classifier.6.weight has shape [5, 64], expected [10, 32]",
        "unexpected features.99.weight",
    ] {
        assert!(text.contains(needle), "{needle} not in: {text}");
    }

    // A vgg11 file for a vgg16 network: every difference at once, and the file's own description.
    let err = Vgg::from_tensors(&b, small(VggConfig::Vgg16), &file)
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("missing features.") && text.contains("made with vgg.model=vgg11"),
        "{text}"
    );
    // In the library's own terms, typed: the CLI turns them into flags.
    let ModelError::Weights { made_with, .. } = err else {
        panic!("{err}")
    };
    assert!(made_with.contains(&vgg_model::SettingDiffers {
        key: vgg_model::model::meta::MODEL,
        file: "vgg11".into()
    }));
}

#[test]
fn inputs_are_checked() {
    let b = cpu();
    let vgg = Vgg::init(&b, small(VggConfig::Vgg11), &InitScheme::REFERENCE, 1).unwrap();
    for (dims, needle) in [
        (vec![3, 32, 32], "N x C x H x W"),
        (vec![1, 1, 32, 32], "1 channels"),
        (vec![1, 32, 32, 3], "NHWC"),
        (vec![1, 3, 64, 64], "64x64"),
    ] {
        let err = vgg.check_input(&Shape::from(dims)).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// A NaN pixel reaches the logits (PyTorch's behaviour) instead of being hidden by ReLU and pooling.
#[test]
fn a_nan_input_gives_nan_logits() {
    let b = cpu();
    let vgg = Vgg::init(&b, small(VggConfig::Vgg11), &InitScheme::REFERENCE, 3).unwrap();
    let mut pixels = vec![0.5f32; 3 * 32 * 32];
    pixels[100] = f32::NAN;
    let x = b.upload(&Shape::from([1, 3, 32, 32]), &pixels).unwrap();
    let tape = Tape::inference(b.clone());
    let logits = vgg
        .forward(&tape, &tape.constant(x), RunOptions::EVAL)
        .unwrap();
    let values = b.download(logits.value()).unwrap();
    assert!(values.iter().all(|v| v.is_nan()), "{values:?}");
}

#[test]
fn weights_with_nan_or_infinity_are_refused_by_name() {
    let b = cpu();
    let spec = small(VggConfig::Vgg11);
    let vgg = Vgg::init(&b, spec.clone(), &InitScheme::REFERENCE, 3).unwrap();
    let mut file = vgg.to_tensor_file(&b).unwrap();
    for (name, t) in &mut file.tensors {
        if name == "features.3.weight" {
            t.data[0] = f32::NAN;
            t.data[1] = f32::INFINITY;
        }
    }
    let Err(e) = Vgg::from_tensors(&b, spec, &file) else {
        panic!("weights with NaN were accepted");
    };
    assert!(matches!(e, ModelError::NonFinite { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("2 in features.3.weight"), "{text}");
}
