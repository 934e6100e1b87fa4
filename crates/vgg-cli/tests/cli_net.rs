//! `vgg init`, `vgg forward` and `vgg backward`: parity with PyTorch on committed fixtures,
//! named errors for bad weights and inputs, and a full-size VGG-16 run.

mod common;

use std::path::{Path, PathBuf};

use common::{ok, refused};
use vgg_nn::io::{self, HostTensor, TensorFile};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/vgg11-w8")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgg-cli-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// max |a - b| / max |b| over a tensor.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    diff / scale
}

#[test]
fn forward_and_backward_match_pytorch() {
    let logits = tmp("logits.npy");
    let out = ok(&[
        "forward",
        "--weights",
        &fixture("weights.safetensors"),
        "--input",
        &fixture("input.npy"),
        "--output",
        s(&logits),
    ]);
    assert!(out.contains("image 1: top-5:"), "{out}");
    let ours = io::load_npy(&logits).unwrap();
    let theirs = io::load_npy(Path::new(&fixture("logits.npy"))).unwrap();
    assert_eq!(ours.shape, theirs.shape);
    let err = relative_error(&ours.data, &theirs.data);
    assert!(
        err < 1e-4,
        "logits differ from PyTorch's by {err:e} (relative)"
    );

    let grads = tmp("grads.safetensors");
    ok(&[
        "backward",
        "--model",
        "vgg11",
        "--weights",
        &fixture("weights.safetensors"),
        "--input",
        &fixture("input.npy"),
        "--output",
        s(&grads),
    ]);
    let ours = io::load_safetensors(&grads).unwrap();
    let theirs = io::load_safetensors(Path::new(&fixture("grads.safetensors"))).unwrap();
    let names = |f: &TensorFile| f.tensors.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs));
    assert_eq!(ours.tensors.len(), 22);
    for ((name, a), (_, b)) in ours.tensors.iter().zip(&theirs.tensors) {
        assert_eq!(a.shape, b.shape, "{name}");
        let err = relative_error(&a.data, &b.data);
        assert!(
            err < 1e-3,
            "{name}: gradient differs from PyTorch's by {err:e} (relative)"
        );
    }
}

/// A copy of the fixture's weights with `edit` applied.
fn edited_weights(name: &str, edit: impl FnOnce(&mut TensorFile)) -> PathBuf {
    let mut file = io::load_safetensors(Path::new(&fixture("weights.safetensors"))).unwrap();
    edit(&mut file);
    let path = tmp(name);
    io::save_safetensors(&path, &file).unwrap();
    path
}

fn forward_refused(weights: &str, input: &str, extra: &[&str], needles: &[&str]) {
    let out = tmp("refused.npy");
    let mut args = vec![
        "forward",
        "--weights",
        weights,
        "--input",
        input,
        "--output",
        s(&out),
    ];
    args.extend_from_slice(extra);
    refused(&args, needles);
}

#[test]
fn bad_weights_are_named() {
    let input = fixture("input.npy");
    let bytes = std::fs::read(fixture("weights.safetensors")).unwrap();
    let truncated = tmp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    forward_refused(
        s(&truncated),
        &input,
        &[],
        &["truncated.safetensors", "truncated"],
    );

    let f16 = tmp("f16.safetensors");
    let data = [0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![4], &data).unwrap();
    std::fs::write(
        &f16,
        safetensors::serialize([("features.0.weight", view)], None).unwrap(),
    )
    .unwrap();
    forward_refused(s(&f16), &input, &[], &["F16", "only F32"]);

    let renamed = edited_weights("renamed.safetensors", |f| {
        f.tensors[0].0 = "features.1.weight".into()
    });
    forward_refused(
        s(&renamed),
        &input,
        &[],
        &["missing classifier.0.bias", "unexpected features.1.weight"],
    );

    let reshaped = edited_weights("reshaped.safetensors", |f| {
        let t = &mut f
            .tensors
            .iter_mut()
            .find(|(n, _)| n == "features.0.weight")
            .unwrap()
            .1;
        t.shape = vec![8, 3, 9, 1];
    });
    forward_refused(
        s(&reshaped),
        &input,
        &[],
        &["features.0.weight has shape [8, 3, 9, 1], expected [8, 3, 3, 3]"],
    );

    forward_refused(
        &fixture("weights.safetensors"),
        &input,
        &["--model", "vgg16"],
        &["vgg16", "missing", "vgg.model=vgg11"],
    );
    forward_refused(
        &tmp("nowhere.safetensors").to_string_lossy(),
        &input,
        &[],
        &["cannot read", "nowhere.safetensors"],
    );
}

#[test]
fn bad_inputs_are_named() {
    let weights = fixture("weights.safetensors");
    let save = |name: &str, shape: Vec<usize>| {
        let path = tmp(name);
        let n = shape.iter().product();
        io::save_npy(
            &path,
            &HostTensor {
                shape,
                data: vec![0.5; n],
            },
        )
        .unwrap();
        path
    };
    forward_refused(
        &weights,
        s(&save("rank3.npy", vec![3, 32, 32])),
        &[],
        &["N x C x H x W", "[3, 32, 32]"],
    );
    forward_refused(
        &weights,
        s(&save("gray.npy", vec![2, 1, 32, 32])),
        &[],
        &["1 channels", "takes 3"],
    );
    forward_refused(
        &weights,
        s(&save("tiny.npy", vec![2, 3, 16, 16])),
        &[],
        &["16x16", "at least 32x32"],
    );
    // Another size than the weights were made for: said as such, not as fc6's shape.
    forward_refused(
        &weights,
        s(&save("big.npy", vec![1, 3, 64, 64])),
        &[],
        &["made for 32x32 inputs", "the inputs are 64x64"],
    );
    let not_npy = tmp("text.npy");
    std::fs::write(&not_npy, "1,2,3").unwrap();
    forward_refused(&weights, s(&not_npy), &[], &["not a valid .npy"]);
}

#[test]
fn init_then_forward_and_backward_at_full_vgg16_size() {
    let weights = tmp("vgg16.safetensors");
    let out = ok(&[
        "init",
        "--model",
        "vgg16",
        "--seed",
        "1",
        "--output",
        s(&weights),
    ]);
    assert!(out.contains("138357544 parameters"), "{out}");
    let input = tmp("one-image.npy");
    let n = 3 * 224 * 224;
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    io::save_npy(
        &input,
        &HostTensor {
            shape: vec![1, 3, 224, 224],
            data,
        },
    )
    .unwrap();
    let logits = tmp("vgg16-logits.npy");
    let out = ok(&[
        "forward",
        "--weights",
        s(&weights),
        "--input",
        s(&input),
        "--output",
        s(&logits),
    ]);
    assert!(out.contains("image 0: top-5:"), "{out}");
    assert_eq!(io::load_npy(&logits).unwrap().shape, vec![1, 1000]);
    let grads = tmp("vgg16-grads.safetensors");
    let out = ok(&[
        "backward",
        "--weights",
        s(&weights),
        "--input",
        s(&input),
        "--output",
        s(&grads),
    ]);
    assert!(out.contains("32 gradients"), "{out}");
    let g = io::load_safetensors(&grads).unwrap();
    let total: usize = g.tensors.iter().map(|(_, t)| t.data.len()).sum();
    assert_eq!(total, 138_357_544);
    for path in [weights, grads] {
        std::fs::remove_file(path).unwrap();
    }
}

/// PyTorch's own file format, as torchvision ships its weights: no metadata, so the network
/// (VGG-11, width 1/8, hidden 256, 10 classes, 32x32) is read off the tensors, and the logits
/// are PyTorch's.
#[test]
fn a_pth_state_dict_runs_without_flags_and_matches_pytorch() {
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pth");
    let logits = tmp("pth-logits.npy");
    ok(&[
        "forward",
        "--weights",
        s(&pth.join("vgg11-w8.pth")),
        "--input",
        &fixture("input.npy"),
        "--output",
        s(&logits),
    ]);
    let ours = io::load_npy(&logits).unwrap();
    let theirs = io::load_npy(Path::new(&fixture("logits.npy"))).unwrap();
    assert_eq!(ours.shape, theirs.shape);
    let err = relative_error(&ours.data, &theirs.data);
    assert!(err < 1e-4, "logits differ from PyTorch's by {err:e}");
    refused(
        &[
            "forward",
            "--weights",
            s(&pth.join("hostile.pth")),
            "--random",
            "1",
        ],
        &["hostile.pth", "Python object", "system", "state_dict"],
    );
}

fn family(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/family")
        .join(name)
}

/// torchvision's `_bn` models and its adaptive pool from the command line: PyTorch's logits and
/// evaluation gradients on tests/fixtures/family, and a pooled network run at another size.
#[test]
fn batch_norm_models_and_the_adaptive_pool_match_pytorch() {
    let logits = tmp("bn-logits.npy");
    ok(&[
        "forward",
        "--weights",
        s(&family("vgg16_bn/weights.safetensors")),
        "--input",
        s(&family("input.npy")),
        "--output",
        s(&logits),
    ]);
    let ours = io::load_npy(&logits).unwrap();
    let theirs = io::load_npy(&family("vgg16_bn/eval.npy")).unwrap();
    let err = relative_error(&ours.data, &theirs.data);
    assert!(
        err < 1e-4,
        "vgg16_bn logits differ from PyTorch's by {err:e}"
    );

    let grads = tmp("bn-grads.safetensors");
    ok(&[
        "backward",
        "--weights",
        s(&family("vgg11_bn-avgpool3/weights.safetensors")),
        "--input",
        s(&family("vgg11_bn-avgpool3/input.npy")),
        "--output",
        s(&grads),
    ]);
    let ours = io::load_safetensors(&grads).unwrap();
    let theirs = io::load_safetensors(&family("vgg11_bn-avgpool3/eval.safetensors")).unwrap();
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for (name, a) in &ours.tensors {
        let b = &theirs
            .tensors
            .iter()
            .find(|(n, _)| *n == format!("grad.{name}"))
            .unwrap_or_else(|| panic!("PyTorch has no gradient of {name}"))
            .1;
        let err = relative_error(&a.data, &b.data);
        assert!(
            err < 1e-3,
            "{name}: gradient differs from PyTorch's by {err:e}"
        );
    }

    // A network with the pool runs at an input size other than the one it was made for.
    let weights = tmp("pooled.safetensors");
    ok(&[
        "init",
        "--model",
        "vgg13_bn",
        "--width-mult",
        "0.0625",
        "--hidden",
        "16",
        "--classes",
        "5",
        "--image-size",
        "32",
        "--adaptive-pool",
        "2",
        "--output",
        s(&weights),
    ]);
    let summary = ok(&["summary", "--weights", s(&weights), "--image-size", "96"]);
    assert!(
        summary.contains("avgpool") && summary.contains("averages pool5's 3x3 to 2x2"),
        "{summary}"
    );
    let input = tmp("input-96.npy");
    io::save_npy(
        &input,
        &HostTensor {
            shape: vec![1, 3, 96, 96],
            data: (0..3 * 96 * 96).map(|i| (i % 17) as f32 / 17.0).collect(),
        },
    )
    .unwrap();
    let out = ok(&["forward", "--weights", s(&weights), "--input", s(&input)]);
    assert!(out.contains("image 0: top-5:"), "{out}");
    refused(
        &["summary", "--model", "vgg16", "--adaptive-pool", "0"],
        &["'0'", "pool size", "none"],
    );
    // A corrupt running variance would make every output NaN: refused, named.
    let mut file = io::load_tensors(&family("vgg16_bn/weights.safetensors")).unwrap();
    for (name, t) in &mut file.tensors {
        if name == "features.8.running_var" {
            t.data[0] = -1.0;
        }
    }
    let corrupt = tmp("negative-variance.safetensors");
    io::save_safetensors(&corrupt, &file).unwrap();
    refused(
        &["forward", "--weights", s(&corrupt), "--random", "1"],
        &["features.8.running_var", "negative variances", "corrupt"],
    );
}
