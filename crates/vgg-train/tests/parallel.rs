//! Data-parallel training with ranks as threads (`vgg_dist::LocalGroup`): N ranks splitting each
//! batch end with the weights of one process training on the whole batches, whatever the split;
//! ranks that start differently, or leave, are named.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vgg_dist::{
    Communicator, DistError, ExchangeOptions, GradientBuckets, GradientCompression,
    GradientExchange, GradientReducer, HostExchange, LocalGroup,
};
use vgg_model::{ModelSpec, SpecOptions, Vgg, VggConfig};
use vgg_ndarray::CpuBackend;
use vgg_nn::optim::{Optimizer, OptimizerKind, Schedule};
use vgg_nn::InitScheme;
use vgg_tensor::prelude::*;
use vgg_train::{
    share, train_parallel, Dataset, EpochReport, Parallel, TrainConfig, TrainError, TrainState,
};

fn data(train: usize, test: usize) -> (Dataset, Dataset) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
    let (a, b) = vgg_train::data::load_digits(&dir)
        .unwrap()
        .split(0.2, 7)
        .unwrap();
    let first = |d: &Dataset, n: usize| d.subset(&(0..n).collect::<Vec<_>>());
    (first(&a, train), first(&b, test))
}

fn spec() -> ModelSpec {
    spec_of(VggConfig::Vgg11)
}

fn spec_of(model: VggConfig) -> ModelSpec {
    ModelSpec::new(
        model,
        SpecOptions {
            height: 32,
            width: 32,
            in_channels: 1,
            classes: 10,
            width_mult: 0.125,
            hidden: 32,
            adaptive_pool: None,
        },
    )
    .unwrap()
}

fn config(batch_size: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size,
        lr: 0.02,
        schedule: Schedule::Cosine { epochs },
        optimizer: OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: 1e-4,
        },
        keep_prob: 1.0,
        seed: 5,
    }
}

/// Every rank's weights after training, and rank 0's reports. Rank r initialises with seed
/// `r + 1`, so only the broadcast of rank 0's weights can make them agree.
fn run(
    ranks: usize,
    config: TrainConfig,
    bucket_bytes: usize,
    overlap: bool,
    sets: (Dataset, Dataset),
) -> Vec<(Vec<Vec<f32>>, Vec<EpochReport>)> {
    run_compressed(ranks, config, bucket_bytes, overlap, sets, None)
}

/// `run`, with the gradients sent in `compression`.
fn run_compressed(
    ranks: usize,
    config: TrainConfig,
    bucket_bytes: usize,
    overlap: bool,
    sets: (Dataset, Dataset),
    compression: Option<GradientCompression>,
) -> Vec<(Vec<Vec<f32>>, Vec<EpochReport>)> {
    run_model(
        VggConfig::Vgg11,
        ranks,
        config,
        (bucket_bytes, overlap),
        sets,
        compression,
        None,
    )
}

/// A backend's own exchange as the training loop sees one: here the host exchange, counting the
/// reducers it makes.
struct Counting<'a> {
    host: HostExchange<'a>,
    made: Arc<AtomicUsize>,
}

impl GradientExchange<CpuBackend> for Counting<'_> {
    fn describe(&self) -> String {
        "counting".into()
    }

    fn reducer<'s>(
        &'s self,
        layout: &'s GradientBuckets,
        weight: f32,
        options: ExchangeOptions,
    ) -> vgg_dist::Result<Box<dyn GradientReducer<CpuBackend> + 's>> {
        self.made.fetch_add(1, Ordering::SeqCst);
        self.host.reducer(layout, weight, options)
    }
}

/// `run_compressed` of `model`; each rank's weights are followed by its buffers (BatchNorm's
/// running statistics).
fn run_model(
    model: VggConfig,
    ranks: usize,
    config: TrainConfig,
    (bucket_bytes, overlap): (usize, bool),
    (train_set, test_set): (Dataset, Dataset),
    compression: Option<GradientCompression>,
    counter: Option<Arc<AtomicUsize>>,
) -> Vec<(Vec<Vec<f32>>, Vec<EpochReport>)> {
    let handles: Vec<_> = LocalGroup::new(ranks, Duration::from_secs(60))
        .into_iter()
        .map(|comm| {
            let (train_set, test_set) = (train_set.clone(), test_set.clone());
            let counter = counter.clone();
            thread::spawn(move || {
                let b = CpuBackend::new(1).unwrap();
                let seed = if ranks == 1 {
                    1
                } else {
                    comm.rank() as u64 + 1
                };
                let mut state = TrainState {
                    model: Vgg::init(&b, spec_of(model), &InitScheme::REFERENCE, seed).unwrap(),
                    optimizer: Optimizer::new(config.optimizer),
                    epochs_done: 0,
                };
                let counting = counter.map(|made| Counting {
                    host: HostExchange::new(&comm),
                    made,
                });
                let reports = b.execute(|| {
                    let parallel = Parallel {
                        comm: &comm,
                        exchange: counting
                            .as_ref()
                            .map(|c| c as &dyn GradientExchange<CpuBackend>),
                        bucket_bytes,
                        overlap,
                        compression,
                    };
                    train_parallel(
                        &b,
                        &mut state,
                        &train_set,
                        &test_set,
                        &config,
                        &mut (),
                        &parallel,
                    )
                    .unwrap()
                });
                let mut weights: Vec<Vec<f32>> = state
                    .model
                    .named_params()
                    .into_iter()
                    .map(|(_, t)| b.download(t).unwrap())
                    .collect();
                let buffers = state.model.named_buffers(&b).unwrap();
                weights.extend(buffers.iter().map(|(_, t)| b.download(t).unwrap()));
                (weights, reports)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn relative_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let mut worst = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / p.abs().max(1e-2));
        }
    }
    worst
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    let worst = relative_difference(a, b);
    // Float summation in another order, over a few steps: far below what a lost or doubled
    // gradient (a factor of 2 somewhere) would give.
    assert!(worst < 2e-3, "{what}: relative difference {worst}");
}

#[test]
fn ranks_sharing_each_batch_train_as_one_process_on_the_whole_batch() {
    // 70 images in batches of 16: the last batch has 6, split 3/3 or 2/2/2.
    let sets = data(70, 20);
    let one = run(1, config(16, 2), 1 << 16, true, sets.clone());
    let (solo_weights, solo_reports) = &one[0];
    for (ranks, bucket_bytes, overlap) in
        [(2, 1 << 16, true), (3, 4096, true), (2, usize::MAX, false)]
    {
        let many = run(ranks, config(16, 2), bucket_bytes, overlap, sets.clone());
        for (rank, (weights, reports)) in many.iter().enumerate() {
            let what = format!("{ranks} ranks, rank {rank}, overlap {overlap}");
            // Every rank holds the same weights, to the bit.
            assert_eq!(weights, &many[0].0, "{what}");
            assert_close(weights, solo_weights, &what);
            for (r, s) in reports.iter().zip(solo_reports) {
                assert!(
                    (r.train_loss - s.train_loss).abs() < 1e-4,
                    "{what}: {r:?} vs {s:?}"
                );
                assert!((r.test_accuracy - s.test_accuracy).abs() < 1e-9, "{what}");
                assert_eq!(r.train_accuracy, s.train_accuracy, "{what}");
            }
            if ranks > 1 && overlap {
                assert!(reports[0].communication.total > 0.0, "{what}");
            }
        }
    }
    // And the weights did change: the comparison is not between two untouched models.
    let untouched = run(1, config(16, 1), 1 << 16, true, data(0, 0));
    assert_ne!(untouched[0].0, *solo_weights);
}

#[test]
fn the_training_loop_takes_the_exchange_it_is_given() {
    // 70 images in batches of 16: 5 steps on each of 2 ranks, each with a reducer of its own.
    let sets = data(70, 20);
    let made = Arc::new(AtomicUsize::new(0));
    let counted = run_model(
        VggConfig::Vgg11,
        2,
        config(16, 1),
        (1 << 16, true),
        sets.clone(),
        None,
        Some(made.clone()),
    );
    assert_eq!(made.load(Ordering::SeqCst), 2 * 5);
    // The same sums as the loop's own host exchange, to the bit.
    let host = run(2, config(16, 1), 1 << 16, true, sets);
    assert_eq!(counted[0].0, host[0].0);
}

#[test]
fn batches_smaller_than_the_ranks_leave_some_ranks_without_images() {
    // Batches of 2 images over 3 ranks: one rank has none at every step and still takes part.
    let sets = data(6, 4);
    let one = run(1, config(2, 1), 1 << 16, true, sets.clone());
    let three = run(3, config(2, 1), 1 << 16, true, sets);
    for (weights, _) in &three {
        assert_close(weights, &one[0].0, "3 ranks, batch 2");
    }
}

#[test]
fn shares_cover_the_batch_once() {
    for (n, size) in [(0, 3), (2, 3), (6, 3), (7, 3), (32, 5), (1, 1)] {
        let parts: Vec<_> = (0..size).map(|r| share(n, r, size)).collect();
        assert_eq!(parts[0].start, 0);
        assert_eq!(parts[size - 1].end, n);
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        assert!(
            lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1,
            "{lens:?}"
        );
    }
}

#[test]
fn ranks_with_other_settings_stop_with_a_named_error() {
    let (train_set, test_set) = data(8, 4);
    let handles: Vec<_> = LocalGroup::new(2, Duration::from_secs(60))
        .into_iter()
        .map(|comm| {
            let (train_set, test_set) = (train_set.clone(), test_set.clone());
            thread::spawn(move || {
                let b = CpuBackend::new(1).unwrap();
                let mut state = TrainState {
                    model: Vgg::init(&b, spec(), &InitScheme::REFERENCE, 1).unwrap(),
                    optimizer: Optimizer::new(config(4, 1).optimizer),
                    epochs_done: 0,
                };
                // Rank 1 was given another batch size.
                let c = config(if comm.rank() == 0 { 4 } else { 2 }, 1);
                let parallel = Parallel {
                    comm: &comm,
                    exchange: None,
                    bucket_bytes: 1 << 16,
                    overlap: true,
                    compression: None,
                };
                train_parallel(
                    &b,
                    &mut state,
                    &train_set,
                    &test_set,
                    &c,
                    &mut (),
                    &parallel,
                )
                .map(drop)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    match &results[1] {
        Err(TrainError::Dist(DistError::Mismatch {
            rank: 1,
            root,
            ours,
            ..
        })) => {
            assert!(root.contains("batch_size: 4") && ours.contains("batch_size: 2"));
        }
        other => panic!("{:?}", other.as_ref().err()),
    }
    // Rank 0 names rank 1's value itself.
    match &results[0] {
        Err(TrainError::Dist(DistError::OtherMismatch {
            first: 1, theirs, ..
        })) => assert!(theirs.contains("batch_size: 2"), "{theirs}"),
        other => panic!("{:?}", other.as_ref().err()),
    }
}

/// Gradients sent in 16 bits: every rank still takes the same step (the sums are rounded alike
/// everywhere), and the weights stay near those of f32 gradients, fp16 (11 bits) nearer than
/// bf16 (8 bits).
#[test]
fn gradients_sent_in_16_bits_train_alike_on_every_rank_near_f32() {
    let sets = data(70, 20);
    let exact = run(2, config(16, 2), 1 << 16, true, sets.clone());
    let mut differences = Vec::new();
    for format in [GradientCompression::Bf16, GradientCompression::Fp16] {
        let sent = run_compressed(2, config(16, 2), 1 << 16, true, sets.clone(), Some(format));
        assert_eq!(
            sent[0].0, sent[1].0,
            "{format:?}: the ranks' weights differ"
        );
        let worst = relative_difference(&exact[0].0, &sent[0].0);
        eprintln!("{format:?}: relative difference from f32 gradients {worst:.2e}");
        assert!(worst > 0.0, "{format:?}: nothing was rounded");
        // Measured: 4.3e-2 and 6.5e-4 (the largest over every weight, after 10 steps).
        let bound = match format {
            GradientCompression::Bf16 => 0.1,
            GradientCompression::Fp16 => 5e-3,
        };
        assert!(worst < bound, "{format:?}: relative difference {worst}");
        differences.push(worst);
    }
    assert!(
        differences[1] * 8.0 < differences[0],
        "bf16, fp16: {differences:?}"
    );
}

/// With BatchNorm each rank normalises its own share of a batch, so ranks differ from one process
/// (as PyTorch's DDP without SyncBatchNorm); but every rank ends with the same weights and the
/// same running statistics (their mean over the ranks, taken each epoch), and evaluates with them.
#[test]
fn batch_norm_ranks_end_alike() {
    let results = run_model(
        VggConfig::Vgg11Bn,
        2,
        config(16, 2),
        (1 << 20, true),
        data(64, 32),
        None,
        None,
    );
    let (first, reports) = &results[0];
    let (second, second_reports) = &results[1];
    assert_eq!(first.len(), second.len());
    let differing = first.iter().zip(second).position(|(a, b)| a != b);
    assert_eq!(
        differing, None,
        "tensor {differing:?} differs between the ranks"
    );
    assert_eq!(reports.len(), 2);
    assert_eq!(
        reports.last().unwrap().test_accuracy,
        second_reports.last().unwrap().test_accuracy
    );
}
