//! bf16 products on Intel AMX: eight tile registers of 16 rows x 64 bytes, and `tdpbf16ps`,
//! which multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums in one
//! instruction (measured on a 2-core Sapphire Rapids VM: 2.6 TFLOP/s a core, 12x its AVX-512 f32
//! FMAs; its AVX512_BF16 `vdpbf16ps` gave half their rate, so that path is not taken).
//!
//! The operands are packed as the tiles load them: the left one in 16 x 32 blocks of rows, the
//! right one in 32 x 16 blocks with each pair of rows interleaved (two bf16 of one column in one
//! 32-bit word). Each task packs a 32-column panel of the right operand, then runs 32 x 32 blocks
//! of the product (four result tiles, two tiles of each operand) over the whole inner dimension.
//! The instructions are written as inline assembly: Rust's AMX intrinsics are not stable.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::{interleave, pairs, words_mut, words_of};
use crate::config::Bf16Unit;
use crate::gemm::{Mat, MatMut};

/// Rows of a tile, and f32 words in a tile's row (64 bytes).
pub(crate) const TILE: usize = 16;
/// bf16 values along the inner dimension in one tile.
pub(crate) const TILE_K: usize = 32;
/// f32 words in one packed tile.
pub(crate) const TILE_WORDS: usize = TILE * TILE;

/// Whether this CPU has AMX with bf16 and the OS lets this process use its tile registers
/// (Linux asks each process to request them: `arch_prctl(ARCH_REQ_XCOMP_PERM)`).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // Leaf 7 is read only where leaf 0 says it exists.
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    if leaf7.edx & (AMX_BF16 | AMX_TILE) != AMX_BF16 | AMX_TILE {
        return false;
    }
    // SAFETY: arch_prctl with this request only changes which state the kernel saves for us.
    let asked = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    asked == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// 32-row blocks of `rows` (two tiles each).
fn row_pairs(rows: usize) -> usize {
    rows.div_ceil(2 * TILE)
}

/// f32 words of a packed left operand of `rows` x `cols`: zero-padded to 32 rows and 32 columns.
pub fn packed_lhs_len(rows: usize, cols: usize) -> usize {
    2 * row_pairs(rows) * cols.div_ceil(TILE_K) * TILE_WORDS
}

/// `lhs` as tiles: [16-row block][32-column block][row][pair of columns], zeros beyond its edges.
pub fn pack_lhs(lhs: Mat<'_>, out: &mut [f32]) {
    let k_tiles = lhs.cols.div_ceil(TILE_K);
    out.par_chunks_mut(k_tiles * TILE_WORDS)
        .enumerate()
        .for_each(|(block, tiles)| {
            let tiles = words_mut(tiles);
            tiles.fill(0);
            let mut row = vec![0.0f32; lhs.cols];
            for r in 0..TILE.min(lhs.rows.saturating_sub(block * TILE)) {
                let i = block * TILE + r;
                for (j, v) in row.iter_mut().enumerate() {
                    *v = lhs.data[lhs.offset + i * lhs.row_stride + j * lhs.col_stride];
                }
                for (t, values) in row.chunks(TILE_K).enumerate() {
                    let at = t * TILE_WORDS + r * TILE;
                    pairs(values, &mut tiles[at..at + TILE]);
                }
            }
        });
}

/// The right operand's rows `first_row..first_row + 32 k_tiles` and columns `first..first + 32`,
/// its columns contiguous (a transposed operand), as two tile columns: [tile column][32-row
/// block][pair of rows][column], each word two rows of one column, zeros beyond its edges.
fn pack_columns(rhs: Mat<'_>, first_row: usize, first: usize, k_tiles: usize, panel: &mut [u32]) {
    let pairs_per_column = k_tiles * TILE;
    let panel = &mut panel[..2 * pairs_per_column * TILE];
    let columns = rhs.cols.saturating_sub(first).min(2 * TILE);
    let rows = rhs.rows.saturating_sub(first_row).min(2 * pairs_per_column);
    if columns < 2 * TILE || rows < 2 * pairs_per_column {
        panel.fill(0);
    }
    // Columns are contiguous (a transposed operand): each column's pairs of rows are adjacent.
    let mut words = vec![0u32; rows.div_ceil(2)];
    let mut column = vec![0.0f32; rows];
    for c in 0..columns {
        let j = first + c;
        if rhs.row_stride == 1 {
            column
                .copy_from_slice(&rhs.data[rhs.offset + first_row + j * rhs.col_stride..][..rows]);
        } else {
            for (r, v) in column.iter_mut().enumerate() {
                *v = rhs.data[rhs.offset + (first_row + r) * rhs.row_stride + j * rhs.col_stride];
            }
        }
        pairs(&column, &mut words);
        let (half, c) = (c / TILE, c % TILE);
        for (p, &w) in words.iter().enumerate() {
            panel[(half * pairs_per_column + p) * TILE + c] = w;
        }
    }
}

/// The tile registers' shapes: all eight 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// The tiles configured on this thread for the duration of `f`, released after it.
pub(crate) fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    config.bytes_per_row[..8].fill((TILE * 4) as u16);
    config.rows[..8].fill(TILE as u8);
    // SAFETY: `available()` (checked by every caller's caller) says the CPU has the tiles and the
    // OS saves them for this process; the configuration is valid for palette 1.
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    let result = f();
    // SAFETY: as above; nothing else on this thread uses the tiles.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    result
}

/// The four result tiles (tmm0-3: a 32 x 32 block of sums) set to zero.
///
/// # Safety
/// The tiles must be configured as `with_tiles` does.
#[inline(always)]
pub(crate) unsafe fn zero_sums() {
    // SAFETY: the caller configured the tiles.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    }
}

/// The four result tiles loaded from 16 rows of 16 f32 each at `tiles`, `stride` bytes apart.
///
/// # Safety
/// The tiles must be configured; each of the four must be readable for 16 rows of 64 bytes.
#[inline(always)]
pub(crate) unsafe fn load_sums(tiles: [*const f32; 4], stride: usize) {
    // SAFETY: as the caller guarantees.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm0, [{c0} + {s}*1]",
            "tileloadd tmm1, [{c1} + {s}*1]",
            "tileloadd tmm2, [{c2} + {s}*1]",
            "tileloadd tmm3, [{c3} + {s}*1]",
            c0 = in(reg) tiles[0],
            c1 = in(reg) tiles[1],
            c2 = in(reg) tiles[2],
            c3 = in(reg) tiles[3],
            s = in(reg) stride,
            options(nostack, readonly)
        )
    }
}

/// The four result tiles stored as `load_sums` loads them.
///
/// # Safety
/// The tiles must be configured; each of the four must be writable for 16 rows of 64 bytes,
/// by this thread alone.
#[inline(always)]
pub(crate) unsafe fn store_sums(tiles: [*mut f32; 4], stride: usize) {
    // SAFETY: as the caller guarantees.
    unsafe {
        std::arch::asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) tiles[0],
            c1 = in(reg) tiles[1],
            c2 = in(reg) tiles[2],
            c3 = in(reg) tiles[3],
            s = in(reg) stride,
            options(nostack)
        )
    }
}

/// One step of a 32 x 32 block: the four result tiles += two left tiles (16 rows of 32 bf16
/// at `a[0]`, `a[1]`, `a_stride` bytes apart) times two right tiles (16 rows of 16 bf16 pairs
/// at `b[0]`, `b[1]`, `b_stride` bytes apart): tmm0 += a0 b0, tmm1 += a0 b1, tmm2 += a1 b0,
/// tmm3 += a1 b1.
///
/// # Safety
/// The tiles must be configured; each operand tile must be readable for 16 rows of 64 bytes.
#[inline(always)]
pub(crate) unsafe fn step(a: [*const u8; 2], a_stride: usize, b: [*const u8; 2], b_stride: usize) {
    // SAFETY: as the caller guarantees.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a[0],
            a1 = in(reg) a[1],
            b0 = in(reg) b[0],
            b1 = in(reg) b[1],
            sa = in(reg) a_stride,
            sb = in(reg) b_stride,
            options(nostack, readonly)
        )
    }
}

/// How the right operand is cut for packing: blocks of `panels` 32-column panels, which one
/// task packs and multiplies at once, and passes of `tiles` tiles of the inner dimension.
#[derive(Clone, Copy)]
struct Blocking {
    panels: usize,
    tiles: usize,
}

/// 256 columns by 512 values: a pass's packed right operand, 256 KiB for a block of columns, and
/// the left operand's rows, 32 KiB per 32 rows, stay in the L2 while the results wait in the
/// destination between passes. `pack_rhs`'s layout.
const REUSED: Blocking = Blocking {
    panels: 8,
    tiles: 16,
};

/// Where the right operand comes from: a matrix, packed as the product goes, or packed before
/// (`pack_rhs`), as weights used many times are.
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    /// Packed block by block by each task.
    Matrix(Mat<'a>),
    /// Packed by `pack_rhs` for this many rows and columns.
    Packed {
        /// The words.
        words: &'a [f32],
        /// Rows (the inner dimension).
        rows: usize,
        /// Columns.
        cols: usize,
    },
}

impl Rhs<'_> {
    fn dims(&self) -> (usize, usize) {
        match *self {
            Rhs::Matrix(m) => (m.rows, m.cols),
            Rhs::Packed { rows, cols, .. } => (rows, cols),
        }
    }
}

impl Blocking {
    /// For a product packing `rhs` as it goes: where each packed panel is used once (a left
    /// operand of one 32-row block: a linear layer's input gradient at a small batch) or the
    /// inner dimension is one tile (its weight gradient), the time is memory: the right operand
    /// read, or the destination written, as rows of many columns. Rows of 1 KiB (`REUSED`), each
    /// in a page of its own, moved 10-13 GB/s (fc6's gradients at batch 8). Blocks as wide as
    /// 256 KiB of packed panels allow (4096 columns for one tile, 1024 for four), split evenly
    /// over the threads.
    fn for_product(rhs: &Rhs<'_>, m: usize, k_tiles: usize, panels: usize, threads: usize) -> Self {
        let tiles = match rhs {
            Rhs::Matrix(_) if k_tiles == 1 => 1,
            Rhs::Matrix(_) if row_pairs(m) == 1 => 4,
            _ => return REUSED,
        };
        let widest = REUSED.panels * REUSED.tiles / tiles;
        let threads = threads.max(1);
        let blocks = panels.div_ceil(widest).div_ceil(threads) * threads;
        Blocking {
            panels: panels.div_ceil(blocks).max(1),
            tiles,
        }
    }
}

/// The words of one (column block, pass) of a right operand with `k_tiles` tiles of rows and
/// `panels` panels: where they start in `pack_rhs`'s layout, and how many there are.
fn packed_block(
    blocking: Blocking,
    k_tiles: usize,
    panels: usize,
    block: usize,
    first_tile: usize,
) -> (usize, usize) {
    let in_block = blocking.panels.min(panels - block * blocking.panels);
    let tiles = blocking.tiles.min(k_tiles - first_tile);
    let panel_words = 2 * TILE_WORDS;
    let start = (block * blocking.panels * k_tiles + in_block * first_tile) * panel_words;
    (start, in_block * tiles * panel_words)
}

/// f32 words of `pack_rhs` for `rows` x `cols`.
pub fn packed_rhs_len(rows: usize, cols: usize) -> usize {
    rows.div_ceil(TILE_K) * cols.div_ceil(2 * TILE) * 2 * TILE_WORDS
}

/// `rhs` packed as `gemm` packs it block by block, all of it, for `Rhs::Packed`.
pub fn pack_rhs(rhs: Mat<'_>, out: &mut [f32]) {
    assert_eq!(
        out.len(),
        packed_rhs_len(rhs.rows, rhs.cols),
        "packed rhs length"
    );
    let (k_tiles, panels) = (rhs.rows.div_ceil(TILE_K), rhs.cols.div_ceil(2 * TILE));
    let out = words_mut(out);
    let mut blocks = Vec::new();
    let mut rest = out;
    for block in 0..panels.div_ceil(REUSED.panels) {
        for first_tile in (0..k_tiles).step_by(REUSED.tiles) {
            let (_, len) = packed_block(REUSED, k_tiles, panels, block, first_tile);
            let (this, tail) = rest.split_at_mut(len);
            blocks.push((block, first_tile, this));
            rest = tail;
        }
    }
    blocks
        .into_par_iter()
        .for_each(|(block, first_tile, words)| {
            pack_block(rhs, REUSED, block, first_tile, k_tiles, panels, words)
        });
}

/// Rows ahead of the pair being packed that are asked for (`simd::prefetch`): fc6's input
/// gradient at batch 8, 36 ms with none, 27 ms with 2 or 4 or 8.
const LOOKAHEAD: usize = 4;

/// One (column block, pass) of `rhs`: its panels one after another.
fn pack_block(
    rhs: Mat<'_>,
    blocking: Blocking,
    block: usize,
    first_tile: usize,
    k_tiles: usize,
    panels: usize,
    words: &mut [u32],
) {
    let tiles = blocking.tiles.min(k_tiles - first_tile);
    let in_block = blocking.panels.min(panels - block * blocking.panels);
    let panels = words
        .chunks_exact_mut(2 * tiles * TILE_WORDS)
        .take(in_block)
        .enumerate()
        .map(|(i, panel)| ((block * blocking.panels + i) * 2 * TILE, panel));
    let first_row = first_tile * TILE_K;
    if rhs.col_stride != 1 {
        for (first, panel) in panels {
            pack_columns(rhs, first_row, first, tiles, panel);
        }
        return;
    }
    // Rows are contiguous: each pair of rows is read across the whole block, panel after panel,
    // so that a wide block's rows are read as long runs (`Blocking::for_product`).
    let mut panels: Vec<_> = panels.collect();
    let pairs_per_column = tiles * TILE;
    let rows = rhs.rows.saturating_sub(first_row).min(2 * pairs_per_column);
    for (first, panel) in &mut panels {
        let columns = rhs.cols.saturating_sub(*first).min(2 * TILE);
        if columns < 2 * TILE || rows < 2 * pairs_per_column {
            panel.fill(0);
        }
    }
    let row = |r: usize, first: usize, columns: usize| {
        &rhs.data[rhs.offset + (first_row + r) * rhs.row_stride + first..][..columns]
    };
    let mut words = [0u32; 2 * TILE];
    for p in 0..rows.div_ceil(2) {
        let (low, high) = (2 * p, 2 * p + 1);
        for (first, panel) in &mut panels {
            let columns = rhs.cols.saturating_sub(*first).min(2 * TILE);
            for ahead in [low + LOOKAHEAD, high + LOOKAHEAD] {
                if ahead < rows {
                    crate::simd::prefetch(row(ahead, *first, columns));
                }
            }
            if columns < 2 * TILE {
                words.fill(0);
            }
            interleave(
                row(low, *first, columns),
                if high < rows {
                    row(high, *first, columns)
                } else {
                    &[]
                },
                &mut words,
            );
            for half in 0..2 {
                let at = (half * pairs_per_column + p) * TILE;
                panel[at..at + TILE].copy_from_slice(&words[half * TILE..(half + 1) * TILE]);
            }
        }
    }
}

/// dst (+)= A B for A packed by `pack_lhs` (`m` x `k`) and B = `rhs` (k x n), on `threads`
/// threads, on `unit`'s instructions (AMX's tiles or AVX512_BF16's vectors: the same packed
/// operands).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dst: MatMut<'_>,
    a: &[f32],
    m: usize,
    k: usize,
    rhs: Rhs<'_>,
    accumulate: bool,
    threads: usize,
    unit: Bf16Unit,
) {
    assert!(
        unit.packs_tiles() && unit.present(),
        "{} products on packed tiles asked for where the CPU has none",
        unit.name()
    );
    let (rhs_rows, n) = rhs.dims();
    assert_eq!(
        (rhs_rows, dst.rows, dst.cols),
        (k, m, n),
        "bf16 gemm operand shapes"
    );
    assert_eq!(a.len(), packed_lhs_len(m, k), "packed lhs length");
    if m == 0 || n == 0 {
        return;
    }
    let dst_last = dst.offset + (m - 1) * dst.row_stride + (n - 1);
    assert!(
        dst_last < dst.data.len(),
        "bf16 gemm destination out of bounds"
    );
    let k_tiles = k.div_ceil(TILE_K);
    let panels = n.div_ceil(2 * TILE);
    match rhs {
        Rhs::Matrix(rhs) if k > 0 => {
            let last = rhs.offset + (k - 1) * rhs.row_stride + (n - 1) * rhs.col_stride;
            assert!(last < rhs.data.len(), "bf16 gemm rhs out of bounds");
        }
        Rhs::Packed { words, .. } => {
            assert_eq!(words.len(), packed_rhs_len(k, n), "packed rhs length")
        }
        _ => {}
    }
    let out = Out {
        ptr: dst.data.as_mut_ptr(),
        offset: dst.offset,
        row_stride: dst.row_stride,
        rows: m,
        cols: n,
    };
    if k == 0 {
        if !accumulate {
            // SAFETY: this thread alone writes, within the bounds checked above.
            unsafe { out.zero() };
        }
        return;
    }
    let blocking = Blocking::for_product(&rhs, m, k_tiles, panels, threads);
    let blocks = panels.div_ceil(blocking.panels);
    let run = |blocks: std::ops::Range<usize>| {
        let mut own = Vec::new();
        let body = || {
            for block in blocks {
                for first_tile in (0..k_tiles).step_by(blocking.tiles) {
                    let tiles = blocking.tiles.min(k_tiles - first_tile);
                    let (start, len) = packed_block(blocking, k_tiles, panels, block, first_tile);
                    let packed: &[u32] = match rhs {
                        Rhs::Packed { words, .. } => &words_of(words)[start..start + len],
                        Rhs::Matrix(rhs) => {
                            own.resize(len, 0);
                            pack_block(rhs, blocking, block, first_tile, k_tiles, panels, &mut own);
                            &own
                        }
                    };
                    let first_pass = first_tile == 0;
                    for pair in 0..row_pairs(m) {
                        for (i, panel) in packed.chunks_exact(2 * tiles * TILE_WORDS).enumerate() {
                            let col = (block * blocking.panels + i) * 2 * TILE;
                            let row = pair * 2 * TILE;
                            let start = if first_pass && !accumulate {
                                Start::Zero
                            } else {
                                Start::Destination
                            };
                            // SAFETY: AMX's tiles are configured (with_tiles below), or the
                            // CPU has AVX512_BF16 (asserted above); the reads lie in `a` and
                            // `panel` (asserted in `block_sums`); tasks write disjoint columns
                            // (their blocks), within the destination's bounds.
                            unsafe {
                                let sums = if unit == Bf16Unit::Amx {
                                    block_sums
                                } else {
                                    super::vectors::block_sums
                                };
                                sums(BlockJob {
                                    a,
                                    k_tiles,
                                    first_tile,
                                    tiles,
                                    panel,
                                    pair,
                                    out,
                                    row,
                                    col,
                                    start,
                                })
                            };
                        }
                    }
                }
            }
        };
        if unit == Bf16Unit::Amx {
            with_tiles(body)
        } else {
            body()
        }
    };
    let tasks = threads.max(1).min(blocks);
    if tasks == 1 {
        run(0..blocks);
    } else {
        (0..blocks)
            .into_par_iter()
            .with_max_len(1)
            .for_each(|b| run(b..b + 1));
    }
}

/// How a block's sums start: from zero, or from what the destination holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    Zero,
    Destination,
}

/// One 32 x 32 block's work: the destination's block at (`row`, `col`) plus row pair `pair` of
/// the packed left operand `a` (`k_tiles` tiles deep) times a packed 32-column `panel`, over
/// `tiles` tiles of the inner dimension from `first_tile`.
#[derive(Clone, Copy)]
pub(super) struct BlockJob<'a> {
    pub(super) a: &'a [f32],
    pub(super) k_tiles: usize,
    pub(super) first_tile: usize,
    pub(super) tiles: usize,
    pub(super) panel: &'a [u32],
    pub(super) pair: usize,
    pub(super) out: Out,
    pub(super) row: usize,
    pub(super) col: usize,
    pub(super) start: Start,
}

impl BlockJob<'_> {
    /// Where the pass's upper and lower 16-row tiles of the left operand start in `a`; asserts
    /// that the pass lies inside `a` and `panel`.
    pub(super) fn left_tiles(&self) -> (usize, usize) {
        let top = (2 * self.pair * self.k_tiles + self.first_tile) * TILE_WORDS;
        let bottom = top + self.k_tiles * TILE_WORDS;
        let words = self.tiles * TILE_WORDS;
        assert!(bottom + words <= self.a.len() && self.panel.len() >= 2 * words);
        (top, bottom)
    }
}

/// `job` on the tiles.
///
/// # Safety
/// The tiles must be configured as `with_tiles` does; no other thread may write these
/// destination elements meanwhile.
unsafe fn block_sums(job: BlockJob<'_>) {
    let (top, bottom) = job.left_tiles();
    let (a, tiles, panel, out) = (job.a, job.tiles, job.panel, job.out);
    let (row, col, start) = (job.row, job.col, job.start);
    let stride = TILE * 4;
    let left = panel.as_ptr();
    let right = panel[tiles * TILE_WORDS..].as_ptr();
    let mut scratch = [[0.0f32; TILE_WORDS]; 4];
    // A block wholly inside the destination is loaded and stored in place; one at its edges
    // goes through `scratch`.
    let whole = row + 2 * TILE <= out.rows && col + 2 * TILE <= out.cols;
    let dst_stride = out.row_stride * 4;
    // SAFETY: in bounds when `whole` (the caller checked the destination's last index).
    let corner = |t: usize| unsafe {
        out.ptr
            .add(out.offset + (row + (t / 2) * TILE) * out.row_stride + col + (t % 2) * TILE)
    };
    let scratch_tiles = |s: &mut [[f32; TILE_WORDS]; 4]| -> [*mut f32; 4] {
        let [a, b, c, d] = s;
        [
            a.as_mut_ptr(),
            b.as_mut_ptr(),
            c.as_mut_ptr(),
            d.as_mut_ptr(),
        ]
    };
    let corners: [*mut f32; 4] = std::array::from_fn(corner);
    // SAFETY (for the block): the caller configured the tiles; each load reads one 1 KiB tile
    // inside the slices (asserted above) or inside the destination (`whole`).
    unsafe {
        match (start, whole) {
            (Start::Zero, _) => zero_sums(),
            (Start::Destination, true) => load_sums(corners.map(|p| p.cast_const()), dst_stride),
            (Start::Destination, false) => {
                out.read(&mut scratch, row, col);
                load_sums(scratch_tiles(&mut scratch).map(|p| p.cast_const()), stride);
            }
        }
        for t in 0..tiles {
            let at = t * TILE_WORDS;
            step(
                [
                    a.as_ptr().add(top + at).cast(),
                    a.as_ptr().add(bottom + at).cast(),
                ],
                stride,
                [left.add(at).cast(), right.add(at).cast()],
                stride,
            );
        }
        if whole {
            store_sums(corners, dst_stride);
        } else {
            store_sums(scratch_tiles(&mut scratch), stride);
            out.write(&scratch, row, col);
        }
    }
}

/// The destination, written by several tasks at disjoint columns.
#[derive(Clone, Copy)]
pub(super) struct Out {
    pub(super) ptr: *mut f32,
    pub(super) offset: usize,
    pub(super) row_stride: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

// SAFETY: tasks write disjoint elements (their own blocks' columns); the pointer outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The parts of four tiles at (`row`, `col`) inside the destination, and their rows' and
    /// columns' counts.
    fn parts(self, row: usize, col: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..4).map(move |t| {
            let (r0, c0) = (row + (t / 2) * TILE, col + (t % 2) * TILE);
            let rows = self.rows.saturating_sub(r0).min(TILE);
            let cols = self.cols.saturating_sub(c0).min(TILE);
            (t, self.offset + r0 * self.row_stride + c0, rows, cols)
        })
    }

    /// The 32 x 32 block at (`row`, `col`), cut at the destination's edges.
    ///
    /// # Safety
    /// No other thread may write these elements meanwhile.
    pub(super) unsafe fn write(self, sums: &[[f32; TILE_WORDS]; 4], row: usize, col: usize) {
        for (t, at, rows, cols) in self.parts(row, col) {
            for r in 0..rows {
                // SAFETY: inside the destination, whose last index the caller checked; the
                // caller guarantees no other writer.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(self.ptr.add(at + r * self.row_stride), cols)
                };
                dst.copy_from_slice(&sums[t][r * TILE..r * TILE + cols]);
            }
        }
    }

    /// The block at (`row`, `col`) into `sums`, zeros beyond the destination's edges.
    ///
    /// # Safety
    /// No other thread may write these elements meanwhile.
    pub(super) unsafe fn read(self, sums: &mut [[f32; TILE_WORDS]; 4], row: usize, col: usize) {
        *sums = [[0.0; TILE_WORDS]; 4];
        for (t, at, rows, cols) in self.parts(row, col) {
            for r in 0..rows {
                // SAFETY: as in `write`.
                let src = unsafe {
                    std::slice::from_raw_parts(self.ptr.add(at + r * self.row_stride), cols)
                };
                sums[t][r * TILE..r * TILE + cols].copy_from_slice(src);
            }
        }
    }

    /// Every element zero.
    ///
    /// # Safety
    /// No other thread may use the destination meanwhile.
    unsafe fn zero(self) {
        for r in 0..self.rows {
            // SAFETY: as in `write`.
            unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.add(self.offset + r * self.row_stride),
                    self.cols,
                )
            }
            .fill(0.0);
        }
    }
}
