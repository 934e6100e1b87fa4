//! `vgg train` on the shipped digits: the README's command, resuming, the log and the plot, and
//! named errors for missing or corrupt data and diverging runs.

mod common;

use std::path::{Path, PathBuf};

use common::{failed, ok, refused};
use vgg_nn::io;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgg-cli-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn digits_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/digits")
        .to_string_lossy()
        .into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_readme_command_reaches_97_percent_with_a_log_and_a_plot() {
    let (ckpt, log, plot) = (
        tmp("readme.safetensors"),
        tmp("log.json"),
        tmp("curves.svg"),
    );
    let data = digits_dir();
    let out = ok(&[
        "train",
        "--data",
        &data,
        "--output",
        s(&ckpt),
        "--json",
        s(&log),
        "--plot",
        s(&plot),
    ]);
    assert!(out.contains("epoch 10/10:"), "{out}");
    let accuracy: f64 = out
        .split("test accuracy ")
        .last()
        .and_then(|r| r.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(accuracy >= 97.0, "test accuracy {accuracy}%: {out}");
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(log.as_array().unwrap().len(), 10);
    assert!(log[9]["test_accuracy"].as_f64().unwrap() >= 0.97);
    let svg = std::fs::read_to_string(&plot).unwrap();
    // Four curves (and their legend keys); cli_figures renders the plot and checks its pixels.
    assert!(
        svg.starts_with("<svg") && svg.matches("<polyline").count() >= 4,
        "{svg}"
    );
    // The checkpoint holds the weights under torchvision's names and the optimiser's state.
    let file = io::load_safetensors(&ckpt).unwrap();
    assert!(file.tensors.iter().any(|(n, _)| n == "features.0.weight"));
    assert!(file
        .tensors
        .iter()
        .any(|(n, _)| n == "optimizer.features.0.weight.m"));
    assert_eq!(file.metadata["train.epoch"], "10");
}

#[test]
fn resuming_continues_to_the_same_weights() {
    let data = digits_dir();
    let args = |epochs: &str, output: &Path| {
        [
            "train",
            "--data",
            &data,
            "--epochs",
            epochs,
            "--schedule",
            "constant",
            "--output",
            s(output),
        ]
        .map(str::to_string)
        .to_vec()
    };
    let run = |args: Vec<String>| ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (part, resumed, straight) = (
        tmp("part.safetensors"),
        tmp("resumed.safetensors"),
        tmp("straight.safetensors"),
    );
    run(args("1", &part));
    let mut resume = args("2", &resumed);
    resume.extend(["--resume".to_string(), s(&part).to_string()]);
    let out = run(resume);
    assert!(
        out.contains("from epoch 2") && out.contains("epoch 2/2"),
        "{out}"
    );
    run(args("2", &straight));
    let (a, b) = (
        io::load_safetensors(&resumed).unwrap(),
        io::load_safetensors(&straight).unwrap(),
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    for ((n1, t1), (n2, t2)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(n1, n2);
        assert!(
            t1.data == t2.data,
            "{n1} differs between the resumed and the uninterrupted run"
        );
    }
}

#[test]
fn bad_data_and_diverging_runs_are_named() {
    let out = tmp("never.safetensors");
    refused(
        &["train", "--dataset", "cifar10", "--output", s(&out)],
        &["--data", "cifar-10-batches-bin"],
    );
    let empty = tmp("empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    refused(
        &[
            "train",
            "--dataset",
            "cifar10",
            "--data",
            s(&empty),
            "--output",
            s(&out),
        ],
        &["missing data_batch_1.bin"],
    );
    refused(
        &["train", "--data", s(&empty), "--output", s(&out)],
        &["missing digits-images.npy"],
    );
    let corrupt = tmp("corrupt-digits");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("digits-images.npy"), b"garbage").unwrap();
    std::fs::write(corrupt.join("digits-labels.npy"), b"garbage").unwrap();
    refused(
        &["train", "--data", s(&corrupt), "--output", s(&out)],
        &["digits-images.npy", "not a valid .npy"],
    );
    // A run that diverges is a failure while running, not bad input.
    failed(
        &[
            "train",
            "--data",
            &digits_dir(),
            "--optimizer",
            "sgd",
            "--lr",
            "1e6",
            "--epochs",
            "1",
            "--output",
            s(&out),
        ],
        &["the loss became", "epoch 1, step", "--lr"],
    );
    refused(
        &["train", "--keep-prob", "0", "--output", s(&out)],
        &["--keep-prob"],
    );
}
