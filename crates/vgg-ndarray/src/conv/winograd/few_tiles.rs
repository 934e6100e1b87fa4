//! The position products (36 or 64 per tile: `TileSize`) of a call with few tiles (VGG-16's conv4
//! and 16), on AVX-512 and AVX2. There each position's product is a [rows, c] block of
//! transformed weights (1 MiB for 512 channels, read from memory: 36 MiB per layer) times a
//! [c, tiles] block no wider than four 16-lane vectors. The GEMM crate packs both operands on
//! every call and blocks the tiles its own way; here the tiles are held in registers, so each
//! weight is read from memory once, straight from its row, and broadcast into the FMAs of the
//! tiles (conv5 at batch 1 on a Zen 4: 5.6-7.3 ms by im2col, 2.9-3.1 here; docs/performance.md).
//! AVX-512's 32 registers hold all the tiles at once; AVX2's 16 hold one 16-lane vector of them
//! (two registers) for 6 output channels, so there the weights' 6-row block is read again, from
//! L1, for each vector of tiles.
//!
//! Every output value is the sum of its c products in order, from zero, in one lane (a tile past
//! whole vectors: in 16 lanes of 16-channel steps, then the lanes in order): the same for any
//! split of the rows over threads (`thread_independence`) and for either blocking.

use super::*;
use crate::config::Isa;

/// Most tiles in a call whose products run here: four AVX-512 vectors.
pub(super) const MAX_TILES: usize = 4 * LANES;

/// Output channels per register block: with four vectors of tiles, 24 accumulators of the 32
/// registers, beside the four tiles' vectors and one broadcast.
const ROWS: usize = 6;

/// Whether a call with `tiles` tiles in all runs its products here: few tiles, and AVX-512 or
/// AVX2 for our kernels (`runs_here`). Decided by the whole call's tiles, not a chunk's, so the
/// choice (and so the sums' order) does not depend on how the call is cut among threads.
pub(super) fn applies(tiles: usize, t: &Tuning) -> bool {
    tiles <= MAX_TILES && runs_here(t)
}

/// Whether this tuning runs the few-tile products (`applies`) at all: a vector unit of our
/// kernels' (the portable build keeps the GEMM crate's). The products are f32 in either math
/// mode, as all of Winograd's are.
pub(super) fn runs_here(t: &Tuning) -> bool {
    t.kernel_isa >= Isa::Avx2
}

/// How many 16-lane vectors of tiles the products hold in registers at once, beside 6 rows'
/// accumulators for each (`products`): all four on AVX-512 (24 accumulators of 32 registers),
/// one on AVX2 (two registers a vector: 12 accumulators of 16).
pub(super) fn vectors_held(t: &Tuning) -> usize {
    if t.kernel_isa >= Isa::Avx512 {
        MAX_TILES / LANES
    } else {
        1
    }
}

crate::simd::dispatch_simd! {
    /// M[pos] = U[pos] V[pos] for the output channels `channels` (m holds their rows only), as
    /// `position_products` lays them out, every position in turn, holding `held` vectors of
    /// tiles in registers at once (`vectors_held`); `shape`: (tiles, positions per tile).
    pub(super) fn products(
        u: &[f32],
        v: &[f32],
        m: &mut [f32],
        channels: std::ops::Range<usize>,
        kc: (usize, usize),
        shape: (usize, usize),
        held: usize,
    ) => products_generic
}

#[inline(always)]
fn products_generic(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    channels: std::ops::Range<usize>,
    (k, c): (usize, usize),
    (tiles, positions): (usize, usize),
    held: usize,
) {
    assert!(
        (1..=MAX_TILES).contains(&tiles) && channels.end <= k,
        "few-tile products: {tiles} tiles, channels {channels:?} of {k}"
    );
    assert_eq!(u.len(), positions * k * c, "transformed weights length");
    assert!(v.len() >= positions * c * tiles, "transformed input length");
    assert!(
        m.len() >= channels.len() * positions * tiles,
        "position products length"
    );
    // One tile past whole vectors (conv4 at batch 1: 49 = 3 x 16 + 1) is summed over c, 16
    // input channels per vector, beside them, rather than taking a fourth vector 15/16 idle.
    let extra = tiles > LANES && tiles % LANES == 1 && c.is_multiple_of(LANES);
    let kc = (k, c);
    match (tiles.div_ceil(LANES), extra) {
        (2, true) => blocked::<1, true>(u, v, m, channels, kc, (tiles, positions), held),
        (3, true) => blocked::<2, true>(u, v, m, channels, kc, (tiles, positions), held),
        (4, true) => blocked::<3, true>(u, v, m, channels, kc, (tiles, positions), held),
        (1, _) => blocked::<1, false>(u, v, m, channels, kc, (tiles, positions), held),
        (2, _) => blocked::<2, false>(u, v, m, channels, kc, (tiles, positions), held),
        (3, _) => blocked::<3, false>(u, v, m, channels, kc, (tiles, positions), held),
        _ => blocked::<4, false>(u, v, m, channels, kc, (tiles, positions), held),
    }
}

/// `all_positions` for `COLS` vectors of tiles with `held` of them in registers at once: one
/// (AVX2), or all of them (`held` covers every `COLS` on AVX-512).
#[inline(always)]
fn blocked<const COLS: usize, const EXTRA: bool>(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    channels: std::ops::Range<usize>,
    kc: (usize, usize),
    tiles: (usize, usize),
    held: usize,
) {
    if held == 1 {
        all_positions::<COLS, EXTRA, 1>(u, v, m, channels, kc, tiles)
    } else {
        all_positions::<COLS, EXTRA, COLS>(u, v, m, channels, kc, tiles)
    }
}

/// Every position with `COLS` vectors of tiles, and with `EXTRA` one tile more (`products`),
/// `HELD` vectors of them in registers at once (`vectors_held`; `COLS` is a multiple of it):
/// each position's [c, tiles] block is first copied into panels of whole vectors, one [c, HELD
/// vectors] panel after another (zeros past the last tile), so the loop loads whole aligned
/// vectors, and the extra tile's c values into a row of their own; the copy is c x tiles values
/// against the products' rows x c x tiles.
#[inline(always)]
fn all_positions<const COLS: usize, const EXTRA: bool, const HELD: usize>(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    channels: std::ops::Range<usize>,
    (k, c): (usize, usize),
    (tiles, positions): (usize, usize),
) {
    let width = HELD * LANES;
    let in_vectors = if EXTRA { tiles - 1 } else { tiles };
    // From the arena (resident pages); zeroed once: the lanes past `tiles` are never written, and
    // their sums never stored.
    let mut panel = Memory::uninit(c * COLS * LANES + if EXTRA { c } else { 0 });
    panel.fill(0.0);
    let (panel, extra) = panel.split_at_mut(c * COLS * LANES);
    let rows = channels.len();
    for pos in 0..positions {
        for ci in 0..c {
            let tiles_of_ci = &v[ci * positions * tiles + pos * tiles..][..tiles];
            for (first, group) in (0..in_vectors)
                .step_by(width)
                .zip(panel.chunks_exact_mut(c * width))
            {
                let n = width.min(in_vectors - first);
                copy_lanes(&mut group[ci * width..][..n], &tiles_of_ci[first..]);
            }
            if EXTRA {
                extra[ci] = tiles_of_ci[in_vectors];
            }
        }
        let weights = &u[(pos * k + channels.start) * c..][..rows * c];
        let mut row = 0;
        while row < rows {
            let block = ROWS.min(rows - row);
            let at = row * positions * tiles + pos * tiles;
            // The weights the next block reads, asked for ahead while this one runs.
            let next_row = if row + ROWS < rows {
                Some(pos * k + channels.start + row + ROWS)
            } else if pos + 1 < positions {
                Some((pos + 1) * k + channels.start)
            } else {
                None
            };
            let next = match next_row {
                Some(r) => &u[r * c..][..(ROWS * c).min(u.len() - r * c)],
                None => &[][..],
            };
            if block == ROWS {
                let w = &weights[row * c..][..ROWS * c];
                rows_block::<ROWS, COLS, EXTRA, HELD>(
                    (w, next),
                    panel,
                    extra,
                    c,
                    m,
                    at,
                    (tiles, positions),
                );
            } else {
                for r in 0..block {
                    let w = &weights[(row + r) * c..][..c];
                    let at = at + r * positions * tiles;
                    rows_block::<1, COLS, EXTRA, HELD>(
                        (w, &[]),
                        panel,
                        extra,
                        c,
                        m,
                        at,
                        (tiles, positions),
                    );
                }
            }
            row += block;
        }
    }
}

/// The sums of `R` output channels (`w`: R x c) at one position, stored from m[at], a row every
/// positions x tiles values, a panel of `HELD` vectors at a time (`all_positions`): with
/// `EXTRA`, the last tile summed beside the one panel where it is the only one, else after them.
/// `next`: the weights the next block reads, asked for meanwhile (`ask_ahead`).
#[inline(always)]
fn rows_block<const R: usize, const COLS: usize, const EXTRA: bool, const HELD: usize>(
    (w, next): (&[f32], &[f32]),
    panel: &[f32],
    extra: &[f32],
    c: usize,
    m: &mut [f32],
    at: usize,
    (tiles, positions): (usize, usize),
) {
    let stride = positions * tiles;
    let in_vectors = if EXTRA { tiles - 1 } else { tiles };
    if EXTRA && HELD == COLS {
        let (sums, last) = block_sums_and_one::<R, HELD>(w, panel, extra, c, next);
        store_rows(&sums, m, at, in_vectors, stride);
        store_one(&last, m, at + in_vectors, stride);
        return;
    }
    let width = HELD * LANES;
    for (first, group) in (0..in_vectors)
        .step_by(width)
        .zip(panel.chunks_exact(c * width))
    {
        let next = if first == 0 { next } else { &[] };
        let sums = block_sums::<R, HELD>(w, group, c, next);
        store_rows(&sums, m, at + first, width.min(in_vectors - first), stride);
    }
    if EXTRA {
        store_one(&one_sums::<R>(w, extra, c), m, at + in_vectors, stride);
    }
}

/// `block_sums`, and beside it each row's sum with one tile more (`extra`: its c values), taken
/// 16 input channels at a time in the lanes of one vector per row, the lanes added in order at
/// the end (`add_one_step`): c / 16 more FMAs per row where a fourth vector of tiles would take c.
/// `c` is a multiple of 16.
#[inline(always)]
fn block_sums_and_one<const R: usize, const COLS: usize>(
    w: &[f32],
    panel: &[f32],
    extra: &[f32],
    c: usize,
    next: &[f32],
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
        ask_ahead::<R>(next, c0);
        // SAFETY: c0 + LANES <= c, with the lengths asserted above.
        unsafe { add_one_step(&mut one, w, extra, c, c0) };
        for ci in c0..c0 + LANES {
            // SAFETY: ci < c and the lengths asserted above are `add_channel`'s.
            unsafe { add_channel(&mut acc, w, panel, c, ci) };
        }
    }
    (acc, one.map(|lanes| lanes.iter().sum()))
}

/// Each row's sum with the extra tile alone, as `block_sums_and_one` makes it (the same values),
/// where the registers do not hold it beside the tiles' accumulators (AVX2).
#[inline(always)]
fn one_sums<const R: usize>(w: &[f32], extra: &[f32], c: usize) -> [f32; R] {
    assert!(
        w.len() >= R * c && extra.len() >= c && c.is_multiple_of(LANES),
        "few-tile block lengths"
    );
    let mut one = [[0.0f32; LANES]; R];
    for c0 in (0..c).step_by(LANES) {
        // SAFETY: c0 + LANES <= c, with the lengths asserted above.
        unsafe { add_one_step(&mut one, w, extra, c, c0) };
    }
    one.map(|lanes| lanes.iter().sum())
}

/// one[r][l] += w[r][c0 + l] * extra[c0 + l]: input channels c0..c0 + 16 of the extra tile's sums.
///
/// # Safety
/// c0 + LANES <= c, w.len() >= R * c and extra.len() >= c (checked by the callers once).
#[inline(always)]
unsafe fn add_one_step<const R: usize>(
    one: &mut [Lanes; R],
    w: &[f32],
    extra: &[f32],
    c: usize,
    c0: usize,
) {
    // SAFETY: c0 + LANES <= c, so these vectors lie within extra[..c] and each row's
    // w[r * c..][..c]; a Lanes is f32s, so any f32's address is aligned for it.
    let last = unsafe { *extra.as_ptr().add(c0).cast::<Lanes>() };
    for (r, one_r) in one.iter_mut().enumerate() {
        // SAFETY: as above.
        let w_r = unsafe { *w.as_ptr().add(r * c + c0).cast::<Lanes>() };
        for ((o, &x), &y) in one_r.iter_mut().zip(&w_r).zip(&last) {
            *o = y.mul_add(x, *o);
        }
    }
}

/// sums[r][j] = sum over ci of w[r][ci] * panel[ci][j], in the order of ci: `R` rows of weights
/// (`w`: R x c, row-major) against `COLS` vectors of tiles (`panel`: c x COLS vectors).
#[inline(always)]
fn block_sums<const R: usize, const COLS: usize>(
    w: &[f32],
    panel: &[f32],
    c: usize,
    next: &[f32],
) -> [[Lanes; COLS]; R] {
    assert!(
        w.len() >= R * c && panel.len() >= c * COLS * LANES,
        "few-tile block lengths"
    );
    let mut acc = [[[0.0f32; LANES]; COLS]; R];
    for c0 in (0..c).step_by(LANES) {
        ask_ahead::<R>(next, c0);
        for ci in c0..(c0 + LANES).min(c) {
            // SAFETY: ci < c and the lengths asserted above are `add_channel`'s.
            unsafe { add_channel(&mut acc, w, panel, c, ci) };
        }
    }
    acc
}

/// Asks the caches for the next block's weights (`next`: R x c values, or none) while this block
/// runs, R lines for every 16 of this block's c channels, so that all of them are on their way by
/// its end: each block's weights are read once, from memory, and the hardware's prefetchers
/// did not keep ahead of the six rows read side by side (docs/performance.md).
#[inline(always)]
fn ask_ahead<const R: usize>(next: &[f32], c0: usize) {
    let at = c0 / LANES * R * LANES;
    if at < next.len() {
        crate::simd::prefetch(&next[at..(at + R * LANES).min(next.len())]);
    }
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
