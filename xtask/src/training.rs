//! `cargo xtask bench --training`: `vgg train`'s epochs timed beside the same run in PyTorch
//! (bench/peers/pytorch_train.py, NCHW and channels_last), where small layers show per-op
//! overhead, threading and algorithm choice rather than arithmetic.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{python_has, read_json, root};

/// What to train and for how long; the network and optimiser are `vgg train`'s defaults.
pub struct TrainingSettings {
    /// `digits` or `cifar10`.
    pub dataset: String,
    /// CIFAR-10's binary batches; without it, random images of its size are made.
    pub data: Option<PathBuf>,
    pub epochs: String,
    pub batch: String,
    pub threads: String,
}

/// CIFAR-10's binary layout: a label byte and 3x32x32 pixel bytes per record.
const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;
const CIFAR_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// Random images in CIFAR-10's format and number (5 x 10,000 training, 10,000 test), for
/// machines without the download: an epoch costs what it costs on the real images.
fn synthetic_cifar(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for name in CIFAR_FILES {
        let path = dir.join(name);
        let want = (10_000 * CIFAR_RECORD) as u64;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == want) {
            continue;
        }
        let mut bytes = vec![0u8; 10_000 * CIFAR_RECORD];
        for (i, b) in bytes.iter_mut().enumerate() {
            // xorshift64*: reproducible bytes without a dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
            *b = if i % CIFAR_RECORD == 0 { v % 10 } else { v };
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// (median seconds of the epochs after the first, or of the only one; last test accuracy).
fn epoch_summary(epochs: &[Value]) -> (f64, f64) {
    let mut seconds: Vec<f64> = epochs
        .iter()
        .skip(usize::from(epochs.len() > 1))
        .filter_map(|e| e["seconds"].as_f64())
        .collect();
    seconds.sort_by(f64::total_cmp);
    let median = match seconds.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => seconds[n / 2],
        n => (seconds[n / 2 - 1] + seconds[n / 2]) / 2.0,
    };
    let accuracy = epochs
        .last()
        .and_then(|e| e["test_accuracy"].as_f64())
        .unwrap_or(f64::NAN);
    (median, accuracy)
}

/// Runs the comparison and prints it.
pub fn run(t: &TrainingSettings, peers: bool, ours_only: &[String]) -> Result<()> {
    let out_dir = super::target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let data = match (&t.data, t.dataset.as_str()) {
        (Some(d), _) => Some(d.clone()),
        (None, "cifar10") => {
            eprintln!(
                "no --data: training on random images in CIFAR-10's size and format (bench/cifar10-random in the target directory); \
                 the times are the real data's, the accuracies chance"
            );
            Some(synthetic_cifar(&out_dir.join("cifar10-random"))?)
        }
        (None, _) => None,
    };
    let common = |cmd: &mut Command| {
        cmd.args(["--dataset", &t.dataset])
            .args(["--epochs", &t.epochs])
            .args(["--batch-size", &t.batch])
            .args(["--threads", &t.threads]);
        if let Some(d) = &data {
            cmd.arg("--data").arg(d);
        }
    };
    let ours_json = out_dir.join("train-vgg.json");
    let mut cmd = Command::new(super::built_vgg("release")?);
    cmd.arg("train");
    common(&mut cmd);
    cmd.args(ours_only)
        .arg("--json")
        .arg(&ours_json)
        .arg("--output")
        .arg(out_dir.join("train-vgg.safetensors"));
    eprintln!("$ {cmd:?}");
    if !cmd.status().context("running vgg train")?.success() {
        bail!("vgg train failed");
    }
    let ours = read_json(&ours_json)?;
    let mut rows = vec![(
        "vgg (ours)".to_string(),
        epoch_summary(ours.as_array().map_or(&[][..], Vec::as_slice)),
    )];
    if peers {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        if python_has(&python, "torch") {
            for format in ["contiguous", "channels_last"] {
                let json = out_dir.join(format!("train-torch-{format}.json"));
                let mut cmd = Command::new(&python);
                cmd.arg(root().join("bench/peers/pytorch_train.py"));
                common(&mut cmd);
                cmd.args(["--memory-format", format])
                    .arg("--json")
                    .arg(&json);
                eprintln!("$ {cmd:?}");
                if !cmd.status().context("running pytorch_train.py")?.success() {
                    bail!("pytorch_train.py failed");
                }
                let record = read_json(&json)?;
                let name = format!(
                    "PyTorch {} {}",
                    record["version"].as_str().unwrap_or("?"),
                    if format == "contiguous" {
                        "NCHW"
                    } else {
                        format
                    }
                );
                let epochs = record["epochs"].as_array().map_or(&[][..], Vec::as_slice);
                rows.push((name, epoch_summary(epochs)));
            }
        } else {
            eprintln!("PyTorch: `{python} -c 'import torch'` fails; skipped (set PYTHON to an interpreter that has it)");
        }
    }
    println!(
        "\n`vgg train` (VGG-11 at width 1/4, hidden 128, Adam, batch {}) on {}, {} epochs, threads {} (0: all)",
        t.batch, t.dataset, t.epochs, t.threads
    );
    println!(
        "{:<34} {:>16} {:>14} {:>10}",
        "framework", "epoch s (median)", "test accuracy", "ours/this"
    );
    let ours_median = rows[0].1 .0;
    for (name, (median, accuracy)) in &rows {
        println!(
            "{name:<34} {median:>16.3} {:>13.2}% {:>9.2}x",
            100.0 * accuracy,
            ours_median / median
        );
    }
    println!(
        "An epoch: its training steps and the evaluation of the held-out images, as `vgg train` reports it; the \
         median leaves out the first epoch (warm-up) when there are more. ours/this below 1: we are faster."
    );
    Ok(())
}
