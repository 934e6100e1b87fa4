//! Convolutions of small images, several whole images to one GEMM. One 4x4 image of 128 channels
//! is a GEMM with 16 columns, too narrow for the kernel to reach its rate (conv5 of the digits
//! network ran at ~20 GFLOP/s that way); side by side in one column matrix, a group of images
//! makes one wide GEMM. Its output is [Cout, images x H x W], copied out to NCHW with the bias and
//! ReLU on the way, and the weight gradient gathers the output gradient the same way.

use rayon::prelude::*;
use vgg_tensor::ConvGeometry;

use super::gradient_sum::{self, GradientSum, PIXELS_PER_PART};
use super::im2col::{col_rows, im2col_images, image, is_pointwise, store_epilogue};
use crate::arena::Memory;
use crate::config::Tuning;
use crate::gemm::{product, Lhs, Mat, MatMut};

/// Images narrower than this many output pixels are grouped; wider ones already make a GEMM wide
/// enough, and grouping would only add the copy out (the digits network's 32x32 and 16x16
/// layers measured slower grouped).
const GROUP_BELOW_PIXELS: usize = 256;

/// Whole images whose columns fit one im2col tile; 1 where an image alone is wide enough, or on
/// the 1x1 path, which reads the input directly (neither is grouped).
fn images_per_tile(g: &ConvGeometry, t: &Tuning) -> usize {
    if is_pointwise(g) || g.out_h * g.out_w >= GROUP_BELOW_PIXELS {
        return 1;
    }
    let image_bytes = col_rows(g) * g.out_h * g.out_w * std::mem::size_of::<f32>();
    t.im2col_tile_bytes / image_bytes.max(1)
}

/// Images per group: as many whole images' columns as fit one im2col tile, spread evenly over
/// the threads; 1 (no grouping) where fewer than two fit, where an image alone is wide enough,
/// or on the 1x1 path, which reads the input directly.
pub(super) fn images_per_group(g: &ConvGeometry, t: &Tuning) -> usize {
    let fit = images_per_tile(g, t);
    if fit < 2 {
        return 1;
    }
    let per_thread = g.batch.div_ceil(t.threads.max(1));
    per_thread.div_ceil(per_thread.div_ceil(fit))
}

/// Images per group of the weight gradient: as many as the column tile holds, within one part of
/// [`PIXELS_PER_PART`] pixels, and never depending on the thread count (so neither does the sum;
/// gradient_sum.rs). 1: not grouped.
pub(super) fn images_per_weight_group(g: &ConvGeometry, t: &Tuning) -> usize {
    let part = PIXELS_PER_PART / (g.out_h * g.out_w).max(1);
    images_per_tile(g, t).min(part).min(g.batch).max(1)
}

/// The column matrix [K, images x H x W] of images [n0, n0 + images) of `x`, in `col`.
fn group_columns<'a>(
    x: &[f32],
    g: &ConvGeometry,
    n0: usize,
    images: usize,
    col: &'a mut [f32],
) -> Mat<'a> {
    let in_image = g.in_channels * g.in_h * g.in_w;
    let cols = images * g.out_h * g.out_w;
    let first = &x[n0 * in_image..(n0 + images) * in_image];
    im2col_images(first, images, g, 0, g.out_h, col, false);
    Mat::row_major(&col[..col_rows(g) * cols], col_rows(g), cols)
}

/// `conv::forward_fused` in groups of `images_per_group` images.
pub(super) fn forward(
    x: &[f32],
    weights: &Lhs<'_>,
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    t: &Tuning,
    y: &mut [f32],
) {
    let per_group = images_per_group(g, t);
    let (k, hw) = (col_rows(g), g.out_h * g.out_w);
    let out_image = g.out_channels * hw;
    let groups = g.batch.div_ceil(per_group);
    let gemm_threads = if groups >= t.threads { 1 } else { t.threads };
    let run = |(group, y): (usize, &mut [f32])| {
        let images = y.len() / out_image;
        let cols = images * hw;
        let mut col = Memory::uninit(k * cols);
        let columns = group_columns(x, g, group * per_group, images, &mut col);
        let mut out = Memory::uninit(g.out_channels * cols);
        let dst = MatMut {
            data: &mut out,
            offset: 0,
            rows: g.out_channels,
            cols,
            row_stride: cols,
        };
        weights.times(dst, columns, false, gemm_threads);
        for (i, y) in y.chunks_exact_mut(out_image).enumerate() {
            for (c, row) in y.chunks_exact_mut(hw).enumerate() {
                store_epilogue(
                    row,
                    &out[c * cols + i * hw..][..hw],
                    bias.map(|b| b[c]),
                    relu,
                );
            }
        }
    };
    let chunk = per_group * out_image;
    if gemm_threads == 1 {
        y.par_chunks_mut(chunk).enumerate().for_each(run);
    } else {
        y.chunks_mut(chunk).enumerate().for_each(run);
    }
}

/// `conv::backward_weight` in groups of `images_per_group` images: each worker sums its groups'
/// dY[Cout, cols] x col[K, cols]^T into a dW of its own.
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry, t: &Tuning) -> Memory {
    let (k, hw) = (col_rows(g), g.out_h * g.out_w);
    // Groups of at most PIXELS_PER_PART pixels: each GEMM's f32 sum stays short, and the groups'
    // parts are added in f64 (gradient_sum.rs).
    let per_group = images_per_weight_group(g, t);
    let out_image = g.out_channels * hw;
    let groups = g.batch.div_ceil(per_group);
    // Lanes of whole groups, fixed by the geometry alone (gradient_sum.rs).
    let lanes = gradient_sum::lanes(groups);
    let gemm_threads = gradient_sum::gemm_threads(t.threads, lanes);
    let sums: Vec<GradientSum> = (0..lanes)
        .into_par_iter()
        .map(|lane| {
            let mut sum = GradientSum::new(g.out_channels * k);
            let mut col = Memory::uninit(k * per_group * hw);
            let mut gathered = Memory::uninit(g.out_channels * per_group * hw);
            let mine = gradient_sum::lane_parts(lane, lanes, groups);
            for group in mine {
                let n0 = group * per_group;
                let images = per_group.min(g.batch - n0);
                let cols = images * hw;
                let columns = group_columns(x, g, n0, images, &mut col);
                for i in 0..images {
                    let dy = image(dy, n0 + i, out_image);
                    for (c, src) in dy.chunks_exact(hw).enumerate() {
                        gathered[c * cols + i * hw..][..hw].copy_from_slice(src);
                    }
                }
                let dst = MatMut {
                    data: sum.part(),
                    offset: 0,
                    rows: g.out_channels,
                    cols: k,
                    row_stride: k,
                };
                let dy = Mat::row_major(&gathered[..g.out_channels * cols], g.out_channels, cols);
                product(dst, dy, columns.t(), false, gemm_threads, t);
                sum.add_part();
            }
            sum
        })
        .collect();
    GradientSum::finish(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_tensor::{Conv2dParams, Shape};

    /// A group's columns stay within one im2col tile, so scratch is bounded by tile x threads as
    /// on the per-image path; only narrow images are grouped, and the groups share the batch out
    /// evenly among the threads.
    #[test]
    fn groups_fit_a_tile_and_spread_over_the_threads() {
        let p = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        for (batch, cin, side, threads) in [
            (32, 128, 4, 2),
            (32, 64, 8, 2),
            (7, 3, 2, 3),
            (32, 16, 16, 2),
        ] {
            let g = ConvGeometry::new(
                &Shape::from([batch, cin, side, side]),
                &Shape::from([cin, cin, 3, 3]),
                p,
            )
            .unwrap();
            let t = Tuning::detect(threads);
            let per_group = images_per_group(&g, &t);
            let image_bytes = col_rows(&g) * side * side * 4;
            assert!(per_group * image_bytes <= t.im2col_tile_bytes || per_group == 1);
            if side * side >= GROUP_BELOW_PIXELS {
                assert_eq!(per_group, 1, "{side}x{side} images are wide enough alone");
            } else {
                assert!(per_group > 1, "{batch}x{cin}x{side}x{side} groups");
                let groups = batch.div_ceil(per_group);
                assert!(groups >= threads.min(batch), "every thread gets a group");
            }
        }
    }
}
