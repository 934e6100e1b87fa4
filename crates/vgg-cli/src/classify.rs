//! `vgg classify`: ImageNet classes of image files, preprocessed as torchvision does for VGG
//! (`vgg_nn::io::image`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use vgg_autodiff::Tape;
use vgg_model::Workload;
use vgg_nn::io::image::{load_imagenet_image, CROP};
use vgg_nn::RunOptions;
use vgg_tensor::{Backend, Shape};

use crate::net::{load_model, top_k, ModelFlags};

/// The 1,000 ImageNet-1k class names, in torchvision's order.
const IMAGENET_CLASSES: &str = include_str!("../../../data/imagenet-classes.txt");

/// Images per forward pass: memory stays bounded however many images are given.
const BATCH: usize = 16;

pub fn run<B: Backend>(
    backend: &B,
    flags: &ModelFlags,
    weights: &Path,
    images: &[PathBuf],
    top: usize,
) -> Result<String> {
    let batch = images.len().min(BATCH);
    let vgg = load_model(
        backend,
        flags,
        weights,
        (CROP, CROP),
        batch,
        Workload::Inference { copies: 3 },
    )?;
    let classes = vgg.spec().options.classes;
    let names: Vec<&str> = IMAGENET_CLASSES.lines().collect();
    let mut out = String::new();
    for paths in images.chunks(BATCH) {
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
            for (rank, (class, p)) in top_k(row, top).into_iter().enumerate() {
                // Class names only make sense for a 1000-class ImageNet network.
                let name = if classes == names.len() {
                    names[class]
                } else {
                    ""
                };
                out.push_str(&format!(
                    "  {}. {:>6.2}%  {class:>4} {name}\n",
                    rank + 1,
                    100.0 * p
                ));
            }
        }
    }
    Ok(out)
}
