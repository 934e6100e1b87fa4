//! Every instruction-set path of the kernels, on whatever this machine has: a backend capped at
//! each set up to the CPU's widest runs its kernels at that set (on its own workers), and gives
//! the portable path's results to rounding. Covers the Winograd transforms (forward, input and
//! weight gradients), im2col, the skinny fully connected kernel and the input gradient's stream
//! kernel, max pooling and its gradient, and the im2col-only setting.

use vgg_ndarray::conv::use_winograd;
use vgg_ndarray::{ConvAlgorithm, CpuBackend, CpuConfig, Isa, Tuning};
use vgg_tensor::prelude::*;
use vgg_tensor::ConvPass as Pass;
use vgg_tensor::{Conv2dParams, ConvGeometry, ConvMethod, Pool2dParams, Shape};

fn backend(isa: Isa, convolution: ConvAlgorithm) -> CpuBackend {
    CpuBackend::with_config(CpuConfig {
        isa: Some(isa),
        convolution,
        ..CpuConfig::detect(2)
    })
    .unwrap()
}

/// Forward, input and weight gradient of a Winograd-sized convolution (16 -> 32 channels at
/// 56x56: every one of them on the Winograd path, unless the backend is im2col-only) and a
/// skinny linear layer (4 rows) and a linear layer's input gradient at batch 2, and a 2x2 max pool
/// of the convolution's output with its gradient.
fn outputs(b: &CpuBackend) -> Vec<Vec<f32>> {
    b.clone().execute(|| {
        let p = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        let (xs, ws) = (Shape::from([1, 16, 56, 56]), Shape::from([32, 16, 3, 3]));
        let g = ConvGeometry::new(&xs, &ws, p).unwrap();
        let flipped =
            ConvGeometry::new(&g.output_shape(), &Shape::from([16, 32, 3, 3]), p).unwrap();
        let winograd = b.tuning().convolution == ConvAlgorithm::Auto;
        for (g, pass) in [
            (&g, Pass::Forward),
            (&flipped, Pass::InputGradient),
            (&g, Pass::WeightGradient),
        ] {
            assert_eq!(use_winograd(g, pass, b.tuning()), winograd);
        }
        // What the backend reports for counting products is what ran (on the forward geometry).
        let reported = if winograd {
            ConvMethod::Winograd {
                output: 4,
                kernel: 3,
            }
        } else {
            ConvMethod::Direct
        };
        for pass in [Pass::Forward, Pass::InputGradient, Pass::WeightGradient] {
            assert_eq!(b.conv_method(&g, pass), reported, "{pass:?}");
        }
        let x = b.random_normal(&xs, 0.0, 1.0, 1).unwrap();
        let w = b.random_normal(&ws, 0.0, 0.1, 2).unwrap();
        let bias = b.random_normal(&Shape::from([32]), 0.0, 0.1, 3).unwrap();
        let y = b.conv2d_bias_act(&x, &w, &bias, p, true).unwrap();
        let dy = b.random_normal(y.shape(), 0.0, 1.0, 4).unwrap();
        let dx = b.conv2d_backward_input(&dy, &w, x.shape(), p).unwrap();
        let dw = b.conv2d_backward_weight(&x, &dy, w.shape(), p).unwrap();
        let a = b
            .random_normal(&Shape::from([4, 300]), 0.0, 1.0, 5)
            .unwrap();
        let fc = b
            .random_normal(&Shape::from([70, 300]), 0.0, 0.1, 6)
            .unwrap();
        let h = b.matmul(&a, &fc, false, true).unwrap();
        // A linear layer's input gradient at batch 2 (dY W, the weight's stream kernel).
        let dy_fc = b
            .random_normal(&Shape::from([2, 1100]), 0.0, 1.0, 8)
            .unwrap();
        let w_fc = b
            .random_normal(&Shape::from([1100, 1000]), 0.0, 0.1, 9)
            .unwrap();
        let dx_fc = b.matmul(&dy_fc, &w_fc, false, false).unwrap();
        // The ReLU's zeros make ties, which go to each window's first maximum on every path.
        let (pooled, at) = b
            .max_pool2d(
                &y,
                Pool2dParams {
                    kernel: 2,
                    stride: 2,
                },
            )
            .unwrap();
        let dpooled = b.random_normal(pooled.shape(), 0.0, 1.0, 7).unwrap();
        let unpooled = b.max_pool2d_backward(&dpooled, &at, y.shape()).unwrap();
        [y, dx, dw, h, dx_fc, pooled, unpooled]
            .iter()
            .map(|t| b.download(t).unwrap())
            .collect()
    })
}

fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len());
        let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale,
            "{what}, output {i}: differs by {worst} (scale {scale})"
        );
    }
}

#[test]
fn every_instruction_set_up_to_the_cpus_gives_the_portable_results() {
    let widest = Isa::detected();
    let portable = backend(Isa::Portable, ConvAlgorithm::Auto);
    assert_eq!(portable.worker_isa(), Isa::Portable);
    assert!(portable.name().contains("portable"), "{}", portable.name());
    let want = outputs(&portable);
    for isa in [Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&i| i <= widest)
    {
        let b = backend(isa, ConvAlgorithm::Auto);
        assert_eq!(b.worker_isa(), isa, "the workers run at the cap");
        assert_close(&outputs(&b), &want, isa.name());
    }
    let native = CpuBackend::new(2).unwrap();
    assert_eq!(native.worker_isa(), widest);
    assert_eq!(native.isa(), widest);
}

#[test]
fn im2col_only_gives_the_winograd_results() {
    let winograd = outputs(&backend(Isa::detected(), ConvAlgorithm::Auto));
    let b = backend(Isa::detected(), ConvAlgorithm::Im2col);
    assert!(b.name().contains("im2col only"), "{}", b.name());
    assert_close(&outputs(&b), &winograd, "im2col");
}

#[test]
fn avx512_is_taken_where_the_cpu_has_it_and_refused_where_not() {
    let asked = CpuBackend::with_config(CpuConfig {
        isa: Some(Isa::Avx512),
        ..CpuConfig::detect(1)
    });
    match (Isa::detected(), asked) {
        (Isa::Avx512, Ok(b)) => assert_eq!(b.worker_isa(), Isa::Avx512),
        (widest, Err(e)) if widest < Isa::Avx512 => {
            let e = e.to_string();
            assert!(e.contains("no AVX-512") && e.contains(widest.name()), "{e}");
        }
        (widest, other) => panic!("widest {widest:?}, got {other:?}"),
    }
}

/// The gradients of a small image take im2col at batch 1 and Winograd from 2 images (conv5 on an
/// Emerald Rapids VM, `examples/conv_layers`, on every pair of units below), while its forward
/// takes Winograd from 4 images where both the GEMM's products and our kernels are AVX-512's but
/// our kernels are capped lower, and from one on AVX2's products or where our AVX-512 kernel
/// computes a few tiles' products (each pair of units checked on every machine: the choice reads
/// the tuning, not the CPU).
#[test]
fn conv5_takes_winograd_where_it_measured_faster() {
    let b = backend(Isa::detected(), ConvAlgorithm::Auto);
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let conv5 = |batch: usize| {
        ConvGeometry::new(
            &Shape::from([batch, 512, 14, 14]),
            &Shape::from([512, 512, 3, 3]),
            p,
        )
        .unwrap()
    };
    // conv5's shape: each pass takes Winograd from the batch where it measured faster.
    for (gemm_isa, kernel_isa, forward_from) in [
        (Isa::Avx512, Isa::Avx512, 1),
        (Isa::Avx512, Isa::Avx2, 4),
        (Isa::Avx512, Isa::Portable, 4),
        (Isa::Avx2, Isa::Avx2, 1),
        (Isa::Avx2, Isa::Portable, 1),
        (Isa::Portable, Isa::Portable, 1),
    ] {
        let t = Tuning {
            gemm_isa,
            kernel_isa,
            ..*b.tuning()
        };
        for (pass, from) in [
            (Pass::Forward, forward_from),
            (Pass::InputGradient, 2),
            (Pass::WeightGradient, 2),
        ] {
            for batch in [1, 2, 3, 4, 8, 16] {
                assert_eq!(
                    use_winograd(&conv5(batch), pass, &t),
                    batch >= from,
                    "{pass:?} at batch {batch} on {gemm_isa:?} products, {kernel_isa:?} kernels"
                );
            }
        }
    }
    // This machine's own tuning names its GEMM's unit.
    assert_eq!(b.tuning().gemm_isa, CpuBackend::gemm_isa());
    assert!(!use_winograd(&conv5(1), Pass::WeightGradient, b.tuning()));
    assert!(use_winograd(&conv5(8), Pass::Forward, b.tuning()));
    // The input gradient's choice is reported on the forward geometry too.
    assert_eq!(
        b.conv_method(&conv5(1), Pass::InputGradient),
        ConvMethod::Direct
    );
    assert_ne!(
        b.conv_method(&conv5(2), Pass::InputGradient),
        ConvMethod::Direct
    );
}
