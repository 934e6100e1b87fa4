//! ReLU convolutions that recompute their output in backward (`Tape::set_recompute`) give the
//! gradients of those that keep it, to the bit, while the tape keeps less and the output is freed
//! once forward is done with it.

use vgg_autodiff::{Recompute, Tape, Var};
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;
use vgg_tensor::reference::ReferenceBackend;
use vgg_tensor::{Conv2dParams, Pool2dParams, Shape};

const SAME: Conv2dParams = Conv2dParams {
    stride: 1,
    padding: 1,
};

/// Every small first layer, whatever its output's size.
const ALWAYS: Recompute = Recompute {
    max_inner: 27,
    min_output_bytes: 0,
};

struct Run {
    output: Vec<u32>,
    grads: Vec<Vec<u32>>,
    saved_bytes: usize,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// conv1 (3 -> 4, ReLU) on the images, then conv2 (4 -> 4, ReLU) twice over: once plain, once
/// fused with a max-pool; both read conv1's output. `x_tracked`: whether the images get a gradient
/// (then conv1's input gradient runs too).
fn run<B: Backend>(b: &B, policy: Recompute, x_tracked: bool) -> Run {
    let upload = |dims: &[usize], seed: u64| {
        let shape = Shape::from(dims);
        let mut v = vec![0.0; shape.elements()];
        vgg_tensor::random::fill_normal(&mut v, seed, 0, 0.0, 1.0);
        b.upload(&shape, &v).unwrap()
    };
    let mut images = b.download(&upload(&[2, 3, 8, 8], 1)).unwrap();
    images[21] = f32::NAN;
    let images = b.upload(&Shape::from([2, 3, 8, 8]), &images).unwrap();
    let tape = Tape::new(b.clone());
    tape.set_recompute(policy);
    let x = if x_tracked {
        tape.param("x", images)
    } else {
        tape.constant(images)
    };
    let (w1, b1) = (
        tape.param("w1", upload(&[4, 3, 3, 3], 2)),
        tape.param("b1", upload(&[4], 3)),
    );
    let (w2, b2) = (
        tape.param("w2", upload(&[4, 4, 3, 3], 4)),
        tape.param("b2", upload(&[4], 5)),
    );
    let y1 = tape.conv2d_bias_act(&x, &w1, &b1, SAME, true).unwrap();
    let plain = tape.conv2d_bias_act(&y1, &w2, &b2, SAME, true).unwrap();
    let pooled = tape
        .conv2d_bias_relu_deferred(&y1, &w2, &b2, SAME)
        .unwrap()
        .max_pool2d(
            &tape,
            Pool2dParams {
                kernel: 2,
                stride: 2,
            },
        )
        .unwrap();
    let output = bits(&b.download(y1.value()).unwrap());
    drop(y1);
    let saved_bytes = tape.saved_bytes();
    let loss = tape
        .add(
            &tape.l2_loss(&plain).unwrap(),
            &tape.sum(&tape.mul(&pooled, &pooled).unwrap()).unwrap(),
        )
        .unwrap();
    let params: Vec<&Var<B>> = if x_tracked {
        vec![&x, &w1, &b1, &w2, &b2]
    } else {
        vec![&w1, &b1, &w2, &b2]
    };
    let g = tape.backward(&loss).unwrap();
    let grads = params
        .iter()
        .map(|v| bits(&b.download(&g.get(v).unwrap()).unwrap()))
        .collect();
    Run {
        output,
        grads,
        saved_bytes,
    }
}

fn recomputing_matches_keeping<B: Backend>(b: &B) {
    for x_tracked in [false, true] {
        let kept = run(b, Recompute::NEVER, x_tracked);
        let again = run(b, ALWAYS, x_tracked);
        assert_eq!(again.output, kept.output);
        for (i, (a, k)) in again.grads.iter().zip(&kept.grads).enumerate() {
            assert_eq!(a, k, "gradient {i} (images tracked: {x_tracked})");
        }
        // The NaN in the images reached the gradients alike.
        assert!(kept
            .grads
            .iter()
            .flatten()
            .any(|&g| f32::from_bits(g).is_nan()));
        // Kept: conv1's output by conv1 (its ReLU's mask) and by the two convolutions reading it;
        // recomputing, conv1 keeps its bias instead.
        let (y1_bytes, b1_bytes) = (2 * 4 * 8 * 8 * 4, 4 * 4);
        assert_eq!(
            kept.saved_bytes - again.saved_bytes,
            3 * y1_bytes - b1_bytes
        );
    }
}

#[test]
fn recomputed_outputs_give_the_kept_outputs_gradients_on_the_cpu() {
    // The CPU backend writes the ReLU's gradient into the recomputed output's buffer.
    recomputing_matches_keeping(&CpuBackend::new(2).unwrap());
}

#[test]
fn recomputed_outputs_give_the_kept_outputs_gradients_on_the_reference_backend() {
    // The default `bias_relu_backward_consuming`, built from primitives.
    recomputing_matches_keeping(&ReferenceBackend);
}

#[test]
fn a_recomputed_output_is_freed_when_forward_is_done_with_it() {
    let b = CpuBackend::new(1).unwrap();
    let live_after_forward = |policy: Recompute| {
        let tape = Tape::new(b.clone());
        tape.set_recompute(policy);
        // 64 KiB and more come from the arena and are counted alike either way.
        let x = tape.constant(b.full(&Shape::from([1, 3, 64, 64]), 0.5).unwrap());
        let w1 = tape.param("w1", b.full(&Shape::from([8, 3, 3, 3]), 0.1).unwrap());
        let b1 = tape.param("b1", b.zeros(&Shape::from([8])).unwrap());
        let w2 = tape.param("w2", b.full(&Shape::from([8, 8, 3, 3]), 0.1).unwrap());
        let y1 = tape.conv2d_bias_act(&x, &w1, &b1, SAME, true).unwrap();
        let y2 = tape.conv2d(&y1, &w2, SAME).unwrap();
        drop(y1);
        let live = b.memory_stats().live_bytes;
        let loss = tape.l2_loss(&y2).unwrap();
        drop(y2);
        tape.backward(&loss).unwrap();
        live
    };
    let kept = live_after_forward(Recompute::NEVER);
    let again = live_after_forward(ALWAYS);
    assert_eq!(
        kept - again,
        8 * 64 * 64 * 4,
        "conv1's output no longer alive"
    );
}

#[test]
fn the_default_policy_recomputes_only_large_outputs_of_small_first_layers() {
    let policy = Recompute::default();
    let rgb = Shape::from([64, 3, 3, 3]);
    assert!(
        policy.applies(&rgb, 411 << 20),
        "VGG-16's conv1_1 at batch 32"
    );
    assert!(!policy.applies(&rgb, 12 << 20), "the same at batch 1");
    assert!(
        !policy.applies(&Shape::from([64, 64, 3, 3]), 411 << 20),
        "conv1_2: costly"
    );
    assert!(!Recompute::NEVER.applies(&rgb, usize::MAX));
}
