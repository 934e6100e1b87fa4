//! Convolution: the one dispatcher that chooses, per layer and pass, among Winograd F(4x4, 3x3)
//! and F(6x6, 3x3) (`winograd/`), im2col over groups of images (`grouped.rs`) and per-image tiled
//! im2col (`im2col.rs`), and sums long weight-gradient reductions in parts (`gradient_sum.rs`).

pub mod gradient_sum;
mod grouped;
mod im2col;
pub mod winograd;

use vgg_tensor::{ConvGeometry, ConvMethod, ConvPass};

use std::sync::Arc;

use crate::arena::Memory;
use crate::bf16::{self, direct};
use crate::buffer::Buffer;
use crate::config::{Bf16Unit, ConvAlgorithm, Isa, Tuning};
use crate::gemm::{Lhs, Mat};

pub(crate) use im2col::store_epilogue;
use im2col::*;
pub use im2col::{scratch_elements, tile_rows};

/// y = conv(x, w): per tile, Y[Cout, tile] = W[Cout, K] x col[K, tile].
pub fn forward(x: &[f32], w: &[f32], g: &ConvGeometry, t: &Tuning, y: &mut [f32]) {
    forward_fused(x, w, None, false, g, t, y)
}

/// Whether a convolution's pass `pass` takes the Winograd path: where it measured faster
/// (examples/conv_layers): not with few input channels (conv1_1), nor below 14x14 outputs.
/// Under 128 input channels it also needs 56x56 outputs: its 36 GEMMs have the input channels as
/// their inner dimension, too short to pay for the transforms on smaller images (batch 32 on an
/// AVX2 Zen 3: 16->32 channels at 16x16 2.0-2.6 vs 0.8-1.0 ms, 32->32 at 32x32 8.8-11.7 vs
/// 7.8-7.9 ms; equal at 64 channels and 28x28, at 128 channels and 16x16, and at 16 channels
/// and 64x64). `ConvAlgorithm::Im2col` turns it off, for comparisons; so does bf16 on a unit
/// that outruns it (AMX: `Bf16Unit::outruns_winograd`). Winograd is always f32: rounding the
/// transformed values to bf16 gave 10x the direct method's error (2.2e-2 against 2.3e-3,
/// tests/bf16_mode.rs), since each transformed value sums several products of the input.
///
/// Below 28x28 each pass needs enough images, measured on conv5's shape (512 -> 512 channels,
/// 14x14). The 4x-larger transformed weights are streamed for too few tiles at batch 1.
/// - The forward pass, with the transformed weights kept (`vgg bench --per-layer`, a 2-core
///   Sapphire Rapids-class VM): 6.4 ms on Winograd and 4.0 on im2col at batch 1, 7.0 and 6.4 at
///   batch 2, 8.8 and 12.4 at batch 4. Where the GEMM's products are AVX2's
///   (`Tuning::gemm_isa`), at half AVX-512's rate, it takes Winograd from one image: on a 2-core
///   AVX2 Zen 3, 5.2-7.7 ms against im2col's 7.8-10.5 at batch 1, 7.5-10.0 against 12.3-13.3 at
///   batch 2.
/// - The gradients, from two images (a 2-core Emerald Rapids VM, Winograd against im2col):
///   the input gradient 5.3-5.9 against 5.2-5.4 ms at batch 1, 6.1-6.7 against 7.8-9.3 at 2,
///   9.9-11.0 against 14.9-15.4 at 4; the weight gradient 5.2-5.6 against 3.1-3.2 at batch 1,
///   7.0-7.7 against 8.4-8.5 at 2, 11.4-11.5 against 19.4-21.8 at 4, 18.2-18.6 against
///   31.5-33.3 at 8. With our kernels on AVX2 (`--isa avx2`) the input gradient is level at 2
///   and 4 images (8.1 and 18.4 against 8.2 and 19.1), the weight gradient 6.1 against 8.3 and
///   11.3 against 22.5; with the GEMM on AVX2 too, 8.5 against 13.4 and 14.4 against 25.7, 7.9
///   against 13.4 and 17.0 against 38.5. (The input gradient had taken Winograd from 8 images,
///   measured with a flipped copy of the weights made before their transform: 17.4 against
///   15.8 ms at batch 4 on a Sapphire Rapids-class VM. Not measured on AMD.)
/// - The weight gradient takes the few-tile path there (at most 256 tiles, conv5 up to batch
///   16: `winograd::weight_grad_has_few_tiles`). With more tiles each lane sums its tiles'
///   products into 36 k x c values, which pays only where the transformed weights stream in
///   large chunks (`winograd::large_chunks`, as for conv5: 53 vs 74-94 ms at batch 32), from 4
///   images; with small chunks those sums cost more than im2col (conv5 before large chunks:
///   42.9 vs 22.0 ms).
pub fn use_winograd(g: &ConvGeometry, pass: ConvPass, t: &Tuning) -> bool {
    let size = winograd::tile_size(g, pass, t);
    let few_tiles =
        pass == ConvPass::WeightGradient && winograd::weight_grad_has_few_tiles(g, size);
    // Images' worth of 14x14 outputs below which im2col wins, per pass.
    let min_pixels = match pass {
        // The forward pass takes Winograd from one image where the GEMM's products are narrower
        // than AVX-512's, or where our kernels are AVX-512's, so a few tiles' products run on
        // its blocking (`winograd` few-tile products: conv5 at batch 1, 5.6-7.3 -> 2.9-3.1 ms
        // on a Zen 4; AVX2's blocking of them was never measured against AVX-512's im2col).
        ConvPass::Forward if t.gemm_isa < Isa::Avx512 || t.kernel_isa >= Isa::Avx512 => 14 * 14,
        ConvPass::Forward => 4 * 14 * 14,
        ConvPass::InputGradient => 2 * 14 * 14,
        ConvPass::WeightGradient if few_tiles => 2 * 14 * 14,
        ConvPass::WeightGradient => 4 * 14 * 14,
    };
    let area = g.out_h * g.out_w;
    let enough_channels = g.in_channels >= 128 || area >= 56 * 56;
    let large_enough = if area < 28 * 28 {
        let chunks =
            pass != ConvPass::WeightGradient || few_tiles || winograd::large_chunks(g, t, size);
        chunks && g.batch * area >= min_pixels
    } else {
        true
    };
    winograd::applies(g)
        && t.convolution != ConvAlgorithm::Im2col
        && t.bf16.is_none_or(|unit| !unit.outruns_winograd())
        && g.in_channels >= 16
        && area >= 14 * 14
        && enough_channels
        && large_enough
}

/// Whether a convolution (forward and weight gradient) takes bf16 products on AMX by the direct
/// method without a column matrix (bf16/direct.rs): stride 1 and enough channels;
/// `ConvAlgorithm::Im2col` turns it off, for comparisons.
fn use_direct_bf16(g: &ConvGeometry, t: &Tuning) -> bool {
    t.bf16 == Some(Bf16Unit::Amx) && t.convolution == ConvAlgorithm::Auto && direct::applies(g)
}

/// The output pass fused into the convolution: per tile, right after its GEMM and while the tile
/// is in cache, add the bias (`[Cout]`) and apply ReLU, instead of two more passes over memory.
pub fn forward_fused(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    t: &Tuning,
    y: &mut [f32],
) {
    forward_with(x, Weights::Slice(w), bias, relu, g, t, ConvPass::Forward, y)
}

/// A convolution's weights: values, or a backend buffer, which keeps their Winograd transform
/// between calls where that is worth its memory (fixed weights: inference, benchmarks).
pub(crate) enum Weights<'a> {
    /// Transformed for this call only.
    Slice(&'a [f32]),
    /// Transformed once and kept with the buffer (`winograd::worth_keeping_weights`).
    Kept(&'a Buffer),
}

/// The algorithms a pass can run by here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    /// bf16 products on AMX, no column matrix (`bf16/direct.rs`).
    DirectBf16,
    /// Winograd F(4x4, 3x3) or F(6x6, 3x3) (`winograd/`).
    Winograd,
    /// im2col over groups of images (`grouped.rs`).
    Grouped,
    /// Per-image tiled im2col (`im2col.rs`).
    Im2col,
}

/// The one choice of algorithm for a pass on the geometry it runs on (the input gradient's is
/// the flipped-kernel convolution's).
fn algorithm(g: &ConvGeometry, pass: ConvPass, t: &Tuning) -> Algorithm {
    if use_direct_bf16(g, t) {
        Algorithm::DirectBf16
    } else if use_winograd(g, pass, t) {
        Algorithm::Winograd
    } else if match pass {
        ConvPass::WeightGradient => grouped::images_per_weight_group(g, t),
        ConvPass::Forward | ConvPass::InputGradient => grouped::images_per_group(g, t),
    } > 1
    {
        Algorithm::Grouped
    } else {
        Algorithm::Im2col
    }
}

/// The method `pass` of the convolution `g` (its forward geometry) runs by, as
/// `Convolution::conv_method` reports it: what the dispatchers below choose.
pub fn method(g: &ConvGeometry, pass: ConvPass, t: &Tuning) -> ConvMethod {
    let runs_on = match pass {
        ConvPass::InputGradient => match flipped_geometry(g) {
            Some(flipped) => flipped,
            None => return ConvMethod::Direct,
        },
        ConvPass::Forward | ConvPass::WeightGradient => *g,
    };
    match algorithm(&runs_on, pass, t) {
        Algorithm::Winograd => ConvMethod::Winograd {
            output: winograd::tile_size(&runs_on, pass, t).output(),
            kernel: 3,
        },
        Algorithm::DirectBf16 | Algorithm::Grouped | Algorithm::Im2col => ConvMethod::Direct,
    }
}

/// `forward_fused` for either kind of weights, for the forward pass or the input gradient (a
/// convolution too): the one place that chooses among Winograd, grouped im2col and per-image
/// im2col for them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_with(
    x: &[f32],
    weights: Weights<'_>,
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    t: &Tuning,
    pass: ConvPass,
    y: &mut [f32],
) {
    assert_eq!(
        y.len(),
        g.batch * g.out_channels * g.out_h * g.out_w,
        "conv output length"
    );
    let algorithm = algorithm(g, pass, t);
    if algorithm == Algorithm::DirectBf16 {
        let (k, taps) = (g.out_channels, g.kernel_h * g.kernel_w);
        let packed = match weights {
            Weights::Slice(w) => Arc::new(direct::pack_weights(w, g, false)),
            Weights::Kept(buf) => buf.derived(
                ("direct::pack_weights", k, g.in_channels * taps, t.bf16),
                true,
                |lasting| direct::pack_weights(buf.as_slice(), g, lasting),
            ),
        };
        return direct::forward(x, &packed, bias, relu, g, t.threads, y);
    }
    if algorithm == Algorithm::Winograd {
        let size = winograd::tile_size(g, pass, t);
        return match weights {
            Weights::Slice(w) => winograd::forward(x, w, bias, relu, g, t, size, y),
            Weights::Kept(buf) => {
                let (k, c) = (g.out_channels, g.in_channels);
                let keep = winograd::worth_keeping_weights(g, size);
                let name = match size {
                    winograd::TileSize::Four => "winograd::transform_weights F(4x4)",
                    winograd::TileSize::Six => "winograd::transform_weights F(6x6)",
                };
                let u = buf.derived((name, k, c, None), keep, |lasting| {
                    let w = buf.as_slice();
                    winograd::transform_weights(w, winograd::Kernel::AsGiven, k, c, lasting, size)
                });
                winograd::forward_transformed(x, &u, bias, relu, g, t, size, y)
            }
        };
    }
    // The weights as the products' left operand: for bf16, packed (rounded) once per call, or
    // once for all calls where they stay fixed (inference: VGG-16's conv5 at batch 1 spent a
    // third of its time packing them).
    let (rows, cols) = (g.out_channels, im2col::col_rows(g));
    let kept;
    let lhs = match (weights, t.bf16) {
        (Weights::Kept(buf), Some(unit)) => {
            kept = buf.derived(
                ("bf16::pack_lhs", rows, cols, Some(unit)),
                true,
                |lasting| {
                    let w = Mat::row_major(buf.as_slice(), rows, cols);
                    bf16::pack_lhs(unit, w, lasting).into_words()
                },
            );
            Lhs::KeptBf16(bf16::PackedLhs::of_words(unit, rows, cols, &kept))
        }
        (Weights::Kept(buf), None) => Lhs::prepare(Mat::row_major(buf.as_slice(), rows, cols), t),
        (Weights::Slice(w), _) => Lhs::prepare(Mat::row_major(w, rows, cols), t),
    };
    if algorithm == Algorithm::Grouped {
        return grouped::forward(x, &lhs, bias, relu, g, t, y);
    }
    im2col::forward_fused(x, &lhs, bias, relu, g, t, y)
}

/// dx: the flipped-kernel convolution for stride 1; otherwise per tile
/// dcol[K, tile] = W^T[K, Cout] x dY[Cout, tile], then col2im.
pub fn backward_input(dy: &[f32], w: &[f32], g: &ConvGeometry, t: &Tuning, dx: &mut [f32]) {
    let in_image = g.in_channels * g.in_h * g.in_w;
    assert_eq!(dx.len(), g.batch * in_image, "conv input-gradient length");
    if let Some(flipped) = flipped_geometry(g) {
        let pass = ConvPass::InputGradient;
        if algorithm(&flipped, pass, t) == Algorithm::Winograd {
            // The transform flips the weights as it reads them (`winograd::Kernel::Flipped`).
            let size = winograd::tile_size(&flipped, pass, t);
            let (k, c) = (flipped.out_channels, flipped.in_channels);
            let u = winograd::transform_weights(w, winograd::Kernel::Flipped, k, c, false, size);
            return winograd::forward_transformed(dy, &u, None, false, &flipped, t, size, dx);
        }
        let flipped_w = flip_kernel(w, g);
        return forward_with(
            dy,
            Weights::Slice(&flipped_w),
            None,
            false,
            &flipped,
            t,
            pass,
            dx,
        );
    }
    im2col::backward_input(dy, w, g, t, dx)
}

/// dW[Cout, K] = sum over images and tiles of dY[Cout, tile] x col[K, tile]^T. With at least as
/// many images as threads, each worker sums a contiguous group of images into its own dW.
pub(crate) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry, t: &Tuning) -> Memory {
    match algorithm(g, ConvPass::WeightGradient, t) {
        Algorithm::DirectBf16 => direct::backward_weight(x, dy, g).into(),
        Algorithm::Winograd => winograd::backward_weight(x, dy, g, t),
        Algorithm::Grouped => grouped::backward_weight(x, dy, g, t),
        Algorithm::Im2col => im2col::backward_weight(x, dy, g, t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_tensor::{random, Conv2dParams, Shape};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0; n];
        random::fill_normal(&mut v, seed, 0, 0.0, 1.0);
        v
    }

    /// The input gradient's weight transform, which flips the kernel as it reads it, gives the
    /// same bits as the transform of a flipped copy, for channel counts off the blocks of 16
    /// (output and input channels) and both tile sizes.
    #[test]
    fn flipped_transform_is_the_transform_of_the_flipped_kernel() {
        for (k, c) in [(1, 1), (5, 20), (20, 7), (33, 18)] {
            let w_shape = Shape::from([k, c, 3, 3]);
            let g = ConvGeometry::new(
                &Shape::from([1, c, 6, 6]),
                &w_shape,
                Conv2dParams {
                    stride: 1,
                    padding: 1,
                },
            )
            .unwrap();
            let w = values(w_shape.elements(), 7);
            let flipped = flip_kernel(&w, &g);
            for size in [winograd::TileSize::Four, winograd::TileSize::Six] {
                let fused =
                    winograd::transform_weights(&w, winograd::Kernel::Flipped, c, k, false, size);
                let copied = winograd::transform_weights(
                    &flipped,
                    winograd::Kernel::AsGiven,
                    c,
                    k,
                    false,
                    size,
                );
                let bits = |u: &[f32]| u.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fused), bits(&copied), "{k} -> {c}, {size:?}");
            }
        }
    }

    /// Splitting the image into one-row tiles must not change any result.
    #[test]
    fn tiles_do_not_change_results() {
        for (stride, padding) in [(1, 1), (2, 0), (1, 0)] {
            let x_shape = Shape::from([2, 3, 9, 7]);
            let w_shape = Shape::from([4, 3, 3, 3]);
            let g =
                ConvGeometry::new(&x_shape, &w_shape, Conv2dParams { stride, padding }).unwrap();
            let one_row = Tuning {
                threads: 1,
                im2col_tile_bytes: 1,
                ..Tuning::detect(1)
            };
            let two = Tuning::detect(2);
            assert_eq!(tile_rows(&g, one_row.im2col_tile_bytes), 1);
            let (x, w) = (values(x_shape.elements(), 1), values(w_shape.elements(), 2));
            let dy = values(g.output_shape().elements(), 3);
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
            let run = |f: &dyn Fn(&mut [f32]), len: usize| {
                let mut out = vec![f32::NAN; len];
                f(&mut out);
                out
            };
            let (ylen, xlen) = (g.output_shape().elements(), x.len());
            let y1 = run(&|y| forward(&x, &w, &g, &one_row, y), ylen);
            let y2 = run(&|y| forward(&x, &w, &g, &two, y), ylen);
            assert!(close(&y1, &y2));
            let dx1 = run(&|dx| backward_input(&dy, &w, &g, &one_row, dx), xlen);
            let dx2 = run(&|dx| backward_input(&dy, &w, &g, &two, dx), xlen);
            assert!(close(&dx1, &dx2));
            assert!(close(
                &backward_weight(&x, &dy, &g, &one_row),
                &backward_weight(&x, &dy, &g, &two)
            ));
        }
    }
}
