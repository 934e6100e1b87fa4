//! What the harness's tests share.

use vgg_bench::BenchConfig;
use vgg_model::VggConfig;

/// A VGG-11 small enough for the plain-loops backend: 32x32 inputs, 1/16 of the channels, batch 2,
/// one burn-in and three timed steps.
pub fn tiny() -> BenchConfig {
    BenchConfig {
        model: VggConfig::Vgg11,
        batch: 2,
        num_batches: 3,
        burn_in: 1,
        height: 32,
        width: 32,
        classes: 4,
        width_mult: 0.0625,
        hidden: 8,
        seed: 1,
        per_layer: false,
        adaptive_pool: None,
    }
}
