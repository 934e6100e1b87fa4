//! The VGG network at run time, built from the static spec (the single source of truth for its
//! shapes), with torchvision's parameter names: `features.{i}` counts every Conv2d, ReLU and
//! MaxPool2d module, `classifier.{0,3,6}` are fc6-fc8. fc8 is linear: the reference program's ReLU
//! on fc8 is a slip that would zero every negative logit.

use std::collections::{BTreeMap, HashMap};

use vgg_autodiff::{AutodiffError, Tape, Var};
use vgg_nn::io::{HostTensor, TensorFile};
use vgg_nn::{init, BatchNorm2d, InitScheme, Layer, RunOptions, Sequential};
use vgg_tensor::{Backend, Conv2dParams, DeviceTensor, Pool2dParams, Shape, TensorError};

use crate::spec::{LayerOp, ModelSpec, SpecOptions};
use crate::{SpecError, Stage, VggConfig};

#[derive(Debug, thiserror::Error)]
/// Why a network could not be built, loaded, run or saved.
pub enum ModelError {
    #[error(transparent)]
    /// The options describe no valid network.
    Spec(#[from] SpecError),
    #[error(transparent)]
    /// The tape failed.
    Autodiff(#[from] AutodiffError),
    #[error(transparent)]
    /// A backend op failed.
    Tensor(#[from] TensorError),
    #[error("the weights do not fit {model}: {}{}", problems.join("; "), made_with_words(made_with))]
    /// A weights file does not match the network.
    Weights {
        /// The network the weights were checked against.
        model: String,
        /// Every mismatch found (missing, unexpected or misshapen tensors).
        problems: Vec<String>,
        /// The settings the file's metadata names with other values than the network's: what
        /// would make the two match.
        made_with: Vec<SettingDiffers>,
    },
    #[error("{model} has no layer named '{name}': choose one of {}", layers.join(", "))]
    /// A layer was asked for by a name the network does not have.
    NoSuchLayer {
        /// The name given.
        name: String,
        /// The network.
        model: String,
        /// The names it has, input to output.
        layers: Vec<String>,
    },
    #[error("bad input: {0}")]
    /// An input batch does not fit the network.
    Input(String),
    #[error(transparent)]
    /// A file could not be read or written.
    Io(#[from] vgg_nn::io::IoError),
    #[error(
        "the weights hold NaN or infinite values ({}): a network with them can only predict NaN; \
         the file is corrupt or comes from a training run that diverged",
        tensors.join(", ")
    )]
    /// Weights holding NaN or infinity.
    NonFinite {
        /// The tensors holding them.
        tensors: Vec<String>,
    },
}

/// Keys of the metadata written into weight files.
pub mod meta {
    /// Metadata key: the configuration's name.
    pub const MODEL: &str = "vgg.model";
    /// Metadata key: outputs of the last layer.
    pub const CLASSES: &str = "vgg.classes";
    /// Metadata key: width of the hidden fully connected layers.
    pub const HIDDEN: &str = "vgg.hidden";
    /// Metadata key: the convolutions' channel multiplier.
    pub const WIDTH_MULT: &str = "vgg.width_mult";
    /// Metadata key: channels of the input image.
    pub const IN_CHANNELS: &str = "vgg.in_channels";
    /// Metadata key: the input size the weights were made for, HxW.
    pub const INPUT: &str = "vgg.input";
    /// Metadata key: the side of the adaptive average pool before fc6, or "none".
    pub const ADAPTIVE_POOL: &str = "vgg.adaptive_pool";
    /// Metadata key, in files `vgg init` writes: how the weights were drawn ("reference, seed 0").
    /// Its presence says the weights were never trained.
    pub const INITIALISED: &str = "vgg.initialised";
}

/// What [`Vgg::forward_tapped`] hands each tapped layer's output to: given the layer's name and
/// output, the value the next layer reads.
pub type LayerHook<'a, B> = dyn FnMut(&str, Var<B>) -> vgg_autodiff::Result<Var<B>> + 'a;

/// Softmax probabilities and the most likely class of each image.
pub struct Prediction<B: Backend> {
    /// Softmax of the logits, [batch, classes].
    pub probabilities: B::Tensor,
    /// The most probable class of each image.
    pub classes: Vec<usize>,
}

/// A VGG network on a backend: its spec and its layers' parameters.
pub struct Vgg<B: Backend> {
    spec: ModelSpec,
    features: Sequential<B>,
    classifier: Sequential<B>,
}

impl<B: Backend> Vgg<B> {
    /// A freshly initialised network; each layer's tensors get their own stream of `seed`.
    pub fn init(
        backend: &B,
        spec: ModelSpec,
        scheme: &InitScheme,
        seed: u64,
    ) -> Result<Vgg<B>, ModelError> {
        let mut features = Vec::new();
        let mut classifier = Vec::new();
        for (index, l) in spec.layers.iter().enumerate() {
            let layer_seed = init::param_seed(seed, index);
            match l.op {
                LayerOp::Conv {
                    kernel,
                    stride,
                    padding,
                } => {
                    let p = Conv2dParams { stride, padding };
                    let (cin, cout) = (l.input.channels, l.output.channels);
                    features.push(Layer::conv2d(
                        backend, cin, cout, kernel, p, scheme, layer_seed,
                    )?);
                    if l.batch_norm {
                        features.push(Layer::BatchNorm2d(BatchNorm2d::new(backend, cout)?));
                    }
                    features.push(Layer::Relu);
                }
                LayerOp::MaxPool { kernel, stride } => {
                    features.push(Layer::MaxPool2d(Pool2dParams { kernel, stride }))
                }
                // Between the two Sequentials, as torchvision's `avgpool`: see forward_tapped.
                LayerOp::AdaptiveAvgPool { .. } => {}
                LayerOp::Linear => {
                    let fan_in = l.input.elements() as usize;
                    classifier.push(Layer::linear(
                        backend,
                        fan_in,
                        l.output.channels,
                        scheme,
                        layer_seed,
                    )?);
                    if l.relu {
                        classifier.push(Layer::Relu);
                    }
                    if l.dropout {
                        classifier.push(Layer::Dropout);
                    }
                }
            }
        }
        let vgg = Vgg {
            spec,
            features: Sequential::new("features", features),
            classifier: Sequential::new("classifier", classifier),
        };
        debug_assert!(vgg
            .spec
            .layers
            .iter()
            .filter_map(|l| l.torch_prefix())
            .all(|p| vgg
                .named_params()
                .iter()
                .any(|(n, _)| n.starts_with(&format!("{p}.")))));
        Ok(vgg)
    }

    /// A network holding the given tensors. Every name, shape and the set of names is checked
    /// against the spec first, and every problem is reported at once.
    pub fn from_tensors(
        backend: &B,
        spec: ModelSpec,
        file: &TensorFile,
    ) -> Result<Vgg<B>, ModelError> {
        let expected = expected_params(&spec);
        let given: HashMap<&str, &HostTensor> =
            file.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut problems = Vec::new();
        for (name, shape) in &expected {
            match given.get(name.as_str()) {
                None => problems.push(format!("missing {name} {shape:?}")),
                Some(t) if &t.shape != shape => problems.push(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    t.shape
                )),
                Some(_) => {}
            }
        }
        let mut unexpected: Vec<&str> = given
            .keys()
            .filter(|n| !expected.contains_key(**n))
            .copied()
            .collect();
        unexpected.sort();
        problems.extend(unexpected.iter().map(|n| format!("unexpected {n}")));
        if !problems.is_empty() {
            return Err(ModelError::Weights {
                model: spec.describe(),
                problems,
                made_with: settings_differing(&spec, &file.metadata),
            });
        }
        let non_finite: Vec<String> = expected
            .keys()
            .filter_map(|name| {
                let n = given[name.as_str()].non_finite();
                (n > 0).then(|| format!("{n} in {name}"))
            })
            .collect();
        if !non_finite.is_empty() {
            return Err(ModelError::NonFinite {
                tensors: non_finite,
            });
        }
        let impossible = impossible_statistics(&given);
        if !impossible.is_empty() {
            return Err(ModelError::Weights {
                model: spec.describe(),
                problems: impossible,
                made_with: Vec::new(),
            });
        }
        let mut vgg = Vgg::init(backend, spec, &InitScheme::REFERENCE, 0)?;
        for (name, param) in vgg.named_params_mut() {
            let t = given[name.as_str()];
            *param = backend.upload(&Shape::from(t.shape.clone()), &t.data)?;
        }
        vgg.load_buffers(backend, &given)?;
        Ok(vgg)
    }

    /// Sets every buffer (BatchNorm's running statistics) from `given`, which must hold each
    /// under its torchvision name with the expected shape.
    pub fn load_buffers(
        &self,
        backend: &B,
        given: &HashMap<&str, &HostTensor>,
    ) -> Result<(), ModelError> {
        let lookup = |name: &str| given.get(name).copied();
        self.features.load_buffers(backend, &lookup)?;
        self.classifier.load_buffers(backend, &lookup)?;
        Ok(())
    }

    /// Writes every parameter to a safetensors file at `path`, with metadata describing the
    /// network, one tensor at a time (the file never exists whole in memory).
    pub fn save(&self, backend: &B, path: &std::path::Path) -> Result<(), ModelError> {
        self.save_with(backend, path, &[])
    }

    /// `save`, with `extra` metadata beside the network's own (`meta::INITIALISED`, say).
    pub fn save_with(
        &self,
        backend: &B,
        path: &std::path::Path,
        extra: &[(&str, String)],
    ) -> Result<(), ModelError> {
        let state = self.state(backend)?;
        let names: Vec<(String, Vec<usize>)> = state
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().dims().to_vec()))
            .collect();
        let mut metadata = metadata(&self.spec);
        metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        vgg_nn::io::save_safetensors_streamed(path, &metadata, &names, |i| {
            backend.download(&state[i].1)
        })?;
        Ok(())
    }

    /// Every parameter as host tensors, with metadata describing the network.
    pub fn to_tensor_file(&self, backend: &B) -> Result<TensorFile, ModelError> {
        let tensors = self
            .state(backend)?
            .into_iter()
            .map(|(name, t)| Ok((name, HostTensor::download(backend, &t)?)))
            .collect::<Result<Vec<_>, TensorError>>()?;
        Ok(TensorFile {
            tensors,
            metadata: metadata(&self.spec),
        })
    }

    /// The layer-by-layer spec the network was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// (torchvision name, tensor) of every parameter: features first, then the classifier.
    pub fn named_params(&self) -> Vec<(String, &B::Tensor)> {
        let mut p = self.features.named_params();
        p.extend(self.classifier.named_params());
        p
    }

    /// (torchvision name, value) of every buffer: the `_bn` models' running statistics, which
    /// are saved with the weights but not trained.
    pub fn named_buffers(&self, backend: &B) -> Result<Vec<(String, B::Tensor)>, ModelError> {
        let mut b = self.features.named_buffers(backend)?;
        b.extend(self.classifier.named_buffers(backend)?);
        Ok(b)
    }

    /// Everything a weight file holds, as torchvision's state_dict orders it: each module's
    /// parameters, then its buffers.
    fn state(&self, backend: &B) -> Result<Vec<(String, B::Tensor)>, ModelError> {
        let mut state = self.features.named_state(backend)?;
        state.extend(self.classifier.named_state(backend)?);
        Ok(state)
    }

    /// Every parameter with its torchvision name, mutable (for optimisers and loaders).
    pub fn named_params_mut(&mut self) -> Vec<(String, &mut B::Tensor)> {
        let mut p = self.features.named_params_mut();
        p.extend(self.classifier.named_params_mut());
        p
    }

    /// The number of parameters.
    pub fn param_count(&self) -> u64 {
        self.named_params()
            .iter()
            .map(|(_, t)| t.shape().elements() as u64)
            .sum()
    }

    /// Checks an NCHW input against the network: rank, channels and spatial size.
    pub fn check_input(&self, shape: &Shape) -> Result<(), ModelError> {
        let o = &self.spec.options;
        let [_, c, h, w] = shape.dims() else {
            return Err(ModelError::Input(format!(
                "expected images as N x C x H x W, got shape {shape}"
            )));
        };
        if *c != o.in_channels {
            return Err(ModelError::Input(format!(
                "the images have {c} channels, the network takes {} (NCHW layout: is the input NHWC?)",
                o.in_channels
            )));
        }
        if (*h, *w) != (o.height, o.width) {
            return Err(ModelError::Input(format!(
                "the images are {h}x{w}, the network was built for {}x{}",
                o.height, o.width
            )));
        }
        Ok(())
    }

    /// Logits [N, classes]. `run.keep_prob` < 1 turns dropout on (after fc6 and fc7).
    pub fn forward(
        &self,
        tape: &Tape<B>,
        x: &Var<B>,
        run: RunOptions,
    ) -> Result<Var<B>, ModelError> {
        self.forward_observed(tape, x, run, &mut |_| {})
    }

    /// `forward`, calling `after_layer` with the spec's name of each layer (conv1_1 ... fc8) as it
    /// completes; the tape's labels name the same layers (see `layer_of_label`).
    pub fn forward_observed(
        &self,
        tape: &Tape<B>,
        x: &Var<B>,
        run: RunOptions,
        after_layer: &mut dyn FnMut(&str),
    ) -> Result<Var<B>, ModelError> {
        self.forward_tapped(tape, x, run, &[], &mut |_, v| Ok(v), after_layer)
    }

    /// The module whose output is the spec layer `name`'s (after its ReLU): (in the classifier,
    /// index). None for a name the network does not have.
    fn module_of_layer(&self, name: &str) -> Option<(bool, usize)> {
        let l = self.spec.layers.iter().find(|l| l.name == name)?;
        Some((l.is_linear(), l.output_module()))
    }

    /// `forward_observed`, handing the output of each spec layer in `taps` (conv1_1 ... fc8,
    /// after its ReLU) to `hook` with the layer's name; the value `hook` returns is what the next
    /// layer reads (a [`Tape::tap`] of it, for that layer's gradient). A name the network does
    /// not have is refused, naming the ones it has.
    pub fn forward_tapped(
        &self,
        tape: &Tape<B>,
        x: &Var<B>,
        run: RunOptions,
        taps: &[&str],
        hook: &mut LayerHook<'_, B>,
        after_layer: &mut dyn FnMut(&str),
    ) -> Result<Var<B>, ModelError> {
        let (mut feature_taps, mut classifier_taps) = (Vec::new(), Vec::new());
        let avgpool = self.spec.options.adaptive_pool;
        let tap_avgpool = avgpool.is_some() && taps.contains(&AVGPOOL);
        for name in taps.iter().filter(|n| !(tap_avgpool && **n == AVGPOOL)) {
            match self.module_of_layer(name) {
                Some((true, i)) => classifier_taps.push((i, *name)),
                Some((false, i)) => feature_taps.push((i, *name)),
                None => {
                    return Err(ModelError::NoSuchLayer {
                        name: name.to_string(),
                        model: self.spec.describe(),
                        layers: self.spec.layers.iter().map(|l| l.name.clone()).collect(),
                    })
                }
            }
        }
        let indices = |taps: &[(usize, &str)]| taps.iter().map(|t| t.0).collect::<Vec<_>>();
        let named = |taps: &[(usize, &str)], i: usize| {
            taps.iter()
                .find(|t| t.0 == i)
                .map_or("?", |t| t.1)
                .to_string()
        };
        self.check_input(x.shape())?;
        let names = |seq: &Sequential<B>| -> Vec<String> {
            (0..seq.layers.len())
                .map(|i| {
                    self.layer_of_label(&format!("{}.{i}", seq.prefix))
                        .unwrap_or("?")
                        .to_string()
                })
                .collect()
        };
        let (feature_names, classifier_names) = (names(&self.features), names(&self.classifier));
        let features = self.features.forward_tapped(
            tape,
            x.clone(),
            run,
            &indices(&feature_taps),
            &mut |i, v| hook(&named(&feature_taps, i), v),
            // A layer may run as several steps (a `_bn` convolution in training: convolution,
            // BatchNorm, ReLU); it is complete after the last of its modules.
            &mut |_, last| {
                if last + 1 == feature_names.len() || feature_names[last + 1] != feature_names[last]
                {
                    after_layer(&feature_names[last])
                }
            },
        )?;
        let features = match avgpool {
            Some(side) => {
                tape.set_label(Some(AVGPOOL));
                let pooled = tape.adaptive_avg_pool2d(&features, (side, side));
                tape.set_label(None);
                let mut pooled = pooled?;
                if tap_avgpool {
                    pooled = hook(AVGPOOL, pooled)?;
                }
                after_layer(AVGPOOL);
                pooled
            }
            None => features,
        };
        let flat = tape.flatten(&features)?;
        drop(features);
        // ReLU and dropout modules count towards the fully connected layer before them.
        Ok(self.classifier.forward_tapped(
            tape,
            flat,
            run,
            &indices(&classifier_taps),
            &mut |i, v| hook(&named(&classifier_taps, i), v),
            &mut |first, last| {
                if last + 1 == classifier_names.len()
                    || classifier_names[last + 1] != classifier_names[first]
                {
                    after_layer(&classifier_names[first])
                }
            },
        )?)
    }

    /// The spec layer (conv1_1 ... pool5, fc6 ... fc8) of a tape label (`features.3`,
    /// `classifier.4`): ReLU and dropout modules belong to the layer before them.
    pub fn layer_of_label(&self, label: &str) -> Option<&str> {
        let layers = &self.spec.layers;
        // A layer's own module (`features.0`, `avgpool`), else the last layer of the same
        // Sequential whose module comes before the label's.
        if let Some(l) = layers.iter().find(|l| l.torch_module() == label) {
            return Some(l.name.as_str());
        }
        let (prefix, index) = label.rsplit_once('.')?;
        let index: usize = index.parse().ok()?;
        layers
            .iter()
            .filter(|l| {
                let module = l.torch_module();
                module.rsplit_once('.').is_some_and(|(p, i)| {
                    p == prefix && i.parse::<usize>().is_ok_and(|i| i <= index)
                })
            })
            .max_by_key(|l| l.torch_index)
            .map(|l| l.name.as_str())
    }

    /// Softmax and argmax of each image's logits, without recording anything (the reference's
    /// `inference_op` with keep_prob 1.0).
    pub fn predict(&self, backend: &B, x: &B::Tensor) -> Result<Prediction<B>, ModelError> {
        let tape = Tape::inference(backend.clone());
        let logits = self.forward(&tape, &tape.constant(x.clone()), RunOptions::EVAL)?;
        let probabilities = backend.softmax_rows(logits.value())?;
        let classes = backend.argmax_rows(&probabilities)?;
        Ok(Prediction {
            probabilities,
            classes,
        })
    }
}

/// The name of torchvision's adaptive average pool, as a layer, a module and a tape label.
const AVGPOOL: &str = "avgpool";

/// torchvision name -> shape of every tensor of a spec's state_dict: parameters and buffers.
pub fn expected_params(spec: &ModelSpec) -> BTreeMap<String, Vec<usize>> {
    let mut expected: BTreeMap<String, Vec<usize>> = spec
        .layers
        .iter()
        .filter_map(|l| Some((l.torch_prefix()?, l.weight_shape()?, l.output.channels)))
        .flat_map(|(prefix, w, out)| {
            [
                (format!("{prefix}.weight"), w),
                (format!("{prefix}.bias"), vec![out]),
            ]
        })
        .collect();
    for l in &spec.layers {
        let Some(prefix) = l.norm_prefix() else {
            continue;
        };
        let c = l.output.channels;
        expected.insert(format!("{prefix}.weight"), vec![c]);
        expected.insert(format!("{prefix}.bias"), vec![c]);
        let buffers = vgg_nn::batch_norm::BUFFERS
            .into_iter()
            .zip(vgg_nn::batch_norm::buffer_shapes(c));
        for (name, shape) in buffers {
            expected.insert(format!("{prefix}.{name}"), shape);
        }
    }
    expected
}

/// Every BatchNorm statistic no training run can produce (`impossible_statistic`), named, so
/// that a file's problems are reported at once.
fn impossible_statistics(given: &HashMap<&str, &HostTensor>) -> Vec<String> {
    let mut problems: Vec<String> = given
        .iter()
        .filter_map(|(name, t)| {
            let (_, buffer) = name.rsplit_once('.')?;
            let why = vgg_nn::batch_norm::impossible_statistic(buffer, &t.data)?;
            Some(format!("{name} {why}"))
        })
        .collect();
    problems.sort();
    problems
}

/// A network setting that a weight file's metadata gives another value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingDiffers {
    /// The metadata key (`meta::MODEL`, `meta::CLASSES`, ...).
    pub key: &'static str,
    /// The file's value.
    pub file: String,
}

/// The settings a weight file's metadata gives other values than the chosen network.
fn settings_differing(spec: &ModelSpec, metadata: &HashMap<String, String>) -> Vec<SettingDiffers> {
    let o = &spec.options;
    let ours = [
        (meta::MODEL, spec.model.name().to_string()),
        (meta::CLASSES, o.classes.to_string()),
        (meta::HIDDEN, o.hidden.to_string()),
        (meta::WIDTH_MULT, o.width_mult.to_string()),
        (meta::INPUT, format!("{}x{}", o.height, o.width)),
        (meta::ADAPTIVE_POOL, adaptive_pool_words(o.adaptive_pool)),
    ];
    ours.into_iter()
        .filter_map(|(key, value)| {
            let file = metadata.get(key)?;
            (*file != value).then(|| SettingDiffers {
                key,
                file: file.clone(),
            })
        })
        .collect()
}

fn made_with_words(made_with: &[SettingDiffers]) -> String {
    if made_with.is_empty() {
        return String::new();
    }
    let settings: Vec<String> = made_with
        .iter()
        .map(|s| format!("{}={}", s.key, s.file))
        .collect();
    format!(". The file says it was made with {}", settings.join(", "))
}

/// The metadata value of an adaptive pool's side: the side, or "none".
fn adaptive_pool_words(side: Option<usize>) -> String {
    side.map_or("none".to_string(), |s| s.to_string())
}

/// The metadata written with a network's weights.
pub fn metadata(spec: &ModelSpec) -> HashMap<String, String> {
    let o = &spec.options;
    HashMap::from([
        (
            meta::ADAPTIVE_POOL.to_string(),
            adaptive_pool_words(o.adaptive_pool),
        ),
        (meta::MODEL.to_string(), spec.model.name().to_string()),
        (meta::CLASSES.to_string(), o.classes.to_string()),
        (meta::HIDDEN.to_string(), o.hidden.to_string()),
        (meta::WIDTH_MULT.to_string(), o.width_mult.to_string()),
        (meta::IN_CHANNELS.to_string(), o.in_channels.to_string()),
        (meta::INPUT.to_string(), format!("{}x{}", o.height, o.width)),
    ])
}

/// Spec options read back from metadata, for the keys present and valid.
pub fn options_from_metadata(
    metadata: &HashMap<String, String>,
) -> (Option<VggConfig>, PartialOptions) {
    let get = |k: &str| metadata.get(k);
    let model = get(meta::MODEL).and_then(|m| m.parse().ok());
    let input = get(meta::INPUT).and_then(|s| {
        let (h, w) = s.split_once('x')?;
        Some((h.parse().ok()?, w.parse().ok()?))
    });
    // Our files without the key were made before the pool existed: they have none.
    let adaptive_pool = get(meta::MODEL).map(|_| {
        get(meta::ADAPTIVE_POOL)
            .and_then(|v| v.parse().ok())
            .filter(|&side| side > 0)
    });
    (
        model,
        PartialOptions {
            input,
            adaptive_pool,
            in_channels: get(meta::IN_CHANNELS).and_then(|v| v.parse().ok()),
            classes: get(meta::CLASSES).and_then(|v| v.parse().ok()),
            width_mult: get(meta::WIDTH_MULT).and_then(|v| v.parse().ok()),
            hidden: get(meta::HIDDEN).and_then(|v| v.parse().ok()),
        },
    )
}

/// Spec options read off the tensors themselves, for files without our metadata (torchvision's
/// state_dicts, `.pth` or exported): the configuration from the convolutions' positions and
/// kernels, the width from the first one, fc6's and fc8's widths, and from fc6's fan-in the side
/// s of torchvision's adaptive pool, which such files are made with, and the input at which the
/// pool changes nothing (32 s: pool5's side is the input's / 32). Whatever does not fit a VGG
/// stays unknown, and the weights are then checked against the network the flags and defaults
/// give.
pub fn options_from_tensors(
    tensors: &[(String, HostTensor)],
) -> (Option<VggConfig>, PartialOptions) {
    let shape = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shape.as_slice())
    };
    let mut convs: Vec<(usize, &[usize])> = tensors
        .iter()
        .filter_map(|(n, t)| {
            let index = n.strip_prefix("features.")?.strip_suffix(".weight")?;
            (t.shape.len() == 4).then_some((index.parse().ok()?, t.shape.as_slice()))
        })
        .collect();
    convs.sort_by_key(|(i, _)| *i);
    let layout: Vec<(usize, usize)> = convs.iter().map(|(i, s)| (*i, s[2])).collect();
    let model = VggConfig::ALL.into_iter().find(|c| {
        let mut index = 0;
        let mut want = Vec::new();
        for stage in c.stages().into_iter().flatten() {
            match stage {
                Stage::Conv { kernel, .. } => {
                    want.push((index, kernel));
                    index += 2 + usize::from(c.batch_norm());
                }
                Stage::Pool => index += 1,
            }
        }
        want == layout
    });
    let first = convs.first().map(|(_, s)| *s);
    let last_channels = convs.last().map(|(_, s)| s[0]);
    let fc6 = shape("classifier.0.weight").filter(|s| s.len() == 2);
    let fc8 = shape("classifier.6.weight").filter(|s| s.len() == 2);
    let side = fc6.zip(last_channels).and_then(|(fc6, channels)| {
        let area = fc6[1].checked_div(channels)?;
        let side = (area as f64).sqrt().round() as usize;
        (side > 0 && side * side * channels == fc6[1]).then_some(side)
    });
    (
        model,
        PartialOptions {
            input: side.map(|s| (s * 32, s * 32)),
            adaptive_pool: side.map(Some),
            in_channels: first.map(|s| s[1]),
            classes: fc8.map(|s| s[0]),
            width_mult: first.map(|s| s[0] as f64 / 64.0),
            hidden: fc6.map(|s| s[0]),
        },
    )
}

/// Spec options of which some are unknown: filled from flags, then metadata, then defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PartialOptions {
    /// Input height and width.
    pub input: Option<(usize, usize)>,
    /// The adaptive pool's side, or `Some(None)`: known to have none.
    pub adaptive_pool: Option<Option<usize>>,
    /// Channels of the input image.
    pub in_channels: Option<usize>,
    /// Outputs of the last layer.
    pub classes: Option<usize>,
    /// Multiplier of every convolution's channel count.
    pub width_mult: Option<f64>,
    /// Width of the hidden fully connected layers.
    pub hidden: Option<usize>,
}

impl PartialOptions {
    /// Fields of `self`, else of `fallback`.
    pub fn or(self, fallback: PartialOptions) -> PartialOptions {
        PartialOptions {
            input: self.input.or(fallback.input),
            adaptive_pool: self.adaptive_pool.or(fallback.adaptive_pool),
            in_channels: self.in_channels.or(fallback.in_channels),
            classes: self.classes.or(fallback.classes),
            width_mult: self.width_mult.or(fallback.width_mult),
            hidden: self.hidden.or(fallback.hidden),
        }
    }

    /// Fills what is still unknown with the defaults (224x224x3, 1000 classes, width 1, hidden 4096).
    pub fn resolve(self) -> SpecOptions {
        self.resolve_with(SpecOptions::default())
    }

    /// Fills what is still unknown from `d`.
    pub fn resolve_with(self, d: SpecOptions) -> SpecOptions {
        let (height, width) = self.input.unwrap_or((d.height, d.width));
        SpecOptions {
            height,
            width,
            in_channels: self.in_channels.unwrap_or(d.in_channels),
            classes: self.classes.unwrap_or(d.classes),
            width_mult: self.width_mult.unwrap_or(d.width_mult),
            hidden: self.hidden.unwrap_or(d.hidden),
            adaptive_pool: self.adaptive_pool.unwrap_or(d.adaptive_pool),
        }
    }
}
