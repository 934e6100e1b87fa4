//! `vgg classify`: ImageNet classes of image files, preprocessed as torchvision does for VGG
//! (`vgg_nn::io::image`).

use std::path::PathBuf;

use anyhow::Result;
use vgg_autodiff::Tape;
use vgg_model::imagenet::class_name;
use vgg_model::Workload;
use vgg_nn::io::image::{load_imagenet_image, CROP};
use vgg_nn::RunOptions;
use vgg_tensor::{Backend, Shape};

use crate::net::{load_model, top_k, untrained_note};
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
    let (vgg, metadata) = load_model(
        backend,
        &a.net,
        &a.weights.weights,
        Some((CROP, CROP)),
        batch,
        Workload::Inference { copies: 3 },
        " for ImageNet images",
    )?;
    let classes = vgg.spec().options.classes;
    let mut out = untrained_note(&metadata).unwrap_or_default();
    for (i, paths) in a.images.chunks(BATCH).enumerate() {
        stages.stage(&format!(
            "classifying images {}-{} of {}",
            i * BATCH + 1,
            i * BATCH + paths.len(),
            a.images.len()
        ));
        let mut pixels = Vec::with_capacity(paths.len() * 3 * CROP * CROP);
        for path in paths {
            pixels.extend(load_imagenet_image(path)?);
        }
        let x = backend.upload(&Shape::from([paths.len(), 3, CROP, CROP]), &pixels)?;
        let tape = Tape::inference(backend.clone());
        let logits = vgg.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
        let probs = backend.download(&backend.softmax_rows(logits.value())?)?;
        for (path, row) in paths.iter().zip(probs.chunks(classes)) {
            out.push_str(&format!("{}:\n", path.display()));
            for (rank, (class, p)) in top_k(row, a.top.top).into_iter().enumerate() {
                out.push_str(&format!(
                    "  {}. {:>6.2}%  {class:>4} {}\n",
                    rank + 1,
                    100.0 * p,
                    class_name(class, classes).unwrap_or("")
                ));
            }
        }
    }
    Ok(out)
}
