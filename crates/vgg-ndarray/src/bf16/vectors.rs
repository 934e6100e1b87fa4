//! bf16 products on AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake and later), for CPUs
//! without AMX: `vdpbf16ps` adds, in each of 16 f32 lanes, the products of two bf16 pairs, twice
//! the multiply-adds of an f32 FMA per instruction.
//!
//! It reads the operands exactly as `amx.rs` packs them, so everything but the innermost block is
//! shared: a right-operand panel holds, per pair of rows, 16 columns of words (two bf16 of one
//! column), which is one vector; a left tile holds, per row, 16 words (pairs along the inner
//! dimension), each broadcast to all lanes. A 32 x 32 block of sums is computed 8 rows at a
//! time: 8 rows x 2 vectors of 16 columns, 16 accumulators of the 32 vector registers.

use super::amx::{BlockJob, Start, TILE, TILE_WORDS};

/// Whether this CPU has AVX512_BF16 (with AVX-512 F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows of the block computed together (16 accumulators).
const GROUP: usize = 8;

/// `amx::block_sums` on vectors: `job`'s 32 x 32 block. Groups of rows wholly past the
/// destination's last row are skipped (a product of one row, as a linear layer at batch 1,
/// computes one group of 8).
///
/// # Safety
/// The CPU must have AVX512_BF16 (`available`); no other thread may write these destination
/// elements meanwhile, and the destination's last element must lie inside it.
pub(super) unsafe fn block_sums(job: BlockJob<'_>) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as the caller guarantees.
    unsafe {
        sums_x86(job)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = job;
        unreachable!("AVX512_BF16 is x86's");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn sums_x86(job: BlockJob<'_>) {
    use std::arch::x86_64::*;
    let (top, bottom) = job.left_tiles();
    let (a, tiles, panel, out) = (job.a, job.tiles, job.panel, job.out);
    let (row, col, start) = (job.row, job.col, job.start);
    const WIDTH: usize = 2 * TILE;
    // A block wholly inside the destination is loaded and stored in place; one at its edges
    // goes through `tiled` (its four 16 x 16 tiles, as `Out::read` and `Out::write` take them).
    let whole = row + WIDTH <= out.rows && col + WIDTH <= out.cols;
    let mut tiled = [[0.0f32; TILE_WORDS]; 4];
    if !whole && start == Start::Destination {
        // SAFETY: the caller guarantees no other writer.
        unsafe { out.read(&mut tiled, row, col) };
    }
    let in_tiles = tiled.as_mut_ptr().cast::<f32>();
    // The 16 sums of the block's row `r`, columns 16 h.. 16 h + 15.
    let sums_at = |r: usize, h: usize| -> *mut f32 {
        // SAFETY: inside the destination's block (`whole`) or inside `tiled`.
        unsafe {
            if whole {
                out.ptr
                    .add(out.offset + (row + r) * out.row_stride + col + h * TILE)
            } else {
                in_tiles.add(((r / TILE) * 2 + h) * TILE_WORDS + (r % TILE) * TILE)
            }
        }
    };
    let words = a.as_ptr().cast::<u32>();
    let (left, right) = (panel.as_ptr(), panel[tiles * TILE_WORDS..].as_ptr());
    let groups = out.rows.saturating_sub(row).min(WIDTH).div_ceil(GROUP);
    for group in 0..groups {
        // Rows 0-15 of the block are the upper left tile's, 16-31 the lower's.
        let first = group * GROUP;
        let tile_rows = if first < TILE { top } else { bottom } + (first % TILE) * TILE;
        // SAFETY (for the group): every load reads inside `a` or `panel` (asserted above) or
        // the block's sums (`sums_at`); the CPU has the instructions (the caller).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; GROUP];
            if start == Start::Destination {
                for (i, acc) in acc.iter_mut().enumerate() {
                    for (h, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_loadu_ps(sums_at(first + i, h));
                    }
                }
            }
            for t in 0..tiles {
                let at = t * TILE_WORDS;
                let a_rows = words.add(tile_rows + at);
                for p in 0..TILE {
                    let b0: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(left.add(at + p * TILE).cast()));
                    let b1: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(right.add(at + p * TILE).cast()));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                            *a_rows.add(i * TILE + p) as i32,
                        ));
                        acc[0] = _mm512_dpbf16_ps(acc[0], w, b0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], w, b1);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (h, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(sums_at(first + i, h), *acc);
                }
            }
        }
    }
    if !whole {
        // SAFETY: the caller guarantees no other writer; `write` cuts at the edges.
        unsafe { out.write(&tiled, row, col) };
    }
}
