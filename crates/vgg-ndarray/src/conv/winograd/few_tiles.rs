//! The 36 position products of a call with few tiles (VGG-16's conv4 and conv5 at batch 1: 49
//! and 16), on AVX-512. There each position's product is a [rows, c] block of transformed weights
//! (1 MiB for 512 channels, read from memory: 36 MiB per layer) times a [c, tiles] block no wider
//! than four vectors. The GEMM crate packs both operands on every call and blocks the tiles its
//! own way; here every tile is held in registers, so each weight is read once, straight from its
//! row, and broadcast into the FMAs of all the tiles (conv5 at batch 1 on a Zen 4: 5.6-7.3 ms by
//! im2col, 2.9-3.1 here; docs/performance.md).
//!
//! Every output value is the sum of its c products in order, from zero, in one lane (a tile past
//! whole vectors: in 16 lanes of 16-channel steps, then the lanes in order): the same for any
//! split of the rows over threads (`thread_independence`).

use super::*;

/// Most tiles in a call whose products run here: four AVX-512 vectors.
pub(super) const MAX_TILES: usize = 4 * LANES;

/// Output channels per register block: with four vectors of tiles, 24 accumulators of the 32
/// registers, beside the four tiles' vectors and one broadcast.
const ROWS: usize = 6;

/// Whether a call with `tiles` tiles in all runs its products here: few tiles, and AVX-512 for
/// our kernels (`runs_here`). Decided by the whole call's tiles, not a chunk's, so the choice
/// (and so the sums' order) does not depend on how the call is cut among threads.
pub(super) fn applies(tiles: usize, t: &Tuning) -> bool {
    tiles <= MAX_TILES && runs_here(t)
}

/// Whether this tuning runs the few-tile products (`applies`) at all: AVX-512's 32 registers
/// (AVX2's 16 hold too few accumulators for this blocking). The products are f32 in either
/// math mode, as all of Winograd's are.
pub(crate) fn runs_here(t: &Tuning) -> bool {
    t.kernel_isa == crate::config::Isa::Avx512
}

crate::simd::dispatch_simd! {
    /// M[pos] = U[pos] V[pos] for the output channels `channels` (m holds their rows only), as
    /// `position_products` lays them out, every position in turn.
    pub(super) fn products(
        u: &[f32],
        v: &[f32],
        m: &mut [f32],
        channels: std::ops::Range<usize>,
        kc: (usize, usize),
        tiles: usize,
    ) => products_generic
}

#[inline(always)]
fn products_generic(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    channels: std::ops::Range<usize>,
    (k, c): (usize, usize),
    tiles: usize,
) {
    assert!(
        (1..=MAX_TILES).contains(&tiles) && channels.end <= k,
        "few-tile products: {tiles} tiles, channels {channels:?} of {k}"
    );
    assert_eq!(u.len(), POSITIONS * k * c, "transformed weights length");
    assert!(v.len() >= POSITIONS * c * tiles, "transformed input length");
    assert!(
        m.len() >= channels.len() * POSITIONS * tiles,
        "position products length"
    );
    // One tile past whole vectors (conv4 at batch 1: 49 = 3 x 16 + 1) is summed over c, 16
    // input channels per vector, beside them, rather than taking a fourth vector 15/16 idle.
    let extra = tiles > LANES && tiles % LANES == 1 && c.is_multiple_of(LANES);
    match (tiles.div_ceil(LANES), extra) {
        (2, true) => all_positions::<1, true>(u, v, m, channels, (k, c), tiles),
        (3, true) => all_positions::<2, true>(u, v, m, channels, (k, c), tiles),
        (4, true) => all_positions::<3, true>(u, v, m, channels, (k, c), tiles),
        (1, _) => all_positions::<1, false>(u, v, m, channels, (k, c), tiles),
        (2, _) => all_positions::<2, false>(u, v, m, channels, (k, c), tiles),
        (3, _) => all_positions::<3, false>(u, v, m, channels, (k, c), tiles),
        _ => all_positions::<4, false>(u, v, m, channels, (k, c), tiles),
    }
}

/// Every position with `COLS` vectors of tiles, and with `EXTRA` one tile more (`products`):
/// each position's [c, tiles] block is first copied into a panel of whole vectors (zeros past the
/// last tile), so the loop loads whole aligned vectors, and the extra tile's c values into a row
/// of their own; the copy is c x tiles values against the products' rows x c x tiles.
#[inline(always)]
fn all_positions<const COLS: usize, const EXTRA: bool>(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    channels: std::ops::Range<usize>,
    (k, c): (usize, usize),
    tiles: usize,
) {
    let width = COLS * LANES;
    let in_vectors = if EXTRA { tiles - 1 } else { tiles };
    // From the arena (resident pages); zeroed once: the lanes past `tiles` are never written, and
    // their sums never stored.
    let mut panel = Memory::uninit(c * width + if EXTRA { c } else { 0 });
    panel.fill(0.0);
    let (panel, extra) = panel.split_at_mut(c * width);
    let rows = channels.len();
    for pos in 0..POSITIONS {
        for (ci, lanes) in panel.chunks_exact_mut(width).enumerate() {
            let tiles_of_ci = &v[ci * POSITIONS * tiles + pos * tiles..][..tiles];
            copy_lanes(&mut lanes[..in_vectors], tiles_of_ci);
            if EXTRA {
                extra[ci] = tiles_of_ci[in_vectors];
            }
        }
        let weights = &u[(pos * k + channels.start) * c..][..rows * c];
        let mut row = 0;
        while row < rows {
            let block = ROWS.min(rows - row);
            let at = row * POSITIONS * tiles + pos * tiles;
            if block == ROWS {
                let w = &weights[row * c..][..ROWS * c];
                rows_block::<ROWS, COLS, EXTRA>(w, panel, extra, c, m, at, tiles);
            } else {
                for r in 0..block {
                    let w = &weights[(row + r) * c..][..c];
                    let at = at + r * POSITIONS * tiles;
                    rows_block::<1, COLS, EXTRA>(w, panel, extra, c, m, at, tiles);
                }
            }
            row += block;
        }
    }
}

/// The sums of `R` output channels (`w`: R x c) at one position, stored from m[at], a row every
/// POSITIONS x tiles values: with `EXTRA`, the last tile summed beside the vectors.
#[inline(always)]
fn rows_block<const R: usize, const COLS: usize, const EXTRA: bool>(
    w: &[f32],
    panel: &[f32],
    extra: &[f32],
    c: usize,
    m: &mut [f32],
    at: usize,
    tiles: usize,
) {
    let stride = POSITIONS * tiles;
    if EXTRA {
        let (sums, last) = block_sums_and_one::<R, COLS>(w, panel, extra, c);
        store_rows(&sums, m, at, tiles - 1, stride);
        store_one(&last, m, at + tiles - 1, stride);
    } else {
        store_rows(&block_sums::<R, COLS>(w, panel, c), m, at, tiles, stride);
    }
}

/// `block_sums`, and beside it each row's sum with one tile more (`extra`: its c values), taken
/// 16 input channels at a time in the lanes of one vector per row, the lanes added in order at
/// the end: c / 16 more FMAs per row where a fourth vector of tiles would take c. `c` is a
/// multiple of 16.
#[inline(always)]
fn block_sums_and_one<const R: usize, const COLS: usize>(
    w: &[f32],
    panel: &[f32],
    extra: &[f32],
    c: usize,
) -> ([[Lanes; COLS]; R], [f32; R]) {
    assert!(
        w.len() >= R * c
            && panel.len() >= c * COLS * LANES
            && extra.len() >= c
            && c.is_multiple_of(LANES),
        "few-tile block lengths"
    );
    let mut acc = [[[0.0f32; LANES]; COLS]; R];
    let mut one = [[0.0f32; LANES]; R];
    for c0 in (0..c).step_by(LANES) {
        // SAFETY: c0 + LANES <= c (c is a multiple of LANES), so these vectors lie within
        // extra[..c] and each row's w[r * c..][..c]; the panel's as in `block_sums`.
        let last = unsafe { *extra.as_ptr().add(c0).cast::<Lanes>() };
        for (r, one_r) in one.iter_mut().enumerate() {
            // SAFETY: as above.
            let w_r = unsafe { *w.as_ptr().add(r * c + c0).cast::<Lanes>() };
            for ((o, &x), &y) in one_r.iter_mut().zip(&w_r).zip(&last) {
                *o = y.mul_add(x, *o);
            }
        }
        for ci in c0..c0 + LANES {
            // SAFETY: ci < c and the lengths asserted above are `add_channel`'s.
            unsafe { add_channel(&mut acc, w, panel, c, ci) };
        }
    }
    (acc, one.map(|lanes| lanes.iter().sum()))
}

/// sums[r][j] = sum over ci of w[r][ci] * panel[ci][j], in the order of ci: `R` rows of weights
/// (`w`: R x c, row-major) against `COLS` vectors of tiles (`panel`: c x COLS vectors).
#[inline(always)]
fn block_sums<const R: usize, const COLS: usize>(
    w: &[f32],
    panel: &[f32],
    c: usize,
) -> [[Lanes; COLS]; R] {
    assert!(
        w.len() >= R * c && panel.len() >= c * COLS * LANES,
        "few-tile block lengths"
    );
    let mut acc = [[[0.0f32; LANES]; COLS]; R];
    for ci in 0..c {
        // SAFETY: ci < c and the lengths asserted above are `add_channel`'s.
        unsafe { add_channel(&mut acc, w, panel, c, ci) };
    }
    acc
}

/// acc[r][j] += w[r][ci] * panel[ci][j]: input channel `ci`'s step of `block_sums`.
///
/// # Safety
/// ci < c, w.len() >= R * c and panel.len() >= c * COLS * LANES (checked by the callers once,
/// outside their loops: a bounds check's panic branch inside would keep the accumulators in
/// memory).
#[inline(always)]
unsafe fn add_channel<const R: usize, const COLS: usize>(
    acc: &mut [[Lanes; COLS]; R],
    w: &[f32],
    panel: &[f32],
    c: usize,
    ci: usize,
) {
    // SAFETY: j < COLS, so the vector ends at or before c * COLS * LANES <= panel.len(); a Lanes
    // is f32s, so any f32's address is aligned for it.
    let tiles: [Lanes; COLS] = std::array::from_fn(|j| unsafe {
        *panel.as_ptr().add((ci * COLS + j) * LANES).cast::<Lanes>()
    });
    for (r, acc_r) in acc.iter_mut().enumerate() {
        // SAFETY: r < R, so r * c + ci < R * c <= w.len().
        let weight = unsafe { *w.get_unchecked(r * c + ci) };
        for (a, t) in acc_r.iter_mut().zip(&tiles) {
            for (a, &t) in a.iter_mut().zip(t) {
                *a = weight.mul_add(t, *a);
            }
        }
    }
}

/// Stores R rows of sums' first `tiles` values at m[at + r * stride..].
#[inline(always)]
fn store_rows<const R: usize, const COLS: usize>(
    sums: &[[Lanes; COLS]; R],
    m: &mut [f32],
    at: usize,
    tiles: usize,
    stride: usize,
) {
    for (r, row) in sums.iter().enumerate() {
        copy_lanes(
            &mut m[at + r * stride..][..tiles],
            &row.as_flattened()[..tiles],
        );
    }
}

/// Stores R rows' one value each at m[at + r * stride].
#[inline(always)]
fn store_one<const R: usize>(values: &[f32; R], m: &mut [f32], at: usize, stride: usize) {
    for (r, &value) in values.iter().enumerate() {
        m[at + r * stride] = value;
    }
}
