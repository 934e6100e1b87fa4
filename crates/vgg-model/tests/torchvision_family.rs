//! torchvision's eight VGG models against PyTorch on the same weights: the fixtures in
//! tests/fixtures/family (made by `scripts/make_fixtures.py --family`) hold each model at width
//! 1/16 with torchvision's layout and names, BatchNorm's statistics drawn away from their initial
//! values. Evaluation logits for all eight; for the `_bn` models also training mode (the batch's
//! statistics): logits, every parameter's gradient and the running statistics after the pass.

use std::path::{Path, PathBuf};

use vgg_autodiff::Tape;
use vgg_model::model::{expected_params, options_from_metadata, options_from_tensors};
use vgg_model::{ModelSpec, Vgg};
use vgg_ndarray::CpuBackend;
use vgg_nn::io::{load_npy, load_tensors, HostTensor, TensorFile};
use vgg_nn::RunOptions;
use vgg_tensor::prelude::*;
use vgg_tensor::Shape;

const FAMILY: [&str; 8] = [
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/family")
}

fn cpu() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

/// The network of `name` with the fixture's weights, as its metadata describes it.
fn load(b: &CpuBackend, name: &str) -> Vgg<CpuBackend> {
    let file = load_tensors(&fixtures().join(name).join("weights.safetensors")).unwrap();
    let (model, options) = options_from_metadata(&file.metadata);
    let model = model.unwrap();
    assert_eq!(model.name(), name);
    let spec = ModelSpec::new(model, options.resolve()).unwrap();
    Vgg::from_tensors(b, spec, &file).unwrap()
}

fn input(b: &CpuBackend) -> <CpuBackend as vgg_tensor::Device>::Tensor {
    let x = load_npy(&fixtures().join("input.npy")).unwrap();
    b.upload(&Shape::from(x.shape.clone()), &x.data).unwrap()
}

/// The largest difference relative to the largest magnitude of `expected`.
fn relative_error(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(expected)
        .map(|(g, e)| (g - e).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn every_model_gives_pytorchs_evaluation_logits() {
    let b = cpu();
    for name in FAMILY {
        let vgg = load(&b, name);
        let tape = Tape::inference(b.clone());
        let logits = vgg
            .forward(&tape, &tape.constant(input(&b)), RunOptions::EVAL)
            .unwrap();
        let expected = load_npy(&fixtures().join(name).join("eval.npy")).unwrap();
        let got = b.download(logits.value()).unwrap();
        let err = relative_error(&got, &expected.data);
        assert!(err < 1e-4, "{name}: evaluation logits differ by {err}");
    }
}

/// The tensor named `key` of `file`.
fn tensor<'a>(file: &'a TensorFile, key: &str) -> &'a HostTensor {
    &file
        .tensors
        .iter()
        .find(|(n, _)| n == key)
        .unwrap_or_else(|| panic!("no {key} in the fixture"))
        .1
}

/// Every parameter's gradient of sum(logits^2)/2 against `grad.NAME` of `expected`.
fn check_gradients(
    b: &CpuBackend,
    name: &str,
    vgg: &Vgg<CpuBackend>,
    tape: Tape<CpuBackend>,
    logits: &vgg_autodiff::Var<CpuBackend>,
    expected: &TensorFile,
) {
    let largest = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let want = |param: &str| &tensor(expected, &format!("grad.{param}")).data;
    let largest_gradient = vgg
        .named_params()
        .iter()
        .map(|(param, _)| largest(want(param)))
        .fold(0f32, f32::max);
    let loss = tape.l2_loss(logits).unwrap();
    let grads = tape.backward(&loss).unwrap();
    for (param, _) in vgg.named_params() {
        let got = b.download(grads.by_name(&param).unwrap()).unwrap();
        // A convolution's bias before BatchNorm in training is subtracted again with the batch's
        // mean: its gradient is zero but for rounding, in PyTorch's figures and ours.
        if largest(want(&param)) < 1e-5 * largest_gradient {
            let ours = largest(&got);
            assert!(
                ours < 1e-4 * largest_gradient,
                "{name}: gradient of {param} should vanish, is {ours}"
            );
        } else {
            let err = relative_error(&got, want(&param));
            assert!(err < 1e-3, "{name}: gradient of {param} differs by {err}");
        }
    }
}

#[test]
fn batch_norm_models_differentiate_as_pytorch_does_in_evaluation() {
    let b = cpu();
    for name in FAMILY.iter().filter(|n| n.ends_with("_bn")) {
        let vgg = load(&b, name);
        let expected = load_tensors(&fixtures().join(name).join("eval.safetensors")).unwrap();
        let tape = Tape::new(b.clone());
        let logits = vgg
            .forward(&tape, &tape.constant(input(&b)), RunOptions::EVAL)
            .unwrap();
        check_gradients(&b, name, &vgg, tape, &logits, &expected);
    }
}

#[test]
fn torchvisions_adaptive_pool_averages_as_pytorch_does() {
    let b = cpu();
    let dir = fixtures().join("vgg11_bn-avgpool3");
    let file = load_tensors(&dir.join("weights.safetensors")).unwrap();
    let (model, options) = options_from_metadata(&file.metadata);
    let spec = ModelSpec::new(model.unwrap(), options.resolve()).unwrap();
    assert_eq!(spec.options.adaptive_pool, Some(3));
    let vgg = Vgg::from_tensors(&b, spec, &file).unwrap();
    let x = load_npy(&dir.join("input.npy")).unwrap();
    let x = b.upload(&Shape::from(x.shape.clone()), &x.data).unwrap();
    let tape = Tape::new(b.clone());
    let logits = vgg
        .forward(&tape, &tape.constant(x), RunOptions::EVAL)
        .unwrap();
    let want = load_npy(&dir.join("eval.npy")).unwrap();
    let err = relative_error(&b.download(logits.value()).unwrap(), &want.data);
    assert!(err < 1e-4, "logits differ by {err}");
    let expected = load_tensors(&dir.join("eval.safetensors")).unwrap();
    check_gradients(&b, "vgg11_bn-avgpool3", &vgg, tape, &logits, &expected);
}

#[test]
fn batch_norm_models_train_as_pytorch_does() {
    let b = cpu();
    for name in FAMILY.iter().filter(|n| n.ends_with("_bn")) {
        let vgg = load(&b, name);
        let expected = load_tensors(&fixtures().join(name).join("train.safetensors")).unwrap();
        let tape = Tape::new(b.clone());
        let run = RunOptions {
            training: true,
            ..RunOptions::EVAL
        };
        let logits = vgg.forward(&tape, &tape.constant(input(&b)), run).unwrap();
        let want = load_npy(&fixtures().join(name).join("train.npy")).unwrap();
        let err = relative_error(&b.download(logits.value()).unwrap(), &want.data);
        assert!(err < 1e-4, "{name}: training logits differ by {err}");
        check_gradients(&b, name, &vgg, tape, &logits, &expected);
        for (buffer, value) in vgg.named_buffers(&b).unwrap() {
            let got = b.download(&value).unwrap();
            let err = relative_error(&got, &tensor(&expected, &format!("after.{buffer}")).data);
            assert!(
                err < 1e-5,
                "{name}: {buffer} after the pass differs by {err}"
            );
        }
    }
}

#[test]
fn a_saved_batch_norm_model_holds_torchvisions_state_dict() {
    let b = cpu();
    let vgg = load(&b, "vgg11_bn");
    let dir = std::env::temp_dir().join(format!("vgg-family-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("saved.safetensors");
    vgg.save(&b, &path).unwrap();
    let saved: TensorFile = load_tensors(&path).unwrap();
    let original = load_tensors(&fixtures().join("vgg11_bn/weights.safetensors")).unwrap();
    let names = |f: &TensorFile| f.tensors.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&saved), names(&original));
    assert_eq!(saved.tensors, original.tensors);
    let expected: Vec<String> = expected_params(vgg.spec()).into_keys().collect();
    let mut sorted = names(&saved);
    sorted.sort();
    assert_eq!(sorted, expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_without_metadata_names_its_model_by_its_tensors() {
    for name in FAMILY {
        let file = load_tensors(&fixtures().join(name).join("weights.safetensors")).unwrap();
        let (model, options) = options_from_tensors(&file.tensors);
        assert_eq!(model.map(|m| m.name()), Some(name));
        let (_, from_metadata) = options_from_metadata(&file.metadata);
        // Such a file is taken for torchvision's, whose adaptive pool changes nothing at the
        // input size read off fc6 (pool5 is 1x1 at 32x32).
        let shown = options.resolve();
        assert_eq!(shown.adaptive_pool, Some(1), "{name}");
        let without_pool = vgg_model::SpecOptions {
            adaptive_pool: None,
            ..shown
        };
        assert_eq!(without_pool, from_metadata.resolve(), "{name}");
    }
}

/// torchvision's own eight models at 224x224 and 320x320 (the adaptive pool at work), as
/// torchvision ships them (`.pth`, no metadata),
/// against their logits in PyTorch; made by `scripts/make_fixtures.py --torchvision DIR`.
#[test]
#[ignore = "needs torchvision's models (4.2 GB): make them with scripts/make_fixtures.py --torchvision DIR and set VGG_TORCHVISION_DIR=DIR"]
fn torchvision_at_224_and_320() {
    let dir = PathBuf::from(std::env::var_os("VGG_TORCHVISION_DIR").expect(
        "set VGG_TORCHVISION_DIR to the directory scripts/make_fixtures.py --torchvision wrote",
    ));
    let b = cpu();
    for name in FAMILY {
        let file = load_tensors(&dir.join(format!("{name}.pth"))).unwrap();
        let (model, options) = options_from_tensors(&file.tensors);
        let model = model.unwrap_or_else(|| panic!("{name}: not recognised"));
        assert_eq!(model.name(), name);
        // At 224 the adaptive pool changes nothing; at 320 it averages pool5's 10x10 to 7x7.
        for (side, input, logits) in [
            (224, "input.npy", "logits"),
            (320, "input320.npy", "logits320"),
        ] {
            let options = vgg_model::PartialOptions {
                input: Some((side, side)),
                ..Default::default()
            }
            .or(options);
            let spec = ModelSpec::new(model, options.resolve()).unwrap();
            let vgg = Vgg::from_tensors(&b, spec, &file).unwrap();
            let x = load_npy(&dir.join(input)).unwrap();
            let x = b.upload(&Shape::from(x.shape.clone()), &x.data).unwrap();
            let tape = Tape::inference(b.clone());
            let y = vgg
                .forward(&tape, &tape.constant(x), RunOptions::EVAL)
                .unwrap();
            let want = load_npy(&dir.join(format!("{name}.{logits}.npy"))).unwrap();
            let err = relative_error(&b.download(y.value()).unwrap(), &want.data);
            eprintln!("{name} at {side}: logits within {err:.1e} of torchvision's (relative to the largest)");
            assert!(err < 1e-4, "{name} at {side}: logits differ by {err}");
        }
    }
}

#[test]
fn impossible_statistics_are_refused_by_name() {
    let b = cpu();
    let mut file = load_tensors(&fixtures().join("vgg11_bn/weights.safetensors")).unwrap();
    for (name, t) in &mut file.tensors {
        match name.as_str() {
            "features.1.running_var" => t.data[3] = -0.5,
            "features.5.num_batches_tracked" => t.data[0] = 2.5,
            _ => {}
        }
    }
    let (model, options) = options_from_metadata(&file.metadata);
    let spec = ModelSpec::new(model.unwrap(), options.resolve()).unwrap();
    let err = Vgg::from_tensors(&b, spec, &file)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("features.1.running_var holds 1 negative variances")
            && err.contains("features.5.num_batches_tracked is 2.5"),
        "{err}"
    );
}
