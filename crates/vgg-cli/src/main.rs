//! `vgg`: explain, run, differentiate and benchmark the VGG networks.

mod args;
mod bench;
mod classify;
mod net;
mod rf;
mod signals;
mod stdout;
mod summary;
mod table;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use vgg_model::{ModelSpec, SpecOptions, VggConfig};
use vgg_tensor::prelude::*;

use args::Format;

#[derive(Parser)]
#[command(
    name = "vgg",
    version,
    about = "Explain, run, differentiate and benchmark VGG networks"
)]
struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// The most memory a command may plan to use, e.g. 4G or 512M [default: what the machine
    /// has free]. Commands refuse work estimated to need more before they start it.
    #[arg(long, global = true, value_parser = args::byte_size)]
    max_memory: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

/// The network a command works on: the same options build the spec and, later, the model.
#[derive(clap::Args, Clone)]
struct NetArgs {
    /// vgg11 (A), vgg13 (B), vgg16c (C), vgg16 (D) or vgg19 (E).
    #[arg(long, default_value = "vgg16", value_parser = args::model)]
    model: VggConfig,
    /// Input height x width, e.g. 224x224 (or 224).
    #[arg(long, default_value = "224x224", value_parser = args::input_size)]
    input: (usize, usize),
    /// Input channels.
    #[arg(long, default_value = "3", value_parser = args::positive)]
    channels: usize,
    /// Output classes (fc8's width).
    #[arg(long, default_value = "1000", value_parser = args::positive)]
    classes: usize,
    /// Multiplies every convolution's channels (for small experiments), e.g. 0.125.
    #[arg(long, default_value = "1", value_parser = args::width_mult)]
    width_mult: f64,
    /// Width of fc6 and fc7.
    #[arg(long, default_value = "4096", value_parser = args::positive)]
    hidden: usize,
}

impl NetArgs {
    fn spec(&self) -> Result<ModelSpec> {
        let options = SpecOptions {
            height: self.input.0,
            width: self.input.1,
            in_channels: self.channels,
            classes: self.classes,
            width_mult: self.width_mult,
            hidden: self.hidden,
        };
        Ok(ModelSpec::new(self.model, options)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Every layer's shape, weights, biases, MACs, receptive field and memory, with totals.
    Summary {
        #[command(flatten)]
        net: NetArgs,
        /// Images per batch, for the memory figures.
        #[arg(long, default_value = "1", value_parser = args::positive)]
        batch: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Writes a freshly initialised network's weights (safetensors, torchvision names).
    Init {
        #[command(flatten)]
        net: NetArgs,
        #[arg(long, default_value = "0")]
        seed: u64,
        #[arg(long, value_enum, default_value = "reference")]
        init: net::InitChoice,
        /// Where to write the weights (.safetensors).
        #[arg(long)]
        output: PathBuf,
    },
    /// Logits of images (an N x C x H x W float32 .npy) and each image's top classes.
    Forward {
        #[command(flatten)]
        model: net::ModelFlags,
        #[command(flatten)]
        device: DeviceArgs,
        /// Weights (.safetensors, torchvision names), e.g. from `vgg init` or torchvision's state_dict().
        #[arg(long)]
        weights: PathBuf,
        /// Images, N x C x H x W float32 .npy.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the logits (.npy).
        #[arg(long)]
        output: PathBuf,
        /// How many classes to print per image.
        #[arg(long, default_value = "5", value_parser = args::positive)]
        top: usize,
    },
    /// Gradients of l2_loss(logits) = sum(logits^2)/2 for every parameter (dropout off).
    Backward {
        #[command(flatten)]
        model: net::ModelFlags,
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// Where to write the gradients (.safetensors, under the parameters' names).
        #[arg(long)]
        output: PathBuf,
    },
    /// The reference's benchmark: VGG forward and forward-backward seconds per batch.
    Bench {
        /// vgg11 (A), vgg13 (B), vgg16c (C), vgg16 (D) or vgg19 (E).
        #[arg(long, default_value = "vgg16", value_parser = args::model)]
        model: VggConfig,
        #[arg(long, default_value = "32", value_parser = args::positive)]
        batch_size: usize,
        /// Timed steps per mode.
        #[arg(long, default_value = "100", value_parser = args::positive)]
        num_batches: usize,
        /// Untimed steps before them.
        #[arg(long, default_value = "10")]
        burn_in: usize,
        /// Image size, HxW or one number for square images.
        #[arg(long, default_value = "224", value_parser = args::input_size)]
        image_size: (usize, usize),
        #[arg(long, value_enum, default_value = "both")]
        mode: BenchMode,
        #[command(flatten)]
        device: DeviceArgs,
        /// Seeds the weights, the images and the dropout masks.
        #[arg(long, default_value = "0")]
        seed: u64,
        /// Also write every step's time and the summary as JSON (schema vgg-bench/1, see the README).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Break the time down by layer, forward and backward.
        #[arg(long)]
        per_layer: bool,
        /// Output classes (fc8's width).
        #[arg(long, default_value = "1000", value_parser = args::positive)]
        classes: usize,
        /// Channel width multiplier, for quick runs.
        #[arg(long, default_value = "1", value_parser = args::width_mult)]
        width_mult: f64,
        /// Width of fc6 and fc7.
        #[arg(long, default_value = "4096", value_parser = args::positive)]
        hidden: usize,
    },
    /// ImageNet classes of images (PNG or JPEG), preprocessed as torchvision does.
    Classify {
        #[command(flatten)]
        model: net::ModelFlags,
        #[command(flatten)]
        device: DeviceArgs,
        /// Weights (.safetensors), e.g. torchvision's vgg16 state_dict() exported unchanged.
        #[arg(long)]
        weights: PathBuf,
        /// How many classes to print per image.
        #[arg(long, default_value = "5", value_parser = args::positive)]
        top: usize,
        /// The images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Trains a VGG on the digits (shipped) or CIFAR-10, with a checkpoint every epoch.
    Train {
        #[command(flatten)]
        args: train::TrainArgs,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Receptive field, jump and start per layer of a model, or of an ad-hoc stack.
    Rf {
        #[command(flatten)]
        net: NetArgs,
        /// An ad-hoc stack instead of a model, e.g. conv3,conv3,conv3 (convK, convK/S, poolK, poolK/S).
        #[arg(long)]
        layers: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BackendChoice {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchMode {
    Forward,
    ForwardBackward,
    Both,
}

impl BenchMode {
    fn modes(self) -> Vec<vgg_bench::Mode> {
        use vgg_bench::Mode;
        match self {
            BenchMode::Forward => vec![Mode::Forward],
            BenchMode::ForwardBackward => vec![Mode::ForwardBackward],
            BenchMode::Both => vec![Mode::Forward, Mode::ForwardBackward],
        }
    }
}

/// Where the network runs.
#[derive(clap::Args, Clone, Debug)]
struct DeviceArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendChoice,
    /// CPU threads (0: one per core; at most 8 per core).
    #[arg(long, default_value = "0", value_parser = args::threads)]
    threads: usize,
    /// CUDA: which GPU.
    #[arg(long, default_value = "0")]
    gpu: usize,
    /// CUDA: keep convolutions in full f32 instead of TF32 tensor cores (PyTorch's default is TF32).
    #[arg(long)]
    no_tf32: bool,
}

impl DeviceArgs {
    fn cpu(&self) -> Result<vgg_ndarray::CpuBackend> {
        Ok(vgg_ndarray::CpuBackend::new(self.threads)?)
    }

    fn cuda(&self) -> Result<vgg_cuda::CudaBackend> {
        Ok(vgg_cuda::CudaBackend::new(vgg_cuda::CudaOptions {
            ordinal: self.gpu,
            allow_tf32: !self.no_tf32,
        })?)
    }
}

/// Runs `$body` with `$b` bound to the chosen backend, inside its execution context.
macro_rules! with_backend {
    ($device:expr, |$b:ident| $body:expr) => {{
        match $device.backend {
            BackendChoice::Cpu => {
                let $b = $device.cpu()?;
                let backend = $b.clone();
                backend.execute(|| $body)
            }
            BackendChoice::Cuda => {
                let $b = $device.cuda()?;
                let backend = $b.clone();
                backend.execute(|| $body)
            }
        }
    }};
}

fn run(cli: Cli) -> Result<()> {
    let output = match cli.command {
        Command::Init {
            net,
            seed,
            init,
            output,
        } => {
            let spec = net.spec()?;
            let b = vgg_ndarray::CpuBackend::new(0)?;
            let args = net::InitArgs {
                model: spec.model,
                options: spec.options,
                seed,
                init,
                output,
            };
            b.clone().execute(|| net::init(&b, &args))?
        }
        Command::Forward {
            model,
            device,
            weights,
            input,
            output,
            top,
        } => with_backend!(device, |b| net::forward(
            &b, &model, &weights, &input, &output, top
        ))?,
        Command::Backward {
            model,
            device,
            weights,
            input,
            output,
        } => with_backend!(device, |b| net::backward(
            &b, &model, &weights, &input, &output
        ))?,
        Command::Classify {
            model,
            device,
            weights,
            top,
            images,
        } => with_backend!(device, |b| classify::run(
            &b, &model, &weights, &images, top
        ))?,
        Command::Train { args, device } => with_backend!(device, |b| train::run(&b, &args))?,
        Command::Bench {
            model,
            batch_size,
            num_batches,
            burn_in,
            image_size,
            mode,
            device,
            seed,
            json,
            per_layer,
            classes,
            width_mult,
            hidden,
        } => {
            let config = vgg_bench::BenchConfig {
                model,
                batch: batch_size,
                num_batches,
                burn_in,
                height: image_size.0,
                width: image_size.1,
                classes,
                width_mult,
                hidden,
                seed,
                per_layer,
            };
            let threads = match device.backend {
                BackendChoice::Cpu => Some(device.cpu()?.threads()),
                BackendChoice::Cuda => None,
            };
            with_backend!(device, |b| bench::run(
                b,
                threads,
                config,
                &mode.modes(),
                json
            ))?
        }
        Command::Summary { net, batch, format } => summary::render(&net.spec()?, batch, format)?,
        Command::Rf {
            layers: Some(layers),
            format,
            ..
        } => rf::stack(&vgg_model::parse_stack(&layers)?, format)?,
        Command::Rf {
            net,
            layers: None,
            format,
        } => rf::model(&net.spec()?, format),
    };
    stdout::print(&output)
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Exit code for refused input (bad flags, files or sizes) and failed runs.
const EXIT_REFUSED: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version; a closed stdout is not an error here either.
            let _ = stdout::print(&e.render().to_string());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            stdout::warn(&one_line(&e.render().to_string()));
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    init_tracing(cli.verbose);
    signals::install();
    if let Some(bytes) = cli.max_memory {
        net::set_max_memory(bytes);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of the results went away (`vgg bench | head -1`): end quietly.
        Err(e) if stdout::closed(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            stdout::warn(&format!("error: {e:#}"));
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

/// Clap's multi-line messages folded onto one line, without the "try --help" trailer.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
}
