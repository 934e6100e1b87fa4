//! The passes that transform a chunk's input, output gradient and output, and a layer's weights
//! and weight gradient, 16 tiles at a time, one per SIMD lane, for either tile size (`Tile`).

use vgg_tensor::ConvGeometry;

use super::*;

/// The 2-D transform F d Ft of an N x N block of lane vectors, given F as `f` (N values in, P
/// out): F applied to every column, then to every row of the result. Element (i, j) comes from
/// `element(i, j)` and row a of the result goes to `row_out(a, row)`, so that neither the block
/// nor the result is laid out on the stack: built there, each was zero-filled and copied (two
/// 2.3 KB memsets per 16 tiles in the input transform, 3% of a batch-8 forward on AVX2). Callers
/// in the SIMD transforms mark both closures `#[inline(always)]`: a closure is compiled for the
/// baseline CPU unless inlined into the function that carries the target features, and these
/// ones, called four to six times each, were not.
#[inline(always)]
pub(super) fn transform_2d<const N: usize, const P: usize>(
    element: impl Fn(usize, usize) -> Lanes,
    f: impl Fn(&[Lanes; N]) -> [Lanes; P],
    mut row_out: impl FnMut(usize, &[Lanes; P]),
) {
    // Written column by column in place (`std::array::from_fn` built it aside, then copied it).
    let mut cols = std::mem::MaybeUninit::<[[Lanes; P]; N]>::uninit();
    let column_out = cols.as_mut_ptr().cast::<[Lanes; P]>();
    for j in 0..N {
        let mut column = [[0.0f32; LANES]; N];
        for (i, value) in column.iter_mut().enumerate() {
            *value = element(i, j);
        }
        // SAFETY: j < N, inside `cols`.
        unsafe { column_out.add(j).write(f(&column)) };
    }
    // SAFETY: every one of the N columns was written above.
    let cols = unsafe { cols.assume_init_ref() };
    for a in 0..P {
        let mut row = [[0.0f32; LANES]; N];
        for (value, column) in row.iter_mut().zip(cols) {
            *value = column[a];
        }
        row_out(a, &f(&row));
    }
}

/// How the output and output-gradient transforms take a chunk's tiles, 16 lanes at a time, in
/// groups of consecutive tile rows. The tiles of consecutive rows are consecutive in V and M, so a
/// group is one run of them, and a vector's lanes may take the end of one row and the start of the
/// next. Taken one row a vector, conv5's 4 tiles a row filled 4 of the 16 lanes, conv4's 7 filled
/// 7, and rows of 14 to 56 tiles (conv1-conv3 on F(4x4)) left 12.5% of the lanes idle, F(6x6)'s 19
/// and 38 41% and 21%.
#[derive(Clone, Copy)]
struct RowGroups {
    tiles_w: usize,
    /// Tile rows in one group.
    rows: usize,
}

impl RowGroups {
    /// The fewest rows whose tiles are whole vectors (16 / gcd(tiles a row, 16): 4 tiles a row 4
    /// rows, 7 16, 14 8, 28 4, 56 2, 19 16): for the output-gradient transform, which stores any
    /// 16 tiles alike (callgrind, 64 -> 64 channels at 56x56: 17.9M -> 16.1M instructions;
    /// 16 -> 16 at 112x112: 15.6M -> 14.6M).
    fn whole_vectors(tiles_w: usize) -> RowGroups {
        let gcd = |mut a: usize, mut b: usize| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        RowGroups {
            tiles_w,
            rows: LANES / gcd(tiles_w.max(1), LANES),
        }
    }

    /// For the output transform, which writes each row's run of a vector to the image on its own:
    /// rows of up to 16 tiles whole, several to a vector (4 tiles a row 4, 7 2, 14 1), longer rows
    /// in whole vectors (at most one row's end in each). Across rows of 14 tiles nearly every
    /// vector held two rows' ends, and the extra writes cost more than the idle lanes (callgrind,
    /// 64 -> 64 channels at 56x56: 30.4M -> 31.8M instructions), while rows of 28 gained (16 -> 16
    /// channels at 112x112: 30.1M -> 27.9M).
    fn for_output(tiles_w: usize) -> RowGroups {
        if tiles_w > LANES {
            RowGroups::whole_vectors(tiles_w)
        } else {
            RowGroups {
                tiles_w,
                rows: (LANES / tiles_w.max(1)).max(1),
            }
        }
    }

    /// The group of tile rows from `first`, before `end`: `rows` of them, or fewer at the end.
    fn group(&self, first: usize, end: usize) -> std::ops::Range<usize> {
        first..(first + self.rows).min(end)
    }

    /// The groups of tile rows `rows`, in order.
    fn of(&self, rows: std::ops::Range<usize>) -> impl Iterator<Item = std::ops::Range<usize>> {
        let groups = *self;
        (rows.start..rows.end)
            .step_by(self.rows)
            .map(move |first| groups.group(first, rows.end))
    }

    /// Tile t0 of a group (counted from its first) as (row in the group, column).
    #[inline(always)]
    fn position(&self, t0: usize) -> (usize, usize) {
        (t0 / self.tiles_w, t0 % self.tiles_w)
    }

    /// `f(lanes, row, column)` for each run of `lanes` lanes, the first holding the tile at
    /// `first` (`position`), that holds tiles of one row: lanes `lanes` hold the group's tile row
    /// `row`'s tiles from column `column` on. Called for each output row of a group, so the
    /// division is the caller's, once.
    #[inline(always)]
    fn each_run(
        &self,
        (mut row, mut column): (usize, usize),
        lanes: usize,
        mut f: impl FnMut(std::ops::Range<usize>, usize, usize),
    ) {
        let mut l = 0;
        while l < lanes {
            let run = (self.tiles_w - column).min(lanes - l);
            f(l..l + run, row, column);
            l += run;
            row += 1;
            column = 0;
        }
    }
}

/// V[c][pos][t] for the tile rows `rows` (global indices over batch x tile rows) and the input
/// channels `channels` (c counting from their first), t counting tiles in order across those rows.
#[inline(always)]
pub(super) fn transform_input_generic<T: Tile<M, A>, const M: usize, const A: usize>(
    x: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    v: &mut [f32],
) {
    let (tiles_h, tiles_w) = T::SIZE.grid(g);
    let positions = A * A;
    let tiles = rows.len() * tiles_w;
    let c_count = g.in_channels;
    let plane = g.in_h * g.in_w;
    // The A input rows one tile row reads, zero-padded, split by column phase: column M q + p at
    // [p][q], so that column j of the tiles t0.. is one contiguous load at [j % M][t0 + j / M..]
    // (j / M is 0 or 1: one quad past the tiles).
    let quads = tiles_w.next_multiple_of(LANES) + 1;
    let mut padded = vec![0.0f32; M * quads];
    let mut phases = vec![0.0f32; A * M * quads];
    for (ri, row) in rows.clone().enumerate() {
        let (n, th) = (row / tiles_h, row % tiles_h);
        for ci in channels.clone() {
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
                split_phases::<M>(&padded, split, quads, 0);
            }
            for t0 in (0..tiles_w).step_by(LANES) {
                let lanes = LANES.min(tiles_w - t0);
                let at = (ci - channels.start) * positions * tiles + ri * tiles_w + t0;
                transform_2d(
                    // Element (i, j) of tiles t0.., one per lane.
                    #[inline(always)]
                    |i, j| load_lanes(&phases, (i * M + j % M) * quads + t0 + j / M, LANES),
                    T::bt,
                    #[inline(always)]
                    |a, row| store_row(row, a, v, tiles, at, 0..lanes),
                );
            }
        }
    }
}

/// dM[k][pos][t] = (A dY At)[pos] for the M x M output-gradient blocks of the tile rows `rows`
/// and the output channels `channels` (k counting from their first; blocks cut by the output's
/// edge read zeros beyond it).
#[inline(always)]
pub(super) fn transform_output_grad_generic<T: Backward<M, A>, const M: usize, const A: usize>(
    dy: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    dm: &mut [f32],
) {
    let (tiles_h, tiles_w) = T::SIZE.grid(g);
    let positions = A * A;
    let tiles = rows.len() * tiles_w;
    let k_count = g.out_channels;
    let plane = g.out_h * g.out_w;
    // The M output-gradient rows of a group of tile rows (`RowGroups`), zero beyond the edges,
    // split by column phase (see `transform_input_generic`; blocks do not overlap, so no extra
    // quad): column j of the tiles t0.. of the group is at [j][t0..].
    let row_groups = RowGroups::whole_vectors(tiles_w);
    let stride = row_groups.rows * tiles_w + LANES;
    let mut padded = vec![0.0f32; M * tiles_w];
    let mut phases = vec![0.0f32; M * M * stride];
    for group in row_groups.of(rows.clone()) {
        let first_tile = (group.start - rows.start) * tiles_w;
        let group_tiles = group.len() * tiles_w;
        for ko in channels.clone() {
            for (r, row) in group.clone().enumerate() {
                let (n, th) = (row / tiles_h, row % tiles_h);
                let src = &dy[(n * k_count + ko) * plane..][..plane];
                for (i, split) in phases.chunks_exact_mut(M * stride).enumerate() {
                    let oh = th * M + i;
                    if oh >= g.out_h {
                        padded.fill(0.0);
                    } else {
                        padded[..g.out_w].copy_from_slice(&src[oh * g.out_w..(oh + 1) * g.out_w]);
                        padded[g.out_w..].fill(0.0);
                    }
                    split_phases::<M>(&padded, split, stride, r * tiles_w);
                }
            }
            let at = (ko - channels.start) * positions * tiles + first_tile;
            for t0 in (0..group_tiles).step_by(LANES) {
                let lanes = LANES.min(group_tiles - t0);
                transform_2d(
                    #[inline(always)]
                    |i, j| load_lanes(&phases, (i * M + j) * stride + t0, LANES),
                    T::a,
                    #[inline(always)]
                    |a, values| store_row(values, a, dm, tiles, at + t0, 0..lanes),
                );
            }
        }
    }
}

/// Y = At M A for the tile rows `rows` and output channels `channels` (m holds those channels'
/// rows only), plus bias and ReLU, into the output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn transform_output_generic<T: Tile<M, A>, const M: usize, const A: usize>(
    m: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    relu: bool,
    y: OutPtr,
) {
    let (tiles_h, tiles_w) = T::SIZE.grid(g);
    let positions = A * A;
    let tiles = rows.len() * tiles_w;
    let k_count = g.out_channels;
    let plane = g.out_h * g.out_w;
    // An output far larger than the caches is not read back from them: store it around them.
    let streaming = y.streaming;
    let row_groups = RowGroups::for_output(tiles_w);
    let groups = Groups {
        row_groups,
        tiles,
        channels: channels.clone(),
        rows: rows.len(),
        positions,
    };
    for group in row_groups.of(rows.clone()) {
        let ri = group.start - rows.start;
        let group_tiles = group.len() * tiles_w;
        // Where each row's output row 0 starts in channel 0's plane, and that row.
        let mut row_starts = [(0, 0); LANES];
        for (start, row) in row_starts.iter_mut().zip(group) {
            let (n, th) = (row / tiles_h, row % tiles_h);
            *start = (n * k_count * plane + th * M * g.out_w, th * M);
        }
        for ko in channels.clone() {
            let b = bias.map_or(0.0, |b| b[ko]);
            for t0 in (0..group_tiles).step_by(LANES) {
                let lanes = LANES.min(group_tiles - t0);
                let at = groups.at(ri, ko, t0);
                ask_ahead(m, (tiles, positions), groups.next(ri, ko, t0));
                // Read in the order of the layout, one position after another: read
                // column by column as the transform takes them, 256-channel layers on large
                // chunks (M from the L3) ran slower. Not zero-filled first: that memset was 7%
                // of conv1_2's instructions at batch 1.
                let mut s = std::mem::MaybeUninit::<[[Lanes; A]; A]>::uninit();
                let position_out = s.as_mut_ptr().cast::<Lanes>();
                for pos in 0..positions {
                    // SAFETY: pos < A x A, inside `s`.
                    unsafe {
                        position_out
                            .add(pos)
                            .write(load_lanes(m, pos * tiles + at, lanes))
                    };
                }
                // SAFETY: every position was written above.
                let s = unsafe { s.assume_init_ref() };
                let first = row_groups.position(t0);
                transform_2d(
                    #[inline(always)]
                    |i, j| s[i][j],
                    T::at,
                    #[inline(always)]
                    |a, out| {
                        // Bias and ReLU on whole vectors, then the lanes' M columns interleaved
                        // into output row segments. Done per value in one loop, the ReLU's
                        // select became a branch per value for M = 6 (a third of F(6x6)'s
                        // output transform in mispredictions).
                        let mut cols = *out;
                        for v in cols.as_flattened_mut() {
                            *v += b;
                        }
                        if relu {
                            for v in cols.as_flattened_mut() {
                                *v = vgg_tensor::relu(*v);
                            }
                        }
                        let line = interleave(&cols);
                        let line = line.as_flattened();
                        row_groups.each_run(
                            first,
                            lanes,
                            #[inline(always)]
                            |run, r, column| {
                                let (start, first_row) = row_starts[r];
                                if first_row + a >= g.out_h {
                                    return;
                                }
                                let width = (g.out_w - column * M).min(run.len() * M);
                                let at = start + ko * plane + a * g.out_w + column * M;
                                // SAFETY: the segment lies inside output row first_row + a of
                                // channel ko's plane, and only the chunk owning the run's tile
                                // row writes it.
                                unsafe {
                                    y.write_row(at, &line[run.start * M..][..width], streaming)
                                };
                            },
                        );
                    },
                );
            }
        }
    }
}

/// Lane l's M values (one per column vector) side by side: line[l] = [cols[0][l], ...]. Every
/// value is written. M = 4 directly, as before the tile size was a parameter; other M (F(6x6)'s
/// 6) transposed as 8 x 16, the columns past M zero, then cut to M per lane: 3% fewer
/// instructions in F(6x6)'s output transform than the direct loop (callgrind, 64 -> 64 channels at
/// 56x56: 12.2M -> 11.8M).
#[inline(always)]
fn interleave<const M: usize>(cols: &[Lanes; M]) -> [[f32; M]; LANES] {
    if M == 4 {
        let mut line = [[0.0f32; M]; LANES];
        for (l, values) in line.iter_mut().enumerate() {
            for (value, col) in values.iter_mut().zip(cols) {
                *value = col[l];
            }
        }
        return line;
    }
    let mut wide = [[0.0f32; LANES]; 8];
    wide[..M].copy_from_slice(cols);
    let mut square = [[0.0f32; 8]; LANES];
    for (l, values) in square.iter_mut().enumerate() {
        for (value, col) in values.iter_mut().zip(&wide) {
            *value = col[l];
        }
    }
    let mut line = [[0.0f32; M]; LANES];
    for (out, values) in line.iter_mut().zip(&square) {
        out.copy_from_slice(&values[..M]);
    }
    line
}

/// The output transform's groups of 16 tiles in m, in the order its loop takes them: groups of
/// tile rows (`RowGroups`), then output channels (counted from `channels.start`), then 16 tiles of
/// the rows at a time.
struct Groups {
    row_groups: RowGroups,
    tiles: usize,
    channels: std::ops::Range<usize>,
    rows: usize,
    /// Transformed positions per tile (`TileSize::positions`).
    positions: usize,
}

impl Groups {
    /// Where the group of the rows from tile row `ri`, channel `ko` and tiles `t0..` (counted
    /// from the rows' first) starts in m.
    #[inline(always)]
    fn at(&self, ri: usize, ko: usize, t0: usize) -> usize {
        (ko - self.channels.start) * self.positions * self.tiles + ri * self.row_groups.tiles_w + t0
    }

    /// Where the group after that one starts: the next tiles of the rows, else the next
    /// channel's first, else the next rows' first channel; None after the last.
    #[inline(always)]
    fn next(&self, ri: usize, ko: usize, t0: usize) -> Option<usize> {
        let rows = self.row_groups.group(ri, self.rows).len();
        if t0 + LANES < rows * self.row_groups.tiles_w {
            Some(self.at(ri, ko, t0 + LANES))
        } else if ko + 1 < self.channels.end {
            Some(self.at(ri, ko + 1, 0))
        } else if ri + rows < self.rows {
            Some(self.at(ri + rows, self.channels.start, 0))
        } else {
            None
        }
    }
}

/// Asks the caches for the positions (`positions` of them, stored `tiles` apart) of the group of
/// tiles at `at` in m (`Groups::next`) while this group is transformed: M was written by a GEMM per
/// position and lies in the L3 or memory, and the
/// transform's loads of it, 36 streams a group on F(4x4), held ~40% of its samples at batch 8 (perf
/// annotate).
/// A hint only: no value changes.
#[inline(always)]
fn ask_ahead(m: &[f32], (tiles, positions): (usize, usize), at: Option<usize>) {
    let Some(at) = at else { return };
    for pos in 0..positions {
        let from = pos * tiles + at;
        let last = (from + LANES).min(m.len()) - 1;
        // The group's first and last values: its 64 bytes span at most these two lines.
        crate::simd::prefetch(&m[from..=from]);
        crate::simd::prefetch(&m[last..=last]);
    }
}

/// Row `ko` of U (`transform_weights`): U[pos][ko][c] = (G w[ko][c] Gt)[pos], from output channel
/// ko's filters (c x 3 x 3), 16 input channels at a time.
#[inline(always)]
pub(super) fn transform_filters_generic<T: Tile<M, A>, const M: usize, const A: usize>(
    filters: &[f32],
    ko: usize,
    k: usize,
    c: usize,
    u: OutPtr,
) {
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
        transform_2d(
            #[inline(always)]
            |i, j| g[i][j],
            T::g,
            #[inline(always)]
            |a, row| {
                for (b, values) in row.iter().enumerate() {
                    // SAFETY: inside u; only the task of output channel ko writes its row.
                    unsafe { u.write_slice(((a * A + b) * k + ko) * c + c0, &values[..lanes]) };
                }
            },
        );
    }
}

/// dW[ko][c] = Gt dU[ko][c] G into `dw_k` (c x 3 x 3), from dU [pos][k][c], 16 input channels at a
/// time.
#[inline(always)]
pub(super) fn transform_weight_grad_generic<T: Backward<M, A>, const M: usize, const A: usize>(
    du: &[f32],
    ko: usize,
    k: usize,
    c: usize,
    dw_k: &mut [f32],
) {
    for c0 in (0..c).step_by(LANES) {
        let lanes = LANES.min(c - c0);
        let at = ko * c + c0;
        let mut block = [0.0f32; LANES * 9];
        transform_2d(
            #[inline(always)]
            |i, j| load_lanes(du, (i * A + j) * k * c + at, lanes),
            T::gt,
            #[inline(always)]
            |i, row| {
                for (j, values) in row.iter().enumerate() {
                    for (l, &v) in values.iter().enumerate() {
                        block[l * 9 + i * 3 + j] = v;
                    }
                }
            },
        );
        dw_k[c0 * 9..(c0 + lanes) * 9].copy_from_slice(&block[..lanes * 9]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group asked for ahead is the one the output transform takes next, in its loop's order,
    /// and the groups tile m without gaps or overlaps.
    #[test]
    fn next_group_is_the_loops_next() {
        for (tiles_w, rows, channels) in [
            (56, 2, 3..7),
            (4, 3, 0..2),
            (4, 9, 0..2),
            (7, 5, 1..3),
            (16, 1, 5..6),
            (17, 2, 1..3),
        ] {
            let tiles = rows * tiles_w;
            let row_groups = RowGroups::for_output(tiles_w);
            let groups = Groups {
                row_groups,
                tiles,
                channels: channels.clone(),
                rows,
                positions: TileSize::Four.positions(),
            };
            let mut order = Vec::new();
            let mut starts = Vec::new();
            for group in row_groups.of(0..rows) {
                let (ri, group_tiles) = (group.start, group.len() * tiles_w);
                for ko in channels.clone() {
                    for t0 in (0..group_tiles).step_by(LANES) {
                        order.push((groups.at(ri, ko, t0), groups.next(ri, ko, t0)));
                        // Position 0's tiles of the group, as the transform reads them.
                        let lanes = LANES.min(group_tiles - t0);
                        starts.extend(groups.at(ri, ko, t0)..groups.at(ri, ko, t0) + lanes);
                    }
                }
            }
            for (i, &(_, next)) in order.iter().enumerate() {
                assert_eq!(
                    next,
                    order.get(i + 1).map(|&(at, _)| at),
                    "{tiles_w} {rows} {i}"
                );
            }
            // Every channel's position-0 row of m ([channel][positions][tiles]) read once.
            starts.sort_unstable();
            let positions = groups.positions;
            let want: Vec<usize> = (0..channels.len())
                .flat_map(|c| c * positions * tiles..c * positions * tiles + tiles)
                .collect();
            assert_eq!(starts, want, "{tiles_w} {rows}");
        }
    }

    /// The tiles of a group of rows share the 16 lanes, a vector's lanes across rows where they
    /// end mid-vector; the runs name every tile of the rows once, in order.
    #[test]
    fn lane_runs_cover_every_tile_once() {
        for (tiles_w, rows) in [
            (4, 4),
            (4, 2),
            (7, 2),
            (1, 8),
            (14, 1),
            (28, 4),
            (28, 3),
            (56, 2),
            (56, 1),
            (15, 1),
            (19, 16),
            (38, 3),
        ] {
            for row_groups in [
                RowGroups::for_output(tiles_w),
                RowGroups::whole_vectors(tiles_w),
            ] {
                // One group of rows: as many as the lanes take, or fewer (a chunk's last).
                let rows = row_groups.group(0, rows).len();
                let mut seen = Vec::new();
                for t0 in (0..rows * tiles_w).step_by(LANES) {
                    let lanes = LANES.min(rows * tiles_w - t0);
                    let mut next_lane = 0;
                    row_groups.each_run(row_groups.position(t0), lanes, |run, r, column| {
                        assert_eq!(run.start, next_lane, "{tiles_w} {rows}");
                        assert!(column + run.len() <= tiles_w, "{tiles_w} {rows}");
                        next_lane = run.end;
                        seen.extend((column..column + run.len()).map(|q| r * tiles_w + q));
                    });
                    assert_eq!(next_lane, lanes, "{tiles_w} {rows}");
                }
                assert_eq!(seen, (0..rows * tiles_w).collect::<Vec<_>>(), "{tiles_w}");
            }
        }
        // The output transform: short rows whole, several to a vector (conv5's 4 tiles a row 4
        // rows, conv4's 7 2, conv3's 14 and rows of 16 1), longer ones in whole vectors (conv2's
        // 28 4 rows, conv1's 56 2; F(6x6)'s 19 and 38 16 and 8).
        for (tiles_w, rows) in [
            (4, 4),
            (7, 2),
            (14, 1),
            (16, 1),
            (28, 4),
            (56, 2),
            (19, 16),
            (38, 8),
        ] {
            assert_eq!(RowGroups::for_output(tiles_w).rows, rows, "{tiles_w}");
        }
        // The output gradient's: whole vectors always.
        for tiles_w in [1, 4, 7, 14, 15, 16, 17, 19, 28, 38, 56] {
            let rows = RowGroups::whole_vectors(tiles_w).rows;
            assert!(
                (rows * tiles_w).is_multiple_of(LANES) && rows <= LANES,
                "{tiles_w}"
            );
            assert!(
                (1..rows).all(|r| r * tiles_w % LANES != 0),
                "{tiles_w}: the fewest"
            );
        }
    }
}
