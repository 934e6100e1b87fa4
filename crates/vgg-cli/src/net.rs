//! `vgg init`, `vgg forward` and `vgg backward`: the network on real tensors and weight files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vgg_autodiff::Tape;
use vgg_model::model::options_from_metadata;
use vgg_model::{ModelSpec, PartialOptions, SpecOptions, Vgg, VggConfig, Workload};
use vgg_nn::io::{self, HostTensor, TensorFile};
use vgg_nn::{InitScheme, RunOptions};
use vgg_tensor::{Backend, Shape};

/// The network's options as given on the command line; unset ones come from the weight file's
/// metadata, then the defaults.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelFlags {
    /// vgg11 (A), vgg13 (B), vgg16c (C), vgg16 (D) or vgg19 (E) [default: the weight file's, else vgg16].
    #[arg(long, value_parser = crate::args::model)]
    pub model: Option<VggConfig>,
    /// Output classes [default: the weight file's, else 1000].
    #[arg(long, value_parser = crate::args::positive)]
    pub classes: Option<usize>,
    /// Channel width multiplier [default: the weight file's, else 1].
    #[arg(long, value_parser = crate::args::width_mult)]
    pub width_mult: Option<f64>,
    /// Width of fc6 and fc7 [default: the weight file's, else 4096].
    #[arg(long, value_parser = crate::args::positive)]
    pub hidden: Option<usize>,
}

impl ModelFlags {
    fn partial(&self) -> PartialOptions {
        PartialOptions {
            classes: self.classes,
            width_mult: self.width_mult,
            hidden: self.hidden,
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitChoice {
    /// The reference program's: Xavier uniform weights, conv biases 0, fc biases 0.1.
    Reference,
    /// torchvision's: Kaiming normal (fan out) convs, N(0, 0.01) linear layers, zero biases.
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

pub struct InitArgs {
    pub model: VggConfig,
    pub options: SpecOptions,
    pub seed: u64,
    pub init: InitChoice,
    pub output: PathBuf,
}

pub fn init<B: Backend>(backend: &B, a: &InitArgs) -> Result<String> {
    io::check_output(&a.output)?;
    let spec = ModelSpec::new(a.model, a.options)?;
    // The weights, their host copy and the file's bytes.
    check_memory(backend, &spec, 1, Workload::Weights { copies: 3 })?;
    let vgg = Vgg::init(backend, spec, &a.init.scheme(), a.seed)?;
    let file = vgg.to_tensor_file(backend)?;
    io::save_safetensors(&a.output, &file)?;
    Ok(format!(
        "wrote {} ({} parameters, {} init, seed {})\n",
        a.output.display(),
        vgg.param_count(),
        match a.init {
            InitChoice::Reference => "reference",
            InitChoice::Kaiming => "kaiming",
        },
        a.seed
    ))
}

/// `--max-memory`, set once by main.
static MAX_MEMORY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Caps the memory every check below plans with.
pub fn set_max_memory(bytes: u64) {
    let _ = MAX_MEMORY.set(bytes);
}

/// The memory a command may plan to use: the backend's free memory, capped by `--max-memory`.
pub fn available_memory<B: Backend>(backend: &B) -> Option<u64> {
    match (backend.available_bytes(), MAX_MEMORY.get()) {
        (Some(free), Some(&cap)) => Some(free.min(cap)),
        (free, cap) => free.or(cap.copied()),
    }
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

/// The network of a weight file, built for `size` (HxW) images and checked to fit in memory for
/// `work` on a batch of `batch`; options come from the flags, then the file's metadata, then the
/// defaults.
pub fn load_model<B: Backend>(
    backend: &B,
    flags: &ModelFlags,
    weights: &Path,
    size: (usize, usize),
    batch: usize,
    work: Workload,
) -> Result<Vgg<B>> {
    let file = io::load_safetensors(weights)?;
    let (meta_model, meta_options) = options_from_metadata(&file.metadata);
    let model = flags.model.or(meta_model).unwrap_or(VggConfig::Vgg16);
    let from_input = PartialOptions {
        input: Some(size),
        ..Default::default()
    };
    let options = flags.partial().or(from_input).or(meta_options).resolve();
    let spec =
        ModelSpec::new(model, options).with_context(|| format!("{}x{} images", size.0, size.1))?;
    check_memory(backend, &spec, batch, work)?;
    Vgg::from_tensors(backend, spec, &file)
        .with_context(|| format!("loading {}", weights.display()))
}

/// The network for a weight file and an input file, and the input on the device.
fn load<B: Backend>(
    backend: &B,
    flags: &ModelFlags,
    weights: &Path,
    input: &Path,
    work: Workload,
) -> Result<(Vgg<B>, B::Tensor)> {
    let x = io::load_npy(input)?;
    let [n, _, h, w] = x.shape[..] else {
        anyhow::bail!(
            "{}: expected images as N x C x H x W, got shape {:?}",
            input.display(),
            x.shape
        );
    };
    // The spatial size comes from the images; channels are checked against the network below.
    warn_non_finite(&input.display().to_string(), &x.data);
    let vgg = load_model(backend, flags, weights, (h, w), n, work)
        .with_context(|| format!("images of {}", input.display()))?;
    let shape = Shape::from(x.shape.clone());
    vgg.check_input(&shape)
        .with_context(|| input.display().to_string())?;
    Ok((vgg, backend.upload(&shape, &x.data)?))
}

/// The `k` most probable classes of one row of probabilities.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

pub fn forward<B: Backend>(
    backend: &B,
    flags: &ModelFlags,
    weights: &Path,
    input: &Path,
    output: &Path,
    top: usize,
) -> Result<String> {
    io::check_output(output)?;
    // The file's values, the weights and what replaces them while loading.
    let (vgg, x) = load(
        backend,
        flags,
        weights,
        input,
        Workload::Inference { copies: 3 },
    )?;
    let tape = Tape::inference(backend.clone());
    let logits = vgg.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
    let probs = backend.softmax_rows(logits.value())?;
    let classes = vgg.spec().options.classes;
    let host = HostTensor::download(backend, logits.value())?;
    io::save_npy(output, &host)?;
    let mut out = format!("wrote {} (logits {:?})\n", output.display(), host.shape);
    for (i, row) in backend.download(&probs)?.chunks(classes).enumerate() {
        let best: Vec<String> = top_k(row, top)
            .into_iter()
            .map(|(c, p)| format!("{c} ({p:.4})"))
            .collect();
        out.push_str(&format!(
            "image {i}: top-{}: {}\n",
            best.len(),
            best.join(", ")
        ));
    }
    Ok(out)
}

pub fn backward<B: Backend>(
    backend: &B,
    flags: &ModelFlags,
    weights: &Path,
    input: &Path,
    output: &Path,
) -> Result<String> {
    io::check_output(output)?;
    // As forward, plus the gradients' host copy and the file's bytes.
    let (vgg, x) = load(
        backend,
        flags,
        weights,
        input,
        Workload::Training { copies: 5 },
    )?;
    let tape = Tape::new(backend.clone());
    let logits = vgg.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
    let loss = tape.l2_loss(&logits)?;
    let loss_value = backend.scalar_value(loss.value())?;
    let grads = tape.backward(&loss)?;
    let tensors = grads
        .into_named()
        .into_iter()
        .map(|(name, g)| Ok((name, HostTensor::download(backend, &g)?)))
        .collect::<Result<Vec<_>>>()?;
    let count = tensors.len();
    let file = TensorFile {
        tensors,
        metadata: [(
            "loss".to_string(),
            "l2_loss(logits) = sum(logits^2)/2".to_string(),
        )]
        .into(),
    };
    io::save_safetensors(output, &file)?;
    Ok(format!(
        "l2_loss(logits) = {loss_value:.6e}\nwrote {} ({count} gradients, dropout off)\n",
        output.display()
    ))
}
