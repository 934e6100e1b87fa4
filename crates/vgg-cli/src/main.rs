//! `vgg`: explain, run, differentiate and benchmark the VGG networks.

mod args;
mod rf;
mod summary;
mod table;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vgg_model::{ModelSpec, SpecOptions, VggConfig};

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

fn run(cli: Cli) -> Result<()> {
    let output = match cli.command {
        Command::Summary { net, batch, format } => summary::render(&net.spec()?, batch, format),
        Command::Rf {
            layers: Some(layers),
            format,
            ..
        } => rf::stack(&vgg_model::parse_stack(&layers)?, format),
        Command::Rf {
            net,
            layers: None,
            format,
        } => rf::model(&net.spec()?, format),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(output.as_bytes())
        .and_then(|_| stdout.flush())
        .context("writing to stdout")
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
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
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
