//! A small VGG learns the digits, and a resumed run ends exactly where an uninterrupted one does.

use std::path::Path;

use vgg_model::{ModelSpec, SpecOptions, Vgg, VggConfig};
use vgg_ndarray::CpuBackend;
use vgg_nn::optim::{Optimizer, OptimizerKind, Schedule};
use vgg_nn::InitScheme;

use vgg_tensor::prelude::*;
use vgg_train::{checkpoint, data, resume, train, TrainConfig, TrainError, TrainState};

fn digits() -> (vgg_train::Dataset, vgg_train::Dataset) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
    data::load_digits(&dir).unwrap().split(0.2, 7).unwrap()
}

fn spec() -> ModelSpec {
    ModelSpec::new(
        VggConfig::Vgg11,
        SpecOptions {
            height: 32,
            width: 32,
            in_channels: 1,
            classes: 10,
            width_mult: 0.25,
            hidden: 128,
            adaptive_pool: None,
        },
    )
    .unwrap()
}

const ADAM: OptimizerKind = OptimizerKind::Adam {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.0,
};

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        lr: 2e-3,
        schedule: Schedule::Cosine { epochs },
        optimizer: ADAM,
        keep_prob: 1.0,
        seed: 1,
    }
}

fn fresh(b: &CpuBackend) -> TrainState<CpuBackend> {
    TrainState {
        model: Vgg::init(b, spec(), &InitScheme::REFERENCE, 3).unwrap(),
        optimizer: Optimizer::new(ADAM),
        epochs_done: 0,
    }
}

#[test]
fn a_small_vgg_learns_the_digits() {
    let b = CpuBackend::new(2).unwrap();
    let (train_set, test_set) = digits();
    assert_eq!((train_set.len(), test_set.len()), (1438, 359));
    let start = std::time::Instant::now();
    let reports = b.execute(|| {
        let mut state = fresh(&b);
        train(&b, &mut state, &train_set, &test_set, &config(8), &mut ()).unwrap()
    });
    for r in &reports {
        eprintln!(
            "epoch {}: train loss {:.4}, test accuracy {:.3} ({:.1} s)",
            r.epoch, r.train_loss, r.test_accuracy, r.seconds
        );
    }
    eprintln!("trained in {:.1} s", start.elapsed().as_secs_f64());
    let last = reports.last().unwrap();
    assert!(
        last.test_accuracy >= 0.95,
        "test accuracy {}",
        last.test_accuracy
    );
    assert!(last.train_loss < reports[0].train_loss);
}

#[test]
fn resuming_from_a_checkpoint_ends_where_an_uninterrupted_run_does() {
    let b = CpuBackend::new(2).unwrap();
    let (train_set, test_set) = digits();
    let small = |d: &vgg_train::Dataset, n: usize| d.subset(&(0..n).collect::<Vec<_>>());
    let (train_set, test_set) = (small(&train_set, 256), small(&test_set, 64));
    b.execute(|| {
        let mut whole = fresh(&b);
        train(&b, &mut whole, &train_set, &test_set, &config(3), &mut ()).unwrap();

        let mut first = fresh(&b);
        let mut one_epoch = config(3);
        one_epoch.epochs = 1;
        train(&b, &mut first, &train_set, &test_set, &one_epoch, &mut ()).unwrap();
        let file = checkpoint(&b, &first).unwrap();
        drop(first);
        let mut resumed = resume(&b, spec(), &config(3), train_set.len(), &file).unwrap();
        assert_eq!(resumed.epochs_done, 1);
        train(&b, &mut resumed, &train_set, &test_set, &config(3), &mut ()).unwrap();

        for ((n1, t1), (n2, t2)) in whole
            .model
            .named_params()
            .iter()
            .zip(resumed.model.named_params())
        {
            assert_eq!(n1, &n2);
            assert_eq!(
                b.download(t1).unwrap(),
                b.download(t2).unwrap(),
                "{n1} differs after resuming"
            );
        }
        assert_eq!(whole.optimizer.steps, resumed.optimizer.steps);
    });
}

/// A checkpoint whose optimiser state or step count does not match its network is refused, so a
/// resumed run cannot silently differ from an uninterrupted one.
#[test]
fn inconsistent_checkpoints_are_refused_by_name() {
    let b = CpuBackend::new(2).unwrap();
    let (train_set, test_set) = digits();
    let train_set = train_set.subset(&(0..64).collect::<Vec<_>>());
    let test_set = test_set.subset(&(0..16).collect::<Vec<_>>());
    b.execute(|| {
        let mut state = fresh(&b);
        let mut one = config(1);
        one.epochs = 1;
        train(&b, &mut state, &train_set, &test_set, &one, &mut ()).unwrap();
        let file = checkpoint(&b, &state).unwrap();
        let refused = |f: &vgg_nn::io::TensorFile, needle: &str| {
            let Err(e) = resume(&b, spec(), &config(3), train_set.len(), f) else {
                panic!("accepted a checkpoint that should fail with '{needle}'");
            };
            assert!(matches!(e, TrainError::Checkpoint(_)), "{e}");
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        };
        assert!(resume(&b, spec(), &config(3), train_set.len(), &file).is_ok());

        let mut missing = file.clone();
        missing
            .tensors
            .retain(|(n, _)| n != "optimizer.features.0.weight.m");
        refused(&missing, "optimizer.features.0.weight.m");

        let mut extra = file.clone();
        let spare = extra.tensors[0].1.clone();
        extra
            .tensors
            .push(("optimizer.features.99.weight.m".into(), spare));
        refused(&extra, "features.99.weight");

        let mut reshaped = file.clone();
        for (n, t) in &mut reshaped.tensors {
            if n == "optimizer.classifier.6.bias.v" {
                t.shape = vec![t.data.len(), 1];
            }
        }
        refused(&reshaped, "classifier.6.bias");

        let mut steps = file.clone();
        steps.metadata.insert("train.steps".into(), "5".into());
        refused(&steps, "5 steps");
        // Another batch size takes another number of steps per epoch.
        let mut other = config(3);
        other.batch_size = 16;
        assert!(resume(&b, spec(), &other, train_set.len(), &file).is_err());

        let mut huge = file.clone();
        huge.metadata
            .insert("train.epoch".into(), u64::MAX.to_string());
        refused(&huge, "epochs");
    });
}

#[test]
fn settings_that_cannot_train_are_refused_by_field() {
    let bad = |f: &dyn Fn(&mut TrainConfig), field: &str| {
        let mut c = config(2);
        f(&mut c);
        match c.validate() {
            Err(TrainError::Setting { setting, .. }) => assert_eq!(setting, field),
            other => panic!("{field}: {other:?}"),
        }
    };
    assert!(config(2).validate().is_ok());
    bad(&|c| c.lr = -0.1, "lr");
    bad(&|c| c.lr = f32::NAN, "lr");
    bad(&|c| c.keep_prob = 0.0, "keep_prob");
    bad(
        &|c| {
            c.schedule = Schedule::Step {
                every: 2,
                gamma: -0.5,
            }
        },
        "gamma",
    );
    bad(
        &|c| {
            c.optimizer = OptimizerKind::Sgd {
                momentum: 1.5,
                weight_decay: 0.0,
            }
        },
        "momentum",
    );
    bad(
        &|c| {
            c.optimizer = OptimizerKind::Sgd {
                momentum: 0.9,
                weight_decay: -1.0,
            }
        },
        "weight_decay",
    );
    bad(&|c| c.batch_size = 0, "batch_size");
}

#[test]
fn splits_that_leave_a_side_empty_are_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
    let all = data::load_digits(&dir).unwrap();
    for fraction in [0.0001, 0.9999, 0.0, 1.0] {
        let e = all.split(fraction, 1).unwrap_err().to_string();
        assert!(
            e.contains("no training or no test images"),
            "{fraction}: {e}"
        );
    }
    assert!(all.split(0.5, 1).is_ok());
}
