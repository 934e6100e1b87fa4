//! Training VGG networks on labelled images: seeded mini-batches, cross-entropy, an optimiser, a
//! held-out test set, per-epoch reports and checkpoints (weights and optimiser state) that resume
//! to the same result as an uninterrupted run. Data-parallel over several ranks with
//! [`train_parallel`]: each global batch is split across the ranks and their gradients averaged
//! (`vgg-dist`), so N ranks train as one process would on the whole batch.

pub mod data;
pub mod images;

use std::collections::HashMap;
use std::time::Instant;

use vgg_autodiff::Tape;
use vgg_dist::{
    CommTimes, Communicator, ExchangeOptions, GradientBuckets, GradientCompression,
    GradientExchange, HostExchange, Solo,
};
use vgg_model::{ModelError, ModelSpec, Vgg};
use vgg_nn::init::param_seed;
use vgg_nn::io::{HostTensor, TensorFile};
use vgg_nn::optim::{Optimizer, OptimizerKind, Schedule};
use vgg_nn::RunOptions;
use vgg_tensor::{Backend, DeviceTensor, Shape};

pub use data::{DataError, Dataset};

#[derive(Debug, thiserror::Error)]
/// Why training stopped.
pub enum TrainError {
    #[error(transparent)]
    /// The network could not be built or run.
    Model(#[from] ModelError),
    #[error(transparent)]
    /// The tape failed.
    Autodiff(#[from] vgg_autodiff::AutodiffError),
    #[error(transparent)]
    /// A backend op failed.
    Tensor(#[from] vgg_tensor::TensorError),
    #[error(
        "the loss became {value} at epoch {epoch}, step {step}: lower the learning rate or try another optimiser"
    )]
    /// The loss became NaN or infinite.
    NonFinite {
        /// The loss.
        value: f32,
        /// The epoch, from 0.
        epoch: usize,
        /// The step, over all epochs.
        step: u64,
    },
    #[error("bad checkpoint: {0}")]
    /// A checkpoint does not fit the run it should resume.
    Checkpoint(String),
    /// An `Observer` stopped training (a report could not be written, say).
    #[error("training stopped after epoch {epoch}: {reason}")]
    Observer {
        /// Epochs finished.
        epoch: usize,
        /// What the observer said.
        reason: String,
    },
    /// The ranks of a data-parallel run failed to work together.
    #[error(transparent)]
    Dist(#[from] vgg_dist::DistError),
    /// A `TrainConfig` field has a value that makes no sense.
    #[error("the training setting {setting} = {value} makes no sense: {expected}")]
    Setting {
        /// The `TrainConfig` field.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What would make sense.
        expected: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
/// How to train: epochs, batch, learning rate and its schedule, optimiser.
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f32,
    /// How the learning rate changes with the epoch.
    pub schedule: Schedule,
    /// The update rule.
    pub optimizer: OptimizerKind,
    /// Dropout's keep probability after fc6 and fc7 while training.
    pub keep_prob: f32,
    /// Seeds the shuffling and the dropout masks.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
/// What one epoch did.
pub struct EpochReport {
    /// Counted from 1.
    pub epoch: usize,
    /// The learning rate used.
    pub lr: f32,
    /// Mean loss over the training set.
    pub train_loss: f64,
    /// Fraction of the training set classified right.
    pub train_accuracy: f64,
    /// Mean loss over the test set.
    pub test_loss: f64,
    /// Fraction of the test set classified right.
    pub test_accuracy: f64,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
    /// Communication between ranks over the epoch's steps (zeros with one process).
    pub communication: CommTimes,
}

impl TrainConfig {
    /// Refuses settings that cannot train: a rate that is not positive (a negative one climbs the
    /// loss), a decay factor that is not positive, momentum outside [0, 1), and so on. The error
    /// names the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let refuse = |setting, value: f32, expected| {
            Err(TrainError::Setting {
                setting,
                value: value.to_string(),
                expected,
            })
        };
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(TrainError::Setting {
                setting: if self.epochs == 0 {
                    "epochs"
                } else {
                    "batch_size"
                },
                value: "0".to_string(),
                expected: "it must be at least 1",
            });
        }
        if !positive(self.lr) {
            return refuse("lr", self.lr, "the learning rate must be a positive number");
        }
        if !(self.keep_prob > 0.0 && self.keep_prob <= 1.0) {
            return refuse(
                "keep_prob",
                self.keep_prob,
                "a keep probability is in (0, 1]",
            );
        }
        if let Schedule::Step { every, gamma } = self.schedule {
            if !positive(gamma) {
                return refuse(
                    "gamma",
                    gamma,
                    "the rate is multiplied by it, so it must be positive (0.1 divides by 10)",
                );
            }
            if every == 0 {
                return refuse("step_every", 0.0, "it must be at least 1 epoch");
            }
        }
        let weight_decay = match self.optimizer {
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => {
                if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
                    return refuse("momentum", momentum, "momentum is in [0, 1)");
                }
                weight_decay
            }
            OptimizerKind::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                for (setting, beta) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&beta) {
                        return refuse(setting, beta, "Adam's betas are in [0, 1)");
                    }
                }
                if !positive(eps) {
                    return refuse("eps", eps, "Adam's epsilon must be positive");
                }
                weight_decay
            }
        };
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return refuse("weight_decay", weight_decay, "weight decay is 0 or more");
        }
        Ok(())
    }

    /// Optimiser steps in one epoch over `train_images` images.
    pub fn batches_per_epoch(&self, train_images: usize) -> usize {
        train_images.div_ceil(self.batch_size.max(1))
    }
}

/// What a checkpoint holds: the network, the optimiser and how many epochs are done.
pub struct TrainState<B: Backend> {
    /// The network being trained.
    pub model: Vgg<B>,
    /// The optimiser and its state.
    pub optimizer: Optimizer<B>,
    /// Epochs finished, counting those of a resumed checkpoint.
    pub epochs_done: usize,
}

/// What training reports as it goes.
pub trait Observer<B: Backend> {
    /// Called after each step with the steps done and the steps in the epoch.
    fn batch(&mut self, _done: usize, _total: usize) {}
    /// After each epoch; a checkpoint can be written from here.
    fn epoch(&mut self, _report: &EpochReport, _state: &TrainState<B>) -> Result<(), TrainError> {
        Ok(())
    }
}

impl<B: Backend> Observer<B> for () {}

/// (mean loss, accuracy) of `model` on `data`, in batches, without dropout or a tape.
pub fn evaluate<B: Backend>(
    backend: &B,
    model: &Vgg<B>,
    data: &Dataset,
    batch: usize,
) -> Result<(f64, f64), TrainError> {
    evaluate_parallel(backend, model, data, batch, &Solo)
}

/// `evaluate` with the images shared among the ranks of `comm`; every rank gets the totals.
pub fn evaluate_parallel<B: Backend>(
    backend: &B,
    model: &Vgg<B>,
    data: &Dataset,
    batch: usize,
    comm: &dyn Communicator,
) -> Result<(f64, f64), TrainError> {
    let mine = share(data.len(), comm.rank(), comm.size());
    let order: Vec<usize> = mine.collect();
    // Sums, then divided: the same whichever rank counted what.
    let mut sums = [0.0f64; 2];
    for chunk in order.chunks(batch.max(1)) {
        let (images, labels) = data.gather(chunk);
        let x = backend.upload(
            &Shape::from([chunk.len(), data.channels, data.height, data.width]),
            &images,
        )?;
        let tape = Tape::inference(backend.clone());
        let logits = model.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
        let (l, _) = backend.cross_entropy(logits.value(), &labels)?;
        sums[0] += backend.scalar_value(&l)? as f64 * chunk.len() as f64;
        sums[1] += correct(backend, logits.value(), &labels)? as f64;
    }
    comm.allreduce_f64(&mut sums)?;
    let n = data.len().max(1) as f64;
    Ok((sums[0] / n, sums[1] / n))
}

/// The part of `0..n` that rank `rank` of `size` takes: contiguous, sizes differing by at most 1.
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let size = size.max(1);
    let at = |r: usize| (n as u128 * r as u128 / size as u128) as usize;
    at(rank)..at(rank + 1)
}

fn correct<B: Backend>(
    backend: &B,
    logits: &B::Tensor,
    labels: &[usize],
) -> Result<usize, TrainError> {
    Ok(backend
        .argmax_rows(logits)?
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count())
}

/// How a data-parallel run shares its work among ranks.
pub struct Parallel<'a, B: Backend> {
    /// The ranks.
    pub comm: &'a dyn Communicator,
    /// Where the gradients are averaged: the backend's own exchange over the same ranks (NCCL for
    /// CUDA tensors), or `None` for host buffers over `comm`.
    pub exchange: Option<&'a dyn GradientExchange<B>>,
    /// Gradient bytes per allreduce bucket (PyTorch's DDP: 25 MB).
    pub bucket_bytes: usize,
    /// Start each bucket's allreduce as soon as backward has produced it (false: one allreduce
    /// of everything after backward).
    pub overlap: bool,
    /// Send gradients in 16 bits (`None`: f32).
    pub compression: Option<GradientCompression>,
}

impl<B: Backend> Parallel<'static, B> {
    /// One process: nothing is shared.
    pub fn solo() -> Parallel<'static, B> {
        Parallel {
            comm: &Solo,
            exchange: None,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            overlap: true,
            compression: None,
        }
    }
}

/// PyTorch DistributedDataParallel's bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// The gradient buckets of `model`: parameters in the order backward produces their gradients.
pub fn gradient_buckets<B: Backend>(model: &Vgg<B>, bucket_bytes: usize) -> GradientBuckets {
    let params: Vec<(String, Shape)> = model
        .named_params()
        .into_iter()
        .rev()
        .map(|(name, t)| (name, t.shape().clone()))
        .collect();
    GradientBuckets::new(&params, bucket_bytes)
}

/// Makes every rank start alike: checks that the ranks have the same settings, data and progress
/// (`what_runs` describes them) and gives every rank rank 0's weights.
pub fn share_state<B: Backend>(
    backend: &B,
    comm: &dyn Communicator,
    state: &mut TrainState<B>,
    what_runs: &str,
) -> Result<(), TrainError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let progress = format!(
        "{what_runs}; {}; epoch {}, step {}",
        state.model.spec().describe(),
        state.epochs_done,
        state.optimizer.steps
    );
    comm.check_same("settings, data or checkpoint", &progress)?;
    let root = comm.rank() == 0;
    for (_, t) in state.model.named_params_mut() {
        let mut host = if root {
            backend.download(t)?
        } else {
            vec![0.0; t.shape().elements()]
        };
        comm.broadcast_f32(&mut host, 0)?;
        if !root {
            *t = backend.upload(t.shape(), &host)?;
        }
    }
    Ok(())
}

/// Makes every rank's buffers (BatchNorm's running statistics, which each rank gathered from its
/// own share of the batches) their mean over the ranks, so that the ranks evaluate alike and the
/// checkpoint holds what all of them saw. PyTorch's DDP instead hands rank 0's to every rank.
pub fn average_buffers<B: Backend>(
    backend: &B,
    comm: &dyn Communicator,
    model: &Vgg<B>,
) -> Result<(), TrainError> {
    let buffers = model.named_buffers(backend)?;
    if comm.size() == 1 || buffers.is_empty() {
        return Ok(());
    }
    let mut host = Vec::with_capacity(buffers.len());
    let mut sums = Vec::new();
    for (name, t) in buffers {
        let t = HostTensor::download(backend, &t)?;
        sums.extend(t.data.iter().map(|&v| v as f64));
        host.push((name, t));
    }
    comm.allreduce_f64(&mut sums)?;
    let mut means = sums.into_iter().map(|v| (v / comm.size() as f64) as f32);
    for (_, t) in &mut host {
        for v in &mut t.data {
            *v = means.next().expect("one sum per value");
        }
    }
    let given = host.iter().map(|(n, t)| (n.as_str(), t)).collect();
    model.load_buffers(backend, &given)?;
    Ok(())
}

/// Trains from `state.epochs_done` up to `config.epochs`, shuffling each epoch with a seed of its
/// own so that a resumed run sees the same batches as an uninterrupted one.
pub fn train<B: Backend>(
    backend: &B,
    state: &mut TrainState<B>,
    train_set: &Dataset,
    test_set: &Dataset,
    config: &TrainConfig,
    observer: &mut dyn Observer<B>,
) -> Result<Vec<EpochReport>, TrainError> {
    train_parallel(
        backend,
        state,
        train_set,
        test_set,
        config,
        observer,
        &Parallel::solo(),
    )
}

/// `train` on the ranks of `parallel.comm`, each with the same data, settings and state: rank 0's
/// weights are given to all, each global batch of `config.batch_size` images is split among the
/// ranks, and their gradients averaged, weighted by their images, before every rank takes the
/// same optimiser step. The weights are those of one process training on the whole batches, to
/// float rounding (with dropout, each rank draws its own masks). Every rank gets the reports;
/// the observer decides which rank writes.
pub fn train_parallel<B: Backend>(
    backend: &B,
    state: &mut TrainState<B>,
    train_set: &Dataset,
    test_set: &Dataset,
    config: &TrainConfig,
    observer: &mut dyn Observer<B>,
    parallel: &Parallel<'_, B>,
) -> Result<Vec<EpochReport>, TrainError> {
    config.validate()?;
    let comm = parallel.comm;
    let host = HostExchange::new(comm);
    let exchange = parallel.exchange.unwrap_or(&host);
    let options = ExchangeOptions {
        overlap: parallel.overlap,
        compression: parallel.compression,
    };
    let (rank, size) = (comm.rank(), comm.size());
    share_state(
        backend,
        comm,
        state,
        &format!(
            "{config:?}; {} training and {} test images",
            train_set.len(),
            test_set.len()
        ),
    )?;
    let layout = gradient_buckets(&state.model, parallel.bucket_bytes);
    let mut reports = Vec::new();
    let shape = |n: usize| Shape::from([n, train_set.channels, train_set.height, train_set.width]);
    for epoch in state.epochs_done..config.epochs {
        let TrainState {
            model, optimizer, ..
        } = state;
        let start = Instant::now();
        let lr = config.schedule.lr(config.lr, epoch);
        let order = data::permutation(train_set.len(), param_seed(config.seed, epoch));
        let batches: Vec<&[usize]> = order.chunks(config.batch_size.max(1)).collect();
        let (mut loss_sum, mut correct_sum) = (0.0f64, 0usize);
        let mut communication = CommTimes::default();
        for (b, batch) in batches.iter().enumerate() {
            let chunk = &batch[share(batch.len(), rank, size)];
            let mut seed = param_seed(config.seed ^ 0xd50, optimizer.steps as usize);
            if size > 1 {
                // Each rank's images get masks of their own.
                seed = param_seed(seed, rank);
            }
            let run = RunOptions {
                keep_prob: config.keep_prob,
                seed,
                training: true,
            };
            let step = optimizer.steps.saturating_add(1);
            let mut sums = [0.0f64; 2];
            // One process uses its own gradients as they are: no buckets, no copies.
            let mut reducer = (size > 1)
                .then(|| {
                    exchange.reducer(&layout, chunk.len() as f32 / batch.len() as f32, options)
                })
                .transpose()?;
            let mut local_grads = None;
            if !chunk.is_empty() {
                let (images, labels) = train_set.gather(chunk);
                let x = backend.upload(&shape(chunk.len()), &images)?;
                let tape = Tape::new(backend.clone());
                let logits = model.forward(&tape, &tape.constant(x), run)?;
                sums[1] = correct(backend, logits.value(), &labels)? as f64;
                let loss = tape.cross_entropy(&logits, &labels)?;
                let value = backend.scalar_value(loss.value())?;
                sums[0] = value as f64 * chunk.len() as f64;
                // One process stops before backward; several decide together, after it.
                if size == 1 && !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        value,
                        epoch: epoch + 1,
                        step,
                    });
                }
                drop(logits);
                match reducer.as_mut() {
                    None => local_grads = Some(tape.backward(&loss)?),
                    // The buckets hold what is needed: the local gradients go at once.
                    Some(reducer) => drop(tape.backward_streaming(
                        &loss,
                        |_| {},
                        |name, g| reducer.add(backend, name, g).map_err(TrainError::from),
                    )?),
                }
            }
            let grads: HashMap<String, B::Tensor> = match reducer {
                None => local_grads
                    .map(|g| g.into_named().into_iter().collect())
                    .unwrap_or_default(),
                Some(mut reducer) => {
                    let (grads, times) = reducer.finish(backend)?;
                    comm.allreduce_f64(&mut sums)?;
                    let mean = (sums[0] / batch.len() as f64) as f32;
                    if !mean.is_finite() {
                        return Err(TrainError::NonFinite {
                            value: mean,
                            epoch: epoch + 1,
                            step,
                        });
                    }
                    communication += times;
                    grads
                }
            };
            loss_sum += sums[0];
            correct_sum += sums[1] as usize;
            optimizer.step(backend, model.named_params_mut(), &grads, lr)?;
            observer.batch(b + 1, batches.len());
        }
        average_buffers(backend, comm, &state.model)?;
        let (test_loss, test_accuracy) = evaluate_parallel(
            backend,
            &state.model,
            test_set,
            config.batch_size.div_ceil(size),
            comm,
        )?;
        state.epochs_done = epoch + 1;
        let n = train_set.len().max(1) as f64;
        let report = EpochReport {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / n,
            train_accuracy: correct_sum as f64 / n,
            test_loss,
            test_accuracy,
            seconds: start.elapsed().as_secs_f64(),
            communication,
        };
        observer.epoch(&report, state)?;
        reports.push(report);
    }
    Ok(reports)
}

/// Metadata keys of a checkpoint, besides the model's own.
pub mod meta {
    /// Epochs done.
    pub const EPOCH: &str = "train.epoch";
    /// Optimiser steps taken.
    pub const STEPS: &str = "train.steps";
    /// The optimiser's name.
    pub const OPTIMIZER: &str = "train.optimizer";
    /// The data set trained on (`digits`, `cifar10`), for evaluating the checkpoint later.
    pub const DATASET: &str = "train.dataset";
    /// The fraction of the data held out for testing, where the data set is split.
    pub const TEST_FRACTION: &str = "train.test_fraction";
    /// The seed of the split, the shuffles and the dropout masks.
    pub const SEED: &str = "train.seed";

    /// The data sets a checkpoint may name.
    pub const DATASETS: [&str; 2] = ["digits", "cifar10"];

    /// The data a checkpoint was trained on, as its metadata records it (None: not recorded,
    /// as in files from before these keys).
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct Provenance {
        /// One of [`DATASETS`].
        pub dataset: Option<String>,
        /// In (0, 1).
        pub test_fraction: Option<f64>,
        /// The seed.
        pub seed: Option<u64>,
    }

    impl Provenance {
        /// Reads and checks what `metadata` records: a value that is not a known data set, a
        /// fraction in (0, 1) or a seed is refused, naming its key.
        pub fn read(
            metadata: &std::collections::HashMap<String, String>,
        ) -> Result<Provenance, super::TrainError> {
            let bad = |key: &str, value: &str, expected: &str| {
                super::TrainError::Checkpoint(format!(
                    "its metadata says {key} = '{}', which is not {expected}: the file is damaged \
                     or was edited",
                    value.chars().take(100).collect::<String>()
                ))
            };
            let dataset = match metadata.get(DATASET) {
                Some(d) if DATASETS.contains(&d.as_str()) => Some(d.clone()),
                Some(d) => {
                    return Err(bad(
                        DATASET,
                        d,
                        &format!("a data set vgg knows ({})", DATASETS.join(", ")),
                    ))
                }
                None => None,
            };
            let test_fraction = match metadata.get(TEST_FRACTION) {
                Some(f) => match f.parse::<f64>() {
                    Ok(v) if v > 0.0 && v < 1.0 => Some(v),
                    _ => return Err(bad(TEST_FRACTION, f, "a fraction between 0 and 1")),
                },
                None => None,
            };
            let seed = match metadata.get(SEED) {
                Some(v) => Some(
                    v.parse::<u64>()
                        .map_err(|_| bad(SEED, v, "a seed (an integer from 0 to 2^64-1)"))?,
                ),
                None => None,
            };
            Ok(Provenance {
                dataset,
                test_fraction,
                seed,
            })
        }
    }
}

/// Weights, optimiser state and how far training got, as one safetensors file.
pub fn checkpoint<B: Backend>(
    backend: &B,
    state: &TrainState<B>,
) -> Result<TensorFile, TrainError> {
    let mut file = state.model.to_tensor_file(backend)?;
    file.tensors.extend(state.optimizer.state_tensors(backend)?);
    let optimizer = &state.optimizer;
    file.metadata
        .insert(meta::EPOCH.into(), state.epochs_done.to_string());
    file.metadata
        .insert(meta::STEPS.into(), optimizer.steps.to_string());
    file.metadata
        .insert(meta::OPTIMIZER.into(), optimizer.kind.name().into());
    Ok(file)
}

/// The state saved by `checkpoint`, for training with `config` on `train_images` images. The
/// checkpoint must be whole and consistent: its step count must be what its epochs took at this
/// batch size, and its optimiser state must cover every parameter, so that the resumed run equals
/// an uninterrupted one.
pub fn resume<B: Backend>(
    backend: &B,
    spec: ModelSpec,
    config: &TrainConfig,
    train_images: usize,
    file: &TensorFile,
) -> Result<TrainState<B>, TrainError> {
    let bad = |m: String| TrainError::Checkpoint(m);
    let get = |key: &str| -> Result<u64, TrainError> {
        file.metadata
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                bad(format!(
                    "no '{key}' in its metadata: was it written by vgg train?"
                ))
            })
    };
    let (epoch, steps) = (get(meta::EPOCH)?, get(meta::STEPS)?);
    let kind = config.optimizer;
    if file.metadata.get(meta::OPTIMIZER).map(String::as_str) != Some(kind.name()) {
        return Err(bad(format!(
            "it was made with the {} optimiser, not {}",
            file.metadata
                .get(meta::OPTIMIZER)
                .map_or("?", String::as_str),
            kind.name()
        )));
    }
    let per_epoch = config.batches_per_epoch(train_images) as u64;
    if epoch.checked_mul(per_epoch) != Some(steps) {
        return Err(bad(format!(
            "it records {epoch} epochs and {steps} steps, but {epoch} epochs of {train_images} images \
             in batches of {} take {} steps: it was made with another batch size or data set, or is damaged",
            config.batch_size,
            epoch.saturating_mul(per_epoch)
        )));
    }
    let epoch = usize::try_from(epoch).map_err(|_| bad(format!("{epoch} epochs is too many")))?;
    let weights = TensorFile {
        tensors: file
            .tensors
            .iter()
            .filter(|(n, _)| !n.starts_with("optimizer."))
            .cloned()
            .collect(),
        metadata: file.metadata.clone(),
    };
    let model = Vgg::from_tensors(backend, spec, &weights)?;
    let params: Vec<(String, Shape)> = model
        .named_params()
        .into_iter()
        .map(|(name, t)| (name, t.shape().clone()))
        .collect();
    let mut optimizer = Optimizer::new(kind);
    optimizer
        .load_state(backend, &file.tensors, steps, &params)
        .map_err(|e| bad(e.to_string()))?;
    Ok(TrainState {
        model,
        optimizer,
        epochs_done: epoch,
    })
}
