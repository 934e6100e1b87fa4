//! Max-pooling with the argmax captured in the same pass, and its backward. Each output keeps the
//! position of its maximum within its window (one byte), a quarter of a u32 index's memory.

use rayon::prelude::*;
use vgg_tensor::PoolGeometry;

/// Windows up to 16x16: a window position fits in a byte.
pub const MAX_WINDOW: usize = 16;

/// The first maximum of a window wins; NaN wins so that it propagates. Without short-circuits,
/// so that the windows compile to selects rather than branches that random data mispredicts.
#[inline(always)]
fn better(v: f32, best: f32) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// Output elements per parallel task at least: a task per plane of a small image cost more
/// than its pooling (8x8 planes at batch 32: 0.30 ms a pool).
const MIN_TASK: usize = 1 << 14;

crate::simd::dispatch_simd! {
    /// Output rows of a 2x2/2 pool, each from the next two rows of `x` (rows of `in_w` values),
    /// compiled for the CPU's vector unit: the baseline build's maximum and argument selects ran
    /// pool1 at batch 1 at 17 GB/s of 54 on a Zen 5.
    fn pool_rows_2x2(x: &[f32], in_w: usize, y: &mut [f32], arg: &mut [u8]) => pool_rows_2x2_generic
}

#[inline(always)]
fn pool_rows_2x2_generic(x: &[f32], in_w: usize, y: &mut [f32], arg: &mut [u8]) {
    let out_w = in_w / 2;
    let outputs = y.chunks_exact_mut(out_w).zip(arg.chunks_exact_mut(out_w));
    for ((y, arg), pair) in outputs.zip(x.chunks_exact(2 * in_w)) {
        let (top, bottom) = pair.split_at(in_w);
        pool_row_2x2(top, bottom, y, arg);
    }
}

/// One output row of a 2x2/2 pool from its two input rows (`top`, `bottom`).
#[inline(always)]
fn pool_row_2x2(top: &[f32], bottom: &[f32], y: &mut [f32], arg: &mut [u8]) {
    for (((y, arg), t), b) in y
        .iter_mut()
        .zip(arg)
        .zip(top.chunks_exact(2))
        .zip(bottom.chunks_exact(2))
    {
        let (mut best, mut at) = (t[0], 0u8);
        for (v, i) in [(t[1], 1u8), (b[0], 2), (b[1], 3)] {
            let take = better(v, best);
            best = if take { v } else { best };
            at = if take { i } else { at };
        }
        *y = best;
        *arg = at;
    }
}

crate::simd::dispatch_simd! {
    /// The gradient of output rows of a 2x2/2 pool into `dx`, two rows of `in_w` values per
    /// output row; compiled for the CPU's vector unit, as `pool_rows_2x2` is.
    fn unpool_rows_2x2(dy: &[f32], arg: &[u8], in_w: usize, dx: &mut [f32])
        => unpool_rows_2x2_generic
}

#[inline(always)]
fn unpool_rows_2x2_generic(dy: &[f32], arg: &[u8], in_w: usize, dx: &mut [f32]) {
    let out_w = in_w / 2;
    let outputs = dy.chunks_exact(out_w).zip(arg.chunks_exact(out_w));
    for ((dy, arg), pair) in outputs.zip(dx.chunks_exact_mut(2 * in_w)) {
        let (top, bottom) = pair.split_at_mut(in_w);
        unpool_row_2x2(dy, arg, top, bottom);
    }
}

/// The gradient of one 2x2/2 output row into its two input rows: each input is written once,
/// with the gradient or zero.
#[inline(always)]
fn unpool_row_2x2(dy: &[f32], arg: &[u8], top: &mut [f32], bottom: &mut [f32]) {
    let pairs = top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2));
    for (((t, b), &d), &at) in pairs.zip(dy).zip(arg) {
        t[0] = if at == 0 { d } else { 0.0 };
        t[1] = if at == 1 { d } else { 0.0 };
        b[0] = if at == 2 { d } else { 0.0 };
        b[1] = if at == 3 { d } else { 0.0 };
    }
}

/// VGG's 2x2/2 pool over even sizes: every pair of input rows of the whole tensor makes one
/// output row, planes or not.
fn is_even_2x2(g: &PoolGeometry) -> bool {
    g.kernel == 2 && g.stride == 2 && g.in_h.is_multiple_of(2) && g.in_w.is_multiple_of(2)
}

/// Output rows per task, so that a task has at least `MIN_TASK` outputs.
fn rows_per_task(row: usize) -> usize {
    MIN_TASK.div_ceil(row.max(1))
}

/// Fills `y` and `arg` (each output's maximum's position within its window) from NCHW `x`.
pub fn forward(x: &[f32], g: &PoolGeometry, y: &mut [f32], arg: &mut [u8]) {
    if is_even_2x2(g) {
        let rows = rows_per_task(g.out_w);
        y.par_chunks_mut(rows * g.out_w)
            .zip(arg.par_chunks_mut(rows * g.out_w))
            .zip(x.par_chunks(rows * 2 * g.in_w))
            .for_each(|((y, arg), x)| pool_rows_2x2(x, g.in_w, y, arg));
        return;
    }
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    y.par_chunks_mut(out_plane)
        .zip(arg.par_chunks_mut(out_plane))
        .zip(x.par_chunks(in_plane))
        .for_each(|((y, arg), plane)| {
            if g.kernel == 2 && g.stride == 2 {
                // Odd sizes: the last row or column is left out.
                for (oh, (y, arg)) in y
                    .chunks_exact_mut(g.out_w)
                    .zip(arg.chunks_exact_mut(g.out_w))
                    .enumerate()
                {
                    let top = &plane[2 * oh * g.in_w..][..2 * g.out_w];
                    let bottom = &plane[(2 * oh + 1) * g.in_w..][..2 * g.out_w];
                    pool_row_2x2(top, bottom, y, arg);
                }
                return;
            }
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let (mut best, mut at) = (f32::NAN, 0u8);
                    for ky in 0..g.kernel {
                        let row =
                            &plane[(oh * g.stride + ky) * g.in_w + ow * g.stride..][..g.kernel];
                        for (kx, &v) in row.iter().enumerate() {
                            let pos = (ky * g.kernel + kx) as u8;
                            if pos == 0 || better(v, best) {
                                best = v;
                                at = pos;
                            }
                        }
                    }
                    y[oh * g.out_w + ow] = best;
                    arg[oh * g.out_w + ow] = at;
                }
            }
        });
}

/// dx: each output gradient added at its maximum's position.
pub fn backward(dy: &[f32], arg: &[u8], g: &PoolGeometry, dx: &mut [f32]) {
    if is_even_2x2(g) {
        let rows = rows_per_task(g.out_w);
        dx.par_chunks_mut(rows * 2 * g.in_w)
            .zip(
                dy.par_chunks(rows * g.out_w)
                    .zip(arg.par_chunks(rows * g.out_w)),
            )
            .for_each(|(dx, (dy, arg))| unpool_rows_2x2(dy, arg, g.in_w, dx));
        return;
    }
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(arg.par_chunks(out_plane)))
        .for_each(|(dx, (dy, arg))| {
            if g.kernel == 2 && g.stride == 2 {
                // Odd sizes: the rows and columns the floor left out get zeros.
                dx.fill(0.0);
                for (oh, (dy, arg)) in dy
                    .chunks_exact(g.out_w)
                    .zip(arg.chunks_exact(g.out_w))
                    .enumerate()
                {
                    let (top, bottom) = dx[2 * oh * g.in_w..][..2 * g.in_w].split_at_mut(g.in_w);
                    unpool_row_2x2(dy, arg, &mut top[..2 * g.out_w], &mut bottom[..2 * g.out_w]);
                }
                return;
            }
            dx.fill(0.0);
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let at = arg[oh * g.out_w + ow] as usize;
                    let (ky, kx) = (at / g.kernel, at % g.kernel);
                    dx[(oh * g.stride + ky) * g.in_w + ow * g.stride + kx] += dy[oh * g.out_w + ow];
                }
            }
        });
}

/// Average of each window of NCHW `x`.
pub fn avg_forward(x: &[f32], g: &PoolGeometry, y: &mut [f32]) {
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    let inv = 1.0 / (g.kernel * g.kernel) as f32;
    y.par_chunks_mut(out_plane)
        .zip(x.par_chunks(in_plane))
        .for_each(|(y, plane)| {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let mut sum = 0.0f32;
                    for ky in 0..g.kernel {
                        let row =
                            &plane[(oh * g.stride + ky) * g.in_w + ow * g.stride..][..g.kernel];
                        sum += row.iter().sum::<f32>();
                    }
                    y[oh * g.out_w + ow] = sum * inv;
                }
            }
        });
}

/// dx: each output gradient spread evenly over its window.
pub fn avg_backward(dy: &[f32], g: &PoolGeometry, dx: &mut [f32]) {
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    let inv = 1.0 / (g.kernel * g.kernel) as f32;
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane))
        .for_each(|(dx, dy)| {
            dx.fill(0.0);
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let share = dy[oh * g.out_w + ow] * inv;
                    for ky in 0..g.kernel {
                        let row =
                            &mut dx[(oh * g.stride + ky) * g.in_w + ow * g.stride..][..g.kernel];
                        row.iter_mut().for_each(|v| *v += share);
                    }
                }
            }
        });
}
