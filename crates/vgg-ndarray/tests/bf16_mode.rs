//! The bf16 math mode (`Precision::Bf16`) against f64 loops on the unrounded f32 inputs: the
//! convolution's forward, input and weight gradients on Winograd and im2col, and a linear layer,
//! on the f32 units (every machine: the `Avx2` cap leaves AMX out) and on AMX where the CPU has
//! it; and the two units against each other.
//!
//! Rounding an operand to bf16 moves it by at most 2^-9 of itself; a sum of products of two
//! rounded operands is off by about 2^-9 of its magnitude, less where the rounding errors of
//! many products cancel. Measured on a Sapphire Rapids (norm-relative), the same on both units
//! and on the direct, per-image and grouped paths: forward and input gradient 2.3e-3, weight
//! gradient 0.9e-3 to 2.1e-3, linear layers 2.3e-3 (forward and weight gradient), against
//! f32's 3e-8 to 1e-6. (Winograd with bf16 products gave 2.2e-2: its transformed values are
//! rounded. So Winograd stays f32: the mode takes it where the unit does not outrun it, and
//! there a pass gives exactly f32's result.)

mod naive;

use naive::{data, norm_relative};

use vgg_ndarray::{Bf16Unit, ConvAlgorithm, CpuBackend, CpuConfig, Isa, Precision};
use vgg_tensor::prelude::*;
use vgg_tensor::{Conv2dParams, ConvGeometry, ConvMethod, ConvPass, Shape};

/// Every result's bound.
const BOUND: f64 = 4e-3;
/// The two units, which differ only in the order of the f32 sums.
const UNITS_AGREE: f64 = 1e-5;

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| v as f64).collect()
}

fn backend(convolution: ConvAlgorithm, isa: Option<Isa>, precision: Precision) -> CpuBackend {
    CpuBackend::with_config(CpuConfig {
        convolution,
        isa,
        precision,
        ..CpuConfig::detect(2)
    })
    .unwrap()
}

/// A 3x3 convolution: images, input and output channels, side.
type Conv = (usize, usize, usize, usize);

/// One image at 56x56 (per-image im2col), several small ones (grouped im2col), more channels.
const CONVS: [Conv; 3] = [(1, 16, 32, 56), (4, 16, 32, 16), (3, 32, 48, 8)];

/// Forward, input gradient and weight gradient of `conv`, a linear layer's forward on 3 rows
/// and 20 rows (the skinny kernel and the GEMM), and its weight gradient (written once) and input
/// gradient (the weight read once) at batch 2 with over a million values (`linear_grad`).
fn outputs(b: &CpuBackend, (n, c, k, side): Conv) -> Vec<Vec<f32>> {
    let (xd, wd) = ((n, c, side, side), (k, c, 3, 3));
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let (x, w, dy) = (
        data(n * c * side * side, 1, 0.5),
        data(k * c * 9, 2, 0.0),
        data(n * k * side * side, 3, 0.1),
    );
    let (a3, a20, fc) = (
        data(3 * 300, 4, 0.3),
        data(20 * 300, 5, 0.3),
        data(70 * 300, 6, 0.0),
    );
    let (g2, x2, w2) = (
        data(2 * 1000, 7, 0.1),
        data(2 * 1100, 8, 0.3),
        data(1000 * 1100, 9, 0.0),
    );
    b.clone().execute(|| {
        let up = |v: &[f32], s: &[usize]| b.upload(&Shape::from(s), v).unwrap();
        let x = up(&x, &[xd.0, xd.1, xd.2, xd.3]);
        let w = up(&w, &[wd.0, wd.1, wd.2, wd.3]);
        let dy = up(&dy, &[n, k, side, side]);
        let y = b.conv2d(&x, &w, p).unwrap();
        let dx = b.conv2d_backward_input(&dy, &w, x.shape(), p).unwrap();
        let dw = b.conv2d_backward_weight(&x, &dy, w.shape(), p).unwrap();
        let fc = up(&fc, &[70, 300]);
        let h3 = b.matmul(&up(&a3, &[3, 300]), &fc, false, true).unwrap();
        let h20 = b.matmul(&up(&a20, &[20, 300]), &fc, false, true).unwrap();
        let (g2, x2) = (up(&g2, &[2, 1000]), up(&x2, &[2, 1100]));
        let dw_linear = b.matmul(&g2, &x2, true, false).unwrap();
        let dx_linear = b
            .matmul(&g2, &up(&w2, &[1000, 1100]), false, false)
            .unwrap();
        [y, dx, dw, h3, h20, dw_linear, dx_linear]
            .iter()
            .map(|t| b.download(t).unwrap())
            .collect()
    })
}

/// Whether each of `outputs`' results comes from Winograd on `b` (the convolution's three
/// passes; never the linear layers).
fn on_winograd(b: &CpuBackend, (n, c, k, side): Conv) -> [bool; 7] {
    let g = ConvGeometry::new(
        &Shape::from([n, c, side, side]),
        &Shape::from([k, c, 3, 3]),
        Conv2dParams {
            stride: 1,
            padding: 1,
        },
    )
    .unwrap();
    let pass = [
        ConvPass::Forward,
        ConvPass::InputGradient,
        ConvPass::WeightGradient,
    ];
    std::array::from_fn(|i| {
        pass.get(i)
            .is_some_and(|&pass| matches!(b.conv_method(&g, pass), ConvMethod::Winograd { .. }))
    })
}

/// The f64 loops' results for `outputs`.
fn reference((n, c, k, side): Conv) -> Vec<Vec<f64>> {
    let (xd, wd, yd) = ((n, c, side, side), (k, c, 3, 3), (n, k, side, side));
    let x = wide(&data(n * c * side * side, 1, 0.5));
    let w = wide(&data(k * c * 9, 2, 0.0));
    let dy = wide(&data(n * k * side * side, 3, 0.1));
    let fc = wide(&data(70 * 300, 6, 0.0));
    let fc_t = naive::transpose(&fc, 70, 300);
    vec![
        naive::conv(&x, xd, &w, wd, 1, 1).0,
        naive::conv_backward_input(&dy, yd, &w, wd, xd, 1, 1),
        naive::conv_backward_weight(&x, xd, &dy, yd, wd, 1, 1),
        naive::matmul(&wide(&data(3 * 300, 4, 0.3)), &fc_t, 3, 300, 70),
        naive::matmul(&wide(&data(20 * 300, 5, 0.3)), &fc_t, 20, 300, 70),
        naive::matmul(
            &naive::transpose(&wide(&data(2 * 1000, 7, 0.1)), 2, 1000),
            &wide(&data(2 * 1100, 8, 0.3)),
            1000,
            2,
            1100,
        ),
        naive::matmul(
            &wide(&data(2 * 1000, 7, 0.1)),
            &wide(&data(1000 * 1100, 9, 0.0)),
            2,
            1000,
            1100,
        ),
    ]
}

const NAMES: [&str; 7] = [
    "forward",
    "input gradient",
    "weight gradient",
    "linear 3 rows",
    "linear 20 rows",
    "linear weight gradient, batch 2",
    "linear input gradient, batch 2",
];

#[test]
fn bf16_products_stay_within_their_bounds_on_every_unit_and_algorithm() {
    for conv in CONVS {
        within_bounds(conv);
    }
}

fn within_bounds(conv: Conv) {
    let want = reference(conv);
    let mut units = vec![Some(Isa::Avx2)];
    if Bf16Unit::within(Isa::detected()).multiplies_in_bf16() {
        units.push(None);
    }
    // Capped below AVX-512, the mode always runs on the f32 units (so every machine tests them).
    assert_eq!(Bf16Unit::within(Isa::Avx2), Bf16Unit::F32Units);
    for convolution in [ConvAlgorithm::Auto, ConvAlgorithm::Im2col] {
        let f32_outputs = outputs(&backend(convolution, None, Precision::F32), conv);
        let f32_errors: Vec<f64> = f32_outputs
            .iter()
            .zip(&want)
            .map(|(g, w)| norm_relative(g, w))
            .collect();
        let mut by_unit = Vec::new();
        for &isa in &units {
            let b = backend(convolution, isa, Precision::Bf16);
            let got = outputs(&b, conv);
            let winograd = on_winograd(&b, conv);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                if winograd[i] {
                    // Winograd stays f32 (where the unit does not outrun it): f32's very sums.
                    assert!(
                        !b.name().contains("AMX") && convolution == ConvAlgorithm::Auto,
                        "{}: {} took Winograd",
                        b.name(),
                        NAMES[i]
                    );
                    assert_eq!(g, &f32_outputs[i], "{}: {} on Winograd", b.name(), NAMES[i]);
                    continue;
                }
                let error = norm_relative(g, w);
                let bound = BOUND;
                eprintln!(
                    "{} {convolution:?} {}: {error:.2e} (f32: {:.2e})",
                    b.name(),
                    NAMES[i],
                    f32_errors[i]
                );
                if std::env::var("MEASURE").is_err() {
                    assert!(
                        error <= bound,
                        "{} {convolution:?} {}: {error:.2e} > {bound:.0e}",
                        b.name(),
                        NAMES[i]
                    );
                    // It is bf16: far from f32's error, which a mode that forgot to round would give.
                    assert!(
                        error > 30.0 * f32_errors[i],
                        "{}: {} no worse than f32",
                        b.name(),
                        NAMES[i]
                    );
                }
            }
            by_unit.push((got, winograd));
        }
        if let [(f32_units, f32_winograd), (amx, amx_winograd)] = &by_unit[..] {
            for (i, (a, b)) in f32_units.iter().zip(amx).enumerate() {
                // Where either kept f32 Winograd, one result is rounded and the other is not.
                if f32_winograd[i] || amx_winograd[i] {
                    continue;
                }
                let error = norm_relative(b, &wide(a));
                assert!(
                    error <= UNITS_AGREE,
                    "{convolution:?} {}: AMX vs f32 units {error:.2e}",
                    NAMES[i]
                );
            }
        }
    }
}

/// On the f32 units (and AVX512_BF16), which do not outrun f32 Winograd, a convolution Winograd
/// takes in f32 takes it in bf16 too, and says so; `--conv-algorithm im2col` still rounds it.
#[test]
fn winograd_stays_f32_where_the_unit_does_not_outrun_it() {
    let conv = CONVS[0];
    let mut units = vec![Some(Isa::Avx2)];
    let native = Bf16Unit::within(Isa::detected());
    if native == Bf16Unit::Avx512Bf16 && native.multiplies_in_bf16() {
        units.push(None);
    }
    for isa in units {
        let f32_mode = backend(ConvAlgorithm::Auto, isa, Precision::F32);
        assert_eq!(
            on_winograd(&f32_mode, conv),
            [true, true, true, false, false, false, false]
        );
        let b = backend(ConvAlgorithm::Auto, isa, Precision::Bf16);
        assert!(b.name().ends_with(", Winograd in f32)"), "{}", b.name());
        assert_eq!(
            on_winograd(&b, conv),
            on_winograd(&f32_mode, conv),
            "{}",
            b.name()
        );
        let im2col = backend(ConvAlgorithm::Im2col, isa, Precision::Bf16);
        assert_eq!(on_winograd(&im2col, conv), [false; 7], "{}", im2col.name());
        assert!(!im2col.name().contains("Winograd"), "{}", im2col.name());
    }
}

/// Where the CPU's own bf16 unit multiplies more slowly than the f32 units (Intel's AVX512_BF16
/// without AMX: `Bf16Unit::products_stay_f32`), the mode gives f32's very results, except a
/// linear layer's forward at batch 1-3, which reads its weight in bf16 (the f32 units' bf16
/// result, to the order of its sums). Elsewhere, the rule itself: only that unit, only on Intel.
#[test]
fn a_unit_slower_than_f32_keeps_bf16_for_the_weight_streams_only() {
    let intel = std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| info.contains("GenuineIntel"))
        .unwrap_or(false);
    for unit in Bf16Unit::present_units() {
        assert_eq!(
            unit.products_stay_f32(),
            unit == Bf16Unit::Avx512Bf16 && intel,
            "{unit:?}"
        );
    }
    if !Bf16Unit::within(Isa::detected()).products_stay_f32() {
        eprintln!(
            "this CPU's bf16 products outrun f32's (or are the f32 units'): rule checked only"
        );
        return;
    }
    let linear_forward = NAMES.iter().position(|&n| n == "linear 3 rows").unwrap();
    for conv in CONVS {
        let want = reference(conv);
        let f32_outputs = outputs(&backend(ConvAlgorithm::Auto, None, Precision::F32), conv);
        let f32_units = outputs(
            &backend(ConvAlgorithm::Auto, Some(Isa::Avx2), Precision::Bf16),
            conv,
        );
        let b = backend(ConvAlgorithm::Auto, None, Precision::Bf16);
        assert!(b.name().contains("weights' streams only"), "{}", b.name());
        for (i, got) in outputs(&b, conv).iter().enumerate() {
            if i != linear_forward {
                assert_eq!(got, &f32_outputs[i], "{}", NAMES[i]);
                continue;
            }
            let error = norm_relative(got, &want[i]);
            assert!(error <= BOUND, "{}: {error:.2e}", NAMES[i]);
            assert!(
                error > 30.0 * norm_relative(&f32_outputs[i], &want[i]),
                "not rounded"
            );
            let apart = norm_relative(got, &wide(&f32_units[i]));
            assert!(apart <= UNITS_AGREE, "against the f32 units: {apart:.2e}");
        }
    }
}
