//! `vgg train`: a VGG on the digits (shipped) or CIFAR-10 (the user's copy), with per-epoch
//! reports, checkpoints, resuming, a JSON log and an SVG plot of the curves.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use vgg_model::{PartialOptions, SpecOptions, Vgg, VggConfig, Workload};
use vgg_nn::io::{self, NamedPath};
use vgg_nn::optim::{Optimizer, OptimizerKind, Schedule};
use vgg_nn::InitScheme;
use vgg_tensor::Backend;
use vgg_train::meta::Provenance;
use vgg_train::{
    checkpoint, data, meta, resume, EpochReport, Observer, TrainConfig, TrainError, TrainState,
};

use crate::exchange::DeviceExchange;
use crate::options::{DeviceArgs, NetDefaults, NetOptions};
use crate::stdout;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetChoice {
    /// scikit-learn's 1,797 8x8 digits, carried in vgg (data/digits), enlarged to 32x32
    Digits,
    /// CIFAR-10's binary version (the cifar-10-batches-bin directory), 32x32 colour
    Cifar10,
}

impl DatasetChoice {
    pub fn name(self) -> &'static str {
        match self {
            DatasetChoice::Digits => "digits",
            DatasetChoice::Cifar10 => "cifar10",
        }
    }
}

/// The data a network is trained or evaluated on.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// The data set: digits (carried in vgg) or cifar10 (give --data)
    #[arg(long, value_enum, default_value = "digits")]
    pub dataset: DatasetChoice,
    /// The data's directory: cifar-10-batches-bin for cifar10; for digits, another copy of
    /// data/digits [default for digits: the copy carried in vgg]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Fraction of the digits held out for testing, in (0, 1) (CIFAR-10 has its own test set)
    #[arg(long, default_value = "0.2", allow_negative_numbers = true)]
    pub test_fraction: f64,
}

impl DataArgs {
    /// (training set, test set), the digits split by `seed`.
    pub fn load(&self, seed: u64) -> Result<(data::Dataset, data::Dataset)> {
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            bail!(
                "--test-fraction {} must be between 0 and 1",
                self.test_fraction
            );
        }
        Ok(match self.dataset {
            DatasetChoice::Digits => {
                let all = match &self.data {
                    Some(dir) => data::load_digits(dir)?,
                    None => data::shipped_digits()?,
                };
                all.split(self.test_fraction, seed)
                    .map_err(|e| anyhow!("--test-fraction: {e}"))?
            }
            DatasetChoice::Cifar10 => {
                let Some(dir) = &self.data else {
                    bail!("--dataset cifar10 needs --data DIR, the cifar-10-batches-bin directory of CIFAR-10's binary version");
                };
                data::load_cifar10(dir)?
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerChoice {
    /// Stochastic gradient descent with momentum (--momentum)
    Sgd,
    /// Adam (betas 0.9, 0.999, epsilon 1e-8)
    Adam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleChoice {
    /// The same rate every epoch
    Constant,
    /// The rate times --gamma every --step-every epochs
    Step,
    /// Cosine decay from the rate to 0 over the epochs
    Cosine,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub net: NetOptions,
    /// Passes over the training set, at least 1
    #[arg(long, default_value = "10", value_parser = crate::args::positive)]
    pub epochs: usize,
    /// Images per optimiser step, at least 1
    #[arg(long, default_value = "32", value_parser = crate::args::positive)]
    pub batch_size: usize,
    /// Base learning rate, a positive number
    #[arg(long, default_value = "0.002", allow_negative_numbers = true)]
    pub lr: f32,
    /// The optimiser
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerChoice,
    /// SGD's momentum, in [0, 1)
    #[arg(long, default_value = "0.9", allow_negative_numbers = true)]
    pub momentum: f32,
    /// L2 penalty added to every gradient (PyTorch's weight_decay), 0 or more
    #[arg(long, default_value = "0", allow_negative_numbers = true)]
    pub weight_decay: f32,
    /// How the rate changes with the epoch
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleChoice,
    /// With --schedule step: multiply the rate by --gamma every this many epochs
    #[arg(long, default_value = "10", value_parser = crate::args::positive)]
    pub step_every: usize,
    /// With --schedule step: the factor, positive (0.1 divides the rate by 10)
    #[arg(long, default_value = "0.1", allow_negative_numbers = true)]
    pub gamma: f32,
    /// Dropout's keep probability after fc6 and fc7, in (0, 1] (1: no dropout)
    #[arg(long, default_value = "1", allow_negative_numbers = true)]
    pub keep_prob: f32,
    /// Seeds the weights, the split of the digits, the shuffles and the dropout masks
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Where to write the checkpoint after every epoch: the weights under torchvision's names,
    /// the optimiser state and how far training got (forward, classify, eval and summary read it)
    #[arg(long)]
    pub output: PathBuf,
    /// Continue from a checkpoint of this command, with the same settings: the result equals
    /// an uninterrupted run's
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Also write the per-epoch log to this file (JSON)
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the loss and accuracy curves to this file (SVG)
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub dist: crate::dist::DistArgs,
}

/// The network `vgg train` builds where the flags do not say: VGG-11 at a quarter of the width,
/// small enough to train on two cores in seconds an epoch.
fn train_defaults() -> NetDefaults {
    NetDefaults {
        model: VggConfig::Vgg11,
        options: SpecOptions {
            width_mult: 0.25,
            hidden: 128,
            ..SpecOptions::default()
        },
    }
}

impl TrainArgs {
    /// The library's settings, checked by the library; a refusal names the flag.
    fn config(&self) -> Result<TrainConfig> {
        let config = TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            schedule: match self.schedule {
                ScheduleChoice::Constant => Schedule::Constant,
                ScheduleChoice::Step => Schedule::Step {
                    every: self.step_every,
                    gamma: self.gamma,
                },
                ScheduleChoice::Cosine => Schedule::Cosine {
                    epochs: self.epochs,
                },
            },
            optimizer: match self.optimizer {
                OptimizerChoice::Sgd => OptimizerKind::Sgd {
                    momentum: self.momentum,
                    weight_decay: self.weight_decay,
                },
                OptimizerChoice::Adam => OptimizerKind::Adam {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: self.weight_decay,
                },
            },
            keep_prob: self.keep_prob,
            seed: self.seed,
        };
        match config.validate() {
            Err(TrainError::Setting {
                setting,
                value,
                expected,
            }) => bail!(
                "--{} {value} makes no sense: {expected}",
                setting.replace('_', "-")
            ),
            other => other?,
        }
        Ok(config)
    }

    /// Every file this run writes, checked before any work starts: writable, each its own, and
    /// none the checkpoint resumed from, which only --output may rewrite (that is its point).
    fn check_outputs(&self) -> Result<()> {
        fn named<'a>(name: &'a str, path: Option<&'a PathBuf>) -> Option<NamedPath<'a>> {
            path.map(|path| NamedPath { name, path })
        }
        let logs: Vec<NamedPath> = [
            named("--json", self.json.as_ref()),
            named("--plot", self.plot.as_ref()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let all: Vec<NamedPath> = std::iter::once(NamedPath {
            name: "--output",
            path: &self.output,
        })
        .chain(logs.iter().copied())
        .collect();
        for o in &all {
            io::check_output(o.path)?;
        }
        io::check_distinct(&all, &[])?;
        let resumed: Vec<NamedPath> = named("--resume", self.resume.as_ref())
            .into_iter()
            .collect();
        io::check_distinct(&logs, &resumed)?;
        Ok(())
    }
}

#[derive(Serialize)]
struct EpochJson {
    epoch: usize,
    lr: f32,
    train_loss: f64,
    train_accuracy: f64,
    test_loss: f64,
    test_accuracy: f64,
    seconds: f64,
    /// Under mpirun: seconds of gradient allreduces, and the part the steps waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    communication_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exposed_communication_seconds: Option<f64>,
}

/// Writes the checkpoint, the log and the plot after each epoch, then prints the epoch's line
/// (rank 0 alone under mpirun).
struct Reporter<'a, B: Backend> {
    /// Ranks in the job (1: one process).
    ranks: usize,
    /// Whether this process writes: one process, or rank 0.
    root: bool,
    backend: &'a B,
    args: &'a TrainArgs,
    bar: ProgressBar,
    log: Vec<EpochJson>,
    /// Why the last epoch's report failed, with its type (a closed stdout ends quietly).
    failure: Option<anyhow::Error>,
}

impl<B: Backend> Reporter<'_, B> {
    fn report(&mut self, r: &EpochReport, state: &TrainState<B>) -> Result<()> {
        self.log.push(EpochJson {
            epoch: r.epoch,
            lr: r.lr,
            train_loss: r.train_loss,
            train_accuracy: r.train_accuracy,
            test_loss: r.test_loss,
            test_accuracy: r.test_accuracy,
            seconds: r.seconds,
            communication_seconds: (self.ranks > 1).then_some(r.communication.total),
            exposed_communication_seconds: (self.ranks > 1).then_some(r.communication.exposed),
        });
        // The checkpoint is safe on disk before anything is printed.
        let mut file = checkpoint(self.backend, state)?;
        // What `vgg eval` needs to find the same held-out images.
        let d = &self.args.data;
        file.metadata
            .insert(meta::DATASET.into(), d.dataset.name().into());
        file.metadata
            .insert(meta::TEST_FRACTION.into(), d.test_fraction.to_string());
        file.metadata
            .insert(meta::SEED.into(), self.args.seed.to_string());
        io::save_safetensors(&self.args.output, &file)?;
        if let Some(path) = &self.args.json {
            let text = serde_json::to_string_pretty(&self.log).expect("the log serialises");
            io::write_atomic(path, (text + "\n").as_bytes())?;
        }
        if let Some(path) = &self.args.plot {
            io::write_atomic(path, plot_svg(&self.log)?.as_bytes())?;
        }
        let mut line = format!(
            "epoch {}/{}: lr {:.3e}, train loss {:.4}, train accuracy {:.2}%, test loss {:.4}, test accuracy {:.2}% ({:.1} s",
            r.epoch,
            self.args.epochs,
            r.lr,
            r.train_loss,
            100.0 * r.train_accuracy,
            r.test_loss,
            100.0 * r.test_accuracy,
            r.seconds
        );
        if self.ranks > 1 {
            line += &format!(
                "; allreduce {:.2} s, {:.2} s of it exposed",
                r.communication.total, r.communication.exposed
            );
        }
        line.push(')');
        self.bar.suspend(|| stdout::line(&line))
    }
}

impl<B: Backend> Observer<B> for Reporter<'_, B> {
    fn batch(&mut self, done: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
    }

    fn epoch(&mut self, r: &EpochReport, state: &TrainState<B>) -> Result<(), TrainError> {
        if !self.root {
            return Ok(());
        }
        self.bar.set_position(0);
        self.report(r, state).map_err(|e| {
            let reason = format!("{e:#}");
            self.failure = Some(e);
            TrainError::Observer {
                epoch: r.epoch,
                reason,
            }
        })
    }
}

/// A resumed run goes on with the data, split and seed it started with: another would silently
/// make a different run than the uninterrupted one.
fn check_same_data(recorded: &Provenance, args: &TrainArgs, path: &Path) -> Result<()> {
    let d = &args.data;
    let mut differ = Vec::new();
    if let Some(r) = recorded.dataset.as_deref() {
        if r != d.dataset.name() {
            differ.push(format!("--dataset {r}"));
        }
    }
    // CIFAR-10 has its own test set; the fraction splits the digits only.
    if d.dataset == DatasetChoice::Digits {
        if let Some(f) = recorded.test_fraction.filter(|f| *f != d.test_fraction) {
            differ.push(format!("--test-fraction {f}"));
        }
    }
    if let Some(s) = recorded.seed.filter(|s| *s != args.seed) {
        differ.push(format!("--seed {s}"));
    }
    if !differ.is_empty() {
        bail!(
            "{} was trained on other data than this run's: resume with {} (a resumed run goes on \
             with the data set, split and seed it started with)",
            path.display(),
            differ.join(" ")
        );
    }
    Ok(())
}

pub fn run<B: DeviceExchange>(backend: &B, args: &TrainArgs) -> Result<String> {
    let config = args.config()?;
    let comm = crate::dist::communicator(&args.dist)?;
    let root = comm.rank() == 0;
    // Ranks computing in other arithmetic would average unlike gradients (threads and vector
    // units may differ from host to host).
    comm.check_same("arithmetic (--precision)", args.device.arithmetic())?;
    comm.check_same(
        "gradient compression (--gradient-compression)",
        &format!("{:?}", args.dist.gradient_compression),
    )?;
    // Rank 0 alone writes.
    if root {
        args.check_outputs()?;
    }
    let (train_set, test_set) = args.data.load(args.seed)?;
    // The data set fixes the input and the classes.
    let from_data = PartialOptions {
        input: Some((train_set.height, train_set.width)),
        in_channels: Some(train_set.channels),
        classes: Some(train_set.classes),
        ..Default::default()
    };
    if let Some(c) = args.net.classes.filter(|&c| c != train_set.classes) {
        bail!(
            "--classes {c}: the {} data set has {} classes; leave it out",
            args.data.dataset.name(),
            train_set.classes
        );
    }
    let spec = args.net.spec(None, from_data, train_defaults())?;
    // Weights, gradients, optimiser state, and the checkpoint's host copy and bytes.
    let slots = match config.optimizer {
        OptimizerKind::Sgd { .. } => 1,
        OptimizerKind::Adam { .. } => 2,
    };
    let batch = config.batch_size.min(train_set.len().max(1));
    crate::net::check_memory(
        backend,
        &spec,
        batch,
        Workload::Training {
            copies: 3 + 3 * slots,
        },
    )?;
    let mut state = match &args.resume {
        Some(path) => {
            // Rank 0 alone reads it: the other hosts of a job need not see its files.
            let bytes = comm.broadcast_bytes(root.then(|| io::read_file(path)).transpose()?, 0)?;
            let file = io::parse_safetensors(&bytes, path)?;
            drop(bytes);
            let recorded = Provenance::read(&file.metadata)
                .with_context(|| format!("resuming from {}", path.display()))?;
            check_same_data(&recorded, args, path)?;
            resume(backend, spec, &config, train_set.len(), &file)
                .with_context(|| format!("resuming from {}", path.display()))?
        }
        None => TrainState {
            model: Vgg::init(backend, spec, &InitScheme::REFERENCE, args.seed)?,
            optimizer: Optimizer::new(config.optimizer),
            epochs_done: 0,
        },
    };
    let exchange = backend.device_exchange(&*comm, &args.dist)?;
    if root {
        let ranks = if comm.size() > 1 {
            format!(
                " x {} ({}; each batch of {} split, {} per rank; gradients in {})",
                comm.size(),
                crate::exchange::describe(exchange.as_deref(), &*comm),
                config.batch_size,
                crate::table::plural(config.batch_size.div_ceil(comm.size()), "image"),
                if args.dist.no_overlap {
                    "one allreduce after backward".to_string()
                } else {
                    format!(
                        "{} during backward",
                        crate::table::plural(
                            vgg_train::gradient_buckets(&state.model, args.dist.bucket_bytes())
                                .len(),
                            "bucket"
                        )
                    )
                } + &args.dist.describe_compression()
            )
        } else {
            String::new()
        };
        stdout::line(&format!(
            "{} on {}{ranks}: {} training and {} test images, {} parameters, from epoch {}",
            state.model.spec().describe(),
            backend.name(),
            train_set.len(),
            test_set.len(),
            state.model.param_count(),
            state.epochs_done.saturating_add(1)
        ))?;
    }
    let bar = if root && std::io::stdout().is_terminal() {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("  [{bar:30}] {pos}/{len} batches")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut reporter = Reporter {
        ranks: comm.size(),
        root,
        backend,
        args,
        bar,
        log: Vec::new(),
        failure: None,
    };
    let parallel = vgg_train::Parallel {
        comm: &*comm,
        exchange: exchange.as_deref(),
        bucket_bytes: args.dist.bucket_bytes(),
        overlap: !args.dist.no_overlap,
        compression: args.dist.compression(),
    };
    let reports = vgg_train::train_parallel(
        backend,
        &mut state,
        &train_set,
        &test_set,
        &config,
        &mut reporter,
        &parallel,
    )
    .map_err(|e| reporter.failure.take().unwrap_or_else(|| e.into()))?;
    reporter.bar.finish_and_clear();
    if !root {
        return Ok(String::new());
    }
    let summary = match reports.last() {
        Some(r) => format!(
            "test accuracy {:.2}% after {}",
            100.0 * r.test_accuracy,
            crate::table::plural(r.epoch, "epoch")
        ),
        None => format!(
            "nothing to do: the checkpoint has {} already",
            crate::table::plural(state.epochs_done, "epoch")
        ),
    };
    Ok(format!("{summary}; checkpoint {}\n", args.output.display()))
}

/// Loss and accuracy against the epoch (`plot::training_curves`).
fn plot_svg(log: &[EpochJson]) -> Result<String> {
    let points: Vec<vgg_report::figures::EpochPoint> = log
        .iter()
        .map(|e| vgg_report::figures::EpochPoint {
            train_loss: e.train_loss,
            test_loss: e.test_loss,
            train_accuracy: e.train_accuracy,
            test_accuracy: e.test_accuracy,
        })
        .collect();
    Ok(vgg_report::figures::training_curves(&points)?)
}
