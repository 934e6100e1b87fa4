//! The conformance suite a backend runs in one line: every primitive and every composite op of
//! [`Backend`], on seeded inputs of odd sizes, against the plain-loops [`ReferenceBackend`]. An op
//! conforms when it returns the reference's shape and values within a stated tolerance, or refuses
//! (an error) exactly where the reference refuses.
//!
//! ```
//! use vgg_tensor::{conformance, reference::ReferenceBackend};
//! conformance::assert_conforms(&ReferenceBackend, conformance::Tolerance::F32);
//! ```
//!
//! A fast backend's tests call [`assert_conforms`] (the CPU and CUDA crates do); a backend that wraps
//! another (a tracer, a counter) runs it to prove it still computes what the inner one does.

use std::fmt;

use crate::prelude::*;
use crate::reference::ReferenceBackend;
use crate::{AdamParams, Conv2dParams, Pool2dParams, Result};

/// How close a value must be to the reference's: |got - want| <= relative * max(1, |want|).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// For elementwise ops, reductions, layout and the optimiser steps.
    pub elementwise: f32,
    /// For matrix products and convolutions (fast algorithms and reduced-precision units round
    /// differently: Winograd on the CPU, TF32 on a GPU).
    pub products: f32,
}

impl Tolerance {
    /// f32 arithmetic throughout (a CPU backend, a GPU with TF32 off).
    pub const F32: Tolerance = Tolerance {
        elementwise: 1e-5,
        products: 1e-4,
    };
    /// Products in TF32 (10-bit mantissa), everything else in f32.
    pub const TF32: Tolerance = Tolerance {
        elementwise: 1e-5,
        products: 1e-2,
    };
}

/// One way a backend differs from the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// The op and its case, e.g. "matmul [3, 5] x [5, 4] (a^T)".
    pub op: String,
    /// What differs.
    pub what: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.what)
    }
}

/// Runs the suite on `backend`; an empty list means it conforms.
pub fn check<B: Backend>(backend: &B, tolerance: Tolerance) -> Vec<Mismatch> {
    let mut s = Suite {
        b: backend,
        r: &ReferenceBackend,
        tol: tolerance,
        found: Vec::new(),
    };
    s.device();
    s.elementwise();
    s.reductions();
    s.layout();
    s.matmul();
    s.convolution();
    s.pooling();
    s.layers();
    s.losses();
    s.optimisers();
    s.found
}

/// Runs the suite and panics listing every mismatch.
#[track_caller]
pub fn assert_conforms<B: Backend>(backend: &B, tolerance: Tolerance) {
    let found = check(backend, tolerance);
    if !found.is_empty() {
        let list: Vec<String> = found.iter().map(|m| format!("  - {m}")).collect();
        panic!(
            "{} differs from the reference backend in {} case(s):\n{}",
            backend.name(),
            found.len(),
            list.join("\n")
        );
    }
}

/// Seeded values in [-2, 2), or in [0.5, 2.5) where `positive`.
fn values(n: usize, seed: u64, positive: bool) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let u = crate::random::uniform01(seed, i);
            if positive {
                0.5 + 2.0 * u
            } else {
                4.0 * u - 2.0
            }
        })
        .collect()
}

struct Suite<'a, B: Backend> {
    b: &'a B,
    r: &'a ReferenceBackend,
    tol: Tolerance,
    found: Vec<Mismatch>,
}

/// The same host values on both backends.
struct Pair<B: Backend> {
    b: B::Tensor,
    r: <ReferenceBackend as crate::Device>::Tensor,
}

type RefTensor = <ReferenceBackend as crate::Device>::Tensor;

impl<B: Backend> Suite<'_, B> {
    fn miss(&mut self, op: &str, what: String) {
        self.found.push(Mismatch {
            op: op.to_string(),
            what,
        });
    }

    fn pair_of(&mut self, dims: &[usize], data: &[f32]) -> Option<Pair<B>> {
        let shape = Shape::from(dims);
        let r = self.r.upload(&shape, data).expect("the reference uploads");
        match self.b.upload(&shape, data) {
            Ok(b) => Some(Pair { b, r }),
            Err(e) => {
                self.miss("upload", format!("{shape}: {e}"));
                None
            }
        }
    }

    fn pair(&mut self, dims: &[usize], seed: u64) -> Option<Pair<B>> {
        let n = dims.iter().product();
        self.pair_of(dims, &values(n, seed, false))
    }

    fn positive(&mut self, dims: &[usize], seed: u64) -> Option<Pair<B>> {
        let n = dims.iter().product();
        self.pair_of(dims, &values(n, seed, true))
    }

    /// Compares two results: both refusals, or equal shapes and close values.
    fn same(&mut self, op: &str, got: Result<B::Tensor>, want: Result<RefTensor>, tol: f32) {
        match (got, want) {
            (Err(_), Err(_)) => {}
            (Ok(g), Err(e)) => self.miss(
                op,
                format!(
                    "returned a {} tensor where the reference refuses ({e})",
                    g.shape()
                ),
            ),
            (Err(e), Ok(_)) => self.miss(op, format!("refused where the reference does not: {e}")),
            (Ok(g), Ok(w)) => self.close(op, &g, &w, tol),
        }
    }

    fn close(&mut self, op: &str, got: &B::Tensor, want: &RefTensor, tol: f32) {
        if got.shape() != want.shape() {
            self.miss(
                op,
                format!(
                    "shape {} where the reference's is {}",
                    got.shape(),
                    want.shape()
                ),
            );
            return;
        }
        let values = match self.b.download(got) {
            Ok(v) => v,
            Err(e) => return self.miss(op, format!("download failed: {e}")),
        };
        let worst = values
            .iter()
            .zip(want.values())
            .enumerate()
            .filter(|(_, (g, w))| !agree(**g, **w, tol))
            .max_by(|a, b| {
                let err = |(g, w): (&f32, &f32)| (g - w).abs() / w.abs().max(1.0);
                err(a.1).total_cmp(&err(b.1))
            });
        if let Some((i, (g, w))) = worst {
            let count = values
                .iter()
                .zip(want.values())
                .filter(|(g, w)| !agree(**g, **w, tol))
                .count();
            self.miss(
                op,
                format!(
                    "{count} of {} values differ beyond {tol:e}; the worst, [{i}], is {g} where the reference has {w}",
                    values.len()
                ),
            );
        }
    }

    fn device(&mut self) {
        let shape = Shape::from([3, 5]);
        self.same(
            "full",
            self.b.full(&shape, 1.5),
            self.r.full(&shape, 1.5),
            0.0,
        );
        self.same("zeros", self.b.zeros(&shape), self.r.zeros(&shape), 0.0);
        self.same(
            "random_normal (seeded: the same stream on every backend)",
            self.b.random_normal(&shape, 0.5, 2.0, 7),
            self.r.random_normal(&shape, 0.5, 2.0, 7),
            self.tol.elementwise,
        );
        self.same(
            "random_uniform",
            self.b.random_uniform(&shape, -1.0, 3.0, 9),
            self.r.random_uniform(&shape, -1.0, 3.0, 9),
            self.tol.elementwise,
        );
        let Some(x) = self.pair(&[2, 3, 4], 1) else {
            return;
        };
        for dims in [&[6, 4][..], &[24], &[5, 5]] {
            let to = Shape::from(dims);
            self.same(
                &format!("reshape [2, 3, 4] to {to}"),
                self.b.reshape(&x.b, &to),
                self.r.reshape(&x.r, &to),
                0.0,
            );
        }
        let Some(s) = self.pair_of(&[], &[-2.25]) else {
            return;
        };
        match self.b.scalar_value(&s.b) {
            Ok(-2.25) => {}
            other => self.miss(
                "scalar_value",
                format!("{other:?} where -2.25 was uploaded"),
            ),
        }
        let mut out = vec![0.0; 24];
        match self.b.download_into(&x.b, &mut out) {
            Ok(()) if out == x.r.values() => {}
            other => self.miss("download_into", format!("{other:?}, values {out:?}")),
        }
    }

    fn elementwise(&mut self) {
        let tol = self.tol.elementwise;
        for op in UnaryOp::ALL {
            let positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip);
            let x = if positive {
                self.positive(&[3, 7, 5], 2)
            } else {
                self.pair(&[3, 7, 5], 2)
            };
            let Some(x) = x else { return };
            self.same(
                &format!("unary {op:?}"),
                self.b.unary(op, &x.b),
                self.r.unary(op, &x.r),
                tol,
            );
        }
        let shapes: [(&[usize], &[usize]); 5] = [
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[3, 1]),
            (&[4], &[2, 3, 4]),
            (&[2, 1, 4], &[3, 1]),
            (&[2, 3], &[]),
        ];
        for op in BinaryOp::ALL {
            for (i, (da, db)) in shapes.iter().enumerate() {
                let (Some(a), Some(b)) = (self.pair(da, 3 + i as u64), self.positive(db, 4)) else {
                    return;
                };
                self.same(
                    &format!("binary {op:?} {da:?} with {db:?}"),
                    self.b.binary(op, &a.b, &b.b),
                    self.r.binary(op, &a.r, &b.r),
                    tol,
                );
            }
        }
        // Ties, for Greater and Equal and the maximum's choice.
        let (Some(a), Some(b)) = (
            self.pair_of(&[4], &[1.0, 2.0, -0.0, 3.0]),
            self.pair_of(&[4], &[1.0, 1.0, 0.0, 4.0]),
        ) else {
            return;
        };
        for op in BinaryOp::ALL {
            self.same(
                &format!("binary {op:?} with ties"),
                self.b.binary(op, &a.b, &b.b),
                self.r.binary(op, &a.r, &b.r),
                tol,
            );
        }
        // Shapes that do not broadcast are refused.
        let (Some(a), Some(b)) = (self.pair(&[2, 3], 5), self.pair(&[4], 6)) else {
            return;
        };
        self.same(
            "binary Add [2, 3] with [4] (no broadcast)",
            self.b.binary(BinaryOp::Add, &a.b, &b.b),
            self.r.binary(BinaryOp::Add, &a.r, &b.r),
            tol,
        );
    }

    fn reductions(&mut self) {
        let tol = self.tol.elementwise;
        let Some(x) = self.pair(&[3, 4, 5], 7) else {
            return;
        };
        for op in ReduceOp::ALL {
            for axes in [&[][..], &[0], &[1], &[2], &[0, 2], &[0, 1, 2]] {
                self.same(
                    &format!("reduce {op:?} over {axes:?}"),
                    self.b.reduce(op, &x.b, axes),
                    self.r.reduce(op, &x.r, axes),
                    tol,
                );
            }
        }
        self.same(
            "reduce Sum over axis 3 of a rank-3 tensor",
            self.b.reduce(ReduceOp::Sum, &x.b, &[3]),
            self.r.reduce(ReduceOp::Sum, &x.r, &[3]),
            tol,
        );
        // A long sum, where the order of additions shows.
        let Some(long) = self.pair(&[3, 20_000], 8) else {
            return;
        };
        self.same(
            "reduce Sum of 20000 values",
            self.b.reduce(ReduceOp::Sum, &long.b, &[1]),
            self.r.reduce(ReduceOp::Sum, &long.r, &[1]),
            tol * 10.0,
        );
        self.same("sum_all", self.b.sum_all(&x.b), self.r.sum_all(&x.r), tol);
        for to in [&[4, 1][..], &[1, 4, 5], &[5], &[]] {
            let shape = Shape::from(to);
            self.same(
                &format!("sum_to_shape [3, 4, 5] to {shape}"),
                self.b.sum_to_shape(&x.b, &shape),
                self.r.sum_to_shape(&x.r, &shape),
                tol,
            );
        }
        let Some(rows) = self.pair_of(
            &[3, 4],
            &[
                1.0,
                3.0,
                3.0,
                2.0,
                -1.0,
                -5.0,
                -1.0,
                -2.0,
                0.5,
                f32::NAN,
                0.25,
                0.75,
            ],
        ) else {
            return;
        };
        let (got, want) = (self.b.argmax_rows(&rows.b), self.r.argmax_rows(&rows.r));
        if got.as_ref().ok() != want.as_ref().ok() {
            self.miss(
                "argmax_rows (ties, NaN)",
                format!("{got:?} where the reference has {want:?}"),
            );
        }
        self.same(
            "sum_rows",
            self.b.sum_rows(&rows.b),
            self.r.sum_rows(&rows.r),
            tol,
        );
    }

    fn layout(&mut self) {
        let Some(x) = self.pair(&[2, 3, 4, 5], 9) else {
            return;
        };
        for perm in [
            &[0, 1, 2, 3][..],
            &[3, 2, 1, 0],
            &[0, 2, 3, 1],
            &[1, 0, 3, 2],
            &[0, 1],
        ] {
            self.same(
                &format!("permute {perm:?}"),
                self.b.permute(&x.b, perm),
                self.r.permute(&x.r, perm),
                0.0,
            );
        }
        for (axis, start, len) in [(0, 1, 1), (1, 0, 2), (2, 1, 3), (3, 4, 1), (3, 2, 4)] {
            self.same(
                &format!("slice axis {axis} from {start}, {len}"),
                self.b.slice(&x.b, axis, start, len),
                self.r.slice(&x.r, axis, start, len),
                0.0,
            );
        }
        let Some(y) = self.pair(&[2, 3, 1, 5], 10) else {
            return;
        };
        for axis in [2, 1] {
            self.same(
                &format!("concat [2, 3, 4, 5] and [2, 3, 1, 5] on axis {axis}"),
                self.b.concat(&[&x.b, &y.b], axis),
                self.r.concat(&[&x.r, &y.r], axis),
                0.0,
            );
        }
    }

    fn matmul(&mut self) {
        let tol = self.tol.products;
        for (m, k, n) in [(3, 5, 4), (1, 300, 7), (17, 33, 9), (64, 65, 66)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let da = if ta { [k, m] } else { [m, k] };
                let db = if tb { [n, k] } else { [k, n] };
                let (Some(a), Some(b)) = (self.pair(&da, 11), self.pair(&db, 12)) else {
                    return;
                };
                self.same(
                    &format!("matmul {m}x{k} by {k}x{n} (transposed: a {ta}, b {tb})"),
                    self.b.matmul(&a.b, &b.b, ta, tb),
                    self.r.matmul(&a.r, &b.r, ta, tb),
                    tol,
                );
                self.same(
                    &format!("matmul_gradient {m}x{k} by {k}x{n} (transposed: a {ta}, b {tb})"),
                    self.b.matmul_gradient(&a.b, &b.b, ta, tb),
                    self.r.matmul(&a.r, &b.r, ta, tb),
                    tol,
                );
            }
        }
        let (Some(a), Some(b)) = (self.pair(&[3, 5], 13), self.pair(&[4, 2], 14)) else {
            return;
        };
        self.same(
            "matmul 3x5 by 4x2 (inner sizes differ)",
            self.b.matmul(&a.b, &b.b, false, false),
            self.r.matmul(&a.r, &b.r, false, false),
            tol,
        );
    }

    /// (input, weight, stride, padding): odd sizes, both strides and paddings, 1x1 and 3x3, and
    /// sizes where fast backends switch algorithm (many channels; a 56x56 output).
    fn conv_cases() -> Vec<([usize; 4], [usize; 4], usize, usize)> {
        let mut cases = Vec::new();
        for batch in [1, 3] {
            for k in [1, 3] {
                for s in [1, 2] {
                    for p in [0, 1] {
                        cases.push(([batch, 3, 7, 5], [4, 3, k, k], s, p));
                    }
                }
            }
        }
        cases.push(([2, 128, 6, 6], [8, 128, 3, 3], 1, 1));
        cases.push(([1, 4, 56, 56], [8, 4, 3, 3], 1, 1));
        cases.push(([5, 8, 9, 9], [6, 8, 3, 3], 1, 1));
        cases
    }

    fn convolution(&mut self) {
        let tol = self.tol.products;
        for (seed, (xd, wd, stride, padding)) in Self::conv_cases().into_iter().enumerate() {
            let seed = 100 + 10 * seed as u64;
            let p = Conv2dParams { stride, padding };
            let case = format!("x {xd:?} w {wd:?} stride {stride} padding {padding}");
            let (Some(x), Some(w), Some(bias)) = (
                self.pair(&xd, seed),
                self.pair(&wd, seed + 1),
                self.pair(&[wd[0]], seed + 2),
            ) else {
                return;
            };
            let want = self
                .r
                .conv2d(&x.r, &w.r, p)
                .expect("the reference convolves");
            self.same(
                &format!("conv2d {case}"),
                self.b.conv2d(&x.b, &w.b, p),
                Ok(want.clone()),
                tol,
            );
            let Some(dy) = self.pair(want.shape().dims(), seed + 3) else {
                return;
            };
            let (xs, ws) = (Shape::from(xd), Shape::from(wd));
            self.same(
                &format!("conv2d_backward_input {case}"),
                self.b.conv2d_backward_input(&dy.b, &w.b, &xs, p),
                self.r.conv2d_backward_input(&dy.r, &w.r, &xs, p),
                tol,
            );
            self.same(
                &format!("conv2d_backward_weight {case}"),
                self.b.conv2d_backward_weight(&x.b, &dy.b, &ws, p),
                self.r.conv2d_backward_weight(&x.r, &dy.r, &ws, p),
                tol,
            );
            for relu in [false, true] {
                self.same(
                    &format!("conv2d_bias_act (relu {relu}) {case}"),
                    self.b.conv2d_bias_act(&x.b, &w.b, &bias.b, p, relu),
                    self.r.conv2d_bias_act(&x.r, &w.r, &bias.r, p, relu),
                    tol,
                );
            }
        }
        // Channels that disagree are refused.
        let (Some(x), Some(w)) = (self.pair(&[1, 3, 5, 5], 1), self.pair(&[2, 4, 3, 3], 2)) else {
            return;
        };
        self.same(
            "conv2d with 3 input channels and a 4-channel weight",
            self.b.conv2d(&x.b, &w.b, Conv2dParams::default()),
            self.r.conv2d(&x.r, &w.r, Conv2dParams::default()),
            tol,
        );
    }

    fn pooling(&mut self) {
        let tol = self.tol.elementwise;
        for (dims, kernel, stride) in [
            ([2, 3, 8, 8], 2, 2),
            ([1, 2, 7, 9], 2, 2),
            ([2, 1, 9, 7], 3, 2),
            ([1, 2, 6, 6], 3, 3),
        ] {
            let p = Pool2dParams { kernel, stride };
            let case = format!("{dims:?} kernel {kernel} stride {stride}");
            let Some(x) = self.pair(&dims, 20 + kernel as u64) else {
                return;
            };
            let (got, want) = (self.b.max_pool2d(&x.b, p), self.r.max_pool2d(&x.r, p));
            let (Ok((y, indices)), Ok((yr, ir))) = (got, want) else {
                self.miss(&format!("max_pool2d {case}"), "refused".to_string());
                continue;
            };
            self.close(&format!("max_pool2d {case}"), &y, &yr, tol);
            let Some(dy) = self.pair(yr.shape().dims(), 30) else {
                return;
            };
            let xs = Shape::from(dims);
            self.same(
                &format!("max_pool2d_backward {case}"),
                self.b.max_pool2d_backward(&dy.b, &indices, &xs),
                self.r.max_pool2d_backward(&dy.r, &ir, &xs),
                tol,
            );
            self.same(
                &format!("avg_pool2d {case}"),
                self.b.avg_pool2d(&x.b, p),
                self.r.avg_pool2d(&x.r, p),
                tol,
            );
            self.same(
                &format!("avg_pool2d_backward {case}"),
                self.b.avg_pool2d_backward(&dy.b, &xs, p),
                self.r.avg_pool2d_backward(&dy.r, &xs, p),
                tol,
            );
        }
        // Ties go to the first maximum; NaN wins its window.
        let data = [
            1.0,
            1.0,
            2.0,
            f32::NAN,
            3.0,
            3.0,
            0.0,
            1.0,
            5.0,
            4.0,
            5.0,
            5.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ];
        let Some(x) = self.pair_of(&[1, 1, 4, 4], &data) else {
            return;
        };
        let p = Pool2dParams {
            kernel: 2,
            stride: 2,
        };
        if let (Ok((y, i)), Ok((yr, ir))) = (self.b.max_pool2d(&x.b, p), self.r.max_pool2d(&x.r, p))
        {
            self.close("max_pool2d with ties and NaN", &y, &yr, 0.0);
            if let Some(dy) = self.pair(&[1, 1, 2, 2], 31) {
                let xs = Shape::from([1, 1, 4, 4]);
                self.same(
                    "max_pool2d_backward with ties (the first maximum gets the gradient)",
                    self.b.max_pool2d_backward(&dy.b, &i, &xs),
                    self.r.max_pool2d_backward(&dy.r, &ir, &xs),
                    0.0,
                );
            }
        }
    }

    fn layers(&mut self) {
        let tol = self.tol.elementwise;
        let (Some(x), Some(c), Some(s)) = (
            self.pair(&[2, 3, 4, 5], 40),
            self.pair(&[3], 41),
            self.pair_of(&[], &[-1.5]),
        ) else {
            return;
        };
        let bin = |name: &str| format!("{name} [2, 3, 4, 5]");
        self.same(
            &bin("add"),
            self.b.add(&x.b, &x.b),
            self.r.add(&x.r, &x.r),
            tol,
        );
        self.same(
            &bin("sub"),
            self.b.sub(&x.b, &c.b),
            self.r.sub(&x.r, &c.r),
            tol,
        );
        self.same(
            &bin("scale"),
            self.b.scale(&x.b, 0.3),
            self.r.scale(&x.r, 0.3),
            tol,
        );
        self.same(
            &bin("mul_scalar"),
            self.b.mul_scalar(&x.b, &s.b),
            self.r.mul_scalar(&x.r, &s.r),
            tol,
        );
        let shape = Shape::from([2, 3]);
        self.same(
            "broadcast_scalar to [2, 3]",
            self.b.broadcast_scalar(&s.b, &shape),
            self.r.broadcast_scalar(&s.r, &shape),
            tol,
        );
        self.same(
            &bin("add_channel_bias"),
            self.b.add_channel_bias(&x.b, &c.b),
            self.r.add_channel_bias(&x.r, &c.r),
            tol,
        );
        self.same(
            &bin("channel_affine"),
            self.b.channel_affine(&x.b, &c.b, &c.b),
            self.r.channel_affine(&x.r, &c.r, &c.r),
            tol,
        );
        self.same(
            &bin("channel_bias_grad"),
            self.b.channel_bias_grad(&x.b),
            self.r.channel_bias_grad(&x.r),
            tol,
        );
        self.same(&bin("relu"), self.b.relu(&x.b), self.r.relu(&x.r), tol);
        let Some(y) = self.pair(&[2, 3, 4, 5], 42) else {
            return;
        };
        let (Ok(yb), Ok(yr)) = (self.b.relu(&y.b), self.r.relu(&y.r)) else {
            return self.miss("relu", "refused".into());
        };
        self.same(
            &bin("relu_backward"),
            self.b.relu_backward(&x.b, &yb),
            self.r.relu_backward(&x.r, &yr),
            tol,
        );
        for relu in [true, false] {
            let got = self.b.bias_act_backward(&x.b, relu.then_some(&yb));
            let want = self.r.bias_act_backward(&x.r, relu.then_some(&yr));
            self.same2(
                &bin(&format!("bias_act_backward (relu {relu})")),
                got,
                want,
                tol,
            );
        }
        // A copy whose storage no other tensor shares, as the backend may write into it.
        let Some(y2) = self.pair_of(&[2, 3, 4, 5], &self.r.download(&yr).expect("host")) else {
            return;
        };
        let got = self.b.bias_relu_backward_consuming(&x.b, y2.b);
        let want = self.r.bias_relu_backward_consuming(&x.r, y2.r);
        self.same2(&bin("bias_relu_backward_consuming"), got, want, tol);
        let (Some(rows), Some(f)) = (self.pair(&[4, 6], 43), self.pair(&[6], 44)) else {
            return;
        };
        self.same(
            "add_row_bias [4, 6]",
            self.b.add_row_bias(&rows.b, &f.b),
            self.r.add_row_bias(&rows.r, &f.r),
            tol,
        );
        for keep in [1.0, 0.5, 0.9] {
            self.same(
                &format!("dropout keep {keep} (the mask from the seed)"),
                self.b.dropout(&x.b, keep, 77),
                self.r.dropout(&x.r, keep, 77),
                tol,
            );
            self.same(
                &format!("dropout_backward keep {keep}"),
                self.b.dropout_backward(&x.b, keep, 77),
                self.r.dropout_backward(&x.r, keep, 77),
                tol,
            );
        }
        self.same(
            "dropout keep 0 (refused)",
            self.b.dropout(&x.b, 0.0, 1),
            self.r.dropout(&x.r, 0.0, 1),
            tol,
        );
    }

    /// Compares a pair of results (a gradient and a bias gradient).
    fn same2(
        &mut self,
        op: &str,
        got: Result<(B::Tensor, B::Tensor)>,
        want: Result<(RefTensor, RefTensor)>,
        tol: f32,
    ) {
        match (got, want) {
            (Ok((g0, g1)), Ok((w0, w1))) => {
                self.close(&format!("{op}, first output"), &g0, &w0, tol);
                self.close(&format!("{op}, second output"), &g1, &w1, tol);
            }
            (Err(_), Err(_)) => {}
            (g, w) => self.miss(
                op,
                format!(
                    "{:?} where the reference gives {:?}",
                    g.map(|_| ()),
                    w.map(|_| ())
                ),
            ),
        }
    }

    fn losses(&mut self) {
        let tol = self.tol.elementwise;
        let (Some(logits), Some(dy), Some(g)) = (
            self.pair(&[4, 7], 50),
            self.pair(&[4, 7], 51),
            self.pair_of(&[], &[0.75]),
        ) else {
            return;
        };
        let (Ok(y), Ok(yr)) = (
            self.b.softmax_rows(&logits.b),
            self.r.softmax_rows(&logits.r),
        ) else {
            return self.miss("softmax_rows", "refused".into());
        };
        self.close("softmax_rows [4, 7]", &y, &yr, tol);
        self.same(
            "softmax_rows_backward [4, 7]",
            self.b.softmax_rows_backward(&dy.b, &y),
            self.r.softmax_rows_backward(&dy.r, &yr),
            tol,
        );
        self.same(
            "l2_loss",
            self.b.l2_loss(&logits.b),
            self.r.l2_loss(&logits.r),
            tol,
        );
        let labels = [0, 6, 3, 3];
        let got = self.b.cross_entropy(&logits.b, &labels);
        let want = self.r.cross_entropy(&logits.r, &labels);
        let probs = match (&got, &want) {
            (Ok((_, p)), Ok((_, pr))) => Some((p.clone(), pr.clone())),
            _ => None,
        };
        self.same2("cross_entropy", got, want, tol);
        if let Some((p, pr)) = probs {
            self.same(
                "cross_entropy_backward",
                self.b.cross_entropy_backward(&p, &labels, &g.b),
                self.r.cross_entropy_backward(&pr, &labels, &g.r),
                tol,
            );
        }
        let got = self.b.cross_entropy(&logits.b, &[0, 7, 1, 1]);
        let want = self.r.cross_entropy(&logits.r, &[0, 7, 1, 1]);
        self.same2(
            "cross_entropy with a label out of range (refused)",
            got,
            want,
            tol,
        );
    }

    fn optimisers(&mut self) {
        let tol = self.tol.elementwise;
        let dims = [3, 5];
        let (Some(p), Some(v), Some(g)) = (
            self.pair(&dims, 60),
            self.pair(&dims, 61),
            self.pair(&dims, 62),
        ) else {
            return;
        };
        let (mut pb, mut vb, mut pr, mut vr) = (p.b.clone(), v.b.clone(), p.r.clone(), v.r.clone());
        let got = self.b.sgd_step(&mut pb, &mut vb, &g.b, 0.1, 0.9, 0.01);
        let want = self.r.sgd_step(&mut pr, &mut vr, &g.r, 0.1, 0.9, 0.01);
        if got.is_ok() != want.is_ok() {
            self.miss(
                "sgd_step",
                format!("{got:?} where the reference gives {want:?}"),
            );
        }
        self.close("sgd_step: the parameter", &pb, &pr, tol);
        self.close("sgd_step: the velocity", &vb, &vr, tol);
        let Some(m) = self.pair(&dims, 63) else {
            return;
        };
        let Some(v2) = self.positive(&dims, 64) else {
            return;
        };
        let (mut pb, mut mb, mut vb) = (p.b.clone(), m.b.clone(), v2.b.clone());
        let (mut pr, mut mr, mut vr) = (p.r.clone(), m.r.clone(), v2.r.clone());
        let hp = AdamParams {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 3,
        };
        let got = self.b.adam_step(&mut pb, &mut mb, &mut vb, &g.b, hp);
        let want = self.r.adam_step(&mut pr, &mut mr, &mut vr, &g.r, hp);
        if got.is_ok() != want.is_ok() {
            self.miss(
                "adam_step",
                format!("{got:?} where the reference gives {want:?}"),
            );
        }
        self.close("adam_step: the parameter", &pb, &pr, tol);
        self.close("adam_step: the first moment", &mb, &mr, tol);
        self.close("adam_step: the second moment", &vb, &vr, tol);
        let (mut yb, mut yr) = (p.b.clone(), p.r.clone());
        let got = self.b.axpy(&mut yb, -0.5, &g.b);
        let want = self.r.axpy(&mut yr, -0.5, &g.r);
        if got.is_ok() != want.is_ok() {
            self.miss(
                "axpy",
                format!("{got:?} where the reference gives {want:?}"),
            );
        }
        self.close("axpy", &yb, &yr, tol);
        // In-place steps leave clones alone: a clone shares the buffer only until written.
        self.close(
            "sgd_step leaves the parameter's clone as it was",
            &p.b,
            &p.r,
            0.0,
        );
    }
}

/// Equal within `tol` relative to max(1, |want|); NaN matches NaN, infinities match themselves.
fn agree(got: f32, want: f32, tol: f32) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= tol * want.abs().max(1.0)
}
