//! The gradient suite any backend runs in one line: every tape op's gradient, on that backend,
//! against finite differences ([`check_gradients`]), the VGG ops and those other networks need.
//! `vgg_tensor::conformance` checks the values of a backend's ops against the reference backend;
//! this checks that the tape's backward rules, run on the backend's kernels (the gradient
//! convolutions, the fused backward passes), agree with its forward.
//!
//! ```
//! vgg_autodiff::conformance::assert_conforms(&vgg_tensor::reference::ReferenceBackend);
//! ```

use vgg_tensor::{Backend, Conv2dParams, Pool2dParams, Shape, UnaryOp};

use crate::{check_gradients, GradCheck, Result, Tape, Var};

type T<B> = <B as vgg_tensor::Device>::Tensor;

/// The inputs of a case, or the first error making them.
fn all<X>(items: Vec<vgg_tensor::Result<X>>) -> vgg_tensor::Result<Vec<X>> {
    items.into_iter().collect()
}

/// Values spaced at least 0.05 apart and away from 0, shuffled by `seed`: no ties or kinks
/// within a gradient check's eps, for cases of one's own.
pub fn spaced<B: Backend>(b: &B, dims: &[usize], seed: u64) -> vgg_tensor::Result<T<B>> {
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n)
        .map(|i| (i as f32 + 1.0) * 0.05 * if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    for i in (1..n).rev() {
        let j = (vgg_tensor::random::bits(seed, i as u64) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    b.upload(&Shape::from(dims), &v)
}

/// Values in [0.5, 2]: for log, sqrt, reciprocals and divisors.
fn positive<B: Backend>(b: &B, dims: &[usize], seed: u64) -> vgg_tensor::Result<T<B>> {
    b.random_uniform(&Shape::from(dims), 0.5, 2.0, seed)
}

fn normal<B: Backend>(b: &B, dims: &[usize], seed: u64) -> vgg_tensor::Result<T<B>> {
    b.random_normal(&Shape::from(dims), 0.0, 1.0, seed)
}

/// Runs the cases and collects what failed.
struct Suite<'a, B: Backend> {
    b: &'a B,
    failures: Vec<String>,
}

impl<B: Backend> Suite<'_, B> {
    /// The gradients of `f` at `inputs` against finite differences, with `cfg`.
    fn case_with(
        &mut self,
        what: &str,
        inputs: vgg_tensor::Result<Vec<T<B>>>,
        cfg: &GradCheck,
        f: impl Fn(&Tape<B>, &[Var<B>]) -> Result<Var<B>>,
    ) {
        let outcome = inputs
            .map_err(crate::AutodiffError::from)
            .and_then(|inputs| check_gradients(self.b, &inputs, f, cfg));
        match outcome {
            Ok(report) if report.coords_checked > 0 => {}
            Ok(_) => self.failures.push(format!("{what}: no coordinate checked")),
            Err(e) => self.failures.push(format!("{what}: {e}")),
        }
    }

    fn case(
        &mut self,
        what: &str,
        inputs: vgg_tensor::Result<Vec<T<B>>>,
        f: impl Fn(&Tape<B>, &[Var<B>]) -> Result<Var<B>>,
    ) {
        self.case_with(what, inputs, &GradCheck::default(), f)
    }

    fn elementwise(&mut self) {
        let b = self.b;
        for (da, dc) in [
            (&[2, 3, 4][..], &[2, 3, 4][..]),
            (&[2, 3, 4], &[3, 1]),
            (&[4], &[2, 3, 4]),
            (&[2, 1, 4], &[3, 1]),
            (&[2, 3], &[]),
        ] {
            let what = format!("{da:?} with {dc:?}");
            let two = || all(vec![spaced(b, da, 1), spaced(b, dc, 2)]);
            self.case(&format!("add {what}"), two(), |t, v| t.add(&v[0], &v[1]));
            self.case(&format!("sub {what}"), two(), |t, v| t.sub(&v[0], &v[1]));
            self.case(&format!("mul {what}"), two(), |t, v| t.mul(&v[0], &v[1]));
            self.case(&format!("maximum {what}"), two(), |t, v| {
                t.maximum(&v[0], &v[1])
            });
            self.case(&format!("minimum {what}"), two(), |t, v| {
                t.minimum(&v[0], &v[1])
            });
            let divisor = all(vec![spaced(b, da, 1), positive(b, dc, 3)]);
            self.case(&format!("div {what}"), divisor, |t, v| t.div(&v[0], &v[1]));
        }
        for op in UnaryOp::ALL {
            let x = if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip) {
                positive(b, &[3, 5], 4)
            } else {
                spaced(b, &[3, 5], 4)
            };
            self.case(&format!("{op:?}"), x.map(|x| vec![x]), |t, v| {
                t.unary(op, &v[0])
            });
        }
        self.case("scale", normal(b, &[7], 5).map(|x| vec![x]), |t, v| {
            t.scale(&v[0], -2.5)
        });
        self.case("sum", normal(b, &[7], 6).map(|x| vec![x]), |t, v| {
            t.sum(&v[0])
        });
        self.case("mean", normal(b, &[7], 7).map(|x| vec![x]), |t, v| {
            t.mean(&v[0])
        });
    }

    fn reductions_and_layout(&mut self) {
        let b = self.b;
        let x = || spaced(b, &[2, 3, 4, 5], 5).map(|x| vec![x]);
        for axes in [&[0][..], &[1, 3], &[0, 2, 3], &[]] {
            self.case(&format!("sum_axes {axes:?}"), x(), |t, v| {
                t.sum_axes(&v[0], axes)
            });
            self.case(&format!("mean_axes {axes:?}"), x(), |t, v| {
                t.mean_axes(&v[0], axes)
            });
            self.case(&format!("max_axes {axes:?}"), x(), |t, v| {
                t.max_axes(&v[0], axes)
            });
        }
        self.case("permute", x(), |t, v| t.permute(&v[0], &[3, 1, 0, 2]));
        self.case("transpose", x(), |t, v| t.transpose(&v[0], 1, 3));
        self.case("slice", x(), |t, v| t.slice(&v[0], 2, 1, 2));
        self.case("slice at the start", x(), |t, v| t.slice(&v[0], 0, 0, 1));
        let parts = all(vec![spaced(b, &[2, 3, 4], 6), spaced(b, &[2, 1, 4], 7)]);
        self.case("concat", parts, |t, v| t.concat(&[&v[0], &v[1], &v[0]], 1));
        self.case(
            "flatten",
            normal(b, &[2, 3, 2, 2], 7).map(|x| vec![x]),
            |t, v| t.flatten(&v[0]),
        );
        self.case("reshape", normal(b, &[6, 2], 8).map(|x| vec![x]), |t, v| {
            t.reshape(&v[0], &Shape::from([3, 4]))
        });
    }

    fn pooling_and_activations(&mut self) {
        let b = self.b;
        let img = || spaced(b, &[2, 3, 7, 6], 8).map(|x| vec![x]);
        for (kernel, stride) in [(2, 2), (3, 2), (2, 1)] {
            let p = Pool2dParams { kernel, stride };
            self.case(&format!("avg_pool2d {kernel}/{stride}"), img(), |t, v| {
                t.avg_pool2d(&v[0], p)
            });
            self.case(&format!("max_pool2d {kernel}/{stride}"), img(), |t, v| {
                t.max_pool2d(&v[0], p)
            });
        }
        self.case("global_avg_pool", img(), |t, v| t.global_avg_pool(&v[0]));
        // Overlapping windows (7 -> 3), repeated ones (6 -> 7, 2 -> 7).
        self.case("adaptive_avg_pool2d 7x6 to 3x7", img(), |t, v| {
            t.adaptive_avg_pool2d(&v[0], (3, 7))
        });
        let small = spaced(b, &[1, 2, 2, 3], 9).map(|x| vec![x]);
        self.case("adaptive_avg_pool2d 2x3 to 7x7", small, |t, v| {
            t.adaptive_avg_pool2d(&v[0], (7, 7))
        });
        self.case("relu", spaced(b, &[3, 7], 5).map(|x| vec![x]), |t, v| {
            t.relu(&v[0])
        });
        self.case("dropout", normal(b, &[200], 6).map(|x| vec![x]), |t, v| {
            t.dropout(&v[0], 0.6, 42)
        });
        self.case("softmax", normal(b, &[3, 6], 9).map(|x| vec![x]), |t, v| {
            t.softmax(&v[0])
        });
    }

    fn convolutions(&mut self) {
        let b = self.b;
        for (stride, padding) in [(1, 0), (1, 1), (2, 0), (2, 1)] {
            let p = Conv2dParams { stride, padding };
            let inputs = all(vec![
                normal(b, &[2, 3, 7, 6], 1),
                normal(b, &[4, 3, 3, 3], 2),
            ]);
            self.case(
                &format!("conv2d 3x3/{stride} p{padding}"),
                inputs,
                |t, v| t.conv2d(&v[0], &v[1], p),
            );
        }
        // Normal values: spaced ones this large make f32 sums too coarse for 50 taps.
        let p = Conv2dParams {
            stride: 3,
            padding: 2,
        };
        let inputs = all(vec![
            normal(b, &[1, 2, 9, 8], 9),
            normal(b, &[3, 2, 5, 5], 10),
        ]);
        self.case("conv2d 5x5/3 p2", inputs, |t, v| t.conv2d(&v[0], &v[1], p));
        let same = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        for relu in [false, true] {
            let inputs = all(vec![
                spaced(b, &[2, 2, 5, 4], 1),
                spaced(b, &[3, 2, 3, 3], 2),
                spaced(b, &[3], 3),
            ]);
            self.case(&format!("conv2d_bias_act relu={relu}"), inputs, |t, v| {
                t.conv2d_bias_act(&v[0], &v[1], &v[2], same, relu)
            });
        }
        let inputs = all(vec![normal(b, &[2, 3, 4, 5], 1), normal(b, &[3], 2)]);
        self.case("add_channel_bias", inputs, |t, v| {
            t.add_channel_bias(&v[0], &v[1])
        });
    }

    fn products_and_losses(&mut self) {
        let b = self.b;
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = if ta { [4, 3] } else { [3, 4] };
            let c = if tb { [5, 4] } else { [4, 5] };
            let inputs = all(vec![normal(b, &a, 1), normal(b, &c, 2)]);
            self.case(&format!("matmul {ta}/{tb}"), inputs, |t, v| {
                t.matmul(&v[0], &v[1], ta, tb)
            });
        }
        let inputs = all(vec![
            normal(b, &[3, 4], 1),
            normal(b, &[5, 4], 2),
            normal(b, &[5], 3),
        ]);
        self.case("linear", inputs, |t, v| t.linear(&v[0], &v[1], &v[2]));
        let inputs = all(vec![normal(b, &[4, 5], 1), normal(b, &[5], 2)]);
        self.case("add_row_bias", inputs, |t, v| t.add_row_bias(&v[0], &v[1]));
        self.case("l2_loss", normal(b, &[3, 4], 1).map(|x| vec![x]), |t, v| {
            t.l2_loss(&v[0])
        });
        self.case(
            "cross_entropy",
            normal(b, &[4, 5], 2).map(|x| vec![x]),
            |t, v| t.cross_entropy(&v[0], &[0, 4, 2, 2]),
        );
    }

    fn batch_norm(&mut self) {
        let b = self.b;
        for dims in [&[4, 3, 5, 2][..], &[6, 3]] {
            let inputs = || {
                all(vec![
                    spaced(b, dims, 11),
                    positive(b, &[3], 12),
                    spaced(b, &[3], 13),
                ])
            };
            self.case(&format!("batch_norm {dims:?}"), inputs(), |t, v| {
                Ok(t.batch_norm(&v[0], &v[1], &v[2], 1e-5)?.y)
            });
            let Ok(stats) = spaced(b, &[3], 14).and_then(|m| Ok((m, positive(b, &[3], 15)?)))
            else {
                self.failures.push("batch_norm_eval: inputs".into());
                continue;
            };
            self.case(&format!("batch_norm_eval {dims:?}"), inputs(), |t, v| {
                t.batch_norm_eval(&v[0], &stats.0, &stats.1, &v[1], &v[2], 1e-5)
            });
        }
    }

    /// conv-relu, conv-relu, pool, flatten, linear, cross-entropy: every parameter at once.
    fn small_convnet(&mut self) {
        let b = self.b;
        let p = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        let scaled = |dims: &[usize], seed, by| b.scale(&normal(b, dims, seed)?, by);
        let inputs = all(vec![
            spaced(b, &[2, 2, 6, 6], 1),
            scaled(&[3, 2, 3, 3], 2, 0.5),
            normal(b, &[3], 3),
            scaled(&[4, 3, 3, 3], 4, 0.5),
            normal(b, &[4], 5),
            scaled(&[5, 36], 6, 0.3),
            normal(b, &[5], 7),
        ]);
        let cfg = GradCheck {
            eps: 1e-3,
            atol: 2e-3,
            ..GradCheck::default()
        };
        self.case_with("a small convnet", inputs, &cfg, |t, v| {
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
        });
    }
}

/// Every case on `backend`: what failed, one line each (empty: it conforms).
pub fn check<B: Backend>(backend: &B) -> Vec<String> {
    let mut suite = Suite {
        b: backend,
        failures: Vec::new(),
    };
    backend.execute(|| {
        suite.elementwise();
        suite.reductions_and_layout();
        suite.pooling_and_activations();
        suite.convolutions();
        suite.products_and_losses();
        suite.batch_norm();
        suite.small_convnet();
    });
    suite.failures
}

/// Panics, listing every failed case, unless `backend`'s gradients all agree with finite
/// differences.
pub fn assert_conforms<B: Backend>(backend: &B) {
    let failures = check(backend);
    assert!(
        failures.is_empty(),
        "{}: {} gradient case(s) fail:\n  - {}",
        backend.name(),
        failures.len(),
        failures.join("\n  - ")
    );
}
