//! Gradients beyond the suite every backend runs (`vgg_autodiff::conformance`, run on the CPU by
//! open_ops.rs): values used twice, the checker itself, fused nodes against their parts.
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

#[test]
fn a_linear_layer_of_the_wrong_width_is_named_as_such() {
    let b = cpu();
    let tape = Tape::new(b.clone());
    let x = tape.constant(normal(&b, &[2, 5], 1));
    let w = tape.param("w", normal(&b, &[3, 4], 2));
    let bias = tape.param("b", normal(&b, &[3], 3));
    let e = tape.linear(&x, &w, &bias).err().unwrap().to_string();
    assert!(
        e.starts_with("linear:") && e.contains("[2, 5]") && e.contains("[3, 4]"),
        "{e}"
    );
    // The report of a passing check says what it compared.
    let report = check_gradients(
        &b,
        &[normal(&b, &[3], 4)],
        |t, v| t.sum(&v[0]),
        &GradCheck::default(),
    )
    .unwrap();
    let text = report.to_string();
    assert!(
        text.starts_with("3 coordinates checked; worst per input: input 0"),
        "{text}"
    );
}
