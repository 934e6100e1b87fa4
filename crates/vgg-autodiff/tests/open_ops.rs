//! The ops networks beyond VGG need, and ops added from outside: the gradient suite
//! (`vgg_autodiff::conformance`: every op's gradient against finite differences) on the CPU
//! backend and on the plain-loops reference backend (which has only the primitives, so this also
//! checks the composites written in them), and custom ops.

use std::cell::Cell;
use std::rc::Rc;

// The example's own Swish, so the op the example trains with is the one checked here.
#[allow(dead_code)]
#[path = "../examples/resnet_digits.rs"]
mod resnet_digits;

use vgg_autodiff::{check_gradients, AutodiffError, GradCheck, Tape, Var};
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;
use vgg_tensor::reference::ReferenceBackend;

use resnet_digits::Swish;

fn spaced<B: Backend>(b: &B, dims: &[usize], seed: u64) -> B::Tensor {
    vgg_autodiff::conformance::spaced(b, dims, seed).unwrap()
}

fn check<B: Backend>(
    b: &B,
    what: &str,
    inputs: &[B::Tensor],
    f: impl Fn(&Tape<B>, &[Var<B>]) -> vgg_autodiff::Result<Var<B>>,
) {
    let report = check_gradients(b, inputs, f, &GradCheck::default())
        .unwrap_or_else(|e| panic!("{} {what}: {e}", b.name()));
    assert!(report.coords_checked > 0);
}

/// The normalised batch has mean 0 and variance 1 per channel before gamma and beta (its
/// gradients are in the suite, `vgg_autodiff::conformance`).
fn batch_norm_normalises<B: Backend>(b: &B) {
    // The normalised batch has mean 0 and variance 1 per channel before gamma and beta.
    let x = spaced(b, &[8, 2, 3, 3], 16);
    let tape = Tape::inference(b.clone());
    let ones = tape.constant(b.full(&Shape::from([2]), 1.0).unwrap());
    let zeros = tape.constant(b.zeros(&Shape::from([2])).unwrap());
    let out = tape
        .batch_norm(&tape.constant(x), &ones, &zeros, 1e-5)
        .unwrap();
    let y = out.y.value();
    let mean = b
        .download(&b.reduce(ReduceOp::Sum, y, &[0, 2, 3]).unwrap())
        .unwrap();
    let sq = b
        .download(
            &b.reduce(
                ReduceOp::Sum,
                &b.unary(UnaryOp::Square, y).unwrap(),
                &[0, 2, 3],
            )
            .unwrap(),
        )
        .unwrap();
    for c in 0..2 {
        assert!(
            (mean[c] / 72.0).abs() < 1e-5,
            "{}: mean {}",
            b.name(),
            mean[c]
        );
        assert!(
            (sq[c] / 72.0 - 1.0).abs() < 1e-3,
            "{}: variance {}",
            b.name(),
            sq[c]
        );
    }
    assert_eq!(out.mean.shape().dims(), [2]);
    assert_eq!(out.var.shape().dims(), [2]);
}

/// PyTorch's AdaptiveAvgPool2d by its definition: each output cell the mean of its window.
fn adaptive_avg_pool_is_pytorchs<B: Backend>(b: &B) {
    for ((h, w), (oh, ow)) in [
        ((7, 6), (3, 4)),
        ((1, 1), (7, 7)),
        ((2, 3), (7, 7)),
        ((5, 5), (5, 5)),
    ] {
        let x = spaced(b, &[2, 3, h, w], 21);
        let host = b.download(&x).unwrap();
        let tape = Tape::inference(b.clone());
        let y = tape
            .adaptive_avg_pool2d(&tape.constant(x), (oh, ow))
            .unwrap();
        assert_eq!(y.shape().dims(), [2, 3, oh, ow]);
        let got = b.download(y.value()).unwrap();
        let mut want = Vec::new();
        for plane in host.chunks(h * w) {
            for i in 0..oh {
                for j in 0..ow {
                    let (r0, r1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
                    let (c0, c1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                    let mut sum = 0.0;
                    for r in r0..r1 {
                        for c in c0..c1 {
                            sum += plane[r * w + c];
                        }
                    }
                    want.push(sum / ((r1 - r0) * (c1 - c0)) as f32);
                }
            }
        }
        for (g, e) in got.iter().zip(&want) {
            assert!(
                (g - e).abs() < 1e-5,
                "{} {h}x{w} to {oh}x{ow}: {g} vs {e}",
                b.name()
            );
        }
    }
}

fn custom_ops<B: Backend>(b: &B) {
    check(b, "swish", &[spaced(b, &[4, 6], 17)], |t, v| {
        t.apply(Swish, &[&v[0]])
    });
    // Composed with built-in ops, used twice (accumulation).
    check(b, "swish twice", &[spaced(b, &[5], 18)], |t, v| {
        let s = t.apply(Swish, &[&v[0]])?;
        t.mul(&s, &t.apply(Swish, &[&v[0]])?)
    });
    // The closure form, with two inputs: a * b + b.
    check(
        b,
        "closure op",
        &[spaced(b, &[3], 19), spaced(b, &[3], 20)],
        |t, v| {
            let be = t.backend();
            let y = be.add(&be.mul(v[0].value(), v[1].value())?, v[1].value())?;
            let (a, c) = (v[0].value().clone(), v[1].value().clone());
            t.custom_op("a*b+b", &[&v[0], &v[1]], y, 0, move |be, dy, needs| {
                Ok(vec![
                    needs[0].then(|| be.mul(dy, &c)).transpose()?,
                    needs[1]
                        .then(|| be.mul(dy, &be.add(&a, &be.scalar(1.0)?)?))
                        .transpose()?,
                ])
            })
        },
    );
}

/// The gradient suite every backend runs, and what the tape does beyond it.
fn all<B: Backend>(b: &B) {
    vgg_autodiff::conformance::assert_conforms(b);
    batch_norm_normalises(b);
    adaptive_avg_pool_is_pytorchs(b);
    custom_ops(b);
}

#[test]
fn every_gradient_on_the_cpu() {
    let b = CpuBackend::new(2).unwrap();
    b.execute(|| all(&b));
}

#[test]
fn every_gradient_on_the_reference_backend() {
    all(&ReferenceBackend);
}

#[test]
fn custom_ops_take_part_in_pruning_and_are_checked() {
    let b = ReferenceBackend;
    let tape = Tape::new(b.clone());
    let w = tape.param("w", spaced(&b, &[3], 1));
    let x = tape.constant(spaced(&b, &[3], 2));
    let asked = Rc::new(Cell::new(Vec::new()));
    let seen = asked.clone();
    let y = tape
        .custom_op(
            "spy",
            &[&w, &x],
            b.mul(w.value(), x.value()).unwrap(),
            0,
            move |_, dy, needs| {
                seen.set(needs.to_vec());
                Ok(vec![Some(dy.clone()), needs[1].then(|| dy.clone())])
            },
        )
        .unwrap();
    let loss = tape.sum(&y).unwrap();
    tape.backward(&loss).unwrap();
    // The constant input's gradient was not asked for.
    assert_eq!(asked.take(), [true, false]);

    // On constants only, or on an inference tape, the backward is never recorded.
    let tape = Tape::inference(b.clone());
    let w = tape.param("w", spaced(&b, &[3], 1));
    let y = tape.apply(Swish, &[&w]).unwrap();
    assert!(!y.is_tracked());

    // A backward returning a gradient of the wrong shape is named, not summed.
    let tape = Tape::new(b.clone());
    let w = tape.param("w", spaced(&b, &[3], 1));
    let y = tape
        .custom_op("broken", &[&w], w.value().clone(), 0, |be, _, _| {
            Ok(vec![Some(be.zeros(&Shape::from([4]))?)])
        })
        .unwrap();
    let loss = tape.sum(&y).unwrap();
    let e = tape.backward(&loss).unwrap_err();
    assert!(
        matches!(e, AutodiffError::BadBackward { op: "broken", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("[4]") && e.to_string().contains("[3]"),
        "{e}"
    );

    // Masks have no gradient.
    let tape = Tape::new(b.clone());
    let w = tape.param("w", spaced(&b, &[3], 1));
    assert!(tape.binary(BinaryOp::Greater, &w, &w).is_err());
}
