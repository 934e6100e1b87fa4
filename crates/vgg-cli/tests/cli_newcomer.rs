//! What a newcomer meets: checkpoints accepted everywhere, `vgg eval`, images and random batches
//! as inputs, one vocabulary with the old spellings kept, errors that say what a file is, exit
//! codes, reports that name what was run, completions and a manual page.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, ok, refused, s, stderr, stdout, vgg};
use vgg_nn::io;

/// A small checkpoint trained for one epoch on the digits (carried in the binary).
fn checkpoint(dir: &Path) -> PathBuf {
    let ckpt = dir.join("ckpt.safetensors");
    ok(&[
        "train",
        "--epochs",
        "1",
        "--width-mult",
        "0.125",
        "--hidden",
        "16",
        "--batch-size",
        "64",
        "--output",
        s(&ckpt),
    ]);
    ckpt
}

#[test]
fn a_training_checkpoint_works_as_weights_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path());
    // forward on random digits-sized images: the size comes from the checkpoint.
    let logits = dir.path().join("logits.npy");
    let out = ok(&[
        "forward",
        "--weights",
        s(&ckpt),
        "--random",
        "3",
        "--output",
        s(&logits),
    ]);
    assert!(out.contains("image 2: top-5:"), "{out}");
    assert_eq!(io::load_npy(&logits).unwrap().shape, [3, 10]);
    // backward too.
    let grads = dir.path().join("grads.safetensors");
    let out = ok(&[
        "backward",
        "--weights",
        s(&ckpt),
        "--random",
        "2",
        "--output",
        s(&grads),
    ]);
    assert!(out.contains("22 gradients"), "{out}");
    // summary reads the network from it.
    let out = ok(&["summary", "--weights", s(&ckpt)]);
    assert!(out.contains("vgg11") && out.contains("32x32x1"), "{out}");
    // eval finds the held-out digits from its metadata.
    let out = ok(&["eval", "--weights", s(&ckpt)]);
    assert!(
        out.contains("test split") && out.contains("of 359 correct"),
        "{out}"
    );
    assert!(out.contains("confusion"), "{out}");
    let json = ok(&["eval", "--weights", s(&ckpt), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["schema"], "vgg-eval/1");
    assert_eq!(v["images"], 359);
    let confusion = v["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 359);
    let correct: u64 = (0..10).map(|c| confusion[c][c].as_u64().unwrap()).sum();
    assert_eq!(v["correct"], correct);
    // A checkpoint is not classified as ImageNet: its images are prepared as the digits were.
    let out = ok(&[
        "classify",
        "--weights",
        s(&ckpt),
        &fixture("classify", "image.png"),
    ]);
    assert!(out.contains("images prepared as the digits'"), "{out}");
    assert!(!out.contains("optimizer."), "{out}");
}

#[test]
fn images_and_random_batches_are_inputs_too() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixture("classify", "weights.safetensors");
    let logits = dir.path().join("l.npy");
    let image = fixture("classify", "image.png");
    let out = ok(&[
        "forward",
        "--weights",
        &weights,
        "--input",
        &image,
        &image,
        "--output",
        s(&logits),
    ]);
    assert_eq!(io::load_npy(&logits).unwrap().shape, [2, 1000]);
    // ImageNet names beside the class numbers.
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("classify", "expected.json")).unwrap(),
    )
    .unwrap();
    let first = expected["classes"][0].as_u64().unwrap();
    let line = out.lines().find(|l| l.starts_with("image 0")).unwrap();
    assert!(line.contains(&format!("top-5: {first} ")), "{line}");
    assert!(
        line.chars().filter(|c| c.is_alphabetic()).count() > 10,
        "{line}"
    );
    // Seeded random batches.
    let a = dir.path().join("a.npy");
    let b = dir.path().join("b.npy");
    for path in [&a, &b] {
        ok(&[
            "forward",
            "--weights",
            &weights,
            "--random",
            "2",
            "--seed",
            "5",
            "--output",
            s(path),
        ]);
    }
    assert_eq!(io::load_npy(&a).unwrap(), io::load_npy(&b).unwrap());
    refused(
        &["forward", "--weights", &weights, "--output", s(&a)],
        &["--input", "--random"],
    );
}

#[test]
fn old_spellings_still_work() {
    let new = ok(&["summary", "--image-size", "64x48", "--batch-size", "2"]);
    let old = ok(&["summary", "--input", "64x48", "--batch", "2"]);
    assert_eq!(new, old);
    assert!(
        new.contains("input 64x48x3") && new.contains("batch 2"),
        "{new}"
    );
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    ok(&[
        "init",
        "--model",
        "vgg11",
        "--width-mult",
        "0.125",
        "--hidden",
        "8",
        "--input",
        "32",
        "--output",
        s(&w),
    ]);
    let out = ok(&["summary", "--weights", s(&w)]);
    assert!(out.contains("input 32x32x3"), "{out}");
}

#[test]
fn errors_say_what_a_file_is_and_print_os_errors_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.npy");
    refused(
        &[
            "forward",
            "--weights",
            &fixture("classify", "image.png"),
            "--random",
            "1",
            "--output",
            s(&out),
        ],
        &["image.png", "appears to be a PNG image"],
    );
    let missing = dir.path().join("missing.safetensors");
    let e = vgg(&["summary", "--weights", s(&missing)]);
    let err = stderr(&e);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    // The weights' problem names the weights first.
    let big = dir.path().join("big.npy");
    io::save_npy(
        &big,
        &io::HostTensor {
            shape: vec![1, 3, 64, 64],
            data: vec![0.5; 3 * 64 * 64],
        },
    )
    .unwrap();
    let e = vgg(&[
        "forward",
        "--weights",
        &fixture("vgg11-w8", "weights.safetensors"),
        "--input",
        s(&big),
        "--output",
        s(&out),
    ]);
    let err = stderr(&e);
    // Named as the input size it is, not as the tensor that then disagrees.
    assert!(
        err.starts_with("error: ")
            && err.contains("weights.safetensors holds a network made for 32x32 inputs")
            && err.contains("the inputs are 64x64"),
        "{err}"
    );
}

#[test]
fn usage_errors_are_clap_messages_and_exit_codes_are_documented() {
    // Bare `vgg` shows the help and fails with 2.
    let out = vgg(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Usage: vgg"), "{}", stderr(&out));
    let out = vgg(&["summary", "--model", "vgg17"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.lines().count() > 1 && err.contains("For more information, try '--help'"),
        "{err}"
    );
    let help = ok(&["--help"]);
    assert!(
        help.contains("Exit codes") && help.contains("130"),
        "{help}"
    );
    // Piped, as here, the help is plain text: no terminal colour codes.
    assert!(
        !help.contains('\u{1b}'),
        "escape codes in piped help: {help:?}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["train", "--help"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success() && !out.stdout.contains(&0x1b));
    // --model lists the models.
    let help = ok(&["forward", "--help"]);
    assert!(
        help.contains("vgg11 (A)") && help.contains("vgg19 (E)"),
        "{help}"
    );
}

#[test]
fn reports_name_what_ran() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("b.json");
    let before = chrono_like_now();
    let out = ok(&[
        "bench",
        "--model",
        "vgg11",
        "--width-mult",
        "0.125",
        "--hidden",
        "16",
        "--classes",
        "10",
        "--image-size",
        "32",
        "--batch-size",
        "1",
        "--num-batches",
        "1",
        "--burn-in",
        "0",
        "--mode",
        "forward",
        "--per-layer",
        "--json",
        s(&json),
    ]);
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("vgg11 (width x0.125, hidden 16, 10 classes)"),
        "{header}"
    );
    assert!(!out.contains("backward ms"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // `started` is when the run started, not when the file was written.
    let started = v["started"].as_str().unwrap().to_string();
    assert!(started >= before, "{started} < {before}");
    let out = ok(&["rf", "--layers", "conv3"]);
    assert!(out.contains("1 layer (1 convolution)"), "{out}");
}

/// The local time as `vgg bench` writes it, to a second.
fn chrono_like_now() -> String {
    let out = std::process::Command::new("date")
        .arg("+%Y-%m-%d %H:%M:%S")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn completions_and_a_manual_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(&["completions", shell]);
        assert!(
            out.contains("vgg") && out.contains("train"),
            "{shell}: {out}"
        );
    }
    let man = ok(&["manpage"]);
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
    assert!(man.contains("summary"), "{man}");
    let out = vgg(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
}

#[test]
fn forward_prints_the_top_classes_without_an_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args([
            "forward",
            "--weights",
            &fixture("vgg11-w8", "weights.safetensors"),
            "--random",
            "2",
            "--top",
            "3",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("image 0: top-3: ") && text.contains("image 1: top-3: "),
        "{text}"
    );
    assert!(!text.contains("wrote"), "{text}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
