//! `vgg init`, `vgg forward` and `vgg backward`, and what the commands that run a network share:
//! reading weight files (training checkpoints included), the memory checks, and the inputs
//! (a `.npy` batch, PNG/JPEG images, or random images).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use vgg_autodiff::Tape;
use vgg_model::model::{meta, options_from_metadata, options_from_tensors};
use vgg_model::{ModelSpec, PartialOptions, Vgg, VggConfig, Workload};
use vgg_nn::io::{self, HostTensor, NamedPath, TensorFile};
use vgg_nn::{InitScheme, RunOptions};
use vgg_tensor::{Backend, Shape};
use vgg_train::images::Preprocessing;

use crate::args;
use crate::options::{DeviceArgs, InputShape, NetDefaults, NetOptions, TopArg, WeightsArg};
use crate::progress::Stages;
use crate::table::plural;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitChoice {
    /// The reference program's: Xavier uniform weights, conv biases 0, fc biases 0.1
    Reference,
    /// torchvision's: Kaiming normal (fan out) convs, N(0, 0.01) linear layers, zero biases
    Kaiming,
}

impl InitChoice {
    fn scheme(self) -> InitScheme {
        match self {
            InitChoice::Reference => InitScheme::REFERENCE,
            InitChoice::Kaiming => InitScheme::KAIMING,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub net: NetOptions,
    #[command(flatten)]
    pub shape: InputShape,
    /// Seeds every parameter's values (each tensor its own stream)
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// How the weights start
    #[arg(long, value_enum, default_value = "reference")]
    pub init: InitChoice,
    /// Where to write the weights (.safetensors, with the network's options as metadata)
    #[arg(long)]
    pub output: PathBuf,
}

/// The data a network runs on.
#[derive(clap::Args, Debug)]
pub struct InputArgs {
    #[command(flatten)]
    pub source: InputSource,
    /// Seeds --random's images
    #[arg(long, default_value = "0")]
    pub seed: u64,
}

/// The batch: files, or random images; exactly one of the two.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct InputSource {
    /// The images: one N x C x H x W float32 .npy, or PNG/JPEG files (preprocessed as torchvision
    /// does for ImageNet: shorter side to 256, centre crop 224, normalised)
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Instead of --input: N random images (normal, standard deviation 0.1, as the benchmark's)
    /// of the size the weights were made for, seeded by --seed
    #[arg(long, value_parser = args::positive)]
    pub random: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub weights: WeightsArg,
    #[command(flatten)]
    pub input: InputArgs,
    /// Also write the logits to this file (an N x classes float32 .npy) [default: print the top
    /// classes only]
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub top: TopArg,
    #[command(flatten)]
    pub net: NetOptions,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(clap::Args, Debug)]
pub struct BackwardArgs {
    #[command(flatten)]
    pub weights: WeightsArg,
    #[command(flatten)]
    pub input: InputArgs,
    /// Where to write the gradients (.safetensors, under the parameters' names)
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub net: NetOptions,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn init<B: Backend>(backend: &B, a: &InitArgs) -> Result<String> {
    io::check_output(&a.output)?;
    let known = a.shape.partial();
    let spec = a.net.spec(None, known, NetDefaults::default())?;
    // The weights and one tensor's host copy at a time.
    check_memory(backend, &spec, 1, Workload::Weights { copies: 2 })?;
    let stages = Stages::new(&format!("initialising {}", spec.describe()));
    let vgg = Vgg::init(backend, spec, &a.init.scheme(), a.seed)?;
    stages.stage(&format!("writing {}", a.output.display()));
    let scheme = match a.init {
        InitChoice::Reference => "reference",
        InitChoice::Kaiming => "kaiming",
    };
    let drawn = format!("{scheme}, seed {}", a.seed);
    vgg.save_with(backend, &a.output, &[(meta::INITIALISED, drawn)])?;
    Ok(format!(
        "wrote {} ({} parameters, {scheme} init, seed {})\n",
        a.output.display(),
        vgg.param_count(),
        a.seed
    ))
}

/// A note for the top of predictions made with weights `vgg init` drew and nothing trained
/// (None for trained weights, or where the file does not say).
pub fn untrained_note(metadata: &HashMap<String, String>) -> Option<String> {
    let drawn = metadata.get(meta::INITIALISED)?;
    if metadata.contains_key(vgg_train::meta::DATASET) {
        return None;
    }
    Some(format!(
        "note: these weights are untrained (drawn by `vgg init`, {drawn}): the classes below are \
         guesses; train them (`vgg train`) or use torchvision's\n"
    ))
}

/// The memory a command may plan to use: the backend's free memory, capped by `--max-memory`.
pub fn available_memory<B: Backend>(backend: &B) -> Option<u64> {
    vgg_tensor::memory::within_budget(backend.available_bytes())
}

/// Refuses `work` on a batch of `batch` that the available memory cannot hold, before anything
/// that large is allocated.
pub fn check_memory<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    work: Workload,
) -> Result<()> {
    if let Some(available) = available_memory(backend) {
        spec.check_memory(batch, work, available)?;
    }
    Ok(())
}

/// Warns when input values are NaN or infinite: the outputs will be NaN where they reach.
pub fn warn_non_finite(what: &str, values: &[f32]) {
    let n = values.iter().filter(|v| !v.is_finite()).count();
    if n > 0 {
        tracing::warn!(
            "{what} holds {n} NaN or infinite values: they propagate, so the outputs they reach will be NaN"
        );
    }
}

/// A weight file's tensors (safetensors, or PyTorch's .pth). A `vgg train` checkpoint's optimiser
/// state is dropped, with a note: inference needs only the weights.
pub fn read_weights(path: &Path) -> Result<TensorFile> {
    let mut file = io::load_tensors(path)?;
    let before = file.tensors.len();
    file.tensors.retain(|(n, _)| !n.starts_with("optimizer."));
    let dropped = before - file.tensors.len();
    if dropped > 0 {
        let epoch = file
            .metadata
            .get(vgg_train::meta::EPOCH)
            .map_or(String::new(), |e| format!(" after epoch {e}"));
        tracing::info!(
            "{} is a training checkpoint{epoch}: its {dropped} optimiser tensors are ignored",
            path.display()
        );
    }
    Ok(file)
}

/// The network of a weight file for `size` (HxW) images, and the file's metadata; checked to fit
/// in memory for `work` on a batch of `batch`: options from the flags, then the file's metadata,
/// then the defaults.
/// `purpose` ("for 2 images of x.npy") ends the errors, which start with the weights.
pub fn load_model<B: Backend>(
    backend: &B,
    flags: &NetOptions,
    weights: &Path,
    size: Option<(usize, usize)>,
    batch: usize,
    work: Workload,
    purpose: &str,
) -> Result<(Vgg<B>, HashMap<String, String>)> {
    let context = || format!("loading {}{purpose}", weights.display());
    let file = read_weights(weights)?;
    let (meta_model, meta_options) = file_options(&file);
    let known = PartialOptions {
        input: size,
        ..Default::default()
    }
    .or(meta_options);
    // Weights made for one input size that do not fit at another: say so, not which tensor
    // disagrees. Other refusals (NaN weights, say) keep their own message.
    let other_size = |e: vgg_model::ModelError| match (size, meta_options.input) {
        (Some((h, w)), Some((mh, mw)))
            if (h, w) != (mh, mw) && matches!(e, vgg_model::ModelError::Weights { .. }) =>
        {
            anyhow!(
                "{} holds a network made for {mh}x{mw} inputs, but the inputs are {h}x{w}: \
                 give {mh}x{mw} inputs (a .npy of N x C x {mh} x {mw}), or weights made for {h}x{w}",
                weights.display(),
            )
        }
        _ => anyhow::Error::new(e).context(context()),
    };
    // An input too small for the network keeps the spec's own message, which says how small.
    let spec = flags
        .spec(meta_model, known, NetDefaults::default())
        .with_context(context)?;
    check_memory(backend, &spec, batch, work)?;
    let vgg = Vgg::from_tensors(backend, spec, &file).map_err(other_size)?;
    Ok((vgg, file.metadata))
}

/// Whether an input file is a NumPy array (by name or by its first bytes) rather than an image.
fn is_npy(path: &Path, bytes: &[u8]) -> bool {
    let named = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    named || bytes.starts_with(b"\x93NUMPY")
}

/// The network for the weights and the inputs, and the inputs on the device.
fn load<B: Backend>(
    backend: &B,
    net: &NetOptions,
    weights: &Path,
    input: &InputArgs,
    work: Workload,
    stages: &Stages,
) -> Result<(Vgg<B>, B::Tensor)> {
    if let Some(n) = input.source.random {
        stages.stage(&format!("loading {}", weights.display()));
        let (vgg, _) = load_model(backend, net, weights, None, n, work, "")?;
        let i = vgg.spec().input();
        let shape = Shape::from([n, i.channels, i.height, i.width]);
        let x = backend.random_normal(&shape, 0.0, 0.1, input.seed)?;
        return Ok((vgg, x));
    }
    let files = &input.source.input;
    let first = io::read_file(&files[0])?;
    let (host, what) = match &files[..] {
        [one] if is_npy(one, &first) => {
            let x = io::parse_npy(&first, one)?;
            (x, one.display().to_string())
        }
        _ => {
            // Images are prepared as the weights' training data was, so the network comes first.
            stages.stage(&format!("loading {}", weights.display()));
            let (vgg, metadata) = load_model(backend, net, weights, None, files.len(), work, "")?;
            let prep = preprocessing_for(&vgg, &metadata, weights)?;
            stages.stage(&format!("preprocessing {}", plural(files.len(), "image")));
            let mut data = Vec::new();
            let mut first = Some(first);
            for path in files {
                // The first file is already read (to tell a .npy from an image).
                let bytes = match first.take() {
                    Some(bytes) => bytes,
                    None => io::read_file(path)?,
                };
                if is_npy(path, &bytes) {
                    bail!(
                        "{}: a .npy array goes alone in --input, not among images",
                        path.display()
                    );
                }
                data.extend(prep.prepare(&bytes, path)?.values);
            }
            let [c, h, w] = prep.shape();
            let x = backend.upload(&Shape::from([files.len(), c, h, w]), &data)?;
            return Ok((vgg, x));
        }
    };
    let [n, _, h, w] = host.shape[..] else {
        bail!(
            "{what}: expected images as N x C x H x W, got shape {:?}",
            host.shape
        );
    };
    warn_non_finite(&what, &host.data);
    stages.stage(&format!("loading {}", weights.display()));
    let (vgg, _) = load_model(
        backend,
        net,
        weights,
        Some((h, w)),
        n,
        work,
        &format!(" for {n} {h}x{w} images of {what}"),
    )?;
    let shape = Shape::from(host.shape.clone());
    vgg.check_input(&shape).with_context(|| what)?;
    Ok((vgg, backend.upload(&shape, &host.data)?))
}

/// The network of a weight file, for image files: loaded as `load_model` does (for `batch` images
/// at a time doing `work`), with how images are prepared for it.
pub fn load_for_images<B: Backend>(
    backend: &B,
    flags: &NetOptions,
    weights: &Path,
    batch: usize,
    work: Workload,
) -> Result<(Vgg<B>, HashMap<String, String>, Preprocessing)> {
    let (vgg, metadata) = load_model(backend, flags, weights, None, batch, work, "")?;
    let prep = preprocessing_for(&vgg, &metadata, weights)?;
    Ok((vgg, metadata, prep))
}

/// How image files become `vgg`'s input: as its weights' training data was (the data set their
/// metadata records), else as ImageNet's at the network's input size; refused where the network
/// does not take such images.
pub fn preprocessing_for<B: Backend>(
    vgg: &Vgg<B>,
    metadata: &HashMap<String, String>,
    weights: &Path,
) -> Result<Preprocessing> {
    let input = vgg.spec().input();
    let dataset = metadata.get(vgg_train::meta::DATASET).map(String::as_str);
    let prep = Preprocessing::for_dataset(dataset, input.height);
    let shape = prep.shape();
    if shape != [input.channels, input.height, input.width] {
        bail!(
            "{} holds a network for {}x{}x{} (CxHxW) inputs, but images are prepared as {}, {}x{}x{}: give a .npy of the network's size, or weights trained on images (vgg train, torchvision's)",
            weights.display(),
            input.channels,
            input.height,
            input.width,
            prep.describe(),
            shape[0],
            shape[1],
            shape[2]
        );
    }
    Ok(prep)
}

/// The `k` most probable classes of one row of probabilities.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

/// The output of forward or backward: writable, and none of the files the command reads.
fn check_output_of(output: &Path, weights: &WeightsArg, input: &InputArgs) -> Result<()> {
    io::check_output(output)?;
    let inputs: Vec<NamedPath> = std::iter::once(NamedPath {
        name: "--weights",
        path: &weights.weights,
    })
    .chain(input.source.input.iter().map(|path| NamedPath {
        name: "--input",
        path,
    }))
    .collect();
    io::check_distinct(
        &[NamedPath {
            name: "--output",
            path: output,
        }],
        &inputs,
    )?;
    Ok(())
}

pub fn forward<B: Backend>(backend: &B, a: &ForwardArgs) -> Result<String> {
    if let Some(output) = &a.output {
        check_output_of(output, &a.weights, &a.input)?;
    }
    let stages = Stages::new("reading the inputs");
    // The file's values, the weights and what replaces them while loading.
    let (vgg, x) = load(
        backend,
        &a.net,
        &a.weights.weights,
        &a.input,
        Workload::Inference { copies: 3 },
        &stages,
    )?;
    stages.stage("running the network");
    let tape = Tape::inference(backend.clone());
    let logits = vgg.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
    let probs = backend.softmax_rows(logits.value())?;
    let classes = vgg.spec().options.classes;
    let mut out = String::new();
    if let Some(output) = &a.output {
        let host = HostTensor::download(backend, logits.value())?;
        stages.stage(&format!("writing {}", output.display()));
        io::save_npy(output, &host)?;
        out = format!("wrote {} (logits {:?})\n", output.display(), host.shape);
    }
    drop(stages);
    for (i, row) in backend.download(&probs)?.chunks(classes).enumerate() {
        let best: Vec<String> = top_k(row, a.top.top)
            .into_iter()
            .map(|(c, p)| match vgg_model::imagenet::class_name(c, classes) {
                Some(name) => format!("{c} {name} ({p:.4})"),
                None => format!("{c} ({p:.4})"),
            })
            .collect();
        out.push_str(&format!(
            "image {i}: top-{}: {}\n",
            best.len(),
            best.join(", ")
        ));
    }
    Ok(out)
}

pub fn backward<B: Backend>(backend: &B, a: &BackwardArgs) -> Result<String> {
    check_output_of(&a.output, &a.weights, &a.input)?;
    let stages = Stages::new("reading the inputs");
    // As forward, plus a gradient's host copy at a time.
    let (vgg, x) = load(
        backend,
        &a.net,
        &a.weights.weights,
        &a.input,
        Workload::Training { copies: 3 },
        &stages,
    )?;
    stages.stage("running forward and backward");
    let tape = Tape::new(backend.clone());
    let logits = vgg.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
    let loss = tape.l2_loss(&logits)?;
    let loss_value = backend.scalar_value(loss.value())?;
    let grads = tape.backward(&loss)?.into_named();
    let count = grads.len();
    stages.stage(&format!("writing {}", a.output.display()));
    let names: Vec<(String, Vec<usize>)> = grads
        .iter()
        .map(|(n, g)| {
            use vgg_tensor::DeviceTensor;
            (n.clone(), g.shape().dims().to_vec())
        })
        .collect();
    let metadata = [(
        "loss".to_string(),
        "l2_loss(logits) = sum(logits^2)/2".to_string(),
    )]
    .into();
    io::save_safetensors_streamed(&a.output, &metadata, &names, |i| {
        backend.download(&grads[i].1)
    })?;
    drop(stages);
    Ok(format!(
        "l2_loss(logits) = {loss_value:.6e}\nwrote {} ({count} gradients, dropout off)\n",
        a.output.display()
    ))
}

/// A network's options as a `PartialOptions` with the model, for commands reading metadata only.
pub fn options_of(weights: &Path) -> Result<(Option<VggConfig>, PartialOptions)> {
    let file = read_weights(weights)?;
    Ok(file_options(&file))
}

/// What a weight file says of its network: its metadata, else what its tensors show (a
/// torchvision state_dict has no metadata).
fn file_options(file: &TensorFile) -> (Option<VggConfig>, PartialOptions) {
    let (model, options) = options_from_metadata(&file.metadata);
    let (shown_model, shown) = options_from_tensors(&file.tensors);
    (model.or(shown_model), options.or(shown))
}
