//! Layers over `vgg-autodiff`, generic over the backend: Conv2d, BatchNorm2d, Linear, MaxPool2d,
//! ReLU, Dropout, Flatten in a `Sequential` whose parameter names follow PyTorch's (`{prefix}.{index}.weight`),
//! seeded initialisers, optimisers, a parameter store for networks of your own (`params`), and
//! named-tensor files (safetensors, .npy).

pub mod batch_norm;
pub mod init;
pub mod io;
pub mod optim;
pub mod params;

use vgg_autodiff::{Tape, Var};
use vgg_tensor::{Backend, Conv2dParams, Pool2dParams, Shape};

pub use batch_norm::BatchNorm2d;
pub use init::{Init, InitScheme};
pub use optim::{Optimizer, OptimizerKind, Schedule};
pub use params::{Attached, ParamError, ParamId, ParamStore};

/// Per-call settings of a forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunOptions {
    /// Probability that dropout keeps a unit; 1.0 turns dropout off (as in the reference, it is
    /// given at run time, not fixed in the layer).
    pub keep_prob: f32,
    /// Seeds the dropout masks; give each step its own.
    pub seed: u64,
    /// BatchNorm normalises by the batch's statistics and updates its running averages
    /// (PyTorch's `train()`); otherwise it uses the running averages (`eval()`).
    pub training: bool,
}

impl RunOptions {
    /// No dropout; BatchNorm uses its running averages.
    pub const EVAL: RunOptions = RunOptions {
        keep_prob: 1.0,
        seed: 0,
        training: false,
    };
}

/// A 2-D convolution with bias: OIHW weights.
pub struct Conv2d<B: Backend> {
    /// `[out, in, kh, kw]`
    pub weight: B::Tensor,
    /// `[out]`
    pub bias: B::Tensor,
    /// Stride and padding.
    pub params: Conv2dParams,
}

/// A fully connected layer with bias: [out, in] weights.
pub struct Linear<B: Backend> {
    /// `[out, in]`
    pub weight: B::Tensor,
    /// `[out]`
    pub bias: B::Tensor,
}

/// One module of a `Sequential`.
pub enum Layer<B: Backend> {
    /// A convolution with bias.
    Conv2d(Conv2d<B>),
    /// Batch normalisation; it must follow a convolution.
    BatchNorm2d(BatchNorm2d<B>),
    /// A fully connected layer with bias.
    Linear(Linear<B>),
    /// A max-pool.
    MaxPool2d(Pool2dParams),
    /// max(x, 0).
    Relu,
    /// Dropout, the identity here: VGG's forward is benchmarked and evaluated without it.
    Dropout,
    /// [N, ...] to [N, rest].
    Flatten,
}

impl<B: Backend> Layer<B> {
    /// A convolution of `in_channels` to `out_channels` with a square `kernel`, initialised by `init`.
    pub fn conv2d(
        backend: &B,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: Conv2dParams,
        scheme: &InitScheme,
        seed: u64,
    ) -> vgg_tensor::Result<Layer<B>> {
        let shape = Shape::from([out_channels, in_channels, kernel, kernel]);
        Ok(Layer::Conv2d(Conv2d {
            weight: scheme
                .conv_weight
                .tensor(backend, &shape, init::param_seed(seed, 0))?,
            bias: scheme.conv_bias.tensor(
                backend,
                &Shape::from([out_channels]),
                init::param_seed(seed, 1),
            )?,
            params,
        }))
    }

    /// A fully connected layer of `inputs` to `outputs`, initialised by `init`.
    pub fn linear(
        backend: &B,
        in_features: usize,
        out_features: usize,
        scheme: &InitScheme,
        seed: u64,
    ) -> vgg_tensor::Result<Layer<B>> {
        let shape = Shape::from([out_features, in_features]);
        Ok(Layer::Linear(Linear {
            weight: scheme
                .linear_weight
                .tensor(backend, &shape, init::param_seed(seed, 0))?,
            bias: scheme.linear_bias.tensor(
                backend,
                &Shape::from([out_features]),
                init::param_seed(seed, 1),
            )?,
        }))
    }

    /// (weight, bias) of a layer that has parameters.
    pub fn params(&self) -> Option<(&B::Tensor, &B::Tensor)> {
        match self {
            Layer::Conv2d(c) => Some((&c.weight, &c.bias)),
            Layer::BatchNorm2d(n) => Some((&n.weight, &n.bias)),
            Layer::Linear(l) => Some((&l.weight, &l.bias)),
            _ => None,
        }
    }

    /// The layer's weight and bias, for layers that have them.
    pub fn params_mut(&mut self) -> Option<(&mut B::Tensor, &mut B::Tensor)> {
        match self {
            Layer::Conv2d(c) => Some((&mut c.weight, &mut c.bias)),
            Layer::BatchNorm2d(n) => Some((&mut n.weight, &mut n.bias)),
            Layer::Linear(l) => Some((&mut l.weight, &mut l.bias)),
            _ => None,
        }
    }
}

/// Modules applied in order; parameters are named `{prefix}.{index}.weight` and `.bias`.
pub struct Sequential<B: Backend> {
    /// Prepended to every parameter's name (`features`, `classifier`).
    pub prefix: String,
    /// The layers, input to output.
    pub layers: Vec<Layer<B>>,
}

impl<B: Backend> Sequential<B> {
    /// A stack of `layers` whose parameters are named under `prefix`.
    pub fn new(prefix: impl Into<String>, layers: Vec<Layer<B>>) -> Sequential<B> {
        Sequential {
            prefix: prefix.into(),
            layers,
        }
    }

    /// (name, tensor) of every parameter, in order.
    pub fn named_params(&self) -> Vec<(String, &B::Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.params().map(|p| (i, p)))
            .flat_map(|(i, (w, b))| {
                [
                    (format!("{}.{i}.weight", self.prefix), w),
                    (format!("{}.{i}.bias", self.prefix), b),
                ]
            })
            .collect()
    }

    /// Every parameter with its name (`prefix.index.weight`), mutable.
    pub fn named_params_mut(&mut self) -> Vec<(String, &mut B::Tensor)> {
        let prefix = &self.prefix;
        self.layers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, l)| l.params_mut().map(|p| (i, p)))
            .flat_map(|(i, (w, b))| {
                [
                    (format!("{prefix}.{i}.weight"), w),
                    (format!("{prefix}.{i}.bias"), b),
                ]
            })
            .collect()
    }

    /// The state-dict name of `what` (weight, bias, running_mean, ...) of module `i`.
    fn name(&self, i: usize, what: &str) -> String {
        format!("{}.{i}.{what}", self.prefix)
    }

    /// Each BatchNorm, with the names of its buffers (`batch_norm::BUFFERS` order), in order.
    fn batch_norms(&self) -> impl Iterator<Item = ([String; 3], &BatchNorm2d<B>)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, layer)| match layer {
                Layer::BatchNorm2d(n) => Some((batch_norm::BUFFERS.map(|b| self.name(i, b)), n)),
                _ => None,
            })
    }

    /// (name, value) of every buffer (state that is saved but not trained: BatchNorm's running
    /// statistics), in order.
    pub fn named_buffers(&self, backend: &B) -> vgg_tensor::Result<Vec<(String, B::Tensor)>> {
        let mut named = Vec::new();
        for (names, n) in self.batch_norms() {
            named.extend(names.into_iter().zip(n.buffers(backend)?));
        }
        Ok(named)
    }

    /// (name, value) of every parameter and buffer, as a PyTorch state_dict orders them: each
    /// module's parameters, then its buffers.
    pub fn named_state(&self, backend: &B) -> vgg_tensor::Result<Vec<(String, B::Tensor)>> {
        let mut state = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some((w, b)) = layer.params() {
                state.push((self.name(i, "weight"), w.clone()));
                state.push((self.name(i, "bias"), b.clone()));
            }
            if let Layer::BatchNorm2d(n) = layer {
                let names = batch_norm::BUFFERS.map(|b| self.name(i, b));
                state.extend(names.into_iter().zip(n.buffers(backend)?));
            }
        }
        Ok(state)
    }

    /// Sets every buffer from `lookup`, which gives each buffer's value by its name (shapes
    /// already checked); a buffer it does not give is an error naming it.
    pub fn load_buffers<'a>(
        &self,
        backend: &B,
        lookup: &dyn Fn(&str) -> Option<&'a io::HostTensor>,
    ) -> vgg_tensor::Result<()> {
        for (names, n) in self.batch_norms() {
            let value = |name: &String| {
                lookup(name).ok_or_else(|| vgg_tensor::TensorError::InvalidArgument {
                    op: "load_buffers",
                    message: format!("no value for {name}"),
                })
            };
            n.set_buffers(
                backend,
                [value(&names[0])?, value(&names[1])?, value(&names[2])?],
            )?;
        }
        Ok(())
    }

    /// Runs every layer, fusing a convolution with the ReLU after it, and recording the pair with
    /// a max-pool after them as one node (`DeferredConv::max_pool2d`). Each intermediate value is
    /// dropped as soon as the next exists, so an inference tape holds one layer's input and output.
    pub fn forward(
        &self,
        tape: &Tape<B>,
        x: Var<B>,
        run: RunOptions,
    ) -> vgg_autodiff::Result<Var<B>> {
        self.forward_observed(tape, x, run, &mut |_, _| {})
    }

    /// `forward`, labelling each module's ops `{prefix}.{index}` on the tape and calling
    /// `after(first, last)` with the module indices each step covered (a fused pair covers two).
    pub fn forward_observed(
        &self,
        tape: &Tape<B>,
        x: Var<B>,
        run: RunOptions,
        after: &mut dyn FnMut(usize, usize),
    ) -> vgg_autodiff::Result<Var<B>> {
        self.forward_tapped(tape, x, run, &[], &mut |_, v| Ok(v), after)
    }

    /// `forward_observed`, handing the output of each module in `taps` to `hook`, which
    /// returns the value the next module reads (a [`Tape::tap`] of it, say). A convolution runs
    /// fused with the ReLU after it, so its output is tapped after the ReLU (give the ReLU's
    /// index); a tapped ReLU is not fused with the max-pool after it.
    pub fn forward_tapped(
        &self,
        tape: &Tape<B>,
        x: Var<B>,
        run: RunOptions,
        taps: &[usize],
        hook: &mut dyn FnMut(usize, Var<B>) -> vgg_autodiff::Result<Var<B>>,
        after: &mut dyn FnMut(usize, usize),
    ) -> vgg_autodiff::Result<Var<B>> {
        let mut h = x;
        let mut i = 0;
        while i < self.layers.len() {
            let first = i;
            tape.set_label(Some(&format!("{}.{i}", self.prefix)));
            h = match &self.layers[i] {
                Layer::Conv2d(c) => {
                    let w = tape.param(format!("{}.{i}.weight", self.prefix), c.weight.clone());
                    let b = tape.param(format!("{}.{i}.bias", self.prefix), c.bias.clone());
                    let norm = match self.layers.get(i + 1) {
                        Some(Layer::BatchNorm2d(n)) => Some(n),
                        _ => None,
                    };
                    let relu_at = i + 1 + usize::from(norm.is_some());
                    let next_is_relu = matches!(self.layers.get(relu_at), Some(Layer::Relu));
                    // Training: the batch's statistics need the convolution's output, so it
                    // runs alone, and the BatchNorm and ReLU after it as modules of their own.
                    let alone = norm.is_some() && run.training;
                    let (w, b) = match norm {
                        Some(n) if !alone => {
                            let at = i + 1;
                            tape.set_label(Some(&format!("{}.{at}", self.prefix)));
                            let gamma = tape
                                .param(format!("{}.{at}.weight", self.prefix), n.weight.clone());
                            let beta =
                                tape.param(format!("{}.{at}.bias", self.prefix), n.bias.clone());
                            let folded = n.fold_into(tape, &w, &b, &gamma, &beta)?;
                            tape.set_label(Some(&format!("{}.{i}", self.prefix)));
                            folded
                        }
                        _ => (w, b),
                    };
                    let pool_fuses = !taps.contains(&relu_at);
                    match (next_is_relu && !alone, self.layers.get(relu_at + 1)) {
                        // Convolution, ReLU and max-pool: one tape node, which keeps the pooled
                        // output rather than the convolution's (labelled with the convolution,
                        // so its backward, the pool's included, counts there).
                        (true, Some(Layer::MaxPool2d(p))) if pool_fuses => {
                            let conv = tape.conv2d_bias_relu_deferred(&h, &w, &b, c.params)?;
                            drop(h);
                            after(first, relu_at);
                            i = relu_at + 1;
                            let mut pooled = conv.max_pool2d(tape, *p)?;
                            tape.set_label(None);
                            if taps.contains(&i) {
                                pooled = hook(i, pooled)?;
                            }
                            after(i, i);
                            i += 1;
                            h = pooled;
                            continue;
                        }
                        (true, _) => {
                            i = relu_at;
                            tape.conv2d_bias_act(&h, &w, &b, c.params, true)?
                        }
                        (false, _) => {
                            if !alone {
                                i = relu_at - 1;
                            }
                            tape.conv2d_bias_act(&h, &w, &b, c.params, false)?
                        }
                    }
                }
                // In training, or after anything but a convolution (which folds it in otherwise).
                Layer::BatchNorm2d(n) => {
                    let gamma = tape.param(format!("{}.{i}.weight", self.prefix), n.weight.clone());
                    let beta = tape.param(format!("{}.{i}.bias", self.prefix), n.bias.clone());
                    if run.training {
                        n.forward_training(tape, &h, &gamma, &beta)?
                    } else {
                        let (mean, var) = n.running_mean_var();
                        tape.batch_norm_eval(&h, &mean, &var, &gamma, &beta, batch_norm::EPS)?
                    }
                }
                Layer::Linear(l) => {
                    let w = tape.param(format!("{}.{i}.weight", self.prefix), l.weight.clone());
                    let b = tape.param(format!("{}.{i}.bias", self.prefix), l.bias.clone());
                    let h = if h.shape().rank() == 2 {
                        h
                    } else {
                        tape.flatten(&h)?
                    };
                    tape.linear(&h, &w, &b)?
                }
                Layer::MaxPool2d(p) => tape.max_pool2d(&h, *p)?,
                Layer::Relu => tape.relu(&h)?,
                Layer::Dropout if run.keep_prob < 1.0 => {
                    tape.dropout(&h, run.keep_prob, init::param_seed(run.seed, i))?
                }
                Layer::Dropout => h,
                Layer::Flatten => tape.flatten(&h)?,
            };
            tape.set_label(None);
            if taps.contains(&i) {
                h = hook(i, h)?;
            }
            after(first, i);
            i += 1;
        }
        Ok(h)
    }
}
