//! `vgg explain`: what the network looks at in image files, drawn (`vgg_model::explain` computes
//! the maps, `vgg_report::pictures` draws them): Grad-CAM and Grad-CAM++ over the picture,
//! saliency, SmoothGrad, a layer's activations and the first layer's filters, as PNG files and
//! one page beside them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use vgg_model::spec::LayerOp;
use vgg_model::{Question, SmoothGrad, Workload};
use vgg_nn::io::{self, NamedPath};
use vgg_report::pictures::{enlarged, feature_grid, filter_grid, heat_map, heat_overlay, png};
use vgg_report::{explain_page, ExplainPage, ExplainedImage, Figure};
use vgg_tensor::{Backend, DeviceTensor, Shape};
use vgg_train::images::Prepared;

use crate::args;
use crate::eval::{recorded_data, DataChoice};
use crate::net::{load_for_images, top_k, untrained_note};
use crate::options::{DeviceArgs, NetOptions, TopArg, WeightsArg};
use crate::progress::Stages;

/// Channels drawn of a layer's activations: enough to see what it responds to, few enough for a
/// page.
const CHANNELS_SHOWN: usize = 64;

/// Pictures of the image's size are enlarged by whole pixels to at least this side (a 32x32
/// digit to 128x128), so that they can be seen.
const SMALLEST_PICTURE: u32 = 128;

/// Noisy copies SmoothGrad may be asked for: each costs a forward-backward.
const MAX_SMOOTH_GRAD: usize = 1000;

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub weights: WeightsArg,
    /// The images: PNG or JPEG files
    #[arg(required_unless_present = "held_out")]
    pub images: Vec<PathBuf>,
    /// Explain the first N images held out from training, for weights `vgg train` made: the data
    /// set and split they were trained with (the digits travel in vgg; CIFAR-10 needs --data)
    #[arg(long, value_name = "N", value_parser = args::positive, conflicts_with = "images")]
    pub held_out: Option<usize>,
    /// The CIFAR-10 data's directory (cifar-10-batches-bin), for --held-out
    #[arg(long, requires = "held_out")]
    pub data: Option<PathBuf>,
    /// The directory the pictures (PNG) and their page (index.html) go in; created if missing
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// The layer Grad-CAM and Grad-CAM++ weigh: a convolution or pool (conv1_1 ... pool5)
    /// [default: the last convolution, conv5_3 in VGG-16]
    #[arg(long)]
    pub layer: Option<String>,
    /// The class to explain [default: each image's most probable]
    #[arg(long)]
    pub class: Option<usize>,
    /// Also draw these layers' activations, comma-separated (conv1_1,pool3); up to 64 channels each
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// SmoothGrad: average saliency over this many noisy copies of each image (0: none)
    #[arg(long, default_value = "0", value_name = "COPIES")]
    pub smooth_grad: usize,
    /// SmoothGrad's noise: its deviation as a fraction of the image's value range, in (0, 1]
    #[arg(long, default_value = "0.15", value_parser = noise_level)]
    pub noise: f32,
    /// Seeds SmoothGrad's noise
    #[arg(long, default_value = "0")]
    pub seed: u64,
    #[command(flatten)]
    pub top: TopArg,
    #[command(flatten)]
    pub net: NetOptions,
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn noise_level(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a fraction in (0, 1]: the noise's deviation relative to the image's range, e.g. 0.15"
        )),
    }
}

/// The file stem of an image, for its outputs' names.
fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned())
}

/// Output names: each stem, with `-2`, `-3` ... after a repeated one.
fn distinct_stems(stems: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    stems
        .iter()
        .map(|stem| {
            let mut name = stem.clone();
            let mut n = 1;
            while !seen.insert(name.clone()) {
                n += 1;
                name = format!("{stem}-{n}");
            }
            name
        })
        .collect()
}

/// An image to explain.
enum Source {
    /// An image file.
    File(PathBuf),
    /// An image of the data set held out from training, prepared, with its class.
    HeldOut {
        name: String,
        stem: String,
        prepared: Prepared,
        label: usize,
    },
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::HeldOut { name, .. } => name.clone(),
        }
    }

    fn stem(&self) -> String {
        match self {
            Source::File(path) => stem_of(path),
            Source::HeldOut { stem, .. } => stem.clone(),
        }
    }
}

/// The files written for one image.
struct ImageOutputs {
    input: PathBuf,
    cam: PathBuf,
    cam_plus_plus: PathBuf,
    saliency: PathBuf,
    smooth_grad: Option<PathBuf>,
    features: Vec<PathBuf>,
}

pub fn run<B: Backend>(backend: &B, a: &ExplainArgs) -> Result<String> {
    if a.smooth_grad > MAX_SMOOTH_GRAD {
        bail!(
            "--smooth-grad {} is more than {MAX_SMOOTH_GRAD} copies, each a forward-backward: \
             the paper's maps settle by 50",
            a.smooth_grad
        );
    }
    let stages = Stages::new(&format!("loading {}", a.weights.weights.display()));
    let (vgg, metadata, prep) = load_for_images(
        backend,
        &a.net,
        &a.weights.weights,
        1,
        Workload::Training { copies: 1 },
    )?;
    let spec = vgg.spec();
    let layer = match &a.layer {
        Some(l) => l.clone(),
        None => spec
            .layers
            .iter()
            .rev()
            .find(|l| matches!(l.op, LayerOp::Conv { .. }))
            .map(|l| l.name.clone())
            .expect("a VGG has convolutions"),
    };
    // A layer asked for twice is drawn once.
    let mut features: Vec<String> = Vec::new();
    for f in &a.features {
        if !features.contains(f) {
            features.push(f.clone());
        }
    }
    let question = Question {
        cam_layer: layer.clone(),
        class: a.class,
        features: features.clone(),
        smooth_grad: (a.smooth_grad > 0).then_some(SmoothGrad {
            samples: a.smooth_grad,
            noise: a.noise,
            seed: a.seed,
        }),
    };
    vgg.check_question(&question)?;
    // What is explained: image files, or held-out images of the weights' data set.
    let sources: Vec<Source> = match a.held_out {
        Some(n) => {
            let (dataset, _, test) = recorded_data(
                &a.weights.weights,
                &metadata,
                DataChoice {
                    dataset: None,
                    data: a.data.as_deref(),
                    test_fraction: None,
                    seed: None,
                },
            )?;
            if n > test.len() {
                bail!(
                    "--held-out {n}: the {} data set holds out {} images",
                    dataset.name(),
                    test.len()
                );
            }
            if [test.channels, test.height, test.width] != prep.shape() {
                bail!(
                    "{} does not take the {} data set's {}x{}x{} images",
                    a.weights.weights.display(),
                    dataset.name(),
                    test.channels,
                    test.height,
                    test.width
                );
            }
            (0..n)
                .map(|i| {
                    let (values, labels) = test.gather(&[i]);
                    Source::HeldOut {
                        name: format!("held-out image {i} of {}", dataset.name()),
                        stem: format!("held-out-{i}"),
                        prepared: Prepared {
                            values,
                            inverted: false,
                        },
                        label: labels[0],
                    }
                })
                .collect()
        }
        None => a.images.iter().cloned().map(Source::File).collect(),
    };
    // Every output is named and checked before the work: the directory, no two outputs alike,
    // none of them an input.
    io::output_directory(&a.output)?;
    let stems = distinct_stems(&sources.iter().map(Source::stem).collect::<Vec<_>>());
    let outputs: Vec<ImageOutputs> = stems
        .iter()
        .map(|stem| ImageOutputs {
            input: a.output.join(format!("{stem}.input.png")),
            cam: a.output.join(format!("{stem}.gradcam-{layer}.png")),
            cam_plus_plus: a.output.join(format!("{stem}.gradcampp-{layer}.png")),
            saliency: a.output.join(format!("{stem}.saliency.png")),
            smooth_grad: question
                .smooth_grad
                .map(|_| a.output.join(format!("{stem}.smoothgrad.png"))),
            features: features
                .iter()
                .map(|f| a.output.join(format!("{stem}.{f}.png")))
                .collect(),
        })
        .collect();
    let first_conv = spec.layers[0].name.clone();
    let filters_path = a.output.join(format!("filters-{first_conv}.png"));
    let page_path = a.output.join("index.html");
    let mut written: Vec<&Path> = vec![&page_path, &filters_path];
    for o in &outputs {
        written.extend([
            o.input.as_path(),
            o.cam.as_path(),
            o.cam_plus_plus.as_path(),
            o.saliency.as_path(),
        ]);
        written.extend(o.smooth_grad.as_deref());
        written.extend(o.features.iter().map(PathBuf::as_path));
    }
    for path in &written {
        io::check_output(path)?;
    }
    let named_outputs: Vec<NamedPath> = written
        .iter()
        .map(|path| NamedPath {
            name: "an output",
            path,
        })
        .collect();
    let inputs: Vec<NamedPath> = std::iter::once(NamedPath {
        name: "--weights",
        path: &a.weights.weights,
    })
    .chain(a.images.iter().map(|path| NamedPath {
        name: "an image",
        path,
    }))
    .collect();
    io::check_distinct(&named_outputs, &inputs)?;

    let classes = spec.options.classes;
    // The digits' names are their indices: said once.
    let class_name = |class: usize| {
        prep.class_name(class, classes)
            .filter(|name| *name != class.to_string())
            .unwrap_or("")
            .to_string()
    };
    let mut out = untrained_note(&metadata).unwrap_or_default();
    let mut page_images = Vec::new();
    let [c, h, w] = prep.shape();
    // Every image is read before anything is written: a bad one stops the run with no output.
    let prepared: Vec<(Cow<Prepared>, Option<usize>)> = sources
        .iter()
        .map(|source| match source {
            Source::File(path) => Ok((Cow::Owned(prep.load(path)?), None)),
            Source::HeldOut {
                prepared, label, ..
            } => Ok((Cow::Borrowed(prepared), Some(*label))),
        })
        .collect::<Result<_>>()?;
    for (((source, stem_outputs), (prepared, label)), i) in
        sources.iter().zip(&outputs).zip(prepared).zip(1..)
    {
        stages.stage(&format!("explaining image {i} of {}", sources.len()));
        let x = backend.upload(&Shape::from([1, c, h, w]), &prepared.values)?;
        let e = vgg.explain(backend, &x, &question)?;
        let picture = prep.picture(&prepared.values);
        let (pw, ph) = (picture.width(), picture.height());
        let explained = format!(
            "class {} {}({:.2}%), Grad-CAM at {layer} ({}x{})",
            e.class,
            match class_name(e.class) {
                n if n.is_empty() => String::new(),
                n => format!("{n} "),
            },
            100.0 * e.probabilities[e.class],
            e.cam.shape[0],
            e.cam.shape[1],
        );
        let mut figures = vec![
            (
                &stem_outputs.input,
                format!("the input as the network sees it ({})", prep.describe()),
                png(&enlarged(&picture, SMALLEST_PICTURE)),
            ),
            (
                &stem_outputs.cam,
                format!("Grad-CAM at {layer}, class {}", e.class),
                png(&enlarged(
                    &heat_overlay(&picture, &e.cam_on_input.data),
                    SMALLEST_PICTURE,
                )),
            ),
            (
                &stem_outputs.cam_plus_plus,
                format!("Grad-CAM++ at {layer}, class {}", e.class),
                png(&enlarged(
                    &heat_overlay(&picture, &e.cam_plus_plus_on_input.data),
                    SMALLEST_PICTURE,
                )),
            ),
            (
                &stem_outputs.saliency,
                "saliency: max over channels of |d logit / d input|".into(),
                png(&enlarged(
                    &heat_map(&e.saliency.data, pw, ph),
                    SMALLEST_PICTURE,
                )),
            ),
        ];
        if let (Some(map), Some(path), Some(s)) = (
            &e.smooth_grad,
            &stem_outputs.smooth_grad,
            question.smooth_grad,
        ) {
            figures.push((
                path,
                format!(
                    "SmoothGrad: saliency averaged over {} copies with noise {} of the range",
                    s.samples, s.noise
                ),
                png(&enlarged(&heat_map(&map.data, pw, ph), SMALLEST_PICTURE)),
            ));
        }
        for ((name, t), path) in e.features.iter().zip(&stem_outputs.features) {
            let &[channels, fh, fw] = t.shape.as_slice() else {
                bail!("{name}'s activations are not [C, h, w]: {:?}", t.shape)
            };
            figures.push((
                path,
                format!(
                    "{name}: {} of {channels} channels, {fh}x{fw}, each scaled to its range",
                    channels.min(CHANNELS_SHOWN)
                ),
                png(&feature_grid(&t.data, (channels, fh, fw), CHANNELS_SHOWN)),
            ));
        }
        out.push_str(&format!("{}:\n", source.name()));
        if let Some(label) = label {
            let line = format!("  true class {label} {}", class_name(label));
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if prepared.inverted {
            out.push_str(
                "  (dark strokes on a light ground: inverted to the digits' bright ink)\n",
            );
        }
        let top = top_k(&e.probabilities, a.top.top);
        for (rank, (class, p)) in top.iter().enumerate() {
            let line = format!(
                "  {}. {:>6.2}%  {class:>4} {}",
                rank + 1,
                100.0 * p,
                class_name(*class)
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push_str(&format!("  explained: {explained}\n"));
        for (file, _, bytes) in &figures {
            io::write_atomic(file, bytes)?;
            out.push_str(&format!("  wrote {}\n", file.display()));
        }
        page_images.push(ExplainedImage {
            name: match label {
                Some(label) => format!("{} (true class {label})", source.name()),
                None => source.name(),
            },
            top: top
                .iter()
                .map(|&(class, p)| (class, p, class_name(class)))
                .collect(),
            explained,
            figures: figures
                .into_iter()
                .map(|(_, caption, png)| Figure { caption, png })
                .collect(),
        });
    }
    let (name, weight) = vgg
        .named_params()
        .into_iter()
        .next()
        .expect("a first convolution");
    let dims = weight.shape().dims().to_vec();
    let [o, i, kh, kw] = dims[..] else {
        bail!("{name} is not a convolution's [O, I, kh, kw] weight: {dims:?}")
    };
    let filters = png(&filter_grid(&backend.download(weight)?, (o, i, kh, kw)));
    io::write_atomic(&filters_path, &filters)?;
    let page = explain_page(&ExplainPage {
        network: format!("{} ({})", spec.describe(), a.weights.weights.display()),
        notes: vec![
            "Grad-CAM (Selvaraju et al., 2017): the layer's channels weighed by the spatial mean of \
             the class logit's gradient, ReLU, enlarged bilinearly; drawn over the image in turbo \
             colours, scaled to its largest value, zero left clear."
                .into(),
            "Saliency (Simonyan et al., 2014): the largest |gradient of the class logit| over the \
             input's channels, in inferno colours scaled to its 99th percentile."
                .into(),
        ],
        filters: Some(Figure {
            caption: format!("{first_conv}: {o} filters of {i}x{kh}x{kw}, each scaled to its range"),
            png: filters,
        }),
        images: page_images,
    })?;
    io::write_atomic(&page_path, page.as_bytes())?;
    out.push_str(&format!(
        "wrote {} and {}\n",
        filters_path.display(),
        page_path.display()
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_image_names_get_distinct_outputs() {
        let stems = |paths: &[&str]| -> Vec<String> {
            paths.iter().map(|p| stem_of(Path::new(p))).collect()
        };
        let images = stems(&["a/cat.png", "b/cat.jpg", "dog.png", "c/cat.png"]);
        assert_eq!(distinct_stems(&images), ["cat", "cat-2", "dog", "cat-3"]);
        // A file already named like a renamed one still gets a name of its own.
        let images = stems(&["cat.png", "x/cat.png", "cat-2.png"]);
        assert_eq!(distinct_stems(&images), ["cat", "cat-2", "cat-2-2"]);
    }
}
