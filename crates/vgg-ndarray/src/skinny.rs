//! A linear layer's forward on a small batch: A [m, k] times B^T with m <= `MAX_ROWS`. It is bound
//! by reading the weight B once, which gemm 0.19 does poorly for so few rows (fc6 at batch 8:
//! 53 ms there, 13 ms here). Work is split over B's rows, so B is read exactly once in total.
//! (The input gradient, A B, stays with the GEMM: a column-blocked kernel measured 4x slower.)

use rayon::prelude::*;

use crate::lone_rows;

/// Largest row count handled here.
pub const MAX_ROWS: usize = 16;
pub(crate) const LANES: usize = 16;

/// Rows of A per register block. With 4 rows of B too, 4 x 4 dot products of 16 lanes are 16
/// AVX-512 accumulators, fed by 8 loads per 16 FMAs. AVX2's 16 registers of 8 lanes would need 32,
/// and how LLVM spilled them made the speed a matter of luck (fc6 forward 1.8x slower after an
/// unrelated change in the crate), so AVX2 takes 4 x 2 blocks: 16 accumulators, fewer spills
/// (4 x 1 blocks, with 8 accumulators, measured 4x slower: A is re-read for every row of B).
/// The sums are the same either way: every dot product adds the same 16 lanes in the same order.
pub(crate) const BLOCK: usize = 4;
/// Values of k per pass: a pass's slice of packed A (8 rows at batch 8: 512 KiB) stays in L2
/// while the block's rows of B stream through (fc6 has k = 25088).
pub(crate) const K_STEP: usize = 16384;

/// How B's values are stored: f32, or bf16 (`u16`: the f32's high half, `bf16::bits`), which
/// halves the bytes a weight-bound product reads.
pub trait Element: Copy + Send + Sync {
    /// The value as f32 (exact).
    fn value(self) -> f32;
}

impl Element for f32 {
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }
}

/// An f32 used at its bf16 rounding (`bf16::round`): bf16 products from f32 storage.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Rounded(pub f32);

impl Element for Rounded {
    #[inline(always)]
    fn value(self) -> f32 {
        crate::bf16::round(self.0)
    }
}

impl Element for u16 {
    #[inline(always)]
    fn value(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

/// A rows 4g.. 4g+3 . B rows j..j+JB-1 over the 16-value chunks `chunks` of k, 16 lanes at a time.
/// `packed` holds the 4 A rows interleaved by chunk ([chunk][row][lane], see `pack_rows`), so one
/// pointer serves them and the loop keeps its 16 accumulators in registers. `mul_add` is one
/// instruction in the AVX2/AVX-512 builds (`dispatch_simd`); only CPUs without FMA take the
/// slow software fallback.
#[inline(always)]
fn dots<const JB: usize, E: Element>(
    packed: &[f32],
    b: [&[E]; JB],
    chunks: std::ops::Range<usize>,
) -> [[f32; JB]; BLOCK] {
    let mut acc = [[[0.0f32; LANES]; JB]; BLOCK];
    // Checked once here, not per chunk: with a bounds check's panic branch inside the loop, the
    // accumulators were stored to memory on every FMA.
    assert!(
        packed.len() >= chunks.end * BLOCK * LANES
            && b.iter().all(|b| b.len() >= chunks.end * LANES),
        "skinny operand lengths"
    );
    for q in chunks {
        // SAFETY: q < chunks.end, so every chunk lies within the lengths asserted above.
        let av: [&[f32; LANES]; BLOCK] = std::array::from_fn(|r| unsafe {
            &*packed
                .as_ptr()
                .add((q * BLOCK + r) * LANES)
                .cast::<[f32; LANES]>()
        });
        // B's lanes converted where they are used (as `lone_rows` does), not first into an
        // array: `[E; 16]::map` was left a call in the AVX-512 build, one per row of B and chunk
        // with the accumulators spilled around it (fc6 at batch 8: 132 ms against 13-20), and
        // other ways of filling an array lost AVX2's or bf16's vectorisation.
        // SAFETY: as for `av`.
        let bv: [&[E; LANES]; JB] =
            std::array::from_fn(|j| unsafe { &*b[j].as_ptr().add(q * LANES).cast::<[E; LANES]>() });
        for i in 0..BLOCK {
            for j in 0..JB {
                for l in 0..LANES {
                    acc[i][j][l] = av[i][l].mul_add(bv[j][l].value(), acc[i][j][l]);
                }
            }
        }
    }
    acc.map(|row| row.map(|lanes| lanes.iter().sum::<f32>()))
}

/// A's rows in groups of 4 interleaved by 16-value chunk of k: [group][chunk][row][lane], over
/// the first k / 16 * 16 values (the rest, and rows beyond the last full group, stay in A).
fn pack_rows(a: &[f32], m: usize, k: usize) -> Vec<f32> {
    let (groups, chunks) = (m / BLOCK, k / LANES);
    let mut packed = vec![0.0f32; groups * chunks * BLOCK * LANES];
    for (g, dst) in packed
        .chunks_exact_mut((chunks * BLOCK * LANES).max(1))
        .enumerate()
    {
        for (q, chunk) in dst.chunks_exact_mut(BLOCK * LANES).enumerate() {
            for (r, lanes) in chunk.chunks_exact_mut(LANES).enumerate() {
                lanes.copy_from_slice(&a[(g * BLOCK + r) * k + q * LANES..][..LANES]);
            }
        }
    }
    packed
}

/// A row . B row over `range`, with 16 partial sums.
#[inline(always)]
pub(crate) fn dot<E: Element>(a: &[f32], b: &[E], range: std::ops::Range<usize>) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a, b) = (&a[range.clone()], &b[range]);
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l].value();
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y.value()).sum();
    acc.iter().sum::<f32>() + tail
}

/// C^T rows for a block of B's rows: ct[j * m + i] = A row i . B row j, in register blocks of
/// 4 rows of A by `JB` rows of B.
#[inline(always)]
fn block_generic<const JB: usize, E: Element>(
    a: &[f32],
    packed: &[f32],
    b: &[E],
    m: usize,
    k: usize,
    ct: &mut [f32],
) {
    ct.fill(0.0);
    let n = ct.len() / m;
    let chunks = k / LANES;
    let group_len = chunks * BLOCK * LANES;
    let a_row = |i: usize| &a[i * k..(i + 1) * k];
    let b_row = |j: usize| &b[j * k..(j + 1) * k];
    for q0 in (0..chunks).step_by(K_STEP / LANES) {
        let pass = q0..(q0 + K_STEP / LANES).min(chunks);
        for j0 in (0..n).step_by(JB) {
            for i0 in (0..m).step_by(BLOCK) {
                if j0 + JB <= n && i0 + BLOCK <= m {
                    let g = i0 / BLOCK;
                    let sums = dots::<JB, E>(
                        &packed[g * group_len..(g + 1) * group_len],
                        std::array::from_fn(|j| b_row(j0 + j)),
                        pass.clone(),
                    );
                    for (i, row) in sums.iter().enumerate() {
                        for (j, &v) in row.iter().enumerate() {
                            ct[(j0 + j) * m + i0 + i] += v;
                        }
                    }
                } else {
                    let range = pass.start * LANES..pass.end * LANES;
                    for j in j0..(j0 + JB).min(n) {
                        for i in i0..(i0 + BLOCK).min(m) {
                            ct[j * m + i] += dot(a_row(i), b_row(j), range.clone());
                        }
                    }
                }
            }
        }
    }
    // The last k % 16 values.
    for j in 0..n {
        for i in 0..m {
            ct[j * m + i] += dot(a_row(i), b_row(j), chunks * LANES..k);
        }
    }
}

crate::simd::dispatch_simd! {
    /// `block_generic` in 4 x 4 register blocks, for the widest vector unit the CPU has.
    fn block_4x4(a: &[f32], packed: &[f32], b: &[f32], m: usize, k: usize, ct: &mut [f32]) => block_generic::<4, f32>
}

crate::simd::dispatch_simd! {
    /// `block_generic` in 4 x 2 register blocks, for the widest vector unit the CPU has.
    fn block_4x2(a: &[f32], packed: &[f32], b: &[f32], m: usize, k: usize, ct: &mut [f32]) => block_generic::<2, f32>
}

crate::simd::dispatch_simd! {
    /// `block_4x4` for bf16 B.
    fn block_4x4_bf16(a: &[f32], packed: &[f32], b: &[u16], m: usize, k: usize, ct: &mut [f32]) => block_generic::<4, u16>
}

crate::simd::dispatch_simd! {
    /// `block_4x2` for bf16 B.
    fn block_4x2_bf16(a: &[f32], packed: &[f32], b: &[u16], m: usize, k: usize, ct: &mut [f32]) => block_generic::<2, u16>
}

crate::simd::dispatch_simd! {
    /// `block_4x4` for B rounded as it is read.
    fn block_4x4_rounded(a: &[f32], packed: &[f32], b: &[Rounded], m: usize, k: usize, ct: &mut [f32]) => block_generic::<4, Rounded>
}

crate::simd::dispatch_simd! {
    /// `block_4x2` for B rounded as it is read.
    fn block_4x2_rounded(a: &[f32], packed: &[f32], b: &[Rounded], m: usize, k: usize, ct: &mut [f32]) => block_generic::<2, Rounded>
}

/// The register blocking of one element type: 4 x 4 where AVX-512's 32 registers hold it, else
/// 4 x 2 (see `BLOCK`).
trait Blocks: Element {
    fn block(a: &[f32], packed: &[f32], b: &[Self], m: usize, k: usize, ct: &mut [f32]);
}

impl Blocks for f32 {
    fn block(a: &[f32], packed: &[f32], b: &[f32], m: usize, k: usize, ct: &mut [f32]) {
        if m < BLOCK {
            return lone_rows::lone_rows(a, b, m, k, ct);
        }
        if crate::simd::level() < crate::config::Isa::Avx512 {
            return block_4x2(a, packed, b, m, k, ct);
        }
        block_4x4(a, packed, b, m, k, ct)
    }
}

impl Blocks for u16 {
    fn block(a: &[f32], packed: &[f32], b: &[u16], m: usize, k: usize, ct: &mut [f32]) {
        if m < BLOCK {
            return lone_rows::lone_rows_bf16(a, b, m, k, ct);
        }
        if crate::simd::level() < crate::config::Isa::Avx512 {
            return block_4x2_bf16(a, packed, b, m, k, ct);
        }
        block_4x4_bf16(a, packed, b, m, k, ct)
    }
}

impl Blocks for Rounded {
    fn block(a: &[f32], packed: &[f32], b: &[Rounded], m: usize, k: usize, ct: &mut [f32]) {
        if m < BLOCK {
            return lone_rows::lone_rows_rounded(a, b, m, k, ct);
        }
        if crate::simd::level() < crate::config::Isa::Avx512 {
            return block_4x2_rounded(a, packed, b, m, k, ct);
        }
        block_4x4_rounded(a, packed, b, m, k, ct)
    }
}

/// C [m, n] = A [m, k] B^T, B given as [n, k] row-major (a linear layer's forward).
pub fn a_bt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, c: &mut [f32]) {
    a_bt_of(a, b, m, n, k, c)
}

/// `a_bt` in bf16 products: A is rounded here, B is given as bf16 (`bf16::bits`, [n, k]).
pub fn a_bt_bf16(a: &[f32], b: &[u16], m: usize, n: usize, k: usize, c: &mut [f32]) {
    let rounded = crate::bf16::rounded(a);
    a_bt_of(&rounded, b, m, n, k, c)
}

/// `a_bt` in bf16 products with B in f32, rounded as it is read (weights that change every
/// step, which are not worth converting first).
pub fn a_bt_rounded(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, c: &mut [f32]) {
    let rounded = crate::bf16::rounded(a);
    // SAFETY: `Rounded` is a transparent f32.
    let b = unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<Rounded>(), b.len()) };
    a_bt_of(&rounded, b, m, n, k, c)
}

/// `a_bt` for either storage of B.
fn a_bt_of<E: Blocks>(a: &[f32], b: &[E], m: usize, n: usize, k: usize, c: &mut [f32]) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && c.len() >= m * n,
        "a_bt operand lengths"
    );
    const ROWS_PER_TASK: usize = 32;
    let packed = pack_rows(a, m, k);
    // Each task computes a block of C's columns: C^T rows, gathered afterwards.
    let mut ct = vec![0.0f32; n * m];
    ct.par_chunks_mut(ROWS_PER_TASK * m)
        .zip(b.par_chunks(ROWS_PER_TASK * k))
        .for_each(|(ct, b)| E::block(a, &packed, b, m, k, ct));
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = ct[j * m + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..k)
                    .map(|l| a[i * k + l] as f64 * b[j * k + l] as f64)
                    .sum()
            })
            .collect()
    }

    /// A row's products are the same 16 lanes in the same order, fused, in a group of 4 or alone.
    #[test]
    fn a_rows_result_does_not_depend_on_the_row_count() {
        let (n, k) = (37, 1000);
        let a: Vec<f32> = (0..4 * k)
            .map(|i| ((i * 37) % 11) as f32 * 0.3 - 1.1)
            .collect();
        let b: Vec<f32> = (0..n * k)
            .map(|i| ((i * 13) % 7) as f32 * 0.7 - 2.5)
            .collect();
        let mut four = vec![0.0; 4 * n];
        a_bt(&a, &b, 4, n, k, &mut four);
        for row in 0..4 {
            let mut one = vec![0.0; n];
            a_bt(&a[row * k..(row + 1) * k], &b, 1, n, k, &mut one);
            assert_eq!(one, four[row * n..(row + 1) * n], "row {row}");
        }
    }

    #[test]
    fn matches_naive_loops() {
        for (m, n, k) in [
            (1, 1, 1),
            (3, 70, 37),
            (8, 1100, 33),
            (16, 5, 2000),
            (9, 10, 2503),
            // Lone rows over two passes of k, B's rows not a multiple of 4.
            (2, 13, 20000),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..n * k)
                .map(|i| ((i * 13) % 7) as f32 * 0.5 - 1.5)
                .collect();
            let mut c = vec![f32::NAN; m * n];
            a_bt(&a, &b, m, n, k, &mut c);
            let want = naive(&a, &b, m, n, k);
            let close = |got: &[f32], what: &str| {
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{what} {m}x{n}x{k}"
                    );
                }
            };
            close(&c, "a_bt");
            // Both register blockings, whichever this CPU takes (C^T, as `block` writes it).
            let packed = pack_rows(&a, m, k);
            let transpose = |ct: &[f32]| -> Vec<f32> {
                (0..m * n).map(|ij| ct[(ij % n) * m + ij / n]).collect()
            };
            let mut ct = vec![f32::NAN; n * m];
            block_generic::<4, f32>(&a, &packed, &b, m, k, &mut ct);
            close(&transpose(&ct), "4x4");
            block_generic::<2, f32>(&a, &packed, &b, m, k, &mut ct);
            close(&transpose(&ct), "4x2");
        }
    }
}
