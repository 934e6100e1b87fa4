//! `vgg eval`: how well trained weights classify a data set: accuracy, per-class accuracy and the
//! confusion matrix. For a `vgg train` checkpoint the data set, split and seed default to the
//! ones it was trained with, so the held-out images are the same.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use vgg_autodiff::Tape;
use vgg_model::Workload;
use vgg_nn::RunOptions;
use vgg_tensor::{Backend, Shape};
use vgg_train::data::Dataset;
use vgg_train::meta::Provenance;

use crate::args::{self, Format};
use crate::net::load_model;
use crate::options::{DeviceArgs, NetOptions, WeightsArg};
use crate::progress;
use crate::table::Table;
use crate::train::{DataArgs, DatasetChoice};

/// JSON schema version of `--format json`.
pub const EVAL_SCHEMA: &str = "vgg-eval/1";

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub weights: WeightsArg,
    /// The data set: digits (carried in vgg) or cifar10 (give --data) [default: the
    /// checkpoint's, else digits]
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetChoice>,
    /// The data's directory: cifar-10-batches-bin for cifar10; for digits, another copy of
    /// data/digits [default for digits: the copy carried in vgg]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Which images: test (the held-out ones) or train
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Fraction of the digits held out, in (0, 1) [default: the checkpoint's, else 0.2]
    #[arg(long, allow_negative_numbers = true)]
    pub test_fraction: Option<f64>,
    /// Seed of the digits' split [default: the checkpoint's, else 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Images per forward pass, at least 1
    #[arg(long, default_value = "256", value_parser = args::positive)]
    pub batch_size: usize,
    /// What stdout shows: tables, JSON (schema vgg-eval/1), CSV or Markdown (the confusion matrix
    /// alone for CSV)
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub net: NetOptions,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The images held out from training
    Test,
    /// The images trained on
    Train,
}

#[derive(Serialize)]
struct ClassRow {
    class: usize,
    images: usize,
    correct: usize,
    accuracy: f64,
}

#[derive(Serialize)]
struct EvalJson {
    schema: &'static str,
    weights: String,
    dataset: &'static str,
    split: &'static str,
    images: usize,
    correct: usize,
    accuracy: f64,
    per_class: Vec<ClassRow>,
    /// confusion[true class][predicted class]
    confusion: Vec<Vec<usize>>,
}

/// Which data set, and how split, where the flags do not say.
pub struct DataChoice<'a> {
    /// `--dataset`.
    pub dataset: Option<DatasetChoice>,
    /// `--data`.
    pub data: Option<&'a Path>,
    /// `--test-fraction`.
    pub test_fraction: Option<f64>,
    /// `--seed`.
    pub seed: Option<u64>,
}

/// The data set weights were trained on, split as it was (the flags first, then the checkpoint's
/// record, then digits, 0.2 held out, seed 0): (data set, training images, held-out images).
pub fn recorded_data(
    weights: &Path,
    metadata: &HashMap<String, String>,
    flags: DataChoice,
) -> Result<(DatasetChoice, Dataset, Dataset)> {
    let recorded =
        Provenance::read(metadata).with_context(|| format!("reading {}", weights.display()))?;
    let dataset = match (flags.dataset, recorded.dataset.as_deref()) {
        (Some(d), Some(r)) if d.name() != r => {
            tracing::warn!(
                "{} was trained on {r}; evaluating it on {} as --dataset says",
                weights.display(),
                d.name()
            );
            d
        }
        (Some(d), _) => d,
        (None, Some("cifar10")) => DatasetChoice::Cifar10,
        _ => DatasetChoice::Digits,
    };
    let test_fraction = flags
        .test_fraction
        .or(recorded.test_fraction)
        .unwrap_or(0.2);
    let seed = flags.seed.or(recorded.seed).unwrap_or(0);
    let data = DataArgs {
        dataset,
        data: flags.data.map(Path::to_path_buf),
        test_fraction,
    };
    let (train_set, test_set) = data.load(seed)?;
    Ok((dataset, train_set, test_set))
}

pub fn run<B: Backend>(backend: &B, a: &EvalArgs) -> Result<String> {
    let file = crate::net::read_weights(&a.weights.weights)?;
    let (dataset, train_set, test_set) = recorded_data(
        &a.weights.weights,
        &file.metadata,
        DataChoice {
            dataset: a.dataset,
            data: a.data.as_deref(),
            test_fraction: a.test_fraction,
            seed: a.seed,
        },
    )?;
    let set = match a.split {
        Split::Test => test_set,
        Split::Train => train_set,
    };
    if set.is_empty() {
        bail!("the {} split has no images", split_name(a.split));
    }
    let batch = a.batch_size.min(set.len());
    let (vgg, _) = load_model(
        backend,
        &a.net,
        &a.weights.weights,
        Some((set.height, set.width)),
        batch,
        Workload::Inference { copies: 3 },
        &format!(" for the {} data set", dataset.name()),
    )?;
    let classes = vgg.spec().options.classes;
    if classes != set.classes {
        bail!(
            "{} predicts {classes} classes, but the {} data set has {}",
            a.weights.weights.display(),
            dataset.name(),
            set.classes
        );
    }
    let bar = progress::bar(set.len() as u64, "  [{bar:30}] {pos}/{len} images");
    let mut confusion = vec![vec![0usize; classes]; classes];
    let order: Vec<usize> = (0..set.len()).collect();
    for chunk in order.chunks(batch) {
        let (images, labels) = set.gather(chunk);
        let shape = Shape::from([chunk.len(), set.channels, set.height, set.width]);
        let x = backend.upload(&shape, &images)?;
        let tape = Tape::inference(backend.clone());
        let logits = vgg.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
        for (p, l) in backend.argmax_rows(logits.value())?.into_iter().zip(labels) {
            confusion[l][p] += 1;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let per_class: Vec<ClassRow> = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let images = row.iter().sum::<usize>();
            ClassRow {
                class: c,
                images,
                correct: row[c],
                accuracy: row[c] as f64 / images.max(1) as f64,
            }
        })
        .collect();
    let correct: usize = per_class.iter().map(|r| r.correct).sum();
    let report = EvalJson {
        schema: EVAL_SCHEMA,
        weights: a.weights.weights.display().to_string(),
        dataset: dataset.name(),
        split: split_name(a.split),
        images: set.len(),
        correct,
        accuracy: correct as f64 / set.len() as f64,
        per_class,
        confusion,
    };
    Ok(render(&report, a.format))
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Test => "test",
        Split::Train => "train",
    }
}

fn render(r: &EvalJson, format: Format) -> String {
    let mut classes = Table::new(["class", "images", "correct", "accuracy"]);
    for row in &r.per_class {
        classes.push(vec![
            row.class.to_string(),
            row.images.to_string(),
            row.correct.to_string(),
            format!("{:.2}%", 100.0 * row.accuracy),
        ]);
    }
    let mut headers = vec!["true \\ predicted".to_string()];
    headers.extend((0..r.confusion.len()).map(|c| c.to_string()));
    let mut confusion = Table::new(headers);
    for (c, row) in r.confusion.iter().enumerate() {
        let mut cells = vec![c.to_string()];
        cells.extend(row.iter().map(|n| n.to_string()));
        confusion.push(cells);
    }
    let headline = format!(
        "{} on the {} {} split: {} of {} correct, accuracy {:.2}%",
        r.weights,
        r.dataset,
        r.split,
        r.correct,
        r.images,
        100.0 * r.accuracy
    );
    match format {
        Format::Json => serde_json::to_string_pretty(r).expect("the report serialises") + "\n",
        Format::Csv => confusion.csv(),
        Format::Markdown => format!(
            "{headline}\n\n{}\n{}",
            classes.markdown(),
            confusion.markdown()
        ),
        Format::Table => format!(
            "{headline}\n\nper class:\n{}\nconfusion (rows: true class, columns: predicted):\n{}",
            classes.text(),
            confusion.text()
        ),
    }
}
