//! The second robustness pass (docs/robustness.md, sections 9-14): benchmark records whose
//! numbers overflow or never end, inputs that are devices or pipes, the memory cap on every read,
//! outputs that collide with each other or with inputs, checkpoints whose optimiser state or
//! metadata disagree with the run, Ctrl-C in bench, launchers other than Open MPI's, and the
//! message for images of another size than the network's. One test per class.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{finish_within, init_grey_32, ok, refused, spawn, stderr, vgg, TINY_TRAIN};
use vgg_nn::io;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A refusal (exit 2, one "error:" line naming `needles`) within ten seconds.
fn refused_promptly(args: &[&str], needles: &[&str]) {
    let out = finish_within(
        spawn(args),
        Duration::from_secs(10),
        &format!("vgg {args:?}"),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "vgg {args:?}: {err}");
    assert!(!err.contains("panicked"), "vgg {args:?}: {err}");
    assert!(err.starts_with("error: "), "vgg {args:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "vgg {args:?}: '{needle}' missing: {err}"
        );
    }
}

fn peer_record(dir: &Path, name: &str, batch: serde_json::Value, steps: &[f64]) -> PathBuf {
    let path = dir.join(name);
    let record = serde_json::json!({
        "schema": "vgg-peer-bench/1", "framework": "peer", "version": "1", "threads": 2,
        "batch": batch, "image_size": 224,
        "modes": {"forward": {"step_seconds": steps}}
    });
    std::fs::write(&path, record.to_string()).unwrap();
    path
}

/// One epoch of the tests' small network.
fn tiny_train() -> Vec<&'static str> {
    let mut args = TINY_TRAIN.to_vec();
    args.extend(["--epochs", "1"]);
    args
}

/// One epoch of a tiny network on the digits (32x32 inputs), trained once for every test here.
fn checkpoint() -> &'static Path {
    static CKPT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = CKPT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let mut args = tiny_train();
        args.extend(["--output", s(&path)]);
        ok(&args);
        (dir, path)
    });
    path
}

/// `--resume from` for two epochs, writing to a fresh file in `dir`.
fn resume_args<'a>(dir: &'a Path, from: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = TINY_TRAIN.iter().map(|a| a.to_string()).collect();
    args.extend(["--epochs", "2"].map(String::from));
    args.extend(
        [
            "--resume",
            s(from),
            "--output",
            s(&dir.join("more.safetensors")),
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string()),
    );
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

// ---- 9. benchmark records: every number bounded ----

#[test]
fn records_that_claim_the_impossible_are_refused_not_computed_with() {
    let dir = tempfile::tempdir().unwrap();
    // The batch that overflowed the FLOPs count (a panic, exit 101).
    let huge = peer_record(dir.path(), "batch.json", u64::MAX.into(), &[0.5]);
    refused_promptly(&["report", s(&huge)], &["batch.json", "the batch size is"]);
    // Step times near f64::MAX (a spin) and near zero (infinite images/s).
    for (name, step) in [("max.json", f64::MAX / 4.0), ("tiny.json", 1e-300)] {
        let path = peer_record(dir.path(), name, 32.into(), &[0.5, step]);
        refused_promptly(&["report", s(&path)], &[name, "step time of"]);
    }
    // A plausible record still makes a page.
    let fine = peer_record(dir.path(), "fine.json", 32.into(), &[0.5, 0.6]);
    let page = ok(&["report", s(&fine)]);
    assert!(page.contains("<html"), "{page}");
}

// ---- 10. inputs that are not regular files, and the memory cap on every read ----

#[cfg(unix)]
#[test]
fn devices_and_pipes_are_refused_as_inputs_without_reading_or_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = dir.path().join("out.npy");
    for input in ["/dev/zero", s(&fifo)] {
        let kind = if input == "/dev/zero" {
            "a device"
        } else {
            "a named pipe"
        };
        refused_promptly(&["report", input], &[input, kind]);
        refused_promptly(&["summary", "--weights", input], &[input, kind]);
        refused_promptly(
            &[
                "forward",
                "--weights",
                input,
                "--random",
                "1",
                "--output",
                s(&out),
            ],
            &[input, kind],
        );
        refused_promptly(
            &[
                "forward",
                "--weights",
                s(checkpoint()),
                "--input",
                input,
                "--output",
                s(&out),
            ],
            &[input, kind],
        );
    }
}

#[test]
fn max_memory_bounds_every_file_read() {
    let dir = tempfile::tempdir().unwrap();
    let steps = vec![0.5; 4000];
    let record = peer_record(dir.path(), "long.json", 32.into(), &steps);
    assert!(std::fs::metadata(&record).unwrap().len() > 8192);
    refused_promptly(
        &["--max-memory", "8K", "report", s(&record)],
        &["long.json", "more than the 8.00 KiB of memory available"],
    );
    refused_promptly(
        &[
            "--max-memory",
            "64K",
            "summary",
            "--weights",
            s(checkpoint()),
        ],
        &["ckpt.safetensors", "of memory available"],
    );
    assert!(ok(&["report", s(&record)]).contains("<html"));
}

// ---- 11. outputs that collide ----

#[cfg(unix)]
#[test]
fn outputs_that_are_the_same_file_or_an_input_are_refused_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = d.join("x");
    let mut train = tiny_train();
    train.extend(["--plot", s(&x), "--output", s(&x)]);
    refused_promptly(&train, &["--output", "--plot", "both name"]);
    assert!(!x.exists(), "refused before any work");
    // Also through `..` and a hard link to the checkpoint being resumed.
    let copy = d.join("ck.safetensors");
    std::fs::copy(checkpoint(), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let through = d.join("sub");
    std::fs::create_dir(&through).unwrap();
    let dotted = through.join("../ck.safetensors");
    let args = resume_args(d, &copy, &["--json", s(&dotted)]);
    refused_promptly(&strs(&args), &["--json", "--resume", "destroy the input"]);
    let hard = d.join("hard.json");
    std::fs::hard_link(&copy, &hard).unwrap();
    let args = resume_args(d, &copy, &["--plot", s(&hard)]);
    refused_promptly(&strs(&args), &["--plot", "--resume"]);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        before,
        "the checkpoint is untouched"
    );
    // --output rewriting the checkpoint it resumes is the documented point of --resume.
    let mut args = resume_args(d, &copy, &[]);
    let at = args.iter().position(|a| a == "--output").unwrap();
    args[at + 1] = s(&copy).to_string();
    ok(&strs(&args));
    // forward's and report's outputs against their inputs, bench's two outputs.
    let weights = s(checkpoint());
    refused_promptly(
        &[
            "forward",
            "--weights",
            weights,
            "--random",
            "1",
            "--output",
            weights,
        ],
        &["--output", "--weights"],
    );
    let record = peer_record(d, "r.json", 32.into(), &[0.5]);
    refused_promptly(
        &["report", s(&record), "--output", s(&record)],
        &["--output", "a record"],
    );
    let both = d.join("both");
    let mut bench = common::tiny_bench(&[]);
    bench.extend(["--json", s(&both), "--report", s(&both)].map(String::from));
    refused_promptly(&strs(&bench), &["--json", "--report"]);
}

// ---- 12. a checkpoint's optimiser state and metadata ----

fn damaged(dir: &Path, name: &str, damage: impl FnOnce(&mut io::TensorFile)) -> PathBuf {
    let mut file = io::load_safetensors(checkpoint()).unwrap();
    damage(&mut file);
    let path = dir.join(name);
    io::save_safetensors(&path, &file).unwrap();
    path
}

#[test]
fn optimiser_state_is_checked_like_weights() {
    let dir = tempfile::tempdir().unwrap();
    let slot = "optimizer.classifier.6.weight.v";
    let cases: [(&str, f32, &str); 3] = [
        ("nan.safetensors", f32::NAN, "NaN or infinite"),
        ("inf.safetensors", f32::INFINITY, "NaN or infinite"),
        ("negative.safetensors", -1.0, "negative"),
    ];
    for (name, value, needle) in cases {
        let path = damaged(dir.path(), name, |f| {
            let (_, t) = f.tensors.iter_mut().find(|(n, _)| n == slot).unwrap();
            t.data[3] = value;
        });
        refused(
            &strs(&resume_args(dir.path(), &path, &[])),
            &[name, slot, needle],
        );
    }
}

#[test]
fn checkpoint_metadata_must_agree_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let meta = |name, key: &str, value: &str| {
        let (key, value) = (key.to_string(), value.to_string());
        damaged(dir.path(), name, move |f| {
            f.metadata.insert(key, value);
        })
    };
    let cifar = meta("cifar.safetensors", "train.dataset", "cifar10");
    refused(
        &strs(&resume_args(dir.path(), &cifar, &[])),
        &["cifar.safetensors", "--dataset cifar10"],
    );
    let seeded = meta("seed.safetensors", "train.seed", "7");
    refused(&strs(&resume_args(dir.path(), &seeded, &[])), &["--seed 7"]);
    let odd = meta("odd.safetensors", "train.dataset", "imagenet-22k");
    refused(
        &["eval", "--weights", s(&odd)],
        &["odd.safetensors", "train.dataset", "imagenet-22k"],
    );
    let fraction = meta("fraction.safetensors", "train.test_fraction", "2.5");
    refused(
        &["eval", "--weights", s(&fraction)],
        &["train.test_fraction"],
    );
    // Another data set on purpose is a notice, not an error.
    let out = vgg(&["eval", "--weights", s(checkpoint()), "--dataset", "digits"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

// ---- 13. launchers ----

#[test]
fn launchers_other_than_open_mpi_are_recognised_and_bad_variables_refused() {
    let run = |var: &str, value: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vgg"))
            .args(common::tiny_bench(&[
                "--json",
                s(&dir.path().join("r.json")),
            ]))
            .env(var, value)
            .output()
            .unwrap();
        (out.status.code(), stderr(&out))
    };
    if cfg!(not(feature = "mpi")) {
        for (var, launcher) in [
            ("SLURM_STEP_NUM_TASKS", "Slurm"),
            ("PMI_SIZE", "Hydra"),
            ("MV2_COMM_WORLD_SIZE", "MVAPICH"),
        ] {
            let (code, err) = run(var, "2");
            assert_eq!(code, Some(2), "{var}: {err}");
            assert!(err.contains(launcher) && err.contains("2 ranks"), "{err}");
        }
    }
    let (code, err) = run("OMPI_COMM_WORLD_SIZE", "two");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("OMPI_COMM_WORLD_SIZE=two"), "{err}");
}

// ---- 14. messages that name the real problem ----

#[test]
fn an_image_is_prepared_for_its_network_or_named_as_unfit() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("cat.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 100, 50]))
        .save(&png)
        .unwrap();
    // A digits checkpoint: any picture is prepared as the digits were (8x8 grey, 32x32).
    let weights = s(checkpoint());
    let out = ok(&["classify", "--weights", weights, s(&png)]);
    assert!(out.contains("images prepared as the digits'"), "{out}");
    let logits = dir.path().join("o.npy");
    ok(&[
        "forward",
        "--weights",
        weights,
        "--input",
        s(&png),
        "--output",
        s(&logits),
    ]);
    // A one-channel network with no data set recorded: ImageNet's colour images do not fit it.
    let grey = dir.path().join("grey.safetensors");
    init_grey_32(s(&grey));
    refused(
        &["classify", "--weights", s(&grey), s(&png)],
        &["1x32x32", "ImageNet's", "3x32x32", ".npy"],
    );
}
