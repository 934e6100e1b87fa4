//! Any bytes as a weight file for the network its metadata or tensors describe (`vgg forward
//! --weights`, torchvision's files included): BatchNorm's running statistics, integer tensors and
//! the adaptive pool reached; an error or a network that runs, never a crash.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vgg_autodiff::Tape;
use vgg_model::model::{options_from_metadata, options_from_tensors};
use vgg_model::{ModelSpec, Vgg};
use vgg_ndarray::CpuBackend;
use vgg_nn::RunOptions;
use vgg_tensor::prelude::*;
use vgg_tensor::Shape;

fn backend() -> &'static CpuBackend {
    static B: OnceLock<CpuBackend> = OnceLock::new();
    B.get_or_init(|| CpuBackend::new(1).expect("one thread"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = vgg_nn::io::parse_safetensors(data, std::path::Path::new("fuzz.safetensors"))
    else {
        return;
    };
    let (model, options) = options_from_metadata(&file.metadata);
    let (shown_model, shown) = options_from_tensors(&file.tensors);
    let Some(model) = model.or(shown_model) else {
        return;
    };
    let Ok(spec) = ModelSpec::new(model, options.or(shown).resolve()) else {
        return;
    };
    // Small networks only, as the seeds are: the work a file may ask for is bounded elsewhere
    // (the memory check before loading).
    if spec.params() > 1 << 20 || spec.macs() > 1 << 26 || spec.input().elements() > 1 << 16 {
        return;
    }
    let b = backend();
    let Ok(vgg) = Vgg::from_tensors(b, spec, &file) else {
        return;
    };
    let i = vgg.spec().input();
    let x = b
        .random_normal(&Shape::from([2, i.channels, i.height, i.width]), 0.0, 1.0, 1)
        .expect("a small input");
    for training in [false, true] {
        let tape = Tape::new(b.clone());
        let run = RunOptions {
            training,
            ..RunOptions::EVAL
        };
        let logits = vgg
            .forward(&tape, &tape.constant(x.clone()), run)
            .expect("a loaded network runs");
        let loss = tape.l2_loss(&logits).expect("a loss");
        tape.backward(&loss).expect("gradients");
    }
});
