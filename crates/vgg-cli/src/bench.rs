//! `vgg bench`: the reference's benchmark, with its output lines, a summary and a JSON record.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use vgg_bench::record::{BenchRecord, BENCH_SCHEMA};
use vgg_bench::{
    check_memory, measure_matmul_peak, measure_memory_bandwidth, Bench, BenchConfig, Machine, Mode,
    ParallelOptions, ParallelReport, StepEvent,
};

use crate::args;
use crate::exchange::DeviceExchange;
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
    #[command(flatten)]
    pub dist: crate::dist::DistArgs,
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
            adaptive_pool: spec.options.adaptive_pool,
            seed: self.seed,
            per_layer: self.per_layer,
        })
    }
}

/// Like Python's datetime.now(), as the reference prints it.
fn now() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

pub fn run<B: DeviceExchange>(backend: B, threads: Option<usize>, a: &BenchArgs) -> Result<String> {
    let started = now();
    let config = a.config()?;
    let comm = crate::dist::communicator(&a.dist)?;
    if comm.size() > 1 {
        return run_parallel(backend, a, config, &*comm, started);
    }
    let modes = &a.mode.modes();
    let spec = config.spec()?;
    for path in a.json.iter().chain(&a.report) {
        vgg_nn::io::check_output(path)?;
    }
    if let (Some(json), Some(report)) = (&a.json, &a.report) {
        let named = |name, path| vgg_nn::io::NamedPath { name, path };
        vgg_nn::io::check_distinct(&[named("--json", json), named("--report", report)], &[])?;
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
            if !e.burn_in && e.index.is_multiple_of(10) {
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
    // The memory roof, for the per-layer rates (256 MiB of vectors: only where asked for).
    let bandwidth = if signals::stop_requested() || !a.per_layer {
        None
    } else {
        Some(measure_memory_bandwidth(&backend)?)
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
        memory_bandwidth: bandwidth,
        precision: Some(a.device.arithmetic().to_string()),
        config,
        modes: reports,
    };
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&record).expect("the report serialises");
        vgg_nn::io::write_atomic(path, (text + "\n").as_bytes())?;
    }
    if let Some(path) = &a.report {
        let page = vgg_report::page(&[vgg_bench::record::Run::ours(record.clone())])?;
        vgg_nn::io::write_atomic(path, page.as_bytes())?;
    }
    Ok(summary(&record))
}

/// What `--json` writes under mpirun.
#[derive(Serialize)]
struct ParallelRecord<'a> {
    schema: &'static str,
    started: String,
    backend: String,
    network: String,
    machine: Machine,
    config: &'a BenchConfig,
    data_parallel: &'a ParallelReport,
}

/// `vgg bench` as one rank of several: the data-parallel training step; rank 0 reports.
fn run_parallel<B: DeviceExchange>(
    backend: B,
    a: &BenchArgs,
    config: BenchConfig,
    comm: &dyn vgg_dist::Communicator,
    started: String,
) -> Result<String> {
    if a.mode == BenchMode::Forward || a.per_layer || a.report.is_some() {
        anyhow::bail!(
            "under mpirun, bench times the data-parallel training step (forward-backward, allreduce, \
             SGD step): leave out --mode forward, --per-layer and --report"
        );
    }
    let root = comm.rank() == 0;
    let spec = config.spec()?;
    if root {
        if let Some(path) = &a.json {
            vgg_nn::io::check_output(path)?;
        }
    }
    if let Some(available) = crate::net::available_memory(&backend) {
        check_memory(&spec, config.batch, &[Mode::ForwardBackward], available)?;
    }
    comm.check_same(
        "benchmark settings",
        &format!(
            "{config:?} {} {:?} {} {:?}",
            a.dist.bucket_bytes(),
            a.dist.no_overlap,
            a.device.arithmetic(),
            a.dist.gradient_compression
        ),
    )?;
    signals::allow_graceful_stop();
    let exchange = backend.device_exchange(comm, &a.dist)?;
    if root {
        stdout::line(&format!(
            "{} ({}x{}, batch {} per rank) on {} x {} ({}): the training step, {} burn-in + {} timed steps, \
             first on rank 0 alone, then on every rank",
            spec.describe_network(),
            config.height,
            config.width,
            config.batch,
            backend.name(),
            comm.size(),
            crate::exchange::describe(exchange.as_deref(), comm),
            config.burn_in,
            config.num_batches
        ))?;
    }
    let mut bench = Bench::new(backend.clone(), config.clone())?;
    let mut said = Ok(());
    let mut on_step = |index: usize, burn_in: bool, seconds: f64| {
        if root && !burn_in && index.is_multiple_of(10) {
            said = stdout::line(&format!("{}: step {index}, duration = {seconds:.3}", now()));
        }
        if signals::stop_requested() || said.is_err() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let options = ParallelOptions {
        bucket_bytes: a.dist.bucket_bytes(),
        overlap: !a.dist.no_overlap,
        compression: a.dist.compression(),
        solo_baseline: true,
    };
    let report = bench.run_data_parallel(comm, exchange.as_deref(), options, &mut on_step)?;
    said?;
    if !root {
        return Ok(String::new());
    }
    if let Some(path) = &a.json {
        let record = ParallelRecord {
            schema: "vgg-bench-parallel/1",
            started,
            backend: backend.name(),
            network: spec.describe_network(),
            machine: Machine::this(),
            config: &config,
            data_parallel: &report,
        };
        let text = serde_json::to_string_pretty(&record).expect("the report serialises");
        vgg_nn::io::write_atomic(path, (text + "\n").as_bytes())?;
    }
    Ok(parallel_summary(&report))
}

fn parallel_summary(r: &ParallelReport) -> String {
    let mut t = Table::new(["", "mean s", "share"]);
    let m = &r.mean;
    let share = |x: f64| format!("{:.1}%", 100.0 * x / m.total.max(f64::MIN_POSITIVE));
    for (name, value) in [
        ("forward-backward (compute)", m.compute),
        ("allreduce, exposed", m.exposed_communication),
        ("SGD step", m.optimizer),
        ("step", m.total),
    ] {
        t.push(vec![name.to_string(), format!("{value:.3}"), share(value)]);
    }
    let mut out = format!("\n{}", t.text());
    out.push_str(&format!(
        "{}, {} images per rank; {} of gradients ({}) per rank per step in {}; \
         allreduce {:.3} s per step, of which {:.3} s overlapped backward\n",
        r.communicator,
        r.batch_per_rank,
        bytes(r.gradient_bytes),
        r.gradients_sent_as,
        if r.overlap {
            crate::table::plural(r.buckets, "bucket") + " sent during backward"
        } else {
            "one allreduce after backward".to_string()
        },
        m.exposed_communication + m.overlapped_communication,
        m.overlapped_communication
    ));
    out.push_str(&format!(
        "job: {:.2} images/s, median step {:.3} s ({} steps{})\n",
        r.images_per_second,
        r.stats.median,
        r.stats.steps,
        if r.interrupted { ", interrupted" } else { "" }
    ));
    if let (Some(solo), Some(e)) = (r.solo, r.efficiency) {
        out.push_str(&format!(
            "one rank alone: {:.3} s per step (mean), {:.2} images/s; scaling efficiency {:.1}% \
             (solo step time over the job's, same batch per rank)\n",
            solo.mean,
            r.batch_per_rank as f64 / solo.mean.max(f64::MIN_POSITIVE),
            100.0 * e
        ));
    }
    out
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
    let bandwidth = record.memory_bandwidth.map(|b| b.gb_per_second);
    for r in reports.iter().filter(|r| !r.per_layer.is_empty()) {
        // A forward run has no backward columns to show.
        let backward = r.mode == Mode::ForwardBackward;
        let pass_headers = ["GFLOP/s", "executed", "of peak", "GB/s", "of bw"];
        let mut headers = vec!["layer", "forward ms"];
        headers.extend(pass_headers);
        if backward {
            headers.push("backward ms");
            headers.extend(pass_headers);
        }
        headers.push("share");
        let mut t = Table::new(headers);
        let total: f64 = r
            .per_layer
            .iter()
            .map(|l| l.forward_ms + l.backward_ms)
            .sum();
        let of = |rate: Option<f64>, roof: Option<f64>| match (rate, roof) {
            (Some(r), Some(p)) if p > 0.0 => format!("{:.0}%", 100.0 * r / p),
            _ => "-".to_string(),
        };
        let shown = |rate: Option<f64>| rate.map_or("-".to_string(), |r| format!("{r:.1}"));
        let share = |l: &vgg_bench::LayerTime| {
            100.0 * (l.forward_ms + l.backward_ms) / total.max(f64::MIN_POSITIVE)
        };
        for l in &r.per_layer {
            let share = format!("{:.1}%", share(l));
            let mut row = vec![
                l.layer.clone(),
                format!("{:.2}", l.forward_ms),
                shown(l.forward_gflops()),
                shown(l.forward_executed_gflops()),
                of(l.forward_performed_gflops(), peak),
                shown(l.forward_gbytes()),
                of(l.forward_gbytes(), bandwidth),
            ];
            if backward {
                row.extend([
                    format!("{:.2}", l.backward_ms),
                    shown(l.backward_gflops()),
                    shown(l.backward_executed_gflops()),
                    of(l.backward_performed_gflops(), peak),
                    shown(l.backward_gbytes()),
                    of(l.backward_gbytes(), bandwidth),
                ]);
            }
            row.push(share);
            t.push(row);
        }
        out.push_str(&format!(
            "\n{} by layer (per timed step):\n{}",
            r.mode.label(),
            t.text()
        ));
        let mut slowest: Vec<&vgg_bench::LayerTime> = r.per_layer.iter().collect();
        slowest.sort_by(|a, b| {
            (b.forward_ms + b.backward_ms).total_cmp(&(a.forward_ms + a.backward_ms))
        });
        let top: Vec<String> = slowest
            .iter()
            .take(5)
            .map(|l| format!("{} {:.1}%", l.layer, share(l)))
            .collect();
        out.push_str(&format!("Most time: {}.\n", top.join(", ")));
        out.push_str(&format!(
            "GFLOP/s and GB/s: the layer's direct-method FLOPs and least bytes (vgg summary --columns \
             roofline) over its time; executed: the FLOPs of the products the backend's method performs \
             (a quarter of the direct method's for 4x4 blocks of Winograd F(4x4, 3x3), whose transforms \
             are not counted; - where the backend does not say); of peak: the executed rate (else the \
             direct one) against the matrix product above; of bw: against {}.\n",
            record.memory_bandwidth.map_or(
                "the memory bandwidth (not measured)".to_string(),
                |b| format!(
                    "the measured memory bandwidth, {:.1} GB/s (y += a x over {} vectors, best of {})",
                    b.gb_per_second,
                    bytes(b.vector_bytes),
                    b.repetitions
                )
            )
        ));
        if backward && !config.model.batch_norm() {
            out.push_str(
                "A max-pool's backward counts toward the convolution before it: the two are one \
                 tape node, which keeps the pooled output instead of the convolution's.\n",
            );
        }
    }
    out
}
