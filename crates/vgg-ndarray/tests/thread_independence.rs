//! Results do not depend on the thread count: every op a training step runs gives the same bits
//! on one thread and on several, so a run's weights and figures are the same whatever `--threads`.

use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;
use vgg_tensor::{AdamParams, Conv2dParams, Pool2dParams};

fn bits(b: &CpuBackend, t: &<CpuBackend as Device>::Tensor) -> Vec<u32> {
    b.download(t).unwrap().iter().map(|v| v.to_bits()).collect()
}

/// `f` on each backend, downloaded as bits.
fn same(name: &str, backends: &[CpuBackend], f: impl Fn(&CpuBackend) -> Vec<u32>) -> bool {
    let first = f(&backends[0]);
    let mut ok = true;
    for b in &backends[1..] {
        let other = f(b);
        if other != first {
            let differing = first.iter().zip(&other).filter(|(a, b)| a != b).count();
            eprintln!(
                "{name}: {differing} of {} values differ on {}",
                first.len(),
                b.name()
            );
            ok = false;
        }
    }
    ok
}

#[test]
fn training_ops_give_the_same_bits_on_any_thread_count() {
    let backends: Vec<CpuBackend> = [1, 2, 3, 4]
        .into_iter()
        .map(|t| CpuBackend::new(t).unwrap())
        .collect();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let mut ok = true;
    // The digits network's convolutions (VGG-11 at width 1/4, 32x32, batch 32), larger ones, and
    // one with so few Winograd tiles (49) that the threads split its output channels.
    for (n, c, k, hw) in [
        (32, 1, 16, 32),
        (32, 16, 32, 16),
        (32, 32, 64, 8),
        (32, 64, 64, 8),
        (32, 64, 128, 4),
        (32, 128, 128, 2),
        (8, 64, 128, 56),
        (3, 128, 256, 28),
        (1, 128, 256, 28),
    ] {
        let x = |b: &CpuBackend| b.random_normal(&Shape::from([n, c, hw, hw]), 0.0, 1.0, 1);
        let w = |b: &CpuBackend| b.random_normal(&Shape::from([k, c, 3, 3]), 0.0, 0.1, 2);
        let dy = |b: &CpuBackend| b.random_normal(&Shape::from([n, k, hw, hw]), 0.0, 1.0, 3);
        let bias = |b: &CpuBackend| b.random_normal(&Shape::from([k]), 0.0, 0.1, 4);
        let at = format!("{n}x{c}x{hw}x{hw} -> {k}");
        ok &= same(&format!("conv2d_bias_act {at}"), &backends, |b| {
            let y = b
                .conv2d_bias_act(&x(b).unwrap(), &w(b).unwrap(), &bias(b).unwrap(), p, true)
                .unwrap();
            bits(b, &y)
        });
        ok &= same(&format!("conv2d_backward_input {at}"), &backends, |b| {
            let s = Shape::from([n, c, hw, hw]);
            let dx = b
                .conv2d_backward_input(&dy(b).unwrap(), &w(b).unwrap(), &s, p)
                .unwrap();
            bits(b, &dx)
        });
        ok &= same(&format!("conv2d_backward_weight {at}"), &backends, |b| {
            let s = Shape::from([k, c, 3, 3]);
            let dw = b
                .conv2d_backward_weight(&x(b).unwrap(), &dy(b).unwrap(), &s, p)
                .unwrap();
            bits(b, &dw)
        });
        ok &= same(&format!("bias_act_backward {at}"), &backends, |b| {
            let y = b.relu(&dy(b).unwrap()).unwrap();
            let (dz, db) = b.bias_act_backward(&dy(b).unwrap(), Some(&y)).unwrap();
            [bits(b, &dz), bits(b, &db)].concat()
        });
    }
    // The classifier's products, forward and both gradients, and the pieces around them.
    for (n, f_in, f_out) in [(32, 128, 128), (32, 128, 10), (8, 25088, 512)] {
        let x = |b: &CpuBackend| b.random_normal(&Shape::from([n, f_in]), 0.0, 1.0, 5);
        let w = |b: &CpuBackend| b.random_normal(&Shape::from([f_out, f_in]), 0.0, 0.1, 6);
        let dy = |b: &CpuBackend| b.random_normal(&Shape::from([n, f_out]), 0.0, 1.0, 7);
        let at = format!("{n}x{f_in} -> {f_out}");
        ok &= same(&format!("matmul {at}"), &backends, |b| {
            bits(
                b,
                &b.matmul(&x(b).unwrap(), &w(b).unwrap(), false, true)
                    .unwrap(),
            )
        });
        ok &= same(&format!("matmul dW {at}"), &backends, |b| {
            bits(
                b,
                &b.matmul(&dy(b).unwrap(), &x(b).unwrap(), true, false)
                    .unwrap(),
            )
        });
        ok &= same(&format!("matmul dx {at}"), &backends, |b| {
            bits(
                b,
                &b.matmul(&dy(b).unwrap(), &w(b).unwrap(), false, false)
                    .unwrap(),
            )
        });
        ok &= same(&format!("sum_rows {at}"), &backends, |b| {
            bits(b, &b.sum_rows(&dy(b).unwrap()).unwrap())
        });
    }
    let logits = |b: &CpuBackend| b.random_normal(&Shape::from([32, 10]), 0.0, 3.0, 8);
    let labels: Vec<usize> = (0..32).map(|i| (i * 7) % 10).collect();
    ok &= same("cross_entropy", &backends, |b| {
        let (loss, probs) = b.cross_entropy(&logits(b).unwrap(), &labels).unwrap();
        [bits(b, &loss), bits(b, &probs)].concat()
    });
    let big = |b: &CpuBackend| b.random_normal(&Shape::from([3, 64, 112, 112]), 0.0, 1.0, 9);
    ok &= same("max_pool2d", &backends, |b| {
        let p = Pool2dParams {
            kernel: 2,
            stride: 2,
        };
        bits(b, &b.max_pool2d(&big(b).unwrap(), p).unwrap().0)
    });
    ok &= same("channel_bias_grad", &backends, |b| {
        bits(b, &b.channel_bias_grad(&big(b).unwrap()).unwrap())
    });
    ok &= same("sum_all and l2_loss", &backends, |b| {
        let x = big(b).unwrap();
        [
            bits(b, &b.sum_all(&x).unwrap()),
            bits(b, &b.l2_loss(&x).unwrap()),
        ]
        .concat()
    });
    ok &= same("adam_step", &backends, |b| {
        let shape = Shape::from([300_000]);
        let mut param = b.random_normal(&shape, 0.0, 1.0, 10).unwrap();
        let mut m = b.zeros(&shape).unwrap();
        let mut v = b.zeros(&shape).unwrap();
        let grad = b.random_normal(&shape, 0.0, 1.0, 11).unwrap();
        let hp = AdamParams::default();
        b.adam_step(&mut param, &mut m, &mut v, &grad, hp).unwrap();
        bits(b, &param)
    });
    assert!(ok, "some ops depend on the thread count (listed above)");
}
