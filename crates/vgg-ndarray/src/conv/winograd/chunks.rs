//! How a convolution's tile rows are cut into chunks, and each worker's scratch for one chunk.

use vgg_tensor::ConvGeometry;

use super::*;
use crate::config::Tuning;

/// Tiles a chunk's GEMMs need at least (see `Chunks`; its byte sizes come from `Tuning`).
pub(super) const MIN_TILES: usize = 64;

/// Whether the transformed weights (of tile size `size`) are too large to stay in cache, so chunks
/// are large (`Chunks`).
pub(crate) fn large_chunks(g: &ConvGeometry, t: &Tuning, size: TileSize) -> bool {
    size.positions() * g.out_channels * g.in_channels * 4 > t.cached_weight_bytes
}

/// How a convolution's tile rows (over batch x tile rows) are cut into chunks. Every chunk's
/// GEMMs read all the transformed weights (36 or 64 k x c values: `TileSize::positions`). Where
/// those stay in cache (`Tuning::cached_weight_bytes`), chunks are small, so their transformed
/// input and output (positions x (c + k) values per tile) stay near the core's L2
/// (`Tuning::chunk_bytes`, at least `MIN_TILES` for the GEMMs). Where they do not (256 channels and
/// more: 9-36 MiB), each chunk streams them from memory, so chunks grow to the L3
/// (`Tuning::large_chunk_bytes`) to read them fewer times. The count is a multiple of the threads, so none waits on another's
/// extra chunk. Measured per layer: docs/performance.md.
pub(super) struct Chunks {
    pub(super) rows_per_chunk: usize,
    pub(super) count: usize,
    pub(super) total_rows: usize,
    pub(super) tiles_w: usize,
    /// Input and output channels.
    pub(super) channels: (usize, usize),
    pub(super) size: TileSize,
}

impl Chunks {
    pub(super) fn new(g: &ConvGeometry, t: &Tuning, size: TileSize) -> Chunks {
        let threads = t.threads;
        let (tiles_h, tiles_w) = size.grid(g);
        let total_rows = g.batch * tiles_h;
        let (c, k) = (g.in_channels, g.out_channels);
        let row_bytes = (size.positions() * (c + k) * tiles_w * 4).max(1);
        let rows = if large_chunks(g, t, size) {
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
            size,
        }
    }

    /// Tile rows of chunk `i`.
    pub(super) fn rows(&self, i: usize) -> std::ops::Range<usize> {
        i * self.rows_per_chunk..((i + 1) * self.rows_per_chunk).min(self.total_rows)
    }

    /// `f(rows, tiles, v, m)` for chunk `i`'s tile rows and tile count, with scratch for the
    /// chunk's transformed input (c values per position and tile) and output (k values), whose
    /// contents are unspecified: callers write every value before reading it. The scratch comes
    /// from the arena, so it reuses pages that are already resident (no faults after the first
    /// step) and between calls the same pages serve activations: kept in each worker as a vector,
    /// it held up to `Tuning::large_chunk_bytes` per thread (63 MiB on two threads) outside the
    /// arena for the whole process.
    pub(super) fn with_scratch<R>(
        &self,
        i: usize,
        f: impl FnOnce(std::ops::Range<usize>, usize, &mut [f32], &mut [f32]) -> R,
    ) -> R {
        let (c, k) = self.channels;
        let rows = self.rows(i);
        let tiles = rows.len() * self.tiles_w;
        let positions = self.size.positions();
        let mut scratch = Memory::uninit(positions * (c + k) * tiles);
        let (v, m) = scratch.split_at_mut(positions * c * tiles);
        f(rows, tiles, v, m)
    }
}
