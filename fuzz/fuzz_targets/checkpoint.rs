//! Any bytes as a training checkpoint given to `vgg train --resume`: parsing, reading its
//! metadata (data set, split, seed) and resuming with the optimiser it names end in an error or a
//! training state, never a crash.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vgg_model::{ModelSpec, SpecOptions, VggConfig};
use vgg_ndarray::CpuBackend;
use vgg_nn::optim::{OptimizerKind, Schedule};
use vgg_train::TrainConfig;

fn backend() -> &'static CpuBackend {
    static B: OnceLock<CpuBackend> = OnceLock::new();
    B.get_or_init(|| CpuBackend::new(1).expect("one thread"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = vgg_nn::io::parse_safetensors(data, std::path::Path::new("fuzz.safetensors"))
    else {
        return;
    };
    // The README's digits network at its smallest width: what a seed checkpoint holds.
    let spec = ModelSpec::new(
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
    .expect("a valid spec");
    let config = TrainConfig {
        epochs: 2,
        batch_size: 16,
        lr: 1e-3,
        schedule: Schedule::Constant,
        // The optimiser the file names, so that both kinds' state (Adam's moments too) is reached.
        optimizer: match file.metadata.get("train.optimizer").map(String::as_str) {
            Some("adam") => OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            _ => OptimizerKind::Sgd {
                momentum: 0.9,
                weight_decay: 0.0,
            },
        },
        keep_prob: 1.0,
        seed: 1,
    };
    // The training set's size that makes the recorded steps consistent, so that fuzzing reaches
    // past that check into the weights and optimiser state (seeds: `vgg train` on the digits).
    let recorded = |key: &str| file.metadata.get(key).and_then(|v| v.parse::<usize>().ok());
    let images = match (recorded("train.epoch"), recorded("train.steps")) {
        (Some(e), Some(s)) if e > 0 && s % e == 0 => (s / e).saturating_mul(config.batch_size),
        _ => 40,
    };
    let _ = vgg_train::meta::Provenance::read(&file.metadata);
    let _ = vgg_train::resume(backend(), spec, &config, images, &file);
});
