//! The CPU backend's primitives against the plain-loops reference backend, and its fused
//! composites against the composites that the reference builds from primitives alone.

use approx::assert_relative_eq;
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;
use vgg_tensor::reference::{RefTensor, ReferenceBackend};
use vgg_tensor::{random, AdamParams, Conv2dParams, Pool2dParams};

fn cpu() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; n];
    random::fill_normal(&mut v, seed, 0, 0.0, 1.0);
    v
}

/// The same values on both backends.
fn pair(dims: &[usize], seed: u64) -> (<CpuBackend as Device>::Tensor, RefTensor) {
    let shape = Shape::from(dims);
    let v = values(shape.elements(), seed);
    (
        cpu().upload(&shape, &v).unwrap(),
        ReferenceBackend.upload(&shape, &v).unwrap(),
    )
}

#[track_caller]
fn same(
    what: &str,
    got: &<CpuBackend as Device>::Tensor,
    want: &RefTensor,
    epsilon: f32,
    max_relative: f32,
) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes");
    let got = cpu().download(got).unwrap();
    for (i, (g, w)) in got.iter().zip(want.values()).enumerate() {
        if g.is_nan() && w.is_nan() {
            continue;
        }
        assert!(
            approx::relative_eq!(*g, *w, epsilon = epsilon, max_relative = max_relative),
            "{what}[{i}]: cpu {g}, reference {w}"
        );
    }
}

#[test]
fn unary_ops_match_the_reference() {
    let (b, r) = (cpu(), ReferenceBackend);
    let (x, xr) = pair(&[3, 7, 11], 1);
    for op in UnaryOp::ALL {
        let got = b.unary(op, &x).unwrap();
        let want = r.unary(op, &xr).unwrap();
        same(&format!("{op:?}"), &got, &want, 1e-6, 1e-6);
    }
}

#[test]
fn binary_ops_broadcast_like_the_reference() {
    let (b, r) = (cpu(), ReferenceBackend);
    let (x, xr) = pair(&[2, 3, 4, 5], 2);
    for (i, dims) in [
        &[2, 3, 4, 5][..],
        &[4, 1],
        &[3, 1, 5],
        &[1],
        &[],
        &[2, 1, 1, 5],
    ]
    .iter()
    .enumerate()
    {
        let (o, or) = pair(dims, 10 + i as u64);
        for op in BinaryOp::ALL {
            same(
                &format!("{op:?} with {dims:?}"),
                &b.binary(op, &x, &o).unwrap(),
                &r.binary(op, &xr, &or).unwrap(),
                1e-6,
                1e-6,
            );
            same(
                &format!("{op:?} of {dims:?} first"),
                &b.binary(op, &o, &x).unwrap(),
                &r.binary(op, &or, &xr).unwrap(),
                1e-6,
                1e-6,
            );
        }
    }
    assert!(b
        .binary(BinaryOp::Add, &x, &pair(&[3, 4], 3).0)
        .unwrap_err()
        .to_string()
        .contains("broadcast"));
}

#[test]
fn reductions_match_the_reference_on_every_axis_set() {
    let (b, r) = (cpu(), ReferenceBackend);
    let (x, xr) = pair(&[3, 4, 5, 6], 4);
    let sets: [&[usize]; 9] = [
        &[],
        &[0],
        &[1],
        &[3],
        &[0, 2],
        &[1, 3],
        &[0, 2, 3],
        &[2, 0],
        &[0, 1, 2, 3],
    ];
    for axes in sets {
        for op in ReduceOp::ALL {
            same(
                &format!("{op:?} over {axes:?}"),
                &b.reduce(op, &x, axes).unwrap(),
                &r.reduce(op, &xr, axes).unwrap(),
                1e-5,
                1e-6,
            );
        }
    }
    assert!(b.reduce(ReduceOp::Sum, &x, &[4]).is_err());
    assert!(b.reduce(ReduceOp::Sum, &x, &[1, 1]).is_err());
    // NaN propagates through max and min, as in PyTorch's amax.
    let mut v = values(12, 5);
    v[7] = f32::NAN;
    let t = b.upload(&Shape::from([3, 4]), &v).unwrap();
    let m = b
        .download(&b.reduce(ReduceOp::Max, &t, &[1]).unwrap())
        .unwrap();
    assert!(m[1].is_nan() && !m[0].is_nan() && !m[2].is_nan());
}

#[test]
fn layout_ops_match_the_reference() {
    let (b, r) = (cpu(), ReferenceBackend);
    let (x, xr) = pair(&[2, 3, 4, 5], 6);
    for perm in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2], [2, 0, 3, 1]] {
        same(
            &format!("permute {perm:?}"),
            &b.permute(&x, &perm).unwrap(),
            &r.permute(&xr, &perm).unwrap(),
            0.0,
            0.0,
        );
    }
    for (axis, start, len) in [(0, 1, 1), (1, 0, 2), (2, 1, 3), (3, 4, 1), (3, 0, 0)] {
        same(
            &format!("slice {axis} {start}+{len}"),
            &b.slice(&x, axis, start, len).unwrap(),
            &r.slice(&xr, axis, start, len).unwrap(),
            0.0,
            0.0,
        );
    }
    let (y, yr) = pair(&[2, 1, 4, 5], 7);
    same(
        "concat",
        &b.concat(&[&x, &y, &x], 1).unwrap(),
        &r.concat(&[&xr, &yr, &xr], 1).unwrap(),
        0.0,
        0.0,
    );
    let (z, zr) = pair(&[1, 3, 4, 5], 8);
    same(
        "concat on axis 0",
        &b.concat(&[&z, &x], 0).unwrap(),
        &r.concat(&[&zr, &xr], 0).unwrap(),
        0.0,
        0.0,
    );
    assert!(b.concat(&[&x, &y], 0).is_err());
    assert!(b.permute(&x, &[0, 1, 2]).is_err());
    assert!(b.slice(&x, 1, 2, 2).is_err());
}

#[test]
fn average_pooling_matches_the_reference() {
    let (b, r) = (cpu(), ReferenceBackend);
    let (x, xr) = pair(&[2, 3, 9, 8], 8);
    for (kernel, stride) in [(2, 2), (3, 2), (2, 1), (3, 3), (8, 1)] {
        let p = Pool2dParams { kernel, stride };
        let y = b.avg_pool2d(&x, p).unwrap();
        same(
            &format!("avg {kernel}/{stride}"),
            &y,
            &r.avg_pool2d(&xr, p).unwrap(),
            1e-6,
            1e-5,
        );
        let (dy, dyr) = pair(y.shape().dims(), 9);
        same(
            &format!("avg backward {kernel}/{stride}"),
            &b.avg_pool2d_backward(&dy, x.shape(), p).unwrap(),
            &r.avg_pool2d_backward(&dyr, xr.shape(), p).unwrap(),
            1e-6,
            1e-5,
        );
    }
    assert!(b
        .avg_pool2d(
            &x,
            Pool2dParams {
                kernel: 10,
                stride: 1
            }
        )
        .is_err());
}

/// Convolutions with any stride and padding, against the reference's plain loops.
#[test]
fn convolutions_of_any_stride_and_padding_match_the_reference() {
    let (b, r) = (cpu(), ReferenceBackend);
    for (xd, wd, stride, padding) in [
        ([2, 3, 15, 13], [4, 3, 7, 7], 2, 3),
        ([1, 2, 11, 11], [3, 2, 5, 5], 3, 2),
        ([2, 4, 8, 9], [5, 4, 1, 1], 2, 0),
        ([1, 3, 6, 6], [2, 3, 3, 3], 1, 4),
        ([1, 16, 20, 20], [8, 16, 3, 3], 1, 1),
    ] {
        let p = Conv2dParams { stride, padding };
        let (x, xr) = pair(&xd, 11);
        let (w, wr) = pair(&wd, 12);
        let y = b.conv2d(&x, &w, p).unwrap();
        let what = format!("{xd:?} * {wd:?} /{stride} p{padding}");
        same(&what, &y, &r.conv2d(&xr, &wr, p).unwrap(), 1e-4, 1e-4);
        let (dy, dyr) = pair(y.shape().dims(), 13);
        same(
            &format!("{what} input gradient"),
            &b.conv2d_backward_input(&dy, &w, x.shape(), p).unwrap(),
            &r.conv2d_backward_input(&dyr, &wr, xr.shape(), p).unwrap(),
            1e-4,
            1e-4,
        );
        same(
            &format!("{what} weight gradient"),
            &b.conv2d_backward_weight(&x, &dy, w.shape(), p).unwrap(),
            &r.conv2d_backward_weight(&xr, &dyr, wr.shape(), p).unwrap(),
            1e-4,
            1e-4,
        );
    }
}

/// Small images go several to one GEMM (and "same"-padded stride-1 ones build their columns by
/// shifting whole planes): batches that split into uneven groups, on 1 to 3 threads, images as
/// narrow as the padding allows and narrower, against the reference's loops.
#[test]
fn small_images_grouped_per_gemm_match_the_reference() {
    let r = ReferenceBackend;
    for threads in [1, 2, 3] {
        let b = CpuBackend::new(threads).unwrap();
        for (xd, wd, stride, padding) in [
            ([5, 3, 4, 4], [6, 3, 3, 3], 1, 1),
            ([8, 16, 2, 2], [8, 16, 3, 3], 1, 1),
            ([7, 2, 6, 7], [3, 2, 5, 5], 1, 2),
            ([5, 2, 3, 1], [2, 2, 3, 3], 1, 1),
            ([6, 4, 9, 9], [3, 4, 3, 3], 2, 1),
            ([9, 8, 8, 8], [16, 8, 3, 3], 1, 1),
            ([4, 1, 5, 5], [2, 1, 3, 3], 1, 0),
        ] {
            let p = Conv2dParams { stride, padding };
            let (x, xr) = pair(&xd, 21);
            let (w, wr) = pair(&wd, 22);
            let (bias, bias_r) = pair(&wd[..1], 23);
            let what = format!("{xd:?} * {wd:?} /{stride} p{padding}, {threads} threads");
            let (y, dx, dw) = b.clone().execute(|| {
                let y = b.conv2d_bias_act(&x, &w, &bias, p, true).unwrap();
                let dx = b.conv2d_backward_input(&y, &w, x.shape(), p).unwrap();
                let dw = b.conv2d_backward_weight(&x, &y, w.shape(), p).unwrap();
                (y, dx, dw)
            });
            let yr = r.conv2d_bias_act(&xr, &wr, &bias_r, p, true).unwrap();
            same(&what, &y, &yr, 1e-4, 1e-4);
            let dxr = r.conv2d_backward_input(&yr, &wr, xr.shape(), p).unwrap();
            same(&format!("{what} input gradient"), &dx, &dxr, 1e-4, 1e-4);
            let dwr = r.conv2d_backward_weight(&xr, &yr, wr.shape(), p).unwrap();
            same(&format!("{what} weight gradient"), &dw, &dwr, 1e-4, 1e-4);
        }
    }
}

/// The CPU's fused composites against the composites written in primitives.
#[test]
fn fused_composites_match_the_defaults() {
    let (b, r) = (cpu(), ReferenceBackend);
    let (logits, lr) = pair(&[4, 7], 20);
    let labels = [0, 6, 3, 3];
    same(
        "softmax_rows",
        &b.softmax_rows(&logits).unwrap(),
        &r.softmax_rows(&lr).unwrap(),
        1e-6,
        1e-5,
    );
    let (loss, probs) = b.cross_entropy(&logits, &labels).unwrap();
    let (loss_r, probs_r) = r.cross_entropy(&lr, &labels).unwrap();
    same("cross_entropy", &loss, &loss_r, 1e-6, 1e-5);
    same("cross_entropy probs", &probs, &probs_r, 1e-6, 1e-5);
    let (g, gr) = (b.scalar(0.7).unwrap(), r.scalar(0.7).unwrap());
    same(
        "cross_entropy_backward",
        &b.cross_entropy_backward(&probs, &labels, &g).unwrap(),
        &r.cross_entropy_backward(&probs_r, &labels, &gr).unwrap(),
        1e-6,
        1e-5,
    );
    let (dy, dyr) = pair(&[4, 7], 21);
    let y = b.softmax_rows(&logits).unwrap();
    let yr = r.softmax_rows(&lr).unwrap();
    same(
        "softmax_rows_backward",
        &b.softmax_rows_backward(&dy, &y).unwrap(),
        &r.softmax_rows_backward(&dyr, &yr).unwrap(),
        1e-6,
        1e-5,
    );
    same(
        "l2_loss",
        &b.l2_loss(&logits).unwrap(),
        &r.l2_loss(&lr).unwrap(),
        1e-5,
        1e-6,
    );
    assert_eq!(b.argmax_rows(&logits).unwrap(), r.argmax_rows(&lr).unwrap());
    // Dropout's mask comes from the same stream: identical, not just close.
    let (x, xr) = pair(&[3, 50], 22);
    same(
        "dropout",
        &b.dropout(&x, 0.6, 9).unwrap(),
        &r.dropout(&xr, 0.6, 9).unwrap(),
        0.0,
        1e-6,
    );
    let (bias, biasr) = pair(&[50], 23);
    same(
        "add_row_bias",
        &b.add_row_bias(&x, &bias).unwrap(),
        &r.add_row_bias(&xr, &biasr).unwrap(),
        0.0,
        0.0,
    );
    same(
        "sum_rows",
        &b.sum_rows(&x).unwrap(),
        &r.sum_rows(&xr).unwrap(),
        1e-6,
        1e-6,
    );
    let (img, imgr) = pair(&[2, 3, 5, 4], 24);
    let (cb, cbr) = pair(&[3], 25);
    same(
        "add_channel_bias",
        &b.add_channel_bias(&img, &cb).unwrap(),
        &r.add_channel_bias(&imgr, &cbr).unwrap(),
        0.0,
        0.0,
    );
    same(
        "channel_bias_grad",
        &b.channel_bias_grad(&img).unwrap(),
        &r.channel_bias_grad(&imgr).unwrap(),
        1e-6,
        1e-6,
    );
    let relu = b.relu(&img).unwrap();
    let relur = r.relu(&imgr).unwrap();
    let (d, dr) = pair(&[2, 3, 5, 4], 26);
    let (dz, db) = b.bias_act_backward(&d, Some(&relu)).unwrap();
    let (dzr, dbr) = r.bias_act_backward(&dr, Some(&relur)).unwrap();
    same("bias_act_backward dz", &dz, &dzr, 0.0, 0.0);
    same("bias_act_backward db", &db, &dbr, 1e-6, 1e-6);
    // Optimiser steps in place.
    let (mut p, mut pr) = pair(&[40], 27);
    let (mut v, mut vr) = pair(&[40], 28);
    let (grad, gradr) = pair(&[40], 29);
    b.sgd_step(&mut p, &mut v, &grad, 0.1, 0.9, 1e-2).unwrap();
    r.sgd_step(&mut pr, &mut vr, &gradr, 0.1, 0.9, 1e-2)
        .unwrap();
    same("sgd param", &p, &pr, 1e-6, 1e-6);
    same("sgd velocity", &v, &vr, 1e-6, 1e-6);
    let (mut m, mut mr) = (b.zeros(p.shape()).unwrap(), r.zeros(pr.shape()).unwrap());
    let (mut s, mut sr) = (b.zeros(p.shape()).unwrap(), r.zeros(pr.shape()).unwrap());
    for step in 1..=3 {
        let hp = AdamParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-3,
            step,
        };
        b.adam_step(&mut p, &mut m, &mut s, &grad, hp).unwrap();
        r.adam_step(&mut pr, &mut mr, &mut sr, &gradr, hp).unwrap();
    }
    same("adam param", &p, &pr, 1e-6, 1e-5);
    let mut acc = b.full(&Shape::from([40]), 1.0).unwrap();
    let mut accr = r.full(&Shape::from([40]), 1.0).unwrap();
    b.axpy(&mut acc, 0.5, &grad).unwrap();
    r.axpy(&mut accr, 0.5, &gradr).unwrap();
    same("axpy", &acc, &accr, 1e-6, 1e-6);
    assert_relative_eq!(
        b.scalar_value(&b.sum_all(&grad).unwrap()).unwrap(),
        r.scalar_value(&r.sum_all(&gradr).unwrap()).unwrap(),
        epsilon = 1e-5
    );
}
