//! `vgg classify`: the classes of image files, prepared as the weights' training data was
//! (`vgg_train::images`): torchvision's ImageNet preprocessing, or the digits' or CIFAR-10's for
//! networks trained here.

use std::path::PathBuf;

use anyhow::Result;
use vgg_autodiff::Tape;
use vgg_model::Workload;
use vgg_nn::RunOptions;
use vgg_tensor::{Backend, Shape};
use vgg_train::images::Preprocessing;

use crate::net::{load_for_images, top_k, untrained_note};
use crate::options::{DeviceArgs, NetOptions, TopArg, WeightsArg};
use crate::progress::Stages;

/// Images per forward pass: memory stays bounded however many images are given.
const BATCH: usize = 16;

#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub weights: WeightsArg,
    /// The images: PNG or JPEG files
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub top: TopArg,
    #[command(flatten)]
    pub net: NetOptions,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run<B: Backend>(backend: &B, a: &ClassifyArgs) -> Result<String> {
    let batch = a.images.len().min(BATCH);
    let stages = Stages::new(&format!("loading {}", a.weights.weights.display()));
    let (vgg, metadata, prep) = load_for_images(
        backend,
        &a.net,
        &a.weights.weights,
        batch,
        Workload::Inference { copies: 3 },
    )?;
    let shape = prep.shape();
    let dataset = metadata.get(vgg_train::meta::DATASET);
    let classes = vgg.spec().options.classes;
    let mut out = untrained_note(&metadata).unwrap_or_default();
    if prep != (Preprocessing::ImageNet { side: 224 }) {
        let why = match dataset {
            Some(d) => format!("the data set these weights were trained on, {d}"),
            None => "no data set recorded in the weights".into(),
        };
        out.push_str(&format!("images prepared as {} ({why})\n", prep.describe()));
    }
    for (i, paths) in a.images.chunks(BATCH).enumerate() {
        stages.stage(&format!(
            "classifying images {}-{} of {}",
            i * BATCH + 1,
            i * BATCH + paths.len(),
            a.images.len()
        ));
        let mut pixels = Vec::with_capacity(paths.len() * shape.iter().product::<usize>());
        let mut inverted = Vec::with_capacity(paths.len());
        for path in paths {
            let image = prep.load(path)?;
            pixels.extend(image.values);
            inverted.push(image.inverted);
        }
        let x = backend.upload(
            &Shape::from([paths.len(), shape[0], shape[1], shape[2]]),
            &pixels,
        )?;
        let tape = Tape::inference(backend.clone());
        let logits = vgg.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
        let probs = backend.download(&backend.softmax_rows(logits.value())?)?;
        for ((path, row), inverted) in paths.iter().zip(probs.chunks(classes)).zip(inverted) {
            out.push_str(&format!("{}:\n", path.display()));
            if inverted {
                out.push_str(
                    "  (dark strokes on a light ground: inverted to the digits' bright ink)\n",
                );
            }
            for (rank, (class, p)) in top_k(row, a.top.top).into_iter().enumerate() {
                out.push_str(&format!(
                    "  {}. {:>6.2}%  {class:>4} {}\n",
                    rank + 1,
                    100.0 * p,
                    // The digits' names are their indices: said once.
                    prep.class_name(class, classes)
                        .filter(|name| *name != class.to_string())
                        .unwrap_or("")
                ));
            }
        }
    }
    Ok(out)
}
