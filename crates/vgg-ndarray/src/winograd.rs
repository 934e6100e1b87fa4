//! Winograd convolution F(4x4, 3x3) for 3x3 stride-1 layers (Lavin & Gray 2015): each 4x4 block
//! of outputs costs 36 multiplications per input-output channel pair instead of 144.
//!
//! Per chunk of tile rows: the input tiles (6x6, overlapping by 2) are transformed, V = Bt d B,
//! into 36 matrices [C, tiles]; the weights were transformed once per call, U = G w Gt, into 36
//! matrices [K, C]; 36 GEMMs make M = U V [K, tiles]; the output transform Y = At M A writes the
//! 4x4 blocks, with the bias and ReLU applied on the way. Transforms run on 16 tiles at a time, one
//! per SIMD lane, compiled for AVX-512 or AVX2 where the CPU has them.

use rayon::prelude::*;
use vgg_tensor::ConvGeometry;

use crate::arena::Memory;
use crate::config::Tuning;
use crate::gemm::{sgemm, Mat, MatMut};

/// Output block side.
const M: usize = 4;
/// Input tile side: M + 3 - 1.
const A: usize = 6;
/// Transformed positions per tile.
const POSITIONS: usize = A * A;
/// Tiles transformed together, one per lane.
const LANES: usize = 16;

#[cfg(test)]
const BT: [[f32; A]; A] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

#[cfg(test)]
const G: [[f32; 3]; A] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

#[cfg(test)]
const AT: [[f32; A]; M] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// One SIMD register's worth of tiles.
type Lanes = [f32; LANES];

/// Bt d for six lane vectors (Bt's zeros skipped).
#[inline(always)]
fn bt6(d: &[Lanes; A]) -> [Lanes; A] {
    let mut r = [[0.0f32; LANES]; A];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        r[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        r[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        r[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// At s for six lane vectors.
#[inline(always)]
fn at6(s: &[Lanes; A]) -> [Lanes; M] {
    let mut r = [[0.0f32; LANES]; M];
    for l in 0..LANES {
        let [s0, s1, s2, s3, s4, s5] = [s[0][l], s[1][l], s[2][l], s[3][l], s[4][l], s[5][l]];
        let (p12, m12, p34, m34) = (s1 + s2, s1 - s2, s3 + s4, s3 - s4);
        r[0][l] = s0 + p12 + p34;
        r[1][l] = m12 + 2.0 * m34;
        r[2][l] = p12 + 4.0 * p34;
        r[3][l] = m12 + 8.0 * m34 + s5;
    }
    r
}

/// A y for four lane vectors (A = At transposed): an output gradient block into transform space.
#[inline(always)]
fn a4(y: &[Lanes; M]) -> [Lanes; A] {
    let mut r = [[0.0f32; LANES]; A];
    for l in 0..LANES {
        let [y0, y1, y2, y3] = [y[0][l], y[1][l], y[2][l], y[3][l]];
        let (even, odd) = (y0 + y2, y1 + y3);
        let (even4, odd2) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
        r[0][l] = y0;
        r[1][l] = even + odd;
        r[2][l] = even - odd;
        r[3][l] = even4 + odd2;
        r[4][l] = even4 - odd2;
        r[5][l] = y3;
    }
    r
}

/// Gt u for six lane vectors: a weight gradient out of transform space.
#[inline(always)]
fn gt6(u: &[Lanes; A]) -> [Lanes; 3] {
    let mut r = [[0.0f32; LANES]; 3];
    for l in 0..LANES {
        let [u0, u1, u2, u3, u4, u5] = [u[0][l], u[1][l], u[2][l], u[3][l], u[4][l], u[5][l]];
        let (p12, m12, p34, m34) = (u1 + u2, u2 - u1, u3 + u4, u3 - u4);
        r[0][l] = u0 * (1.0 / 4.0) - p12 * (1.0 / 6.0) + p34 * (1.0 / 24.0);
        r[1][l] = m12 * (1.0 / 6.0) + m34 * (1.0 / 12.0);
        r[2][l] = -p12 * (1.0 / 6.0) + p34 * (1.0 / 6.0) + u5;
    }
    r
}

/// Tiles a chunk's GEMMs need at least (see `Chunks`; its byte sizes come from `Tuning`).
const MIN_TILES: usize = 64;

/// The 2-D transform F d Ft of N x N lane blocks, given F as `f` (N values in, P out): F applied
/// to every column, then to every row of the result.
#[inline(always)]
fn transform_2d<const N: usize, const P: usize>(
    d: &[[Lanes; N]; N],
    f: impl Fn(&[Lanes; N]) -> [Lanes; P],
) -> [[Lanes; P]; P] {
    let mut cols = [[[0.0f32; LANES]; N]; P];
    for j in 0..N {
        let column: [Lanes; N] = std::array::from_fn(|i| d[i][j]);
        for (a, v) in f(&column).into_iter().enumerate() {
            cols[a][j] = v;
        }
    }
    std::array::from_fn(|a| f(&cols[a]))
}

/// Whether a convolution can run here: 3x3, stride 1, padding at most 2.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.padding <= 2
}

/// G g for three lane vectors.
#[inline(always)]
fn g3(x: &[Lanes; 3]) -> [Lanes; A] {
    let mut r = [[0.0f32; LANES]; A];
    for l in 0..LANES {
        let [x0, x1, x2] = [x[0][l], x[1][l], x[2][l]];
        let (outer, middle) = (x0 + x2, x1);
        r[0][l] = x0 * (1.0 / 4.0);
        r[1][l] = -(outer + middle) * (1.0 / 6.0);
        r[2][l] = -(outer - middle) * (1.0 / 6.0);
        r[3][l] = x0 * (1.0 / 24.0) + x1 * (1.0 / 12.0) + x2 * (1.0 / 6.0);
        r[4][l] = x0 * (1.0 / 24.0) - x1 * (1.0 / 12.0) + x2 * (1.0 / 6.0);
        r[5][l] = x2;
    }
    r
}

/// Whether a layer's transformed weights are worth keeping between calls. Making them writes 4x
/// the weights (memory-bound), while the call's GEMMs do 36 k c multiply-adds per tile: at ~10 GB/s
/// against ~100 GFLOP/s the transform is about 25 / tiles of the layer's time, so it is kept where
/// that passes 5% (under 500 tiles: VGG-16 conv5 up to batch 16, conv4 up to batch 8, every layer at
/// batch 1). Past that it costs little, and keeping it would hold 4x the weights (235 MB for VGG-16's
/// layers on Winograd) for next to nothing.
pub(crate) fn worth_keeping_weights(g: &ConvGeometry) -> bool {
    const KEEP_BELOW_TILES: usize = 500;
    let (tiles_h, tiles_w) = tile_grid(g);
    g.batch * tiles_h * tiles_w < KEEP_BELOW_TILES
}

/// U[pos][k][c] = (G w[k][c] Gt)[pos] for OIHW 3x3 weights, 16 input channels at a time: the
/// weights as `forward_transformed` takes them (`lasting`: see `Memory::new`).
pub(crate) fn transform_weights(w: &[f32], k: usize, c: usize, lasting: bool) -> Memory {
    // Every (pos, k, c) is written below.
    let mut u = Memory::new(POSITIONS * k * c, lasting);
    let out = OutPtr {
        ptr: u.as_mut_ptr(),
        len: u.len(),
        streaming: false,
    };
    (0..k).into_par_iter().for_each(|ko| {
        let filters = &w[ko * c * 9..(ko + 1) * c * 9];
        for c0 in (0..c).step_by(LANES) {
            let lanes = LANES.min(c - c0);
            let mut block = [0.0f32; LANES * 9];
            block[..lanes * 9].copy_from_slice(&filters[c0 * 9..(c0 + lanes) * 9]);
            // g[i][j][l]: tap (i, j) of input channel c0 + l.
            let mut g = [[[0.0f32; LANES]; 3]; 3];
            for (i, gi) in g.iter_mut().enumerate() {
                for (j, gij) in gi.iter_mut().enumerate() {
                    for (l, v) in gij.iter_mut().enumerate() {
                        *v = block[l * 9 + i * 3 + j];
                    }
                }
            }
            for (a, row) in transform_2d(&g, g3).iter().enumerate() {
                for (b, values) in row.iter().enumerate() {
                    // SAFETY: inside u; only this output channel's task writes row ko.
                    unsafe { out.write_slice(((a * A + b) * k + ko) * c + c0, &values[..lanes]) };
                }
            }
        }
    });
    u
}

/// Tiles of one image: (rows, columns) of 4x4 output blocks, the last ones cropped.
fn tile_grid(g: &ConvGeometry) -> (usize, usize) {
    (g.out_h.div_ceil(M), g.out_w.div_ceil(M))
}

/// V[c][pos][t] for the tile rows `rows` (global indices over batch x tile rows), t counting
/// tiles in order across those rows.
#[inline(always)]
fn transform_input_generic(
    x: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    v: &mut [f32],
) {
    let (tiles_h, tiles_w) = tile_grid(g);
    let tiles = rows.len() * tiles_w;
    let c_count = g.in_channels;
    let plane = g.in_h * g.in_w;
    // The A input rows one tile row reads, zero-padded, split by column phase: column 4q + p at
    // [p][q], so that column j of the tiles t0.. is one contiguous load at [j % 4][t0 + j / 4..].
    let quads = tiles_w.next_multiple_of(LANES) + 1;
    let mut padded = vec![0.0f32; M * quads];
    let mut phases = vec![0.0f32; A * M * quads];
    for (ri, row) in rows.clone().enumerate() {
        let (n, th) = (row / tiles_h, row % tiles_h);
        for ci in 0..c_count {
            let src = &x[(n * c_count + ci) * plane..][..plane];
            for (i, split) in phases.chunks_exact_mut(M * quads).enumerate() {
                let ih = (th * M + i) as isize - g.padding as isize;
                if ih < 0 || ih >= g.in_h as isize {
                    split.fill(0.0);
                    continue;
                }
                let line = &src[ih as usize * g.in_w..][..g.in_w];
                // Input column iw lands at padded column iw + padding.
                let end = (g.padding + g.in_w).min(padded.len());
                padded[..g.padding].fill(0.0);
                padded[g.padding..end].copy_from_slice(&line[..end - g.padding]);
                padded[end..].fill(0.0);
                split_phases(&padded, split, quads);
            }
            for t0 in (0..tiles_w).step_by(LANES) {
                // d[i][j][l]: element (i, j) of tile t0 + l.
                let mut d = [[[0.0f32; LANES]; A]; A];
                for (di, split) in d.iter_mut().zip(phases.chunks_exact(M * quads)) {
                    for (j, dij) in di.iter_mut().enumerate() {
                        let start = (j % M) * quads + t0 + j / M;
                        *dij = *<&Lanes>::try_from(&split[start..start + LANES])
                            .expect("LANES values");
                    }
                }
                let lanes = LANES.min(tiles_w - t0);
                let at = ci * POSITIONS * tiles + ri * tiles_w + t0;
                store_positions(&transform_2d(&d, bt6), v, tiles, at, lanes);
            }
        }
    }
}

/// dM[k][pos][t] = (A dY At)[pos] for the 4x4 output-gradient blocks of the tile rows `rows`
/// (blocks cut by the output's edge read zeros beyond it).
#[inline(always)]
fn transform_output_grad_generic(
    dy: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    dm: &mut [f32],
) {
    let (tiles_h, tiles_w) = tile_grid(g);
    let tiles = rows.len() * tiles_w;
    let k_count = g.out_channels;
    let plane = g.out_h * g.out_w;
    // The 4 output-gradient rows of a tile row, zero beyond the edges, split by column phase
    // (see `transform_input_generic`): column j of the tiles t0.. is at [j][t0..].
    let quads = tiles_w.next_multiple_of(LANES);
    let mut padded = vec![0.0f32; M * quads];
    let mut phases = vec![0.0f32; M * M * quads];
    for (ri, row) in rows.clone().enumerate() {
        let (n, th) = (row / tiles_h, row % tiles_h);
        for ko in 0..k_count {
            let src = &dy[(n * k_count + ko) * plane..][..plane];
            for (i, split) in phases.chunks_exact_mut(M * quads).enumerate() {
                let oh = th * M + i;
                if oh >= g.out_h {
                    split.fill(0.0);
                    continue;
                }
                padded[..g.out_w].copy_from_slice(&src[oh * g.out_w..(oh + 1) * g.out_w]);
                padded[g.out_w..].fill(0.0);
                split_phases(&padded, split, quads);
            }
            for t0 in (0..tiles_w).step_by(LANES) {
                let mut d = [[[0.0f32; LANES]; M]; M];
                for (di, split) in d.iter_mut().zip(phases.chunks_exact(M * quads)) {
                    for (j, dij) in di.iter_mut().enumerate() {
                        let start = j * quads + t0;
                        *dij = *<&Lanes>::try_from(&split[start..start + LANES])
                            .expect("LANES values");
                    }
                }
                let lanes = LANES.min(tiles_w - t0);
                let at = ko * POSITIONS * tiles + ri * tiles_w + t0;
                store_positions(&transform_2d(&d, a4), dm, tiles, at, lanes);
            }
        }
    }
}

/// Y = At M A for the tile rows `rows`, plus bias and ReLU, into the output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transform_output_generic(
    m: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    relu: bool,
    y: OutPtr,
) {
    let (tiles_h, tiles_w) = tile_grid(g);
    let tiles = rows.len() * tiles_w;
    let k_count = g.out_channels;
    let plane = g.out_h * g.out_w;
    // An output far larger than the caches is not read back from them: store it around them.
    let streaming = y.streaming;
    for (ri, row) in rows.clone().enumerate() {
        let (n, th) = (row / tiles_h, row % tiles_h);
        for ko in 0..k_count {
            let b = bias.map_or(0.0, |b| b[ko]);
            let out_plane = (n * k_count + ko) * plane;
            for t0 in (0..tiles_w).step_by(LANES) {
                let lanes = LANES.min(tiles_w - t0);
                let base = ri * tiles_w + t0;
                let s = load_positions(m, tiles, ko * POSITIONS * tiles + base, lanes);
                let width = (g.out_w - t0 * M).min(LANES * M);
                for (a, out) in transform_2d(&s, at6).iter().enumerate() {
                    let oh = th * M + a;
                    if oh >= g.out_h {
                        break;
                    }
                    // Interleave the lanes' 4 columns into one output row segment.
                    let mut line = [0.0f32; LANES * M];
                    for (bcol, ob) in out.iter().enumerate() {
                        for (l, &v) in ob.iter().enumerate() {
                            let v = v + b;
                            line[l * M + bcol] = if relu { vgg_tensor::relu(v) } else { v };
                        }
                    }
                    // SAFETY: the segment lies inside row oh of plane (n, ko), and only the chunk
                    // owning tile row `row` writes it.
                    unsafe {
                        y.write_row(out_plane + oh * g.out_w + t0 * M, &line[..width], streaming)
                    };
                }
            }
        }
    }
}

/// Splits a row into its 4 column phases: split[p * quads + q] = row[4 q + p].
#[inline(always)]
fn split_phases(row: &[f32], split: &mut [f32], quads: usize) {
    let (p0, rest) = split.split_at_mut(quads);
    let (p1, rest) = rest.split_at_mut(quads);
    let (p2, p3) = rest.split_at_mut(quads);
    for ((((q, a), b), c), d) in row.chunks_exact(M).zip(p0).zip(p1).zip(p2).zip(p3) {
        *a = q[0];
        *b = q[1];
        *c = q[2];
        *d = q[3];
    }
}

/// Stores position (a, b) of `t` at dst[(a * A + b) * stride + at..][..lanes] (see `position`
/// for the layout).
#[inline(always)]
fn store_positions(t: &[[Lanes; A]; A], dst: &mut [f32], stride: usize, at: usize, lanes: usize) {
    for (pos, values) in t.iter().flatten().enumerate() {
        copy_lanes(&mut dst[pos * stride + at..][..lanes], values);
    }
}

/// Position `pos`'s [rows, tiles] matrix of transformed tiles stored as [rows][POSITIONS][tiles]
/// (each row's 36 positions together, so a transform reads or writes one region, not 36 streams).
fn position(data: &[f32], pos: usize, rows: usize, tiles: usize) -> Mat<'_> {
    Mat {
        data,
        offset: pos * tiles,
        rows,
        cols: tiles,
        row_stride: POSITIONS * tiles,
        col_stride: 1,
    }
}

/// The inverse of `store_positions`: lanes beyond `lanes` are zero.
#[inline(always)]
fn load_positions(src: &[f32], stride: usize, at: usize, lanes: usize) -> [[Lanes; A]; A] {
    let mut t = [[[0.0f32; LANES]; A]; A];
    for (pos, values) in t.iter_mut().flatten().enumerate() {
        copy_lanes(&mut values[..lanes], &src[pos * stride + at..][..lanes]);
    }
    t
}

/// dst = src[..dst.len()]. Copied in fixed-size pieces (16, then 8, 4, 2, 1 values), which
/// compile to vector moves: a runtime-length copy_from_slice calls memmove, and a plain loop over
/// a partial group of lanes is scalar, each costing more than the transforms here.
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn piece<const N: usize>(dst: &mut [f32], src: &[f32], at: &mut usize) {
        let d: &mut [f32; N] = (&mut dst[*at..*at + N]).try_into().expect("N values");
        *d = *<&[f32; N]>::try_from(&src[*at..*at + N]).expect("N values");
        *at += N;
    }
    let n = dst.len();
    let src = &src[..n];
    let mut at = 0;
    while n - at >= LANES {
        piece::<LANES>(dst, src, &mut at);
    }
    let rest = n - at;
    if rest & 8 != 0 {
        piece::<8>(dst, src, &mut at);
    }
    if rest & 4 != 0 {
        piece::<4>(dst, src, &mut at);
    }
    if rest & 2 != 0 {
        piece::<2>(dst, src, &mut at);
    }
    if rest & 1 != 0 {
        piece::<1>(dst, src, &mut at);
    }
}

/// The output, written by several chunks at disjoint positions.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    len: usize,
    /// Written with non-temporal stores (`Tuning::streaming_bytes`).
    streaming: bool,
}

// SAFETY: chunks write disjoint elements (their own tile rows), and the pointer outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Orders this thread's non-temporal stores before its later stores (the chunk's completion,
/// which the thread joining the chunks waits on).
#[inline(always)]
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

impl OutPtr {
    /// `write_slice`, with non-temporal stores when `streaming` and the row segment is 16-byte
    /// aligned: no read of the destination lines first, and no eviction of the cached working
    /// set. The caller fences (`store_fence`) before others read the output.
    #[inline(always)]
    unsafe fn write_row(self, at: usize, values: &[f32], streaming: bool) {
        #[cfg(target_arch = "x86_64")]
        if streaming && values.len() % 4 == 0 {
            assert!(at + values.len() <= self.len, "write inside the output");
            // SAFETY: in bounds (checked above); the caller guarantees no other writer.
            let dst = unsafe { self.ptr.add(at) };
            if dst as usize % 16 == 0 {
                for (i, quad) in values.chunks_exact(4).enumerate() {
                    // SAFETY: SSE is part of x86_64; dst + 4i is 16-byte aligned and in bounds.
                    unsafe {
                        std::arch::x86_64::_mm_stream_ps(
                            dst.add(4 * i),
                            std::arch::x86_64::_mm_loadu_ps(quad.as_ptr()),
                        )
                    };
                }
                return;
            }
        }
        let _ = streaming;
        // SAFETY: forwarded to the caller.
        unsafe { self.write_slice(at, values) }
    }

    #[inline(always)]
    unsafe fn write_slice(self, at: usize, values: &[f32]) {
        assert!(at + values.len() <= self.len, "write inside the output");
        // SAFETY: in bounds (checked above); the caller guarantees no other writer.
        copy_lanes(
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), values.len()) },
            values,
        );
    }
}

/// The transforms compiled for the widest vector unit the CPU has (they are most of the
/// non-GEMM time).
mod simd {
    use super::*;

    crate::simd::dispatch_simd! {
        pub(super) fn input(
            x: &[f32],
            g: &ConvGeometry,
            rows: std::ops::Range<usize>,
            v: &mut [f32],
        ) => transform_input_generic
    }

    crate::simd::dispatch_simd! {
        pub(super) fn output_grad(
            dy: &[f32],
            g: &ConvGeometry,
            rows: std::ops::Range<usize>,
            dm: &mut [f32],
        ) => transform_output_grad_generic
    }

    crate::simd::dispatch_simd! {
        pub(super) fn output(
            m: &[f32],
            g: &ConvGeometry,
            rows: std::ops::Range<usize>,
            bias: Option<&[f32]>,
            relu: bool,
            y: OutPtr,
        ) => transform_output_generic
    }
}

/// Whether the transformed weights are too large to stay in cache, so chunks are large
/// (`Chunks`).
pub(crate) fn large_chunks(g: &ConvGeometry, t: &Tuning) -> bool {
    POSITIONS * g.out_channels * g.in_channels * 4 > t.cached_weight_bytes
}

/// How a convolution's tile rows (over batch x tile rows) are cut into chunks. Every chunk's
/// GEMMs read all the transformed weights (36 k x c values). Where those stay in cache
/// (`Tuning::cached_weight_bytes`), chunks are small,
/// so their transformed input and output (36 (c + k) values per tile) stay near the core's L2
/// (`Tuning::chunk_bytes`, at least `MIN_TILES` for the GEMMs). Where they do not (256 channels and
/// more: 9-36 MiB), each chunk streams them from memory, so chunks grow to the L3
/// (`Tuning::large_chunk_bytes`)
/// to read them fewer times. The count is a multiple of the threads, so none waits on another's
/// extra chunk. Measured per layer: docs/performance.md.
struct Chunks {
    rows_per_chunk: usize,
    count: usize,
    total_rows: usize,
    tiles_w: usize,
    /// Input and output channels.
    channels: (usize, usize),
    /// Scratch values one chunk needs: transformed input and output.
    scratch_len: usize,
}

impl Chunks {
    fn new(g: &ConvGeometry, t: &Tuning) -> Chunks {
        let threads = t.threads;
        let (tiles_h, tiles_w) = tile_grid(g);
        let total_rows = g.batch * tiles_h;
        let (c, k) = (g.in_channels, g.out_channels);
        let row_bytes = (POSITIONS * (c + k) * tiles_w * 4).max(1);
        let rows = if large_chunks(g, t) {
            t.large_chunk_bytes / row_bytes
        } else {
            (t.chunk_bytes / row_bytes).max(MIN_TILES.div_ceil(tiles_w))
        };
        let count = total_rows
            .div_ceil(rows.max(1))
            .next_multiple_of(threads.max(1));
        let rows_per_chunk = total_rows.div_ceil(count).max(1);
        Chunks {
            rows_per_chunk,
            count: total_rows.div_ceil(rows_per_chunk),
            total_rows,
            tiles_w,
            channels: (c, k),
            scratch_len: POSITIONS * (c + k) * rows_per_chunk * tiles_w,
        }
    }

    /// Tile rows of chunk `i`.
    fn rows(&self, i: usize) -> std::ops::Range<usize> {
        i * self.rows_per_chunk..((i + 1) * self.rows_per_chunk).min(self.total_rows)
    }

    /// `f(rows, tiles, v, m)` for chunk `i`'s tile rows and tile count, with this thread's scratch
    /// split into the chunk's transformed input (c values per position and tile) and output (k
    /// values). Callers write every value before reading it, so stale values from an earlier call
    /// are harmless.
    fn with_scratch<R>(
        &self,
        i: usize,
        f: impl FnOnce(std::ops::Range<usize>, usize, &mut [f32], &mut [f32]) -> R,
    ) -> R {
        let (c, k) = self.channels;
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < self.scratch_len {
                scratch.resize(self.scratch_len, 0.0);
            }
            let rows = self.rows(i);
            let tiles = rows.len() * self.tiles_w;
            let (v, m) = scratch.split_at_mut(POSITIONS * c * tiles);
            f(rows, tiles, v, &mut m[..POSITIONS * k * tiles])
        })
    }
}

thread_local! {
    /// Each worker's transformed input and output, kept between calls: allocating and faulting in
    /// megabytes per chunk cost more than the transforms.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Panics unless `g` suits Winograd (`applies`) and the input and output (or output gradient,
/// `output`) have its lengths.
fn check_lengths(g: &ConvGeometry, input: &[f32], output: &[f32], what: &str) {
    assert!(
        applies(g),
        "Winograd F(4x4, 3x3) needs a 3x3 stride-1 convolution"
    );
    assert_eq!(
        input.len(),
        g.batch * g.in_channels * g.in_h * g.in_w,
        "conv input length"
    );
    assert_eq!(
        output.len(),
        g.batch * g.out_channels * g.out_h * g.out_w,
        "{what} length"
    );
}

/// y = conv(x, w) (+ bias, ReLU) for a 3x3 stride-1 convolution (`applies`).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    t: &Tuning,
    y: &mut [f32],
) {
    assert_eq!(
        w.len(),
        g.out_channels * g.in_channels * 9,
        "conv weights length"
    );
    let u = transform_weights(w, g.out_channels, g.in_channels, false);
    forward_transformed(x, &u, bias, relu, g, t, y);
}

/// `forward` with the weights already transformed (`transform_weights`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_transformed(
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    t: &Tuning,
    y: &mut [f32],
) {
    check_lengths(g, x, y, "conv output");
    let (k, c) = (g.out_channels, g.in_channels);
    assert_eq!(u.len(), POSITIONS * k * c, "transformed weights length");
    let chunks = Chunks::new(g, t);
    let out = OutPtr {
        ptr: y.as_mut_ptr(),
        len: y.len(),
        streaming: y.len() * 4 > t.streaming_bytes,
    };
    (0..chunks.count).into_par_iter().for_each(|chunk| {
        chunks.with_scratch(chunk, |rows, tiles, v, mm| {
            simd::input(x, g, rows.clone(), v);
            for pos in 0..POSITIONS {
                sgemm(
                    MatMut {
                        data: mm,
                        offset: pos * tiles,
                        rows: k,
                        cols: tiles,
                        row_stride: POSITIONS * tiles,
                    },
                    Mat::row_major(&u[pos * k * c..(pos + 1) * k * c], k, c),
                    position(v, pos, c, tiles),
                    false,
                    1,
                );
            }
            simd::output(mm, g, rows, bias, relu, out);
            store_fence();
        })
    });
}

/// dW for a 3x3 stride-1 convolution (`applies`): per chunk, `dU[pos] += dM[pos] V[pos]^T` with
/// dM = A dY At and V = Bt x B as in the forward pass; then dW = Gt dU G. Each thread sums its
/// own chunks (a fixed split, so the result does not depend on scheduling).
pub fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry, t: &Tuning) -> Vec<f32> {
    let threads = t.threads;
    check_lengths(g, x, dy, "conv output-gradient");
    let (k, c) = (g.out_channels, g.in_channels);
    let chunks = Chunks::new(g, t);
    // ConvGeometry rejects empty inputs, so there is at least one chunk, and every worker gets one.
    assert!(chunks.count > 0, "a convolution has at least one tile");
    let workers = threads.clamp(1, chunks.count);
    let partials: Vec<Memory> = (0..workers)
        .into_par_iter()
        .map(|worker| {
            // Each worker has at least one chunk (workers <= chunks), whose GEMMs (accumulate
            // false) overwrite all of it.
            let mut du = Memory::uninit(POSITIONS * k * c);
            let mine = worker * chunks.count / workers..(worker + 1) * chunks.count / workers;
            for (i, chunk) in mine.enumerate() {
                chunks.with_scratch(chunk, |rows, tiles, v, dm| {
                    simd::input(x, g, rows.clone(), v);
                    simd::output_grad(dy, g, rows, dm);
                    for pos in 0..POSITIONS {
                        sgemm(
                            MatMut {
                                data: &mut du[pos * k * c..(pos + 1) * k * c],
                                offset: 0,
                                rows: k,
                                cols: c,
                                row_stride: c,
                            },
                            position(dm, pos, k, tiles),
                            position(v, pos, c, tiles).t(),
                            i > 0,
                            1,
                        );
                    }
                });
            }
            du
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut du = partials.next().expect("at least one worker");
    for p in partials {
        du.par_chunks_mut(1 << 15)
            .zip(p.par_chunks(1 << 15))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    }
    // dW[k][c] = Gt dU[k][c] G, 16 input channels at a time.
    let mut dw = vec![0.0f32; k * c * 9];
    dw.par_chunks_mut(c * 9).enumerate().for_each(|(ko, dw_k)| {
        for c0 in (0..c).step_by(LANES) {
            let lanes = LANES.min(c - c0);
            let u = load_positions(&du, k * c, ko * c + c0, lanes);
            let mut block = [0.0f32; LANES * 9];
            for (i, row) in transform_2d(&u, gt6).iter().enumerate() {
                for (j, values) in row.iter().enumerate() {
                    for (l, &v) in values.iter().enumerate() {
                        block[l * 9 + i * 3 + j] = v;
                    }
                }
            }
            dw_k[c0 * 9..(c0 + lanes) * 9].copy_from_slice(&block[..lanes * 9]);
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_tensor::{random, Conv2dParams, Shape};

    /// The closed forms (bt6, at6, g3) are the matrices of Lavin & Gray.
    #[test]
    fn closed_forms_equal_the_transform_matrices() {
        let mut x = [[0.0f32; LANES]; A];
        random::fill_normal(x.as_flattened_mut(), 1, 0, 0.0, 1.0);
        let bt = bt6(&x);
        let at = at6(&x);
        let g = g3(&[x[0], x[1], x[2]]);
        for l in 0..LANES {
            for a in 0..A {
                let want: f32 = (0..A).map(|i| BT[a][i] * x[i][l]).sum();
                assert!((bt[a][l] - want).abs() < 1e-5, "Bt row {a}");
                let want: f32 = (0..3).map(|i| G[a][i] * x[i][l]).sum();
                assert!((g[a][l] - want).abs() < 1e-6, "G row {a}");
            }
            for a in 0..M {
                let want: f32 = (0..A).map(|i| AT[a][i] * x[i][l]).sum();
                assert!((at[a][l] - want).abs() < 1e-4, "At row {a}");
            }
        }
    }

    /// Direct convolution in f64, plus bias and optional ReLU.
    /// Output (n, k, oh, ow) of the convolution, in f64.
    #[allow(clippy::too_many_arguments)]
    fn direct_at(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        relu: bool,
        g: &ConvGeometry,
        [n, k, oh, ow]: [usize; 4],
    ) -> f64 {
        let mut acc = b[k] as f64;
        for c in 0..g.in_channels {
            for ky in 0..3 {
                let ih = (oh + ky) as isize - g.padding as isize;
                if ih < 0 || ih >= g.in_h as isize {
                    continue;
                }
                for kx in 0..3 {
                    let iw = (ow + kx) as isize - g.padding as isize;
                    if iw < 0 || iw >= g.in_w as isize {
                        continue;
                    }
                    let xv =
                        x[((n * g.in_channels + c) * g.in_h + ih as usize) * g.in_w + iw as usize];
                    let wv = w[((k * g.in_channels + c) * 3 + ky) * 3 + kx];
                    acc += xv as f64 * wv as f64;
                }
            }
        }
        if relu {
            acc.max(0.0)
        } else {
            acc
        }
    }

    fn direct(x: &[f32], w: &[f32], b: &[f32], relu: bool, g: &ConvGeometry) -> Vec<f64> {
        let (k, h, w_out) = (g.out_channels, g.out_h, g.out_w);
        (0..g.batch * k * h * w_out)
            .map(|i| {
                let at = [
                    i / (k * h * w_out),
                    i / (h * w_out) % k,
                    i / w_out % h,
                    i % w_out,
                ];
                direct_at(x, w, b, relu, g, at)
            })
            .collect()
    }

    /// Transformed weights are kept where making them is a large share of a call: small batches
    /// and the small images of the last layers.
    #[test]
    fn transformed_weights_are_kept_for_small_calls_only() {
        let kept = |batch: usize, channels: usize, side: usize| {
            let g = ConvGeometry::new(
                &Shape::from([batch, channels, side, side]),
                &Shape::from([channels, channels, 3, 3]),
                Conv2dParams {
                    stride: 1,
                    padding: 1,
                },
            )
            .unwrap();
            worth_keeping_weights(&g)
        };
        // VGG-16's conv5 (14x14: 16 tiles per image), conv4 (28x28: 49), conv3 (56x56: 196).
        assert!(kept(1, 512, 14) && kept(16, 512, 14) && !kept(32, 512, 14));
        assert!(kept(8, 512, 28) && !kept(16, 512, 28));
        assert!(kept(1, 256, 56) && !kept(8, 256, 56));
    }

    /// An output beyond `Tuning::streaming_bytes` takes the non-temporal stores: every value is
    /// written and right (sampled against the definition).
    #[test]
    fn large_outputs_are_streamed_correctly() {
        let dims = [1, 16, 512, 576];
        let g = ConvGeometry::new(
            &Shape::from(dims),
            &Shape::from([16, 16, 3, 3]),
            Conv2dParams {
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
        let mut x = vec![0.0; 16 * 512 * 576];
        random::fill_normal(&mut x, 1, 0, 0.0, 1.0);
        let mut wt = vec![0.0; 16 * 16 * 9];
        random::fill_normal(&mut wt, 2, 0, 0.0, 0.1);
        let b = vec![0.05; 16];
        let mut y = vec![f32::NAN; 16 * 512 * 576];
        let t = Tuning {
            streaming_bytes: 16 << 20,
            ..Tuning::detect(2)
        };
        assert!(y.len() * 4 > t.streaming_bytes);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| forward(&x, &wt, Some(&b), true, &g, &t, &mut y));
        assert!(y.iter().all(|v| v.is_finite()), "every output is written");
        for i in (0..y.len()).step_by(997) {
            let at = [0, i / (512 * 576), i / 576 % 512, i % 576];
            let want = direct_at(&x, &wt, &b, true, &g, at);
            assert!(
                (y[i] as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{at:?}: got {}, want {want}",
                y[i]
            );
        }
    }

    /// Max |winograd - direct| over max |direct|.
    fn relative_error(
        dims: [usize; 4],
        k: usize,
        padding: usize,
        relu: bool,
        threads: usize,
    ) -> f64 {
        let [n, c, h, w] = dims;
        let g = ConvGeometry::new(
            &Shape::from(dims),
            &Shape::from([k, c, 3, 3]),
            Conv2dParams { stride: 1, padding },
        )
        .unwrap();
        let mut x = vec![0.0; n * c * h * w];
        random::fill_normal(&mut x, 1, 0, 0.0, 1.0);
        let mut wt = vec![0.0; k * c * 9];
        random::fill_normal(&mut wt, 2, 0, 0.0, (2.0 / (9.0 * c as f32)).sqrt());
        let mut b = vec![0.0; k];
        random::fill_normal(&mut b, 3, 0, 0.0, 0.1);
        let mut y = vec![f32::NAN; g.batch * k * g.out_h * g.out_w];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            forward(
                &x,
                &wt,
                Some(&b),
                relu,
                &g,
                &Tuning::detect(threads),
                &mut y,
            )
        });
        let want = direct(&x, &wt, &b, relu, &g);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = y
            .iter()
            .zip(&want)
            .map(|(&got, &want)| (got as f64 - want).abs())
            .fold(0.0f64, |m, d| {
                if d.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(d)
                }
            });
        worst / scale
    }

    /// Odd sizes, partial tiles, every padding, channel counts off the lane width, one and two
    /// threads (chunks split differently).
    #[test]
    fn matches_direct_convolution_on_awkward_shapes() {
        for (dims, k, padding, relu) in [
            ([1, 1, 3, 3], 1, 0, false),
            ([2, 3, 9, 11], 5, 1, true),
            ([3, 17, 5, 7], 20, 1, false),
            ([1, 16, 4, 4], 16, 2, true),
            ([2, 33, 13, 6], 7, 0, false),
            ([1, 8, 70, 9], 3, 1, true),
        ] {
            for threads in [1, 2] {
                let err = relative_error(dims, k, padding, relu, threads);
                assert!(
                    err < 1e-5,
                    "{dims:?} k {k} pad {padding}: relative error {err:e}"
                );
            }
        }
    }

    /// dW in f64 by the definition: dW[k][c][ky][kx] = sum over n, oh, ow of dy * x.
    fn direct_weight_grad(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f64> {
        let mut dw = vec![0.0f64; g.out_channels * g.in_channels * 9];
        for n in 0..g.batch {
            for k in 0..g.out_channels {
                for c in 0..g.in_channels {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut acc = 0.0f64;
                            for oh in 0..g.out_h {
                                let ih = (oh + ky) as isize - g.padding as isize;
                                if ih < 0 || ih >= g.in_h as isize {
                                    continue;
                                }
                                for ow in 0..g.out_w {
                                    let iw = (ow + kx) as isize - g.padding as isize;
                                    if iw < 0 || iw >= g.in_w as isize {
                                        continue;
                                    }
                                    acc += dy
                                        [((n * g.out_channels + k) * g.out_h + oh) * g.out_w + ow]
                                        as f64
                                        * x[((n * g.in_channels + c) * g.in_h + ih as usize)
                                            * g.in_w
                                            + iw as usize]
                                            as f64;
                                }
                            }
                            dw[((k * g.in_channels + c) * 3 + ky) * 3 + kx] += acc;
                        }
                    }
                }
            }
        }
        dw
    }

    fn weight_grad_error(dims: [usize; 4], k: usize, padding: usize, threads: usize) -> f64 {
        let [n, c, h, w] = dims;
        let g = ConvGeometry::new(
            &Shape::from(dims),
            &Shape::from([k, c, 3, 3]),
            Conv2dParams { stride: 1, padding },
        )
        .unwrap();
        let mut x = vec![0.0; n * c * h * w];
        random::fill_normal(&mut x, 4, 0, 0.0, 1.0);
        let mut dy = vec![0.0; g.batch * k * g.out_h * g.out_w];
        random::fill_normal(&mut dy, 5, 0, 0.0, 1.0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(|| backward_weight(&x, &dy, &g, &Tuning::detect(threads)));
        let want = direct_weight_grad(&x, &dy, &g);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0f64, |m, d| {
                if d.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(d)
                }
            })
            / scale
    }

    #[test]
    fn weight_gradient_matches_the_definition() {
        for (dims, k, padding) in [
            ([1, 1, 3, 3], 1, 0),
            ([2, 3, 9, 11], 5, 1),
            ([3, 17, 5, 7], 20, 1),
            ([1, 16, 4, 4], 16, 2),
            ([2, 33, 13, 6], 7, 0),
            ([2, 64, 28, 28], 64, 1),
            ([1, 256, 14, 14], 256, 1),
            // Long sums: 25,088 outputs per weight.
            ([2, 16, 112, 112], 16, 1),
        ] {
            for threads in [1, 2] {
                let err = weight_grad_error(dims, k, padding, threads);
                eprintln!(
                    "{dims:?} k {k} pad {padding} threads {threads}: relative error {err:.2e}"
                );
                assert!(
                    err < 1e-4,
                    "{dims:?} k {k} pad {padding}: relative error {err:e}"
                );
            }
        }
    }

    /// VGG-16's channel counts (spatial sizes reduced), where the error would grow with the
    /// accumulation length: within 1e-4 of the direct method, relative to the output's scale.
    #[test]
    fn stays_within_1e_4_of_direct_on_vgg_channel_counts() {
        for (c, k, side) in [
            (64, 64, 32),
            (64, 128, 24),
            (128, 256, 16),
            (256, 512, 14),
            (512, 512, 14),
        ] {
            let err = relative_error([1, c, side, side], k, 1, true, 2);
            eprintln!("{c}->{k} at {side}x{side}: relative error {err:.2e}");
            assert!(
                err < 1e-4,
                "{c}->{k} at {side}x{side}: relative error {err:e}"
            );
        }
    }
}
