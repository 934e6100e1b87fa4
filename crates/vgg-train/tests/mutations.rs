//! Mutation tests of vgg-train's loaders (checkpoints for --resume, CIFAR-10 batches): thousands
//! of damaged files each, never a panic, bounded memory (vgg-nn's tests/support/mutate.rs).

#[path = "../../vgg-nn/tests/support/mutate.rs"]
mod mutate;

use std::path::Path;

use vgg_model::{ModelSpec, SpecOptions, Vgg, VggConfig};
use vgg_ndarray::CpuBackend;
use vgg_nn::io;
use vgg_nn::optim::{Optimizer, OptimizerKind, Schedule};
use vgg_nn::InitScheme;
use vgg_tensor::prelude::*;
use vgg_train::{checkpoint, data, resume, train, TrainConfig, TrainState};

#[global_allocator]
static ALLOC: mutate::Counting = mutate::Counting;

fn spec() -> ModelSpec {
    ModelSpec::new(
        VggConfig::Vgg11,
        SpecOptions {
            height: 32,
            width: 32,
            in_channels: 1,
            classes: 10,
            width_mult: 0.0625,
            hidden: 8,
            adaptive_pool: None,
        },
    )
    .unwrap()
}

#[test]
fn damaged_checkpoints_do_not_resume() {
    let b = CpuBackend::new(2).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
    let all = data::load_digits(&dir).unwrap();
    let train_set = all.subset(&(0..40).collect::<Vec<_>>());
    let test_set = all.subset(&(40..50).collect::<Vec<_>>());
    let config = TrainConfig {
        epochs: 1,
        batch_size: 16,
        lr: 1e-3,
        schedule: Schedule::Constant,
        optimizer: OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
        },
        keep_prob: 1.0,
        seed: 1,
    };
    let valid = b.execute(|| {
        let mut state = TrainState {
            model: Vgg::init(&b, spec(), &InitScheme::REFERENCE, 1).unwrap(),
            optimizer: Optimizer::new(config.optimizer),
            epochs_done: 0,
        };
        train(&b, &mut state, &train_set, &test_set, &config, &mut ()).unwrap();
        let file = checkpoint(&b, &state).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ckpt.safetensors");
        io::save_safetensors(&path, &file).unwrap();
        std::fs::read(&path).unwrap()
    });
    let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let path = Path::new("ckpt.safetensors");
    let load = |bytes: &[u8]| -> Result<(), String> {
        let file = io::parse_safetensors(bytes, path).map_err(|e| e.to_string())?;
        b.execute(|| resume(&b, spec(), &config, train_set.len(), &file))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    assert!(load(&valid).is_ok());
    let cases = mutate::cases(&valid, header, 1000, 21);
    let refused = mutate::check("checkpoint", &cases, true, |len| 8 * len + (4 << 20), load);
    assert!(refused > cases.len() / 2, "{refused} of {}", cases.len());
}

#[test]
fn damaged_cifar_batches_are_errors() {
    let mut valid = Vec::new();
    for i in 0..4u8 {
        valid.push(i % 10);
        valid.extend((0..3072).map(|p| (p as u8).wrapping_mul(i + 1)));
    }
    let path = Path::new("data_batch_1.bin");
    assert_eq!(data::parse_cifar_batch(&valid, path).unwrap().len(), 4);
    let cases = mutate::cases(&valid, 16, 1500, 22);
    let refused = mutate::check(
        "cifar",
        &cases,
        true,
        |len| 16 * len + (1 << 20),
        |b| data::parse_cifar_batch(b, path),
    );
    // Most flips land in pixels, which any byte value is; labels and lengths are checked.
    assert!(refused > cases.len() / 3, "{refused} of {}", cases.len());
}
