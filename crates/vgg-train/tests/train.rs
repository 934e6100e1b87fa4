//! A small VGG learns the digits, and a resumed run ends exactly where an uninterrupted one does.

use std::path::Path;

use vgg_model::{ModelSpec, SpecOptions, Vgg, VggConfig};
use vgg_ndarray::CpuBackend;
use vgg_nn::optim::{Optimizer, OptimizerKind, Schedule};
use vgg_nn::InitScheme;
use vgg_tensor::Backend;
use vgg_train::{checkpoint, data, resume, train, TrainConfig, TrainState};

fn digits() -> (vgg_train::Dataset, vgg_train::Dataset) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
    data::load_digits(&dir).unwrap().split(0.2, 7)
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
        let mut resumed = resume(&b, spec(), ADAM, &file).unwrap();
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
