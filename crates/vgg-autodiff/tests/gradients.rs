//! Every op's gradient, and compositions, against finite differences (`check_gradients`).
//! Tolerance: the checker's default, |analytic - numeric| <= 1e-3 + 1e-2 |numeric|, with the
//! function evaluated in f32 and differenced in f64 (fourth-order stencil, eps 1e-2).

use vgg_autodiff::{check_gradients, AutodiffError, GradCheck, Tape, Var};
use vgg_ndarray::{CpuBackend, CpuTensor};
use vgg_tensor::prelude::*;
use vgg_tensor::{Backend, Conv2dParams, Pool2dParams, Shape};

type B = CpuBackend;

fn cpu() -> B {
    CpuBackend::new(2).unwrap()
}

fn normal(b: &B, dims: &[usize], seed: u64) -> CpuTensor {
    b.random_normal(&Shape::from(dims), 0.0, 1.0, seed).unwrap()
}

/// Values spaced at least 0.05 apart and away from 0, so no max ties or ReLU kinks within eps.
fn spaced(b: &B, dims: &[usize], seed: u64) -> CpuTensor {
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n)
        .map(|i| (i as f32 + 1.0) * 0.05 * if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    // A seeded shuffle.
    for i in (1..n).rev() {
        let j = (vgg_tensor::random::bits(seed, i as u64) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    b.upload(&Shape::from(dims), &v).unwrap()
}

fn check(
    b: &B,
    inputs: &[CpuTensor],
    f: impl Fn(&Tape<B>, &[Var<B>]) -> vgg_autodiff::Result<Var<B>>,
) {
    let report =
        check_gradients(b, inputs, f, &GradCheck::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.coords_checked > 0);
}

#[test]
fn conv2d_every_geometry() {
    let b = cpu();
    for (stride, padding) in [(1, 0), (1, 1), (2, 0), (2, 1)] {
        let p = Conv2dParams { stride, padding };
        let inputs = [normal(&b, &[2, 3, 7, 6], 1), normal(&b, &[4, 3, 3, 3], 2)];
        check(&b, &inputs, |t, v| t.conv2d(&v[0], &v[1], p));
    }
}

#[test]
fn biases_and_the_fused_conv() {
    let b = cpu();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    check(
        &b,
        &[normal(&b, &[2, 3, 4, 5], 1), normal(&b, &[3], 2)],
        |t, v| t.add_channel_bias(&v[0], &v[1]),
    );
    check(
        &b,
        &[normal(&b, &[4, 5], 1), normal(&b, &[5], 2)],
        |t, v| t.add_row_bias(&v[0], &v[1]),
    );
    for relu in [false, true] {
        let inputs = [
            spaced(&b, &[2, 2, 5, 4], 1),
            spaced(&b, &[3, 2, 3, 3], 2),
            spaced(&b, &[3], 3),
        ];
        check(&b, &inputs, |t, v| {
            t.conv2d_bias_act(&v[0], &v[1], &v[2], p, relu)
        });
    }
}

#[test]
fn pooling_activations_and_reshapes() {
    let b = cpu();
    for (k, s) in [(2, 2), (3, 2), (2, 1)] {
        check(&b, &[spaced(&b, &[2, 2, 7, 5], 4)], |t, v| {
            t.max_pool2d(
                &v[0],
                Pool2dParams {
                    kernel: k,
                    stride: s,
                },
            )
        });
    }
    check(&b, &[spaced(&b, &[3, 7], 5)], |t, v| t.relu(&v[0]));
    check(&b, &[normal(&b, &[200], 6)], |t, v| {
        t.dropout(&v[0], 0.6, 42)
    });
    check(&b, &[normal(&b, &[2, 3, 2, 2], 7)], |t, v| t.flatten(&v[0]));
    check(&b, &[normal(&b, &[6, 2], 8)], |t, v| {
        t.reshape(&v[0], &Shape::from([3, 4]))
    });
    check(&b, &[normal(&b, &[3, 6], 9)], |t, v| t.softmax(&v[0]));
}

#[test]
fn matmul_every_transpose_and_linear() {
    let b = cpu();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = if ta {
            normal(&b, &[4, 3], 1)
        } else {
            normal(&b, &[3, 4], 1)
        };
        let c = if tb {
            normal(&b, &[5, 4], 2)
        } else {
            normal(&b, &[4, 5], 2)
        };
        check(&b, &[a, c], |t, v| t.matmul(&v[0], &v[1], ta, tb));
    }
    let inputs = [
        normal(&b, &[3, 4], 1),
        normal(&b, &[5, 4], 2),
        normal(&b, &[5], 3),
    ];
    check(&b, &inputs, |t, v| t.linear(&v[0], &v[1], &v[2]));
}

#[test]
fn losses_and_elementwise() {
    let b = cpu();
    check(&b, &[normal(&b, &[3, 4], 1)], |t, v| t.l2_loss(&v[0]));
    check(&b, &[normal(&b, &[4, 5], 2)], |t, v| {
        t.cross_entropy(&v[0], &[0, 4, 2, 2])
    });
    let two = || [normal(&b, &[3, 4], 3), normal(&b, &[3, 4], 4)];
    check(&b, &two(), |t, v| t.add(&v[0], &v[1]));
    check(&b, &two(), |t, v| t.sub(&v[0], &v[1]));
    check(&b, &two(), |t, v| t.mul(&v[0], &v[1]));
    check(&b, &[normal(&b, &[7], 5)], |t, v| t.scale(&v[0], -2.5));
    check(&b, &[normal(&b, &[7], 6)], |t, v| t.sum(&v[0]));
    check(&b, &[normal(&b, &[7], 7)], |t, v| t.mean(&v[0]));
}

#[test]
fn a_small_convnet_end_to_end() {
    // conv-relu, conv-relu, pool, flatten, linear, cross-entropy: every parameter at once.
    let b = cpu();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let inputs = [
        spaced(&b, &[2, 2, 6, 6], 1),
        b.scale(&normal(&b, &[3, 2, 3, 3], 2), 0.5).unwrap(),
        normal(&b, &[3], 3),
        b.scale(&normal(&b, &[4, 3, 3, 3], 4), 0.5).unwrap(),
        normal(&b, &[4], 5),
        b.scale(&normal(&b, &[5, 36], 6), 0.3).unwrap(),
        normal(&b, &[5], 7),
    ];
    let cfg = GradCheck {
        eps: 1e-3,
        atol: 2e-3,
        ..GradCheck::default()
    };
    let net = |t: &Tape<B>, v: &[Var<B>]| {
        let h = t.conv2d_bias_act(&v[0], &v[1], &v[2], p, true)?;
        let h = t.relu(&t.add_channel_bias(&t.conv2d(&h, &v[3], p)?, &v[4])?)?;
        let h = t.max_pool2d(
            &h,
            Pool2dParams {
                kernel: 2,
                stride: 2,
            },
        )?;
        let logits = t.linear(&t.flatten(&h)?, &v[5], &v[6])?;
        t.cross_entropy(&logits, &[1, 3])
    };
    check_gradients(&b, &inputs, net, &cfg).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_value_used_twice_gets_both_gradients() {
    let b = cpu();
    let tape = Tape::new(b.clone());
    let x = tape.param("x", b.upload(&Shape::from([3]), &[1.0, -2.0, 3.0]).unwrap());
    // d/dx sum(x*x + x) = 2x + 1.
    let y = tape.add(&tape.mul(&x, &x).unwrap(), &x).unwrap();
    let loss = tape.sum(&y).unwrap();
    let g = tape.backward(&loss).unwrap().get(&x).unwrap();
    assert_eq!(b.download(&g).unwrap(), [3.0, -3.0, 7.0]);
}

#[test]
fn the_checker_catches_a_wrong_gradient() {
    // relu at exactly a kink-free point, but claim the op is `scale(2)` while computing `scale(3)`
    // through a detour: the checker must see the mismatch.
    let b = cpu();
    let x = normal(&b, &[5], 1);
    let wrong = |t: &Tape<B>, v: &[Var<B>]| {
        // Forward 3x, but the constant part carries no gradient: analytic 2, numeric 3.
        let tracked = t.scale(&v[0], 2.0)?;
        let detached = t.constant(t.backend().scale(v[0].value(), 1.0)?);
        t.add(&tracked, &detached)
    };
    let err = check_gradients(&b, &[x], wrong, &GradCheck::default()).unwrap_err();
    assert!(matches!(err, AutodiffError::GradientMismatch(_)), "{err}");
}

/// Convolution, ReLU and max-pool recorded as one node give the gradients of the three recorded
/// apart, to the bit, with ties in the pool windows, negative maxima (ReLU closed) and a NaN,
/// while keeping less: the pooled output instead of the convolution's.
#[test]
fn conv_relu_pool_as_one_node_matches_the_three_apart() {
    let b = cpu();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let pool = Pool2dParams {
        kernel: 2,
        stride: 2,
    };
    // Rounded values: many equal maxima; some windows all negative.
    let rounded = |t: CpuTensor| {
        let v: Vec<f32> = b
            .download(&t)
            .unwrap()
            .iter()
            .map(|x| (x * 2.0).round() / 2.0)
            .collect();
        b.upload(t.shape(), &v).unwrap()
    };
    let mut xv = b.download(&normal(&b, &[2, 3, 8, 8], 1)).unwrap();
    xv[37] = f32::NAN;
    let x = b.upload(&Shape::from([2, 3, 8, 8]), &xv).unwrap();
    let w = rounded(normal(&b, &[4, 3, 3, 3], 2));
    let bias = b
        .upload(&Shape::from([4]), &[-0.5, 0.0, 0.5, -2.0])
        .unwrap();
    let upstream = normal(&b, &[2, 4, 4, 4], 3);
    let run = |fused: bool| {
        let tape = Tape::new(b.clone());
        let (xs, ws, bs) = (
            tape.param("x", x.clone()),
            tape.param("w", w.clone()),
            tape.param("b", bias.clone()),
        );
        let y = if fused {
            tape.conv2d_bias_relu_deferred(&xs, &ws, &bs, p)
                .unwrap()
                .max_pool2d(&tape, pool)
                .unwrap()
        } else {
            let c = tape.conv2d_bias_act(&xs, &ws, &bs, p, true).unwrap();
            tape.max_pool2d(&c, pool).unwrap()
        };
        let saved = tape.saved_bytes();
        let weighted = tape.mul(&y, &tape.constant(upstream.clone())).unwrap();
        let loss = tape.sum(&weighted).unwrap();
        let g = tape.backward(&loss).unwrap();
        let grads: Vec<Vec<u32>> = [&xs, &ws, &bs]
            .iter()
            .map(|v| {
                let t = g.get(v).unwrap();
                b.download(&t)
                    .unwrap()
                    .iter()
                    .map(|f| f.to_bits())
                    .collect()
            })
            .collect();
        (b.download(y.value()).unwrap(), grads, saved)
    };
    let (y_apart, apart, saved_apart) = run(false);
    let (y_fused, fused, saved_fused) = run(true);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&y_fused), bits(&y_apart));
    for (name, (f, a)) in ["x", "w", "bias"].iter().zip(fused.iter().zip(&apart)) {
        assert_eq!(f, a, "gradient of {name}");
    }
    // The NaN reached the output and the gradients as it does apart.
    assert!(y_fused.iter().any(|v| v.is_nan()));
    // Apart: x, w, the convolution's output and the pool's indices (a u32 per output); as one:
    // x, w, the pooled output and the indices.
    let (conv_out, pooled) = (2 * 4 * 8 * 8 * 4, 2 * 4 * 4 * 4 * 4);
    assert_eq!(saved_apart - saved_fused, conv_out - pooled);
}
