//! `cargo xtask <task>`: the project's chores, in Rust so they run wherever cargo does.

mod test;
mod training;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci                 runs .ci/run: fmt, clippy -D warnings, the API docs, then `test`
  test [--setup-only]  every test: installs what the tests need where it is missing (a font,
                     Chromium, Open MPI, libclang, pip, iproute2; with apt-get, as root or
                     through sudo, saying what and why), then the workspace's tests, the two-rank
                     MPI tests, as root the emulated two-host cluster, and the CUDA kernels'
                     NVRTC compile, each stage timed; --setup-only installs only
  bench [options]    `vgg bench` in release mode with the reference's settings (VGG-16, batch 32,
                     10 burn-in + 100 timed steps, forward and forward-backward)
      --quick              a smoke run: batch 2, 1 burn-in + 3 timed steps
      --peers              also run the same protocol in PyTorch (NCHW and channels_last),
                           TensorFlow, and forward only OpenVINO, ONNX Runtime and ncnn (one
                           image at a time; converted by pnnx) (bench/peers/) where $PYTHON (default
                           python3) imports them, and print one side-by-side table with the best
                           peer per mode
      --model NAME         the network (default vgg16, the reference's); the peers run vgg11, vgg13,
                           vgg16 and vgg19, with _bn in PyTorch, OpenVINO, ONNX Runtime and ncnn
      --isa native|avx512|avx2|portable   cap our kernels' vector unit (the peers keep theirs)
      --precision f32|bf16  the arithmetic, ours and the peers' (bf16: PyTorch under autocast,
                           OpenVINO's bf16 inference precision; TensorFlow, ONNX Runtime and ncnn
                           skipped)
      --report FILE.html   also write the results (with --peers, every framework's side by side) as
                           one self-contained HTML page (`vgg report`)
      --batch-size N  --num-batches N  --burn-in N  --image-size N  --threads N
      --mode forward|forward-backward|both
      --training           time `vgg train`'s epochs instead (VGG-11 at width 1/4, Adam, batch 32),
                           with --peers beside PyTorch's (bench/peers/pytorch_train.py)
          --dataset digits|cifar10  --data DIR (cifar10 without it: random images of its size)
          --epochs N (default 3)
  gpu-bundle [DIR]   build what scripts/gpu-check.sh runs on a GPU machine without Rust into DIR
                     (default .device-bin): the release `vgg` and vgg-cuda's test binaries
  figures            redraws the README's figures with `vgg` (docs/figures/*.svg); a test
                     checks they are what `vgg` draws now";

/// The cargo that runs this task (falling back to the one on PATH).
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = cargo_program();
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `.ci/run` itself, so the two can never differ.
fn ci() -> Result<()> {
    let script = root().join(".ci/run");
    eprintln!("$ {}", script.display());
    let status = Command::new("bash").arg(&script).status()?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// Settings shared by every framework of a run.
struct Settings {
    batch: String,
    num_batches: String,
    burn_in: String,
    image_size: String,
    threads: String,
    mode: String,
}

impl Settings {
    fn args(&self) -> Vec<String> {
        [
            ("--batch-size", &self.batch),
            ("--num-batches", &self.num_batches),
            ("--burn-in", &self.burn_in),
            ("--image-size", &self.image_size),
            ("--threads", &self.threads),
            ("--mode", &self.mode),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }
}

/// The network as the peers' scripts (bench/peers/common.py) take it: a configuration and
/// whether BatchNorm follows each convolution.
struct PeerModel {
    config: String,
    batch_norm: bool,
}

impl PeerModel {
    /// `vgg bench --model`'s name in the peers' terms, or None where they cannot run it (VGG-16's
    /// configuration C, with 1x1 convolutions, is ours alone).
    fn of(model: &str) -> Option<PeerModel> {
        let name = model.trim().to_ascii_lowercase().replace('-', "_");
        let (config, batch_norm) = match name.strip_suffix("_bn") {
            Some(config) => (config, true),
            None => (name.as_str(), false),
        };
        ["vgg11", "vgg13", "vgg16", "vgg19"]
            .contains(&config)
            .then(|| PeerModel {
                config: config.to_string(),
                batch_norm,
            })
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec!["--model".to_string(), self.config.clone()];
        if self.batch_norm {
            args.push("--batch-norm".to_string());
        }
        args
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Cargo's target directory for this workspace, as cargo itself reports it (so `CARGO_TARGET_DIR`
/// and `build.target-dir` are honoured).
fn target_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(cargo_program())
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(root())
            .output();
        out.ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .and_then(|m| m["target_directory"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| root().join("target"))
    })
    .clone()
}

/// A `vgg` that cargo has just built in `profile` ("release", "debug"), named if it is not there.
fn built_vgg(profile: &str) -> Result<PathBuf> {
    let vgg = target_dir().join(profile).join("vgg");
    if !vgg.is_file() {
        bail!(
            "{} is not there after building it: is another cargo using another target directory?",
            vgg.display()
        );
    }
    Ok(vgg)
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Whether `python` imports `module`.
fn python_has(python: &str, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn bench(args: &[String]) -> Result<()> {
    let mut s = Settings {
        batch: "32".into(),
        num_batches: "100".into(),
        burn_in: "10".into(),
        image_size: "224".into(),
        threads: "0".into(),
        mode: "both".into(),
    };
    let mut peers = false;
    let mut training = false;
    let mut t = training::TrainingSettings {
        dataset: "digits".into(),
        data: None,
        epochs: "3".into(),
        batch: String::new(),
        threads: String::new(),
    };
    let mut report: Option<PathBuf> = None;
    let mut ours_only: Vec<String> = Vec::new();
    let mut precision = "f32".to_string();
    let mut model: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--quick" => {
                s.batch = "2".into();
                s.num_batches = "3".into();
                s.burn_in = "1".into();
            }
            "--peers" => peers = true,
            "--training" => training = true,
            "--dataset" => t.dataset = value()?,
            "--data" => t.data = Some(PathBuf::from(value()?)),
            "--epochs" => t.epochs = value()?,
            "--report" => report = Some(PathBuf::from(value()?)),
            "--isa" => ours_only.extend(["--isa".to_string(), value()?]),
            "--precision" => precision = value()?,
            "--model" => model = Some(value()?),
            "--batch-size" => s.batch = value()?,
            "--num-batches" => s.num_batches = value()?,
            "--burn-in" => s.burn_in = value()?,
            "--image-size" => s.image_size = value()?,
            "--threads" => s.threads = value()?,
            "--mode" => s.mode = value()?,
            other => bail!("unknown option '{other}'\n{USAGE}"),
        }
    }
    if !["f32", "bf16"].contains(&precision.as_str()) {
        bail!("--precision is f32 or bf16, not '{precision}'\n{USAGE}");
    }
    ours_only.extend(["--precision".to_string(), precision.clone()]);
    if training && model.is_some() {
        bail!("--model is for the inference benchmark; --training times the README's small network\n{USAGE}");
    }
    let model = model.unwrap_or_else(|| "vgg16".to_string());
    let peer_model = PeerModel::of(&model);
    if peers && peer_model.is_none() {
        bail!(
            "the peers run vgg11, vgg13, vgg16 and vgg19 (with or without _bn), not '{model}'; \
             drop --peers to time it alone"
        );
    }
    cargo(&["build", "--release", "--quiet", "-p", "vgg-cli"])?;
    if training {
        (t.batch, t.threads) = (s.batch, s.threads);
        return training::run(&t, peers, &ours_only);
    }
    ours_only.extend(["--model".to_string(), model.clone()]);
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let ours_json = out_dir.join("vgg.json");
    let vgg = built_vgg("release")?;
    let mut cmd = Command::new(&vgg);
    cmd.arg("bench")
        .args(s.args())
        .args(&ours_only)
        .arg("--json")
        .arg(&ours_json);
    eprintln!("$ {cmd:?}");
    if !cmd.status().context("running vgg bench")?.success() {
        bail!("vgg bench failed");
    }
    let mut records = vec![ours_json.clone()];
    if peers {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        for (name, module, script, options, file) in [
            (
                "PyTorch",
                "torch",
                "pytorch_bench.py",
                &[][..],
                "torch.json",
            ),
            (
                "PyTorch channels_last",
                "torch",
                "pytorch_bench.py",
                &["--memory-format", "channels_last"][..],
                "torch-channels-last.json",
            ),
            (
                "TensorFlow",
                "tensorflow",
                "tensorflow_bench.py",
                &[][..],
                "tensorflow.json",
            ),
            (
                "OpenVINO",
                "openvino",
                "openvino_bench.py",
                &[][..],
                "openvino.json",
            ),
            (
                "ONNX Runtime",
                "onnxruntime",
                "onnxruntime_bench.py",
                &[][..],
                "onnxruntime.json",
            ),
            ("ncnn", "ncnn", "ncnn_bench.py", &[][..], "ncnn.json"),
        ] {
            let f32_only = matches!(module, "tensorflow" | "onnxruntime" | "ncnn");
            if precision == "bf16" && f32_only {
                eprintln!("{name}: no bf16 mode in bench/peers/{script}; skipped");
                continue;
            }
            let peer_model = peer_model.as_ref().expect("checked with --peers above");
            if peer_model.batch_norm && module == "tensorflow" {
                eprintln!("{name}: bench/peers/{script} ports the reference, which has no BatchNorm; skipped");
                continue;
            }
            let inference_only = matches!(module, "openvino" | "onnxruntime" | "ncnn");
            if inference_only && s.mode == "forward-backward" {
                eprintln!("{name}: an inference engine, forward only; skipped");
                continue;
            }
            // ncnn's peer converts the network with pnnx, a package of its own.
            let needs: &[&str] = if module == "ncnn" {
                &["ncnn", "pnnx"]
            } else {
                &[module]
            };
            if let Some(missing) = needs.iter().find(|m| !python_has(&python, m)) {
                eprintln!("{name}: `{python} -c 'import {missing}'` fails; skipped (set PYTHON to an interpreter that has it)");
                continue;
            }
            let json = out_dir.join(file);
            let mut cmd = Command::new(&python);
            cmd.arg(root().join("bench/peers").join(script))
                .args(s.args())
                .args(options)
                .args(peer_model.args())
                .args(["--precision", &precision])
                .arg("--json")
                .arg(&json);
            eprintln!("$ {cmd:?}");
            if !cmd
                .status()
                .with_context(|| format!("running {script}"))?
                .success()
            {
                bail!("{script} failed");
            }
            records.push(json.clone());
        }
    }
    // The records are read, checked and compared by `vgg report`, typed, as the page reads them.
    println!(
        "\n{model}, batch {}, {}x{}, {} burn-in + {} timed steps, threads {} (0: all), {precision}; seconds per batch",
        s.batch, s.image_size, s.image_size, s.burn_in, s.num_batches, s.threads
    );
    let mut cmd = Command::new(&vgg);
    cmd.args(["report", "--format", "table"]).args(&records);
    if !cmd.status().context("running vgg report")?.success() {
        bail!("vgg report --format table failed");
    }
    if let Some(page) = report {
        let mut cmd = Command::new(&vgg);
        cmd.arg("report").args(&records).arg("--output").arg(&page);
        eprintln!("$ {cmd:?}");
        if !cmd.status().context("running vgg report")?.success() {
            bail!("vgg report failed");
        }
        eprintln!("wrote {}", page.display());
    }
    Ok(())
}

/// The release `vgg` and the CUDA crate's test executables, copied into `dir` for a machine that
/// has a GPU but no Rust toolchain (scripts/gpu-check.sh runs them).
fn gpu_bundle(dir: &str) -> Result<()> {
    let dir = Path::new(dir);
    std::fs::create_dir_all(dir.join("tests"))
        .with_context(|| format!("creating {}", dir.display()))?;
    cargo(&["build", "--release", "--locked", "-p", "vgg-cli"])?;
    let cargo_bin = cargo_program();
    let args = [
        "test",
        "--release",
        "--locked",
        "-p",
        "vgg-cuda",
        "-p",
        "vgg-nccl",
        "--no-run",
        "--message-format=json",
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let out = Command::new(&cargo_bin)
        .args(args)
        .output()
        .with_context(|| format!("running {cargo_bin}"))?;
    if !out.status.success() {
        bail!(
            "building vgg-cuda's and vgg-nccl's tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut copied = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let (Some(exe), Some(name)) =
            (msg["executable"].as_str(), msg["target"]["name"].as_str())
        {
            let dest = dir.join("tests").join(format!(
                "{}-{name}",
                msg["target"]["kind"][0].as_str().unwrap_or("test")
            ));
            std::fs::copy(exe, &dest).with_context(|| format!("copying {exe}"))?;
            eprintln!("{}", dest.display());
            copied += 1;
        }
    }
    if copied == 0 {
        bail!("cargo built no test executables for vgg-cuda");
    }
    // Where cargo built it, whatever directory the task runs from.
    let vgg = built_vgg("release")?;
    std::fs::copy(&vgg, dir.join("vgg")).with_context(|| format!("copying {}", vgg.display()))?;
    // Debug info is most of their size; the GPU machine's upload limit is tens of MiB.
    strip_all(dir)?;
    println!(
        "{}: vgg and {copied} test binaries; on the GPU machine run scripts/gpu-check.sh {}",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Strips the bundle's executables where `strip` exists; leaves them whole (and says so) where not.
fn strip_all(dir: &Path) -> Result<()> {
    let mut files = vec![dir.join("vgg")];
    for entry in std::fs::read_dir(dir.join("tests"))? {
        files.push(entry?.path());
    }
    for f in files {
        match Command::new("strip").arg(&f).status() {
            Ok(s) if s.success() => {}
            _ => eprintln!("could not strip {} (left as is)", f.display()),
        }
    }
    Ok(())
}

/// The README's figures, each the output of one `vgg` command (the same list as the test
/// `committed_figures_are_current` in vgg-cli).
const FIGURES: [(&str, &[&str]); 2] = [
    (
        "docs/figures/vgg16.svg",
        &["summary", "--model", "vgg16", "--format", "svg"],
    ),
    (
        "docs/figures/rf-three-3x3.svg",
        &["rf", "--layers", "conv3,conv3,conv3", "--format", "svg"],
    ),
];

fn figures() -> Result<()> {
    cargo(&["build", "--quiet", "-p", "vgg-cli"])?;
    let vgg = built_vgg("debug")?;
    for (path, args) in FIGURES {
        let out = Command::new(&vgg)
            .args(args)
            .output()
            .context("running vgg")?;
        if !out.status.success() {
            bail!(
                "vgg {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = root().join(path);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, &out.stdout)?;
        eprintln!("wrote {} (vgg {})", path.display(), args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo xtask bench --help` asks for the usage, as `cargo xtask --help` does.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("gpu-bundle") => gpu_bundle(args.get(1).map(String::as_str).unwrap_or(".device-bin")),
        Some("figures") => figures(),
        None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task '{other}'\n{USAGE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::PeerModel;

    #[test]
    fn the_peers_run_the_four_configurations_with_or_without_batch_norm() {
        let args = |m: &str| PeerModel::of(m).map(|p| p.args().join(" "));
        assert_eq!(args("vgg16").as_deref(), Some("--model vgg16"));
        assert_eq!(
            args("VGG19-BN").as_deref(),
            Some("--model vgg19 --batch-norm")
        );
        assert_eq!(
            args("vgg11_bn").as_deref(),
            Some("--model vgg11 --batch-norm")
        );
        for ours_alone in ["vgg16c", "vggC", "resnet50", "", "_bn"] {
            assert!(args(ours_alone).is_none(), "{ours_alone}");
        }
    }
}
