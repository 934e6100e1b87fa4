//! Every op and backward kernel of the CPU backend against naive f64 loops (`naive/`), and the
//! gradient kernels against finite differences.

mod naive;

use naive::Dims4;
use proptest::prelude::*;
use vgg_ndarray::{CpuBackend, CpuTensor};
use vgg_tensor::prelude::*;
use vgg_tensor::{random, Backend, Conv2dParams, DeviceTensor, Pool2dParams, Shape, TensorError};

fn cpu() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

/// The backend in the bf16 math mode, on the fastest unit this CPU has.
fn cpu_bf16() -> CpuBackend {
    CpuBackend::with_config(vgg_ndarray::CpuConfig {
        precision: vgg_ndarray::Precision::Bf16,
        ..vgg_ndarray::CpuConfig::detect(2)
    })
    .unwrap()
}

fn data(n: usize, seed: u64) -> Vec<f64> {
    let mut v = vec![0.0f32; n];
    random::fill_normal(&mut v, seed, 0, 0.0, 1.0);
    v.into_iter().map(f64::from).collect()
}

fn tensor(b: &CpuBackend, dims: &[usize], v: &[f64]) -> CpuTensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    b.upload(&Shape::from(dims), &f).unwrap()
}

fn host(b: &CpuBackend, t: &CpuTensor) -> Vec<f64> {
    b.download(t).unwrap().into_iter().map(f64::from).collect()
}

/// f32 results against f64 references: |got - want| <= tol * max(1, |want|).
#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn dims4(d: Dims4) -> [usize; 4] {
    [d.0, d.1, d.2, d.3]
}

/// The combinations the issue asks for: odd sizes, stride 1 and 2, padding 0 and 1, batch 1 and 3, kernel 1 and 3.
fn conv_cases() -> Vec<(Dims4, Dims4, usize, usize)> {
    let mut cases = Vec::new();
    for batch in [1, 3] {
        for k in [1, 3] {
            for s in [1, 2] {
                for p in [0, 1] {
                    cases.push(((batch, 3, 7, 5), (4, 3, k, k), s, p));
                }
            }
        }
    }
    // 20 input channels: the input gradient's flipped kernel in a block of 16 and a part block.
    cases.push(((2, 20, 6, 7), (5, 20, 3, 3), 1, 1));
    cases
}

#[test]
fn conv2d_and_its_gradients_match_naive_loops() {
    let b = cpu();
    for (seed, (xd, wd, s, p)) in conv_cases().into_iter().enumerate() {
        let params = Conv2dParams {
            stride: s,
            padding: p,
        };
        let x = data(xd.0 * xd.1 * xd.2 * xd.3, seed as u64);
        let w = data(wd.0 * wd.1 * wd.2 * wd.3, 100 + seed as u64);
        let (want, yd) = naive::conv(&x, xd, &w, wd, s, p);
        let (xt, wt) = (tensor(&b, &dims4(xd), &x), tensor(&b, &dims4(wd), &w));
        let y = b.conv2d(&xt, &wt, params).unwrap();
        assert_eq!(y.shape().dims(), dims4(yd));
        let case = format!("x {xd:?} w {wd:?} s{s} p{p}");
        assert_close(&host(&b, &y), &want, 1e-5, &format!("conv2d {case}"));

        let dy = data(want.len(), 200 + seed as u64);
        let dyt = tensor(&b, &dims4(yd), &dy);
        let dx = b
            .conv2d_backward_input(&dyt, &wt, xt.shape(), params)
            .unwrap();
        let want_dx = naive::conv_backward_input(&dy, yd, &w, wd, xd, s, p);
        assert_close(&host(&b, &dx), &want_dx, 1e-5, &format!("dx {case}"));
        let dw = b
            .conv2d_backward_weight(&xt, &dyt, wt.shape(), params)
            .unwrap();
        let want_dw = naive::conv_backward_weight(&x, xd, &dy, yd, wd, s, p);
        assert_close(&host(&b, &dw), &want_dw, 1e-5, &format!("dw {case}"));

        // Finite differences of L = <dy, conv(x, w)> in f64.
        let fd_dx = naive::finite_difference(&x, 1e-3, |x| {
            naive::dot(&dy, &naive::conv(x, xd, &w, wd, s, p).0)
        });
        assert_close(
            &host(&b, &dx),
            &fd_dx,
            1e-4,
            &format!("dx vs finite differences {case}"),
        );
        let fd_dw = naive::finite_difference(&w, 1e-3, |w| {
            naive::dot(&dy, &naive::conv(&x, xd, w, wd, s, p).0)
        });
        assert_close(
            &host(&b, &dw),
            &fd_dw,
            1e-4,
            &format!("dw vs finite differences {case}"),
        );
    }
}

#[test]
fn channel_bias_and_its_gradient() {
    let b = cpu();
    let (n, c, h, w) = (3, 4, 5, 3);
    let x = data(n * c * h * w, 1);
    let bias = data(c, 2);
    let y = b
        .add_channel_bias(&tensor(&b, &[n, c, h, w], &x), &tensor(&b, &[c], &bias))
        .unwrap();
    let want: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v + bias[(i / (h * w)) % c])
        .collect();
    assert_close(&host(&b, &y), &want, 1e-6, "add_channel_bias");
    let dy = data(x.len(), 3);
    let db = b
        .channel_bias_grad(&tensor(&b, &[n, c, h, w], &dy))
        .unwrap();
    let mut want_db = vec![0.0; c];
    for (i, v) in dy.iter().enumerate() {
        want_db[(i / (h * w)) % c] += v;
    }
    assert_close(&host(&b, &db), &want_db, 1e-5, "channel_bias_grad");
}

#[test]
fn fused_conv_bias_relu_equals_its_parts() {
    let b = cpu();
    let x = tensor(&b, &[2, 3, 6, 5], &data(180, 1));
    let w = tensor(&b, &[4, 3, 3, 3], &data(108, 2));
    let bias = tensor(&b, &[4], &data(4, 3));
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let fused = b.conv2d_bias_act(&x, &w, &bias, p, true).unwrap();
    let parts = b
        .relu(
            &b.add_channel_bias(&b.conv2d(&x, &w, p).unwrap(), &bias)
                .unwrap(),
        )
        .unwrap();
    assert_close(
        &host(&b, &fused),
        &host(&b, &parts),
        1e-6,
        "conv2d_bias_act",
    );
    // In bf16 too, where AMX's direct convolution writes whole 16-pixel runs of a row and the
    // tiles at the rows' ends pixel by pixel (20 columns: one of each per row).
    let b16 = cpu_bf16();
    let x16 = tensor(&b16, &[2, 16, 9, 20], &data(2 * 16 * 180, 5));
    let w16 = tensor(&b16, &[40, 16, 3, 3], &data(40 * 16 * 9, 6));
    let bias16 = tensor(&b16, &[40], &data(40, 7));
    for relu in [false, true] {
        let fused = b16.conv2d_bias_act(&x16, &w16, &bias16, p, relu).unwrap();
        let biased = b16
            .add_channel_bias(&b16.conv2d(&x16, &w16, p).unwrap(), &bias16)
            .unwrap();
        let parts = if relu {
            b16.relu(&biased).unwrap()
        } else {
            biased
        };
        assert_eq!(host(&b16, &fused), host(&b16, &parts), "bf16, relu {relu}");
    }
    // A bias that is not [output channels] is named, with the weight's shape beside it.
    let wrong = tensor(&b, &[3], &data(3, 4));
    match b.conv2d_bias_act(&x, &w, &wrong, p, true) {
        Err(TensorError::ShapeMismatch { what, lhs, rhs, .. }) => {
            assert_eq!(what, "bias must be [output channels]");
            assert_eq!((lhs, rhs), (Shape::from([4, 3, 3, 3]), Shape::from([3])));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
}

/// The Winograd path keeps fixed weights' transform between calls: repeated calls, a reshaped
/// view of the same buffer, and an in-place update of the weights all give the direct result
/// (to Winograd's f32 rounding; a stale transform is off by O(1)).
#[test]
fn kept_weight_transforms_follow_the_weights() {
    let b = cpu();
    let (xd, wd): (Dims4, Dims4) = ((2, 16, 14, 14), (32, 16, 3, 3));
    let x = tensor(&b, &dims4(xd), &data(2 * 16 * 196, 11));
    let mut w_values = data(32 * 16 * 9, 12);
    let mut w = tensor(&b, &dims4(wd), &w_values);
    let bias = b.zeros(&Shape::from([32])).unwrap();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let want = |w: &[f64]| naive::conv(&host(&b, &x), xd, w, wd, 1, 1).0;
    // The same buffer as [16, 32, 3, 3] weights (a reshape shares it) is another convolution.
    let swapped = b.reshape(&w, &Shape::from([16, 32, 3, 3])).unwrap();
    let x2 = tensor(&b, &[2, 32, 14, 14], &data(2 * 32 * 196, 13));
    let bias2 = b.zeros(&Shape::from([16])).unwrap();
    for _ in 0..2 {
        let y = b.conv2d_bias_act(&x2, &swapped, &bias2, p, false).unwrap();
        let direct = naive::conv(
            &host(&b, &x2),
            (2, 32, 14, 14),
            &w_values,
            (16, 32, 3, 3),
            1,
            1,
        )
        .0;
        assert_close(&host(&b, &y), &direct, 1e-3, "reshaped weights");
    }
    drop(swapped);
    for call in 0..3 {
        let y = b.conv2d_bias_act(&x, &w, &bias, p, false).unwrap();
        assert_close(
            &host(&b, &y),
            &want(&w_values),
            1e-3,
            &format!("call {call}"),
        );
    }
    // An in-place update (w += 0.5 w) must not reuse the old transform.
    let w_copy = tensor(&b, &dims4(wd), &w_values);
    b.axpy(&mut w, 0.5, &w_copy).unwrap();
    w_values.iter_mut().for_each(|v| *v *= 1.5);
    let y = b.conv2d_bias_act(&x, &w, &bias, p, false).unwrap();
    assert_close(&host(&b, &y), &want(&w_values), 1e-3, "after the update");
}

/// In bf16, fixed weights' packing for the im2col products is kept between calls: repeated
/// calls, a reshaped view of the same buffer and an in-place update all give exactly what the
/// weights packed for that call alone give (`conv2d`, which keeps nothing).
#[test]
fn kept_bf16_weights_follow_the_weights() {
    let b = cpu_bf16();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    // 8 input channels: too few for Winograd and for AMX's direct convolution, so im2col.
    let x = tensor(&b, &[2, 8, 14, 14], &data(2 * 8 * 196, 21));
    let mut w = tensor(&b, &[16, 8, 3, 3], &data(16 * 8 * 9, 22));
    let bias = b.zeros(&Shape::from([16])).unwrap();
    let same = |x: &CpuTensor, w: &CpuTensor, bias: &CpuTensor, what: &str| {
        let fused = b.conv2d_bias_act(x, w, bias, p, false).unwrap();
        let alone = b.conv2d(x, w, p).unwrap();
        assert_eq!(host(&b, &fused), host(&b, &alone), "{what}");
    };
    for call in 0..3 {
        same(&x, &w, &bias, &format!("call {call}"));
    }
    // The same buffer as [8, 16, 3, 3] weights (a reshape shares it) is another convolution.
    let swapped = b.reshape(&w, &Shape::from([8, 16, 3, 3])).unwrap();
    let x2 = tensor(&b, &[2, 16, 14, 14], &data(2 * 16 * 196, 23));
    let bias2 = b.zeros(&Shape::from([8])).unwrap();
    for call in 0..3 {
        same(&x2, &swapped, &bias2, &format!("reshaped, call {call}"));
    }
    drop(swapped);
    let w_copy = tensor(&b, &[16, 8, 3, 3], &data(16 * 8 * 9, 22));
    b.axpy(&mut w, 0.5, &w_copy).unwrap();
    same(&x, &w, &bias, "after the update");
}

/// In bf16, a linear layer's fixed weight is kept converted between calls, in rows of bf16 for
/// 1-3 rows and in the tiles' layout for more (on units that have tiles): calls that switch
/// between the two, and an in-place update, all give the products of the rounded operands (a
/// stale or mixed-up copy is off by O(1)); on a unit slower than f32
/// (`Bf16Unit::products_stay_f32`), 4 rows and more give f32's products of the current weight.
#[test]
fn kept_bf16_linear_weights_follow_the_rows_and_the_weights() {
    let b = cpu_bf16();
    let unit = vgg_ndarray::Bf16Unit::within(vgg_ndarray::Isa::detected());
    let (n, k) = (40, 80);
    let mut w_values = data(n * k, 31);
    let mut w = tensor(&b, &[n, k], &w_values);
    let check = |w: &CpuTensor, w_values: &[f64], rows: usize, what: &str| {
        let x_values = data(rows * k, 32 + rows as u64);
        let x = tensor(&b, &[rows, k], &x_values);
        let y = b.matmul(&x, w, false, true).unwrap();
        let rounds = rows < 4 || !unit.products_stay_f32();
        let rounded = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .map(|&x| match rounds {
                    true => vgg_ndarray::bf16::round(x as f32) as f64,
                    false => x,
                })
                .collect()
        };
        let (x_r, w_r) = (rounded(&x_values), rounded(w_values));
        let want: Vec<f64> = (0..rows * n)
            .map(|at| {
                (0..k)
                    .map(|j| x_r[at / n * k + j] * w_r[at % n * k + j])
                    .sum()
            })
            .collect();
        assert_close(&host(&b, &y), &want, 1e-5, what);
    };
    for (call, rows) in [1, 1, 1, 8, 8, 8, 2, 2, 20, 20].into_iter().enumerate() {
        check(&w, &w_values, rows, &format!("call {call}, {rows} rows"));
    }
    let w_copy = tensor(&b, &[n, k], &w_values);
    b.axpy(&mut w, 0.5, &w_copy).unwrap();
    w_values.iter_mut().for_each(|v| *v *= 1.5);
    for rows in [1, 1, 8, 8] {
        check(
            &w,
            &w_values,
            rows,
            &format!("after the update, {rows} rows"),
        );
    }
}

/// The fused backward of bias and ReLU gives exactly what its two parts give.
#[test]
fn fused_bias_relu_backward_equals_its_parts() {
    let b = cpu();
    let dy = tensor(&b, &[3, 4, 5, 7], &data(420, 4));
    let y = b.relu(&tensor(&b, &[3, 4, 5, 7], &data(420, 5))).unwrap();
    let (dz, db) = b.bias_act_backward(&dy, Some(&y)).unwrap();
    let dz_parts = b.relu_backward(&dy, &y).unwrap();
    assert_eq!(host(&b, &dz), host(&b, &dz_parts), "dz");
    assert_eq!(
        host(&b, &db),
        host(&b, &b.channel_bias_grad(&dz_parts).unwrap()),
        "db"
    );
    let (dz, db) = b.bias_act_backward(&dy, None).unwrap();
    assert_eq!(host(&b, &dz), host(&b, &dy), "dz without ReLU");
    assert_eq!(host(&b, &db), host(&b, &b.channel_bias_grad(&dy).unwrap()));
    assert!(b.bias_act_backward(&dy, Some(&dz_parts.clone())).is_ok());
    let other = b.zeros(&Shape::from([3, 4, 5, 6])).unwrap();
    assert!(matches!(
        b.bias_act_backward(&dy, Some(&other)),
        Err(TensorError::ShapeMismatch { .. })
    ));

    // Given y by value: in place where y is not shared, a copy where it is, the same values.
    let (dz, db) = b.bias_act_backward(&dy, Some(&y)).unwrap();
    let shared = y.clone();
    let (dz_shared, db_shared) = b.bias_relu_backward_consuming(&dy, shared).unwrap();
    assert_eq!(
        host(&b, &y),
        host(&b, &b.relu(&y).unwrap()),
        "a shared y is left alone"
    );
    let unique = b.upload(y.shape(), &b.download(&y).unwrap()).unwrap();
    let (dz_unique, db_unique) = b.bias_relu_backward_consuming(&dy, unique).unwrap();
    for (z, d) in [(&dz_shared, &db_shared), (&dz_unique, &db_unique)] {
        assert_eq!(host(&b, z), host(&b, &dz));
        assert_eq!(host(&b, d), host(&b, &db));
    }
    assert!(matches!(
        b.bias_relu_backward_consuming(&dy, other),
        Err(TensorError::ShapeMismatch { .. })
    ));
}

#[test]
fn max_pool_and_its_gradient_match_naive_loops() {
    let b = cpu();
    for (xd, k, s) in [
        ((1, 2, 7, 5), 2, 2),
        ((3, 3, 8, 8), 2, 2),
        ((2, 1, 9, 6), 3, 2),
        ((1, 2, 5, 5), 3, 1),
    ] {
        let x = data(xd.0 * xd.1 * xd.2 * xd.3, 7);
        let (want, arg, yd) = naive::max_pool(&x, xd, k, s);
        let (y, idx) = b
            .max_pool2d(
                &tensor(&b, &dims4(xd), &x),
                Pool2dParams {
                    kernel: k,
                    stride: s,
                },
            )
            .unwrap();
        assert_eq!(y.shape().dims(), dims4(yd));
        assert_close(&host(&b, &y), &want, 0.0, "max_pool2d");
        let dy = data(want.len(), 8);
        let dx = b
            .max_pool2d_backward(&tensor(&b, &dims4(yd), &dy), &idx, &Shape::from(dims4(xd)))
            .unwrap();
        let mut want_dx = vec![0.0; x.len()];
        for (d, &i) in dy.iter().zip(&arg) {
            want_dx[i] += d;
        }
        assert_close(&host(&b, &dx), &want_dx, 1e-6, "max_pool2d_backward");
        // Finite differences (random inputs have no ties, so the max is differentiable there).
        let fd = naive::finite_difference(&x, 1e-4, |x| {
            naive::dot(&dy, &naive::max_pool(x, xd, k, s).0)
        });
        assert_close(
            &host(&b, &dx),
            &fd,
            1e-4,
            "max_pool2d_backward vs finite differences",
        );
    }
}

#[test]
fn pool_ties_go_to_the_first_maximum() {
    let b = cpu();
    let x = b.full(&Shape::from([1, 1, 2, 2]), 1.0).unwrap();
    let (_, idx) = b
        .max_pool2d(
            &x,
            Pool2dParams {
                kernel: 2,
                stride: 2,
            },
        )
        .unwrap();
    let dx = b
        .max_pool2d_backward(
            &b.full(&Shape::from([1, 1, 1, 1]), 5.0).unwrap(),
            &idx,
            x.shape(),
        )
        .unwrap();
    assert_eq!(b.download(&dx).unwrap(), [5.0, 0.0, 0.0, 0.0]);
}

#[test]
fn matmul_with_every_transpose() {
    let b = cpu();
    // Small, and a linear layer's products at batch 3 with a result of over a million values
    // (the skinny forward, the weight gradient written once: `linear_grad`).
    for (m, k, n) in [(5, 7, 3), (3, 1500, 700), (1500, 3, 700)] {
        matmul_matches_naive_loops(&b, m, k, n);
    }
}

/// `a` x `b` with either operand stored transposed, against f64 loops.
fn matmul_matches_naive_loops(b: &CpuBackend, m: usize, k: usize, n: usize) {
    let a = data(m * k, 1);
    let bm = data(k * n, 2);
    let want = naive::matmul(&a, &bm, m, k, n);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let at = if ta {
            tensor(b, &[k, m], &naive::transpose(&a, m, k))
        } else {
            tensor(b, &[m, k], &a)
        };
        let bt = if tb {
            tensor(b, &[n, k], &naive::transpose(&bm, k, n))
        } else {
            tensor(b, &[k, n], &bm)
        };
        let c = b.matmul(&at, &bt, ta, tb).unwrap();
        assert_eq!(c.shape().dims(), [m, n]);
        assert_close(
            &host(b, &c),
            &want,
            // f32 sums' rounding grows with the square root of their length.
            1e-5 * (k as f64 / 7.0).sqrt().max(1.0),
            &format!("matmul {m}x{k}x{n} ta={ta} tb={tb}"),
        );
    }
}

#[test]
fn row_bias_and_row_sums() {
    let b = cpu();
    let (m, n) = (5, 3);
    let want = naive::matmul(&data(m * 7, 1), &data(7 * n, 2), m, 7, n);
    let bias = data(n, 3);
    let c = tensor(&b, &[m, n], &want);
    let y = b.add_row_bias(&c, &tensor(&b, &[n], &bias)).unwrap();
    let want_y: Vec<f64> = want
        .iter()
        .enumerate()
        .map(|(i, v)| v + bias[i % n])
        .collect();
    assert_close(&host(&b, &y), &want_y, 1e-6, "add_row_bias");
    let sums = b.sum_rows(&c).unwrap();
    let want_sums: Vec<f64> = (0..n)
        .map(|j| (0..m).map(|i| want[i * n + j]).sum())
        .collect();
    assert_close(&host(&b, &sums), &want_sums, 1e-5, "sum_rows");
}

#[test]
fn relu_and_its_gradient() {
    let b = cpu();
    let x = data(101, 1);
    let y = b.relu(&tensor(&b, &[101], &x)).unwrap();
    assert_close(
        &host(&b, &y),
        &x.iter().map(|v| v.max(0.0)).collect::<Vec<_>>(),
        0.0,
        "relu",
    );
    let dy = data(101, 2);
    let dx = b.relu_backward(&tensor(&b, &[101], &dy), &y).unwrap();
    let want: Vec<f64> = dy
        .iter()
        .zip(&x)
        .map(|(d, v)| if *v > 0.0 { *d } else { 0.0 })
        .collect();
    assert_close(&host(&b, &dx), &want, 0.0, "relu_backward");
}

/// NaN propagates through every ReLU and pooling path, as in PyTorch, instead of becoming 0.
#[test]
fn nan_propagates_through_relu_convolutions_and_pooling() {
    let b = cpu();
    let nan_at = |dims: &[usize], at: usize| {
        let mut v = data(dims.iter().product(), 3);
        v[at] = f64::NAN;
        tensor(&b, dims, &v)
    };
    let y = host(&b, &b.relu(&nan_at(&[5], 2)).unwrap());
    assert!(y[2].is_nan() && !y[1].is_nan(), "{y:?}");
    // Winograd (3x3 on 16x16 with 64 channels) and im2col (1x1) convolutions with fused ReLU; in
    // bf16 the 3x3 one is AMX's direct convolution where the CPU has AMX.
    for b in [cpu(), cpu_bf16()] {
        for (c, k) in [(64, 3), (3, 1)] {
            let mut x = data(c * 256, 3);
            x[8 * 16 + 8] = f64::NAN;
            let x = tensor(&b, &[1, c, 16, 16], &x);
            let w = tensor(&b, &[8, c, k, k], &data(8 * c * k * k, 4));
            let bias = tensor(&b, &[8], &[0.0; 8]);
            let p = Conv2dParams {
                stride: 1,
                padding: k / 2,
            };
            let y = host(&b, &b.conv2d_bias_act(&x, &w, &bias, p, true).unwrap());
            // Every output channel sees the NaN pixel at (8, 8).
            for ch in 0..8 {
                let at = ch * 256 + 8 * 16 + 8;
                assert!(y[at].is_nan(), "{}, {k}x{k}: channel {ch}", b.name());
            }
        }
    }
    let (y, _) = b
        .max_pool2d(
            &nan_at(&[1, 1, 4, 4], 5),
            Pool2dParams {
                kernel: 2,
                stride: 2,
            },
        )
        .unwrap();
    let y = host(&b, &y);
    assert!(y[0].is_nan() && !y[1].is_nan(), "{y:?}");
}

#[test]
fn dropout_is_seeded_scaled_and_its_own_backward() {
    let b = cpu();
    let n = 100_000;
    let ones = b.full(&Shape::from([n]), 1.0).unwrap();
    let y = b.download(&b.dropout(&ones, 0.5, 9).unwrap()).unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count();
    assert!((48_500..51_500).contains(&kept), "{kept}");
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    assert_eq!(
        y,
        b.download(&b.dropout(&ones, 0.5, 9).unwrap()).unwrap(),
        "same seed, same mask"
    );
    assert_ne!(y, b.download(&b.dropout(&ones, 0.5, 10).unwrap()).unwrap());
    let back = b
        .download(&b.dropout_backward(&ones, 0.5, 9).unwrap())
        .unwrap();
    assert_eq!(y, back, "backward uses the same mask");
    // Thread count does not change the mask.
    let one_thread = CpuBackend::new(1).unwrap();
    let y1 = one_thread
        .download(
            &one_thread
                .dropout(&one_thread.full(&Shape::from([n]), 1.0).unwrap(), 0.5, 9)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(y, y1);
    assert_eq!(
        b.download(&b.dropout(&ones, 1.0, 9).unwrap()).unwrap(),
        vec![1.0; n]
    );
    assert!(b.dropout(&ones, 0.0, 9).is_err());
}

#[test]
fn softmax_argmax_and_losses() {
    let b = cpu();
    let (n, f) = (3, 5);
    let mut x = data(n * f, 1);
    x[7] = 1000.0; // stability: a huge logit must not overflow
    let xt = tensor(&b, &[n, f], &x);
    let p = host(&b, &b.softmax_rows(&xt).unwrap());
    for i in 0..n {
        let row = &x[i * f..(i + 1) * f];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
        let want: Vec<f64> = row.iter().map(|v| (v - max).exp() / z).collect();
        assert_close(&p[i * f..(i + 1) * f], &want, 1e-6, "softmax");
    }
    assert_eq!(b.argmax_rows(&xt).unwrap()[1], 2);
    // softmax backward against finite differences of <r, softmax(x)>.
    let xs = data(n * f, 5);
    let rs = data(n * f, 6);
    let softmax = |x: &[f64]| -> f64 {
        (0..n)
            .map(|i| {
                let row = &x[i * f..(i + 1) * f];
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                row.iter()
                    .zip(&rs[i * f..])
                    .map(|(v, r)| r * v.exp() / z)
                    .sum::<f64>()
            })
            .sum()
    };
    let y = b.softmax_rows(&tensor(&b, &[n, f], &xs)).unwrap();
    let dx = b
        .softmax_rows_backward(&tensor(&b, &[n, f], &rs), &y)
        .unwrap();
    let fd = naive::finite_difference(&xs, 1e-4, softmax);
    assert_close(
        &host(&b, &dx),
        &fd,
        1e-5,
        "softmax_rows_backward vs finite differences",
    );

    let l2 = b.scalar_value(&b.l2_loss(&xt).unwrap()).unwrap() as f64;
    let want_l2: f64 = x.iter().map(|v| v * v).sum::<f64>() / 2.0;
    assert!((l2 - want_l2).abs() <= 1e-6 * want_l2);

    let x = data(n * f, 2);
    let xt = tensor(&b, &[n, f], &x);
    let labels = [4, 0, 2];
    let (loss, probs) = b.cross_entropy(&xt, &labels).unwrap();
    let ce = |x: &[f64]| {
        (0..n)
            .map(|i| {
                let row = &x[i * f..(i + 1) * f];
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                z.ln() - row[labels[i]]
            })
            .sum::<f64>()
            / n as f64
    };
    assert!((b.scalar_value(&loss).unwrap() as f64 - ce(&x)).abs() < 1e-6);
    let g = b.full(&Shape::scalar(), 2.0).unwrap();
    let d = host(&b, &b.cross_entropy_backward(&probs, &labels, &g).unwrap());
    let fd: Vec<f64> = naive::finite_difference(&x, 1e-4, ce)
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    assert_close(
        &d,
        &fd,
        1e-5,
        "cross_entropy_backward vs finite differences",
    );
    assert!(b.cross_entropy(&xt, &[0, 1]).is_err());
    assert!(b
        .cross_entropy(&xt, &[0, 1, 5])
        .unwrap_err()
        .to_string()
        .contains("label 5"));
}

#[test]
fn elementwise_and_reductions() {
    let b = cpu();
    let (x, y) = (data(70_001, 1), data(70_001, 2));
    let (xt, yt) = (tensor(&b, &[70_001], &x), tensor(&b, &[70_001], &y));
    let check = |t: CpuTensor, f: &dyn Fn(f64, f64) -> f64, what: &str| {
        let want: Vec<f64> = x.iter().zip(&y).map(|(a, b)| f(*a, *b)).collect();
        assert_close(&host(&b, &t), &want, 1e-6, what);
    };
    check(b.add(&xt, &yt).unwrap(), &|a, b| a + b, "add");
    check(b.sub(&xt, &yt).unwrap(), &|a, b| a - b, "sub");
    check(b.mul(&xt, &yt).unwrap(), &|a, b| a * b, "mul");
    check(b.scale(&xt, 3.0).unwrap(), &|a, _| 3.0 * a, "scale");
    let mut acc = xt.clone();
    b.axpy(&mut acc, -0.5, &yt).unwrap();
    check(acc, &|a, b| a - 0.5 * b, "axpy");
    assert_close(
        &host(&b, &xt),
        &x,
        1e-7,
        "axpy leaves a shared buffer alone",
    );
    let s = b.scalar_value(&b.sum_all(&xt).unwrap()).unwrap() as f64;
    assert!((s - x.iter().sum::<f64>()).abs() < 1e-3);
    let two = b.full(&Shape::scalar(), 2.0).unwrap();
    assert_eq!(
        b.download(&b.broadcast_scalar(&two, &Shape::from([2, 2])).unwrap())
            .unwrap(),
        [2.0; 4]
    );
    check(
        b.mul_scalar(&xt, &two).unwrap(),
        &|a, _| 2.0 * a,
        "mul_scalar",
    );
    let r = b.reshape(&xt, &Shape::from([1, 70_001])).unwrap();
    assert_eq!(r.shape().dims(), [1, 70_001]);
    assert!(b.reshape(&xt, &Shape::from([2, 70_001])).is_err());
}

#[test]
fn optimiser_steps_match_their_formulas() {
    let b = cpu();
    let (p0, g) = (data(5, 1), data(5, 2));
    let (mut p, mut v) = (tensor(&b, &[5], &p0), b.zeros(&Shape::from([5])).unwrap());
    let gt = tensor(&b, &[5], &g);
    // Two SGD steps with momentum 0.9 and weight decay 0.01, by hand in f64.
    let (lr, mu, wd) = (0.1, 0.9, 0.01);
    let (mut pw, mut vw) = (p0.clone(), vec![0.0; 5]);
    for _ in 0..2 {
        b.sgd_step(&mut p, &mut v, &gt, lr as f32, mu as f32, wd as f32)
            .unwrap();
        for i in 0..5 {
            vw[i] = mu * vw[i] + g[i] + wd * pw[i];
            pw[i] -= lr * vw[i];
        }
    }
    assert_close(&host(&b, &p), &pw, 1e-6, "sgd_step");
    // Two Adam steps.
    let hp = |step| vgg_tensor::AdamParams {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step,
    };
    let mut p = tensor(&b, &[5], &p0);
    let (mut m, mut v) = (
        b.zeros(&Shape::from([5])).unwrap(),
        b.zeros(&Shape::from([5])).unwrap(),
    );
    let (mut pw, mut mw, mut vw) = (p0.clone(), vec![0.0; 5], vec![0.0; 5]);
    for step in 1..=2u64 {
        b.adam_step(&mut p, &mut m, &mut v, &gt, hp(step)).unwrap();
        for i in 0..5 {
            mw[i] = 0.9 * mw[i] + 0.1 * g[i];
            vw[i] = 0.999 * vw[i] + 0.001 * g[i] * g[i];
            let (mh, vh) = (
                mw[i] / (1.0 - 0.9f64.powi(step as i32)),
                vw[i] / (1.0 - 0.999f64.powi(step as i32)),
            );
            pw[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
    }
    assert_close(&host(&b, &p), &pw, 1e-5, "adam_step");
    assert!(b.adam_step(&mut p, &mut m, &mut v, &gt, hp(0)).is_err());
    assert!(b
        .sgd_step(
            &mut p,
            &mut v,
            &b.zeros(&Shape::from([4])).unwrap(),
            0.1,
            0.0,
            0.0
        )
        .is_err());
}

#[test]
fn random_values_do_not_depend_on_threads() {
    let shape = Shape::from([3, 100_000]);
    let one = CpuBackend::new(1).unwrap();
    let two = cpu();
    let a = one
        .download(&one.random_normal(&shape, 0.0, 0.1, 5).unwrap())
        .unwrap();
    let b = two
        .download(&two.random_normal(&shape, 0.0, 0.1, 5).unwrap())
        .unwrap();
    assert_eq!(a, b);
    let u = two
        .download(&two.random_uniform(&shape, -2.0, 2.0, 5).unwrap())
        .unwrap();
    assert!(u.iter().all(|v| (-2.0..2.0).contains(v)));
}

#[test]
fn shape_errors_name_both_shapes() {
    let b = cpu();
    let t = |dims: &[usize]| b.zeros(&Shape::from(dims)).unwrap();
    let msg = |e: TensorError| e.to_string();
    let e = msg(b.add(&t(&[2, 3]), &t(&[3, 2])).unwrap_err());
    assert!(e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
    let e = msg(b
        .matmul(&t(&[2, 3]), &t(&[2, 3]), false, false)
        .unwrap_err());
    assert!(e.contains("[2, 3]") && e.contains("inner"), "{e}");
    let e = msg(b
        .conv2d(
            &t(&[1, 2, 5, 5]),
            &t(&[4, 3, 3, 3]),
            Conv2dParams::default(),
        )
        .unwrap_err());
    assert!(
        e.contains("[1, 2, 5, 5]") && e.contains("[4, 3, 3, 3]"),
        "{e}"
    );
    let e = msg(b
        .conv2d(&t(&[2, 5, 5]), &t(&[4, 3, 3, 3]), Conv2dParams::default())
        .unwrap_err());
    assert!(e.contains("rank-4") && e.contains("[2, 5, 5]"), "{e}");
    let params = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let e = msg(b
        .conv2d_backward_input(
            &t(&[1, 4, 4, 4]),
            &t(&[4, 3, 3, 3]),
            &Shape::from([1, 3, 5, 5]),
            params,
        )
        .unwrap_err());
    assert!(
        e.contains("[1, 4, 4, 4]") && e.contains("[1, 4, 5, 5]"),
        "{e}"
    );
    assert!(b.add_channel_bias(&t(&[1, 3, 2, 2]), &t(&[4])).is_err());
    assert!(b.add_row_bias(&t(&[2, 3]), &t(&[2])).is_err());
    assert!(b
        .max_pool2d(
            &t(&[1, 1, 1, 1]),
            Pool2dParams {
                kernel: 2,
                stride: 2
            }
        )
        .is_err());
    assert!(b.upload(&Shape::from([2, 2]), &[1.0; 3]).is_err());
    assert!(b.scalar_value(&t(&[2])).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any geometry either errors or gives the formula's shape and the naive loops' values; never a panic.
    #[test]
    fn conv_shapes(n in 1usize..3, c in 1usize..4, h in 1usize..9, w in 1usize..9,
                   o in 1usize..4, k in 1usize..5, s in 1usize..3, p in 0usize..3) {
        let b = cpu();
        let (xd, wd) = ((n, c, h, w), (o, c, k, k));
        let x = data(n * c * h * w, 1);
        let wv = data(o * c * k * k, 2);
        let params = Conv2dParams { stride: s, padding: p };
        let result = b.conv2d(&tensor(&b, &dims4(xd), &x), &tensor(&b, &dims4(wd), &wv), params);
        if h + 2 * p < k || w + 2 * p < k {
            prop_assert!(result.is_err());
        } else {
            let (want, yd) = naive::conv(&x, xd, &wv, wd, s, p);
            let y = result.unwrap();
            prop_assert_eq!(y.shape().dims(), &dims4(yd)[..]);
            let got = host(&b, &y);
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0));
            }
        }
    }

    #[test]
    /// Operands broadcast exactly when NumPy's rule says so, and then give its shape.
    fn elementwise_ops_broadcast_by_numpys_rule(a in proptest::collection::vec(1usize..4, 1..4),
                                                c in proptest::collection::vec(1usize..4, 1..4)) {
        let b = cpu();
        let x = b.zeros(&Shape::from(a.clone())).unwrap();
        let y = b.zeros(&Shape::from(c.clone())).unwrap();
        let rank = a.len().max(c.len());
        let dim = |v: &[usize], i: usize| if i + v.len() < rank { 1 } else { v[i + v.len() - rank] };
        let rule: Option<Vec<usize>> = (0..rank)
            .map(|i| match (dim(&a, i), dim(&c, i)) {
                (p, q) if p == q => Some(p),
                (1, q) => Some(q),
                (p, 1) => Some(p),
                _ => None,
            })
            .collect();
        for result in [b.add(&x, &y), b.mul(&x, &y), b.binary(BinaryOp::Max, &x, &y)] {
            match (&rule, result) {
                (Some(dims), Ok(z)) => prop_assert_eq!(z.shape().dims(), &dims[..]),
                (None, Err(_)) => {}
                (rule, r) => prop_assert!(false, "{a:?} and {c:?}: rule {rule:?}, got {r:?}"),
            }
        }
    }

    #[test]
    fn pool_shapes(h in 1usize..10, w in 1usize..10, k in 1usize..4, s in 1usize..4) {
        let b = cpu();
        let x = b.zeros(&Shape::from([1, 2, h, w])).unwrap();
        match b.max_pool2d(&x, Pool2dParams { kernel: k, stride: s }) {
            Ok((y, _)) => prop_assert_eq!(y.shape().dims(), &[1, 2, (h - k) / s + 1, (w - k) / s + 1][..]),
            Err(_) => prop_assert!(h < k || w < k),
        }
    }
}

#[test]
fn absurd_thread_counts_are_refused_quickly() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let e = CpuBackend::new(100_000).unwrap_err().to_string();
    assert!(e.contains("100000 threads") && e.contains("at most"), "{e}");
    let most = cores * vgg_ndarray::MAX_THREADS_PER_CORE;
    assert!(CpuBackend::new(most + 1).is_err());
    assert_eq!(CpuBackend::new(0).unwrap().threads(), cores);
}
