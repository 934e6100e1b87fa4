//! Convolution by tiled im2col and GEMM. Each worker's column buffer holds one tile of output rows
//! of one image (at most `Tuning::im2col_tile_bytes`), never the whole batch, so scratch memory
//! is bounded by tile x threads whatever the batch. 1x1 stride-1 unpadded convolutions read the
//! input directly.

use rayon::prelude::*;
use vgg_tensor::ConvGeometry;

use super::gradient_sum::{self, GradientSum, PIXELS_PER_PART};
use crate::arena::Memory;
use crate::config::Tuning;
use crate::gemm::{product, Lhs, Mat, MatMut};

/// Rows (K = Cin*KH*KW) of the column matrix.
pub(super) fn col_rows(g: &ConvGeometry) -> usize {
    g.in_channels * g.kernel_h * g.kernel_w
}

/// Output rows per tile so that the column buffer stays within `tile_bytes`.
pub fn tile_rows(g: &ConvGeometry, tile_bytes: usize) -> usize {
    let row_bytes = col_rows(g) * g.out_w * std::mem::size_of::<f32>();
    (tile_bytes / row_bytes.max(1)).clamp(1, g.out_h)
}

/// Elements of column scratch one call allocates (0 on the 1x1 fast path).
pub fn scratch_elements(g: &ConvGeometry, tile_bytes: usize) -> usize {
    if is_pointwise(g) {
        0
    } else {
        col_rows(g) * tile_rows(g, tile_bytes) * g.out_w
    }
}

pub(super) fn is_pointwise(g: &ConvGeometry) -> bool {
    g.kernel_h == 1 && g.kernel_w == 1 && g.stride == 1 && g.padding == 0
}

/// Output rows [r0, r1) of one image as tiles.
pub(super) fn tiles(g: &ConvGeometry, tile_bytes: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = tile_rows(g, tile_bytes);
    let out_h = g.out_h;
    (0..out_h)
        .step_by(step)
        .map(move |r0| (r0, (r0 + step).min(out_h)))
}

/// Input column `iw` read by output column `ow` through kernel column `kx`, if inside the image.
#[inline]
pub(super) fn source(
    o: usize,
    k: usize,
    stride: usize,
    padding: usize,
    len: usize,
) -> Option<usize> {
    (o * stride + k).checked_sub(padding).filter(|&i| i < len)
}

/// For stride 1: the output columns [lo, hi) whose source column ow + kx - pad is inside the image.
#[inline]
pub(super) fn valid_span(kx: usize, padding: usize, in_w: usize, out_w: usize) -> (usize, usize) {
    let lo = padding.saturating_sub(kx).min(out_w);
    let hi = (in_w + padding).saturating_sub(kx).min(out_w).max(lo);
    (lo, hi)
}

/// Stride 1 and "same" padding (the output as wide as the input, as in every VGG convolution and
/// its input gradient): an im2col row is the input plane shifted by a whole number of rows and
/// columns, so it is built by one copy and a few zeros instead of a copy per output row.
pub(super) fn is_same_padded(g: &ConvGeometry) -> bool {
    g.stride == 1 && g.kernel_w == 2 * g.padding + 1 && g.out_w == g.in_w && g.padding < g.in_w
}

/// The im2col row of tap (ky, kx) of `plane` for output rows from `r0` on, as `is_same_padded`
/// allows: element j of the tile reads plane[j + shift], which is in the plane unless its row is
/// outside the image; the columns that wrapped round a row's edge are then zeroed.
pub(super) fn shifted_plane(
    plane: &[f32],
    g: &ConvGeometry,
    r0: usize,
    ky: usize,
    kx: usize,
    dst: &mut [f32],
) {
    let w = g.in_w as isize;
    let shift =
        r0 as isize * w + (ky as isize - g.padding as isize) * w + kx as isize - g.padding as isize;
    let len = dst.len() as isize;
    let lo = (-shift).clamp(0, len);
    let hi = (plane.len() as isize - shift).clamp(lo, len);
    let (lo, hi) = (lo as usize, hi as usize);
    // Only whole rows above or below the image fall outside the plane: a memset each, rarely.
    dst[..lo].fill(0.0);
    dst[hi..].fill(0.0);
    if hi == lo {
        return;
    }
    let from = (shift + lo as isize) as usize;
    let (src, inside) = (&plane[from..from + (hi - lo)], &mut dst[lo..hi]);
    // Columns [0, pad - kx) read the previous row's end, [w - (kx - pad), w) the next row's start.
    let (left, right) = (g.padding.saturating_sub(kx), kx.saturating_sub(g.padding));
    let keep = g.out_w - right;
    inside.copy_from_slice(src);
    // Strided stores: a fill per row would be a call to memset for every element or two.
    for column in (0..left).chain(keep..g.out_w) {
        dst.iter_mut()
            .skip(column)
            .step_by(g.out_w)
            .for_each(|v| *v = 0.0);
    }
}

/// Fills `col` ([K, (r1-r0)*out_w], row-major) with the patches of output rows [r0, r1) of `image`.
/// Split across workers only when the GEMM is too; otherwise a worker builds its own tile, which
/// then sits in its own cache for its GEMM.
pub(super) fn im2col(
    image: &[f32],
    g: &ConvGeometry,
    r0: usize,
    r1: usize,
    col: &mut [f32],
    parallel: bool,
) {
    im2col_images(image, 1, g, r0, r1, col, parallel);
}

/// `im2col` of `count` consecutive images side by side: row k of `col` holds each image's
/// `(r1 - r0) * out_w` columns in turn. A worker visits each (channel, ky, kx) row once for all
/// the images, so small images do not pay the per-row set-up once per image.
pub(super) fn im2col_images(
    images: &[f32],
    count: usize,
    g: &ConvGeometry,
    r0: usize,
    r1: usize,
    col: &mut [f32],
    parallel: bool,
) {
    let tile = (r1 - r0) * g.out_w;
    if tile <= GATHER_TILE {
        return im2col_gathered(images, count, g, r0, r1, col, parallel);
    }
    let row_len = count * tile;
    let plane_len = g.in_h * g.in_w;
    let in_image = g.in_channels * plane_len;
    let same_padded = is_same_padded(g);
    let fill_row = |(row, dst): (usize, &mut [f32])| {
        let ci = row / (g.kernel_h * g.kernel_w);
        let ky = (row / g.kernel_w) % g.kernel_h;
        let kx = row % g.kernel_w;
        for (i, dst) in dst.chunks_exact_mut(tile).enumerate() {
            let plane = &images[i * in_image + ci * plane_len..][..plane_len];
            if same_padded {
                shifted_plane(plane, g, r0, ky, kx, dst);
            } else {
                general_rows(plane, g, r0, r1, ky, kx, dst);
            }
        }
    };
    let rows = &mut col[..col_rows(g) * row_len];
    if parallel {
        rows.par_chunks_mut(row_len).enumerate().for_each(fill_row);
    } else {
        rows.chunks_mut(row_len).enumerate().for_each(fill_row);
    }
}

/// Tiles of at most this many output pixels (4x4 images) are built through a table of source
/// indices: copying them row by row is a memcpy call for every few elements (the digits
/// network's 2x2 layer at batch 32: 0.79 -> 0.45 ms forward; at 8x8 the copies were faster).
const GATHER_TILE: usize = 16;

/// `im2col_images` for small tiles: one table says where each output pixel of each tap reads
/// (or that it reads a zero), and each input plane, copied once beside a zero, is gathered
/// through it for every tap.
pub(super) fn im2col_gathered(
    images: &[f32],
    count: usize,
    g: &ConvGeometry,
    r0: usize,
    r1: usize,
    col: &mut [f32],
    parallel: bool,
) {
    let tile = (r1 - r0) * g.out_w;
    let (taps, row_len) = (g.kernel_h * g.kernel_w, count * tile);
    let plane_len = g.in_h * g.in_w;
    let in_image = g.in_channels * plane_len;
    let zero = plane_len;
    let mut table = Vec::with_capacity(taps * tile);
    for ky in 0..g.kernel_h {
        for kx in 0..g.kernel_w {
            for oh in r0..r1 {
                let ih = source(oh, ky, g.stride, g.padding, g.in_h);
                for ow in 0..g.out_w {
                    let iw = source(ow, kx, g.stride, g.padding, g.in_w);
                    table.push(ih.zip(iw).map_or(zero, |(ih, iw)| ih * g.in_w + iw));
                }
            }
        }
    }
    let fill_channel = |plane: &mut Vec<f32>, (ci, rows): (usize, &mut [f32])| {
        for i in 0..count {
            plane[..plane_len]
                .copy_from_slice(&images[i * in_image + ci * plane_len..][..plane_len]);
            for (tap, from) in table.chunks_exact(tile).enumerate() {
                let dst = &mut rows[tap * row_len + i * tile..][..tile];
                for (d, &s) in dst.iter_mut().zip(from) {
                    *d = plane[s];
                }
            }
        }
    };
    let channels = &mut col[..col_rows(g) * row_len];
    let with_zero = || vec![0.0; plane_len + 1];
    if parallel {
        channels
            .par_chunks_mut(taps * row_len)
            .enumerate()
            .for_each_init(with_zero, fill_channel);
    } else {
        let mut plane = with_zero();
        channels
            .chunks_mut(taps * row_len)
            .enumerate()
            .for_each(|c| fill_channel(&mut plane, c));
    }
}

/// One im2col row (channel, ky, kx) of output rows [r0, r1) of one input plane, for any stride
/// and padding.
#[allow(clippy::too_many_arguments)]
pub(super) fn general_rows(
    plane: &[f32],
    g: &ConvGeometry,
    r0: usize,
    r1: usize,
    ky: usize,
    kx: usize,
    dst: &mut [f32],
) {
    for (oh, d) in (r0..r1).zip(dst.chunks_exact_mut(g.out_w)) {
        let Some(ih) = source(oh, ky, g.stride, g.padding, g.in_h) else {
            d.fill(0.0);
            continue;
        };
        let src = &plane[ih * g.in_w..(ih + 1) * g.in_w];
        if g.stride == 1 {
            let (lo, hi) = valid_span(kx, g.padding, g.in_w, g.out_w);
            d[..lo].fill(0.0);
            d[hi..].fill(0.0);
            d[lo..hi].copy_from_slice(&src[lo + kx - g.padding..hi + kx - g.padding]);
        } else {
            for (ow, v) in d.iter_mut().enumerate() {
                *v = source(ow, kx, g.stride, g.padding, g.in_w).map_or(0.0, |iw| src[iw]);
            }
        }
    }
}

/// Adds the columns of `col` (as laid out by `im2col`) back into `image`: the adjoint of `im2col`.
pub(super) fn col2im(col: &[f32], g: &ConvGeometry, r0: usize, r1: usize, image: &mut [f32]) {
    let tile = (r1 - r0) * g.out_w;
    let plane_len = g.in_h * g.in_w;
    let taps = g.kernel_h * g.kernel_w;
    // Each task owns one input channel's plane, so no two tasks write the same element.
    image
        .par_chunks_mut(plane_len)
        .enumerate()
        .for_each(|(ci, plane)| {
            for tap in 0..taps {
                let (ky, kx) = (tap / g.kernel_w, tap % g.kernel_w);
                let src_rows = &col[(ci * taps + tap) * tile..][..tile];
                for (oh, s) in (r0..r1).zip(src_rows.chunks_exact(g.out_w)) {
                    let Some(ih) = source(oh, ky, g.stride, g.padding, g.in_h) else {
                        continue;
                    };
                    let dst = &mut plane[ih * g.in_w..(ih + 1) * g.in_w];
                    if g.stride == 1 {
                        let (lo, hi) = valid_span(kx, g.padding, g.in_w, g.out_w);
                        let d = &mut dst[lo + kx - g.padding..hi + kx - g.padding];
                        for (d, &v) in d.iter_mut().zip(&s[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for (ow, &v) in s.iter().enumerate() {
                            if let Some(iw) = source(ow, kx, g.stride, g.padding, g.in_w) {
                                dst[iw] += v;
                            }
                        }
                    }
                }
            }
        });
}

/// The column matrix of output rows [r0, r1) of one image: the input itself on the 1x1 path.
pub(super) fn columns<'a>(
    image: &'a [f32],
    g: &ConvGeometry,
    r0: usize,
    r1: usize,
    col: &'a mut [f32],
    parallel: bool,
) -> Mat<'a> {
    let tile = (r1 - r0) * g.out_w;
    if is_pointwise(g) {
        Mat {
            data: image,
            offset: r0 * g.out_w,
            rows: g.in_channels,
            cols: tile,
            row_stride: g.in_h * g.in_w,
            col_stride: 1,
        }
    } else {
        im2col(image, g, r0, r1, col, parallel);
        Mat::row_major(&col[..col_rows(g) * tile], col_rows(g), tile)
    }
}

/// Output rows [r0, r1) of one image's [Cout, H*W] output as a [Cout, tile] matrix.
pub(super) fn output_tile<'a>(
    y: &'a mut [f32],
    g: &ConvGeometry,
    r0: usize,
    r1: usize,
) -> MatMut<'a> {
    MatMut {
        data: y,
        offset: r0 * g.out_w,
        rows: g.out_channels,
        cols: (r1 - r0) * g.out_w,
        row_stride: g.out_h * g.out_w,
    }
}

/// The same tile of one image's output gradient, read-only.
pub(super) fn output_tile_ref<'a>(
    dy: &'a [f32],
    g: &ConvGeometry,
    r0: usize,
    r1: usize,
) -> Mat<'a> {
    Mat {
        data: dy,
        offset: r0 * g.out_w,
        rows: g.out_channels,
        cols: (r1 - r0) * g.out_w,
        row_stride: g.out_h * g.out_w,
        col_stride: 1,
    }
}

/// Runs `f(n, image_out, gemm_threads)` for every image. Whole images go one per worker with a
/// single-threaded GEMM (no synchronisation inside the GEMM, each worker's tile in its own cache);
/// the images left over when the batch does not divide by the threads get a parallel GEMM.
pub(super) fn per_image(
    out: &mut [f32],
    batch: usize,
    threads: usize,
    f: impl Fn(usize, &mut [f32], usize) + Sync,
) {
    let image_len = out.len() / batch;
    let spread = batch - batch % threads;
    out[..spread * image_len]
        .par_chunks_mut(image_len)
        .enumerate()
        .for_each(|(n, image)| f(n, image, 1));
    for n in spread..batch {
        f(n, &mut out[n * image_len..(n + 1) * image_len], threads);
    }
}

pub(super) fn image(t: &[f32], n: usize, len: usize) -> &[f32] {
    &t[n * len..(n + 1) * len]
}

/// `row[i] += bias`, then ReLU where `relu`.
pub(super) fn epilogue(row: &mut [f32], bias: Option<f32>, relu: bool) {
    let b = bias.unwrap_or(0.0);
    if relu {
        row.iter_mut().for_each(|v| *v = vgg_tensor::relu(*v + b));
    } else if bias.is_some() {
        row.iter_mut().for_each(|v| *v += b);
    }
}

/// `dst = src + bias`, then ReLU where `relu`: `epilogue` on the way from a scratch tile.
pub(crate) fn store_epilogue(dst: &mut [f32], src: &[f32], bias: Option<f32>, relu: bool) {
    let b = bias.unwrap_or(0.0);
    if relu {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = vgg_tensor::relu(s + b));
    } else {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s + b);
    }
}

/// For stride 1, the input gradient is a forward convolution of dy with the kernel flipped in
/// space and transposed in channels, padded by k-1-p: a GEMM with no col2im scatter.
pub(super) fn flipped_geometry(g: &ConvGeometry) -> Option<ConvGeometry> {
    let pad = g.kernel_h.checked_sub(1 + g.padding)?;
    (g.stride == 1 && g.kernel_h == g.kernel_w).then_some(ConvGeometry {
        batch: g.batch,
        in_channels: g.out_channels,
        in_h: g.out_h,
        in_w: g.out_w,
        out_channels: g.in_channels,
        kernel_h: g.kernel_h,
        kernel_w: g.kernel_w,
        out_h: g.in_h,
        out_w: g.in_w,
        stride: 1,
        padding: pad,
    })
}

/// The input gradient's kernel: w [Cout, Cin, kh, kw] as [Cin, Cout, kh, kw], each kernel turned
/// by 180 degrees (its taps read backwards), into the arena's reused memory, 16 input channels
/// a task (each output channel's 16 source kernels one contiguous read). Written in the source's
/// order into a fresh vector on one thread (its pages faulted in as written), conv4's and conv5's
/// 2.4M weights took 5-8.6 ms, half of a batch-1 input gradient; now 2.8-3.0, and 0.45-0.5 with
/// the 3x3 kernels moved as fixed-size arrays (0.66-0.68 tap by tap; warm, best of 10, on an
/// Emerald Rapids VM). Winograd's input gradient flips as it transforms instead
/// (`winograd::Kernel::Flipped`).
pub(super) fn flip_kernel(w: &[f32], g: &ConvGeometry) -> Memory {
    const CHANNELS: usize = 16;
    let taps = g.kernel_h * g.kernel_w;
    let (k, c) = (g.out_channels, g.in_channels);
    let mut flipped = Memory::uninit(w.len());
    flipped
        .par_chunks_mut((CHANNELS * k * taps).max(1))
        .enumerate()
        .for_each(|(block, kernels)| {
            let first = block * CHANNELS;
            let channels = kernels.len() / (k * taps);
            for o in 0..k {
                let sources = &w[(o * c + first) * taps..][..channels * taps];
                for (i, source) in sources.chunks_exact(taps).enumerate() {
                    let kernel = &mut kernels[(i * k + o) * taps..][..taps];
                    if let (Ok(to), Ok(from)) = (
                        <&mut [f32; 9]>::try_from(&mut *kernel),
                        <&[f32; 9]>::try_from(source),
                    ) {
                        // 3x3, the common case, as one fixed-size move the compiler unrolls.
                        *to = std::array::from_fn(|tap| from[8 - tap]);
                        continue;
                    }
                    for (to, from) in kernel.iter_mut().zip(source.iter().rev()) {
                        *to = *from;
                    }
                }
            }
        });
    flipped
}

/// The per-image im2col forward: per tile, Y[Cout, tile] = W[Cout, K] x col[K, tile], with the
/// bias and ReLU applied while the tile is in cache.
pub(super) fn forward_fused(
    x: &[f32],
    weights: &Lhs<'_>,
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    t: &Tuning,
    y: &mut [f32],
) {
    let (threads, tile_bytes) = (t.threads, t.im2col_tile_bytes);
    let in_image = g.in_channels * g.in_h * g.in_w;
    let hw = g.out_h * g.out_w;
    per_image(y, g.batch, threads, |n, y, gemm_threads| {
        // From the arena, whose pages stay mapped between calls; every value used is written
        // (`im2col`) before it is read.
        let mut col = Memory::uninit(scratch_elements(g, tile_bytes));
        for (r0, r1) in tiles(g, tile_bytes) {
            let cols = columns(image(x, n, in_image), g, r0, r1, &mut col, gemm_threads > 1);
            weights.times(output_tile(y, g, r0, r1), cols, false, gemm_threads);
            if bias.is_none() && !relu {
                continue;
            }
            for c in 0..g.out_channels {
                let b = bias.map(|b| b[c]);
                let row = &mut y[c * hw + r0 * g.out_w..c * hw + r1 * g.out_w];
                epilogue(row, b, relu);
            }
        }
    });
}

/// The input gradient per tile: dcol[K, tile] = W^T[K, Cout] x dY[Cout, tile], then col2im.
pub(super) fn backward_input(dy: &[f32], w: &[f32], g: &ConvGeometry, t: &Tuning, dx: &mut [f32]) {
    let (threads, tile_bytes) = (t.threads, t.im2col_tile_bytes);
    let in_image = g.in_channels * g.in_h * g.in_w;
    assert_eq!(dx.len(), g.batch * in_image, "conv input-gradient length");
    dx.fill(0.0);
    let out_image = g.out_channels * g.out_h * g.out_w;
    let weights_t = Lhs::prepare(Mat::row_major(w, g.out_channels, col_rows(g)).t(), t);
    per_image(dx, g.batch, threads, |n, dx, gemm_threads| {
        let dy = image(dy, n, out_image);
        // Overwritten by each tile's GEMM (accumulate false) before col2im reads it.
        let mut dcol = Memory::uninit(col_rows(g) * tile_rows(g, tile_bytes) * g.out_w);
        for (r0, r1) in tiles(g, tile_bytes) {
            let tile = (r1 - r0) * g.out_w;
            let dst = MatMut {
                data: &mut dcol,
                offset: 0,
                rows: col_rows(g),
                cols: tile,
                row_stride: tile,
            };
            weights_t.times(dst, output_tile_ref(dy, g, r0, r1), false, gemm_threads);
            col2im(&dcol, g, r0, r1, dx);
        }
    });
}

/// dW[Cout, K] = sum over images and tiles of dY[Cout, tile] x col[K, tile]^T. With at least as
/// many images as threads, each worker sums a contiguous group of images into its own dW.
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry, t: &Tuning) -> Memory {
    let threads = t.threads;
    let k = col_rows(g);
    // Tiles of at most PIXELS_PER_PART output pixels: each GEMM's f32 sum stays short, and the
    // tiles' parts are added in f64 (gradient_sum.rs).
    let part_rows = (PIXELS_PER_PART / g.out_w.max(1)).max(1);
    let tile_bytes = t
        .im2col_tile_bytes
        .min(part_rows * k * g.out_w * std::mem::size_of::<f32>());
    let in_image = g.in_channels * g.in_h * g.in_w;
    let out_image = g.out_channels * g.out_h * g.out_w;
    // Lanes of whole images, fixed by the batch alone (gradient_sum.rs).
    let lanes = gradient_sum::lanes(g.batch);
    let gemm_threads = gradient_sum::gemm_threads(threads, lanes);
    let sums: Vec<GradientSum> = (0..lanes)
        .into_par_iter()
        .map(|lane| {
            let mut sum = GradientSum::new(g.out_channels * k);
            let mut col = Memory::uninit(scratch_elements(g, tile_bytes));
            let images = gradient_sum::lane_parts(lane, lanes, g.batch);
            for n in images {
                for (r0, r1) in tiles(g, tile_bytes) {
                    let cols =
                        columns(image(x, n, in_image), g, r0, r1, &mut col, gemm_threads > 1);
                    let dst = MatMut {
                        data: sum.part(),
                        offset: 0,
                        rows: g.out_channels,
                        cols: k,
                        row_stride: k,
                    };
                    product(
                        dst,
                        output_tile_ref(image(dy, n, out_image), g, r0, r1),
                        cols.t(),
                        false,
                        gemm_threads,
                        t,
                    );
                    sum.add_part();
                }
            }
            sum
        })
        .collect();
    GradientSum::finish(sums)
}
