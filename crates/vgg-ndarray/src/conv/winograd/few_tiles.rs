//! The 36 position products of a call with few tiles (VGG-16's conv4 and conv5 at batch 1: 49
//! and 16), on AVX-512. There each position's product is a [rows, c] block of transformed weights
//! (1 MiB for 512 channels, read from memory: 36 MiB per layer) times a [c, tiles] block no wider
//! than four vectors. The GEMM crate packs both operands on every call and blocks the tiles its
//! own way; here every tile is held in registers, so each weight is read once, straight from its
//! row, and broadcast into the FMAs of all the tiles (conv5 at batch 1 on a Zen 4: 5.6-7.3 ms by
//! im2col, 2.9-3.1 here; docs/performance.md).
//!
//! Every output value is the sum of its c products in order, from zero, in one lane: the same
//! for any split of the rows over threads (`thread_independence`).

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
    match tiles.div_ceil(LANES) {
        1 => all_positions::<1>(u, v, m, channels, (k, c), tiles),
        2 => all_positions::<2>(u, v, m, channels, (k, c), tiles),
        3 => all_positions::<3>(u, v, m, channels, (k, c), tiles),
        _ => all_positions::<4>(u, v, m, channels, (k, c), tiles),
    }
}

/// Every position with `COLS` vectors of tiles: each position's [c, tiles] block is first copied
/// into a panel of whole vectors (zeros past the last tile), so the loop loads whole aligned
/// vectors; the copy is c x tiles values against the products' rows x c x tiles.
#[inline(always)]
fn all_positions<const COLS: usize>(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    channels: std::ops::Range<usize>,
    (k, c): (usize, usize),
    tiles: usize,
) {
    let width = COLS * LANES;
    // From the arena (resident pages); zeroed once: the lanes past `tiles` are never written, and
    // their sums never stored.
    let mut panel = Memory::uninit(c * width);
    panel.fill(0.0);
    let rows = channels.len();
    for pos in 0..POSITIONS {
        for (ci, lanes) in panel.chunks_exact_mut(width).enumerate() {
            copy_lanes(
                &mut lanes[..tiles],
                &v[ci * POSITIONS * tiles + pos * tiles..][..tiles],
            );
        }
        let weights = &u[(pos * k + channels.start) * c..][..rows * c];
        let mut row = 0;
        while row < rows {
            let block = ROWS.min(rows - row);
            let at = row * POSITIONS * tiles + pos * tiles;
            if block == ROWS {
                let sums = block_sums::<ROWS, COLS>(&weights[row * c..][..ROWS * c], &panel, c);
                store_rows(&sums, m, at, tiles);
            } else {
                for r in row..row + block {
                    let sums = block_sums::<1, COLS>(&weights[r * c..][..c], &panel, c);
                    store_rows(&sums, m, at + (r - row) * POSITIONS * tiles, tiles);
                }
            }
            row += block;
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
) -> [[Lanes; COLS]; R] {
    assert!(
        w.len() >= R * c && panel.len() >= c * COLS * LANES,
        "few-tile block lengths"
    );
    let mut acc = [[[0.0f32; LANES]; COLS]; R];
    for ci in 0..c {
        // SAFETY: ci < c and j < COLS, so the vector ends at or before c * COLS * LANES <=
        // panel.len(); r < R, so r * c + ci < R * c <= w.len() (asserted above). A Lanes is
        // f32s, so any f32's address is aligned for it.
        let tiles: [Lanes; COLS] = std::array::from_fn(|j| unsafe {
            *panel.as_ptr().add((ci * COLS + j) * LANES).cast::<Lanes>()
        });
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let weight = unsafe { *w.get_unchecked(r * c + ci) };
            for (a, t) in acc_r.iter_mut().zip(&tiles) {
                for (a, &t) in a.iter_mut().zip(t) {
                    *a = weight.mul_add(t, *a);
                }
            }
        }
    }
    acc
}

/// Stores R rows of sums at m[at + r * POSITIONS * tiles..][..tiles].
#[inline(always)]
fn store_rows<const R: usize, const COLS: usize>(
    sums: &[[Lanes; COLS]; R],
    m: &mut [f32],
    at: usize,
    tiles: usize,
) {
    for (r, row) in sums.iter().enumerate() {
        copy_lanes(
            &mut m[at + r * POSITIONS * tiles..][..tiles],
            &row.as_flattened()[..tiles],
        );
    }
}
