//! `vgg`: explain, run, differentiate, train and benchmark the VGG networks.

mod args;
mod bench;
mod causes;
mod classify;
mod dist;
mod eval;
mod exchange;
mod exit;
mod explain;
mod hints;
mod net;
mod options;
mod progress;
mod report;
mod rf;
mod signals;
mod stdout;
mod summary;
mod table;
mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use vgg_tensor::prelude::*;

use options::BackendChoice;

#[derive(Parser)]
#[command(
    name = "vgg",
    version,
    about = "Explain, run, differentiate, train and benchmark the VGG networks",
    arg_required_else_help = true,
    after_help = "Exit codes: 0 success, 1 a failure while running (a device or disk error, a \
                  diverging run), 2 bad usage or bad input, 130 interrupted. The README lists \
                  the options every command shares."
)]
struct Cli {
    /// More diagnostics on stderr: -v info, -vv debug (RUST_LOG overrides)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// The most memory a command may plan to use, e.g. 4G or 512M; work estimated to need more
    /// is refused before it starts [default: what the machine (or GPU) has free]
    #[arg(long, global = true, value_parser = args::byte_size)]
    max_memory: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every layer's shape, weights, biases, MACs, receptive field and memory, with totals
    Summary(summary::SummaryArgs),
    /// Receptive field, jump and start per layer, of a model or of an ad-hoc stack
    Rf(rf::RfArgs),
    /// Writes a freshly initialised network's weights (safetensors, torchvision names)
    Init(net::InitArgs),
    /// Logits and top classes of images (a .npy, PNG/JPEG files, or random ones)
    Forward(net::ForwardArgs),
    /// Gradients of l2_loss(logits) = sum(logits^2)/2 for every parameter (dropout off)
    Backward(net::BackwardArgs),
    /// ImageNet classes of PNG or JPEG images, preprocessed as torchvision does
    Classify(classify::ClassifyArgs),
    /// What the network looks at in images: Grad-CAM, Grad-CAM++, saliency, SmoothGrad, a layer's activations
    /// and the first layer's filters, as PNG files and a page (index.html)
    Explain(explain::ExplainArgs),
    /// Trains a VGG on the digits (carried in vgg) or CIFAR-10, with a checkpoint every epoch
    Train(train::TrainArgs),
    /// Accuracy, per-class accuracy and confusion matrix of trained weights on a data set
    Eval(eval::EvalArgs),
    /// The reference's benchmark: forward and forward-backward seconds per batch
    Bench(bench::BenchArgs),
    /// The benchmark report as one self-contained HTML page, from `bench --json` records and
    /// the peers' (`cargo xtask bench --peers`), side by side
    Report(report::ReportArgs),
    /// Shell completions for bash, zsh, fish, elvish or powershell, on stdout
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The manual page (roff), on stdout: `vgg manpage > vgg.1; man ./vgg.1`
    Manpage,
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
        Command::Summary(a) => summary::run(&a)?,
        Command::Rf(a) => rf::run(&a)?,
        Command::Init(a) => {
            let b = vgg_ndarray::CpuBackend::new(0)?;
            b.clone().execute(|| net::init(&b, &a))?
        }
        Command::Forward(a) => with_backend!(a.device, |b| net::forward(&b, &a))?,
        Command::Backward(a) => with_backend!(a.device, |b| net::backward(&b, &a))?,
        Command::Classify(a) => with_backend!(a.device, |b| classify::run(&b, &a))?,
        Command::Explain(a) => with_backend!(a.device, |b| explain::run(&b, &a))?,
        Command::Train(a) => with_backend!(a.device, |b| train::run(&b, &a))?,
        Command::Eval(a) => with_backend!(a.device, |b| eval::run(&b, &a))?,
        Command::Bench(a) => {
            let threads = a.device.cpu_threads()?;
            with_backend!(a.device, |b| bench::run(b, threads, &a))?
        }
        Command::Report(a) => report::run(&a)?,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vgg", &mut out);
            String::from_utf8(out)?
        }
        Command::Manpage => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            String::from_utf8(out)?
        }
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
        .without_time()
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version; a closed stdout is not an error here either. Styled only for
            // a terminal, and never under NO_COLOR (https://no-color.org).
            let styled = std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            let text = if styled {
                e.render().ansi().to_string()
            } else {
                e.render().to_string()
            };
            let _ = stdout::print(&text);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Clap's own message: what is wrong, the usage, where to find more.
            let _ = e.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    init_tracing(cli.verbose);
    signals::install();
    if let Some(bytes) = cli.max_memory {
        vgg_tensor::memory::set_budget(bytes);
    }
    match run(cli) {
        Ok(()) => {
            dist::finish();
            // A command stopped early by Ctrl-C reports what it did, and says it was interrupted.
            if signals::stop_requested() {
                ExitCode::from(signals::EXIT_INTERRUPTED)
            } else {
                ExitCode::SUCCESS
            }
        }
        // The reader of the results went away (`vgg bench | head -1`): end quietly.
        Err(e) if stdout::closed(e.as_ref()) => {
            // Under mpirun the other ranks may be waiting for this one.
            dist::end_job(0);
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line: the problem, and in parentheses the flags that fix it where they are known.
            let hint = hints::hint(&e).map_or(String::new(), |h| format!(" ({h})"));
            stdout::warn(&format!("error: {}{e:#}{hint}", dist::who()));
            let code = exit::code(&e);
            // The other ranks would wait for this one forever.
            dist::end_job(code);
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option of every command says what it does (its default and valid values are in
    /// the text or shown by clap).
    #[test]
    fn every_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "vgg", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:?}");
        Cli::command().debug_assert();
    }
}
