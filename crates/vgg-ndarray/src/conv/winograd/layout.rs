//! Where transformed tiles live: each row's positions together, [rows][positions][tiles], and
//! the fixed-size copies that move lanes in and out of that layout.

use super::*;
use crate::gemm::Mat;

/// Splits a row into its M column phases (M: the output block side), each `stride` values after
/// the last and starting at `at`: split[p * stride + at + q] = row[M q + p].
#[inline(always)]
pub(super) fn split_phases<const M: usize>(
    row: &[f32],
    split: &mut [f32],
    stride: usize,
    at: usize,
) {
    if M == 4 {
        return split_four_phases(row, split, stride, at);
    }
    let quads = row.len() / M;
    if quads == 0 {
        return;
    }
    // One pass over the row; the bounds checked here once, for the compiler to drop the loop's.
    let split = &mut split[at..][..(M - 1) * stride + quads];
    for (q, block) in row.chunks_exact(M).enumerate() {
        for (p, &value) in block.iter().enumerate() {
            split[p * stride + q] = value;
        }
    }
}

/// `split_phases` for M = 4, each phase a slice of its own: 5% fewer instructions in F(4x4)'s
/// input transform than the general loop (callgrind, 64 -> 64 channels at 56x56: 69.9M against
/// 73.3M; an array of M such slices, built by `array::from_fn`, took 82.2M).
#[inline(always)]
fn split_four_phases(row: &[f32], split: &mut [f32], stride: usize, at: usize) {
    let quads = row.len() / 4;
    let (p0, rest) = split[at..].split_at_mut(stride);
    let (p1, rest) = rest.split_at_mut(stride);
    let (p2, p3) = rest.split_at_mut(stride);
    for ((((q, a), b), c), d) in row
        .chunks_exact(4)
        .zip(&mut p0[..quads])
        .zip(&mut p1[..quads])
        .zip(&mut p2[..quads])
        .zip(&mut p3[..quads])
    {
        *a = q[0];
        *b = q[1];
        *c = q[2];
        *d = q[3];
    }
}

/// Stores lanes `lanes` of row a of a transformed block, positions (a, b), at
/// dst[(a * A + b) * stride + at..] (see `position` for the layout).
#[inline(always)]
pub(super) fn store_row<const A: usize>(
    row: &[Lanes; A],
    a: usize,
    dst: &mut [f32],
    stride: usize,
    at: usize,
    lanes: std::ops::Range<usize>,
) {
    for (b, values) in row.iter().enumerate() {
        copy_lanes(
            &mut dst[(a * A + b) * stride + at..][..lanes.len()],
            &values[lanes.clone()],
        );
    }
}

/// Position `pos`'s [rows, tiles] matrix of transformed tiles stored as [rows][positions][tiles]
/// (each row's positions together, so a transform reads or writes one region, not 36 or 64
/// streams).
pub(super) fn position(
    data: &[f32],
    (pos, positions): (usize, usize),
    rows: usize,
    tiles: usize,
) -> Mat<'_> {
    Mat {
        data,
        offset: pos * tiles,
        rows,
        cols: tiles,
        row_stride: positions * tiles,
        col_stride: 1,
    }
}

/// src[from..][..lanes] as one lane vector: what `store_row` stored. The lanes past `lanes` hold
/// whatever follows in `src` (zero at its end), for callers that discard them: a whole vector is
/// read as one where it lies inside `src`, since copied in parts into a vector on the stack and
/// read back at once, the read waited for the parts' stores (no store forwarding).
#[inline(always)]
pub(super) fn load_lanes(src: &[f32], from: usize, lanes: usize) -> Lanes {
    match src.get(from..from + LANES) {
        Some(whole) => *<&Lanes>::try_from(whole).expect("LANES values"),
        None => {
            let mut values = [0.0f32; LANES];
            copy_lanes(&mut values[..lanes], &src[from..][..lanes]);
            values
        }
    }
}

/// dst = src[..dst.len()]. Copied in fixed-size pieces (16, then 8, 4, 2, 1 values), which
/// compile to vector moves: a runtime-length copy_from_slice calls memmove, and a plain loop over
/// a partial group of lanes is scalar, each costing more than the transforms here.
#[inline(always)]
pub(super) fn copy_lanes(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    pub(super) fn piece<const N: usize>(dst: &mut [f32], src: &[f32], at: &mut usize) {
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
