//! `vgg bench`: the reference's benchmark, with its output lines, a summary and a JSON record.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde::Serialize;
use vgg_bench::{
    check_memory, measure_matmul_peak, Bench, BenchConfig, Machine, MatmulPeak, Mode, ModeReport,
    StepEvent,
};
use vgg_tensor::Backend;

use crate::args;
use crate::options::{DeviceArgs, InputShape, NetDefaults, NetOptions};
use crate::signals;
use crate::stdout;
use crate::table::{bytes, Table};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub net: NetOptions,
    #[command(flatten)]
    pub shape: InputShape,
    /// Images per step, at least 1
    #[arg(long, default_value = "32", value_parser = args::positive)]
    pub batch_size: usize,
    /// Timed steps per mode, at least 1
    #[arg(long, default_value = "100", value_parser = args::positive)]
    pub num_batches: usize,
    /// Untimed steps before them
    #[arg(long, default_value = "10")]
    pub burn_in: usize,
    /// Which passes to time: forward (inference), forward-backward (gradients of l2_loss(fc8),
    /// dropout 0.5) or both
    #[arg(long, value_enum, default_value = "both")]
    pub mode: BenchMode,
    /// Seeds the weights, the images and the dropout masks
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Also write every step's time and the summary to this file as JSON (schema vgg-bench/1,
    /// see the README)
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the results as one self-contained HTML page: settings and machine, step times
    /// as a series and a distribution, throughput against the measured matrix-product peak, and
    /// time per layer with --per-layer
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Break the time down by layer (forward, and backward in forward-backward)
    #[arg(long)]
    pub per_layer: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    Forward,
    ForwardBackward,
    Both,
}

impl BenchMode {
    fn modes(self) -> Vec<Mode> {
        match self {
            BenchMode::Forward => vec![Mode::Forward],
            BenchMode::ForwardBackward => vec![Mode::ForwardBackward],
            BenchMode::Both => vec![Mode::Forward, Mode::ForwardBackward],
        }
    }
}

impl BenchArgs {
    /// The library's settings: the network from the flags and the reference's defaults.
    fn config(&self) -> Result<BenchConfig> {
        let spec = self
            .net
            .spec(None, self.shape.partial(), NetDefaults::default())?;
        if spec.options.in_channels != 3 {
            anyhow::bail!("--channels: the benchmark's images are RGB; leave it out or give 3");
        }
        Ok(BenchConfig {
            model: spec.model,
            batch: self.batch_size,
            num_batches: self.num_batches,
            burn_in: self.burn_in,
            height: spec.options.height,
            width: spec.options.width,
            classes: spec.options.classes,
            width_mult: spec.options.width_mult,
            hidden: spec.options.hidden,
            seed: self.seed,
            per_layer: self.per_layer,
        })
    }
}

/// JSON schema version of `--json`; bump it when a field changes meaning or disappears.
pub const BENCH_SCHEMA: &str = "vgg-bench/1";

/// What `--json` writes and `--report` (and `vgg report`) draws.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRecord {
    /// [`BENCH_SCHEMA`].
    pub schema: String,
    /// When the run started, local time.
    pub started: String,
    /// The backend, as it names itself.
    pub backend: String,
    /// CPU threads asked for (None: the backend's default).
    pub threads: Option<usize>,
    /// The version of vgg that ran it.
    #[serde(default)]
    pub vgg_version: Option<String>,
    /// The network, described as the first output line does.
    #[serde(default)]
    pub network: Option<String>,
    /// The machine it ran on.
    #[serde(default)]
    pub machine: Option<Machine>,
    /// The backend's measured matrix-product rate, the ceiling the GFLOP/s are read against.
    #[serde(default)]
    pub matmul_peak: Option<MatmulPeak>,
    /// The settings.
    pub config: BenchConfig,
    /// One report per mode run.
    pub modes: Vec<ModeReport>,
}

/// Like Python's datetime.now(), as the reference prints it.
fn now() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

pub fn run<B: Backend>(backend: B, threads: Option<usize>, a: &BenchArgs) -> Result<String> {
    let started = now();
    let config = a.config()?;
    let modes = &a.mode.modes();
    let spec = config.spec()?;
    for path in a.json.iter().chain(&a.report) {
        vgg_nn::io::check_output(path)?;
    }
    if let Some(available) = crate::net::available_memory(&backend) {
        check_memory(&spec, config.batch, modes, available)?;
    }
    signals::allow_graceful_stop();
    let interactive = std::io::stdout().is_terminal();
    let say = |bar: &ProgressBar, line: String| -> Result<()> {
        if interactive {
            bar.println(line);
            Ok(())
        } else {
            stdout::line(&line)
        }
    };
    stdout::line(&format!(
        "{} ({}x{}, batch {}) on {}: {} burn-in + {} timed steps per mode",
        spec.describe_network(),
        config.height,
        config.width,
        config.batch,
        backend.name(),
        config.burn_in,
        config.num_batches
    ))?;
    let bench = Bench::new(backend.clone(), config.clone())?;
    let mut reports = Vec::new();
    for &mode in modes {
        if signals::stop_requested() {
            break;
        }
        let total = config.total_steps()? as u64;
        let bar = if interactive {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>16} [{bar:30}] {pos}/{len} steps, {msg} (eta {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(mode.label());
            bar
        } else {
            ProgressBar::hidden()
        };
        let mut said = Ok(());
        let mut on_step = |e: StepEvent| {
            bar.inc(1);
            bar.set_message(format!(
                "last {:.3} s{}",
                e.seconds,
                if e.burn_in { " (burn-in)" } else { "" }
            ));
            if !e.burn_in && e.index % 10 == 0 {
                said = say(
                    &bar,
                    format!("{}: step {}, duration = {:.3}", now(), e.index, e.seconds),
                );
            }
            if signals::stop_requested() || said.is_err() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let report = bench.run(mode, &mut on_step)?;
        said?;
        bar.finish_and_clear();
        let s = &report.stats;
        stdout::line(&format!(
            "{}: {} across {} steps, {:.3} +/- {:.3} sec/batch{}",
            now(),
            mode.label(),
            s.steps,
            s.mean,
            s.sd,
            if report.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        ))?;
        reports.push(report);
    }
    // Measured after the modes, so its buffers touch neither their times nor their peak memory.
    // After Ctrl-C, not at all.
    drop(bench);
    let peak = if signals::stop_requested() {
        None
    } else {
        Some(measure_matmul_peak(&backend)?)
    };
    let record = BenchRecord {
        schema: BENCH_SCHEMA.to_string(),
        started,
        backend: backend.name(),
        threads,
        vgg_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        network: Some(spec.describe_network()),
        machine: Some(Machine::this()),
        matmul_peak: peak,
        config,
        modes: reports,
    };
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&record).expect("the report serialises");
        vgg_nn::io::write_atomic(path, (text + "\n").as_bytes())?;
    }
    if let Some(path) = &a.report {
        let page = crate::report::page(&[crate::report::Run::ours(record.clone())])?;
        vgg_nn::io::write_atomic(path, page.as_bytes())?;
    }
    Ok(summary(&record))
}

fn summary(record: &BenchRecord) -> String {
    let config = &record.config;
    let reports = &record.modes;
    let peak = record.matmul_peak.map(|p| p.gflops_per_second);
    let mut t = Table::new([
        "mode", "steps", "mean s", "sd s", "median s", "min s", "p90 s", "images/s", "GFLOP/s",
        "of peak", "peak RSS",
    ]);
    for r in reports {
        let s = &r.stats;
        t.push(vec![
            r.mode.label().to_string(),
            s.steps.to_string(),
            format!("{:.3}", s.mean),
            format!("{:.3}", s.sd),
            format!("{:.3}", s.median),
            format!("{:.3}", s.min),
            format!("{:.3}", s.p90),
            format!("{:.2}", r.images_per_second),
            format!("{:.1}", r.gflops_per_second),
            peak.map_or("-".to_string(), |p| {
                format!("{:.0}%", 100.0 * r.gflops_per_second / p)
            }),
            r.peak_rss_bytes.map_or("-".to_string(), bytes),
        ]);
    }
    let mut out = format!("\n{}", t.text());
    out.push_str(&format!(
        "model {}, batch {}, {}x{}, backend {}\n",
        record.network.as_deref().unwrap_or("?"),
        config.batch,
        config.height,
        config.width,
        record.backend
    ));
    out.push_str(
        "GFLOP/s counts 2 FLOPs per MAC of the spec; forward-backward counts the forward pass plus two more \
         (input and weight gradients) for every conv and linear layer, less conv1_1's input gradient, which is \
         never computed.\n",
    );
    if let Some(p) = record.matmul_peak {
        out.push_str(&format!(
            "Of peak: against this backend's own {n}x{n}x{n} matrix product, {:.1} GFLOP/s (best of {}); \
             convolutions run by a fast algorithm (Winograd F(4x4, 3x3) on the CPU) do less arithmetic \
             than they are credited with, so more than 100% is possible.\n",
            p.gflops_per_second,
            p.repetitions,
            n = p.n
        ));
    }
    for r in reports.iter().filter(|r| !r.per_layer.is_empty()) {
        // A forward run has no backward column to show.
        let backward = r.mode == Mode::ForwardBackward;
        let mut t = if backward {
            Table::new(["layer", "forward ms", "backward ms", "share"])
        } else {
            Table::new(["layer", "forward ms", "share"])
        };
        let total: f64 = r
            .per_layer
            .iter()
            .map(|l| l.forward_ms + l.backward_ms)
            .sum();
        for l in &r.per_layer {
            let share = format!(
                "{:.1}%",
                100.0 * (l.forward_ms + l.backward_ms) / total.max(f64::MIN_POSITIVE)
            );
            let mut row = vec![l.layer.clone(), format!("{:.2}", l.forward_ms)];
            if backward {
                row.push(format!("{:.2}", l.backward_ms));
            }
            row.push(share);
            t.push(row);
        }
        out.push_str(&format!(
            "\n{} by layer (per timed step):\n{}",
            r.mode.label(),
            t.text()
        ));
        if backward {
            out.push_str(
                "A max-pool's backward counts toward the convolution before it: the two are one \
                 tape node, which keeps the pooled output instead of the convolution's.\n",
            );
        }
    }
    out
}
