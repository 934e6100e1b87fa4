//! A linear layer's gradients at a small batch. The weight gradient dW = dY^T X (`at_b`), where
//! the time is writing the result: fc6's is 411 MB for 8 values summed per entry at batch 8. The
//! GEMM took 31 ms at batch 8 and 50 at batch 1 (every line of the result read before it is
//! written); written once here, with non-temporal stores, 26 and 16 ms (`examples/fc_sweep`).
//!
//! Each result value is one chain of fused multiply-adds in the order of the batch, whichever
//! thread computes it and however the work is split, so results do not depend on the thread
//! count.
//!
//! The input gradient dX = dY W at batch 1-3 (`a_b`): each thread adds W's rows, four at a
//! time, into its own run of dX's columns, so W is read once at the memory's rate: fc6 at batch 1
//! on a Zen 5, 20 ms by the GEMM, 10 here (`examples/fc_sweep`). An earlier try with 16-128 KiB
//! column blocks took 35-40 ms at batch 8 and 30 at batch 1 against the GEMM's 52 and 31-35 on
//! an older machine; at batch 8 on the Zen 5 the GEMM and this kernel were level (21 and 19 ms),
//! so larger batches keep the GEMM.

use rayon::prelude::*;

use std::borrow::Cow;

use crate::arena::Memory;
use crate::config::Precision;
use crate::simd;
use crate::skinny::{Element, Rounded, BLOCK, LANES, MAX_ROWS};

/// Products whose result holds fewer values stay with the GEMM: below 4 MiB it lives in the
/// caches, and the small networks keep the arithmetic they were measured with.
pub const LARGE: usize = 1 << 20;

/// `values` as `precision`'s products take them: as they are, or rounded to bf16 (`bf16::round`).
fn operand(values: &[f32], precision: Precision) -> Cow<'_, [f32]> {
    match precision {
        Precision::F32 => Cow::Borrowed(values),
        Precision::Bf16 => Cow::Owned(crate::bf16::rounded(values)),
    }
}

/// Whether `at_b` takes C [m, n] = A^T B for A [k, m], B [k, n].
pub fn at_b_applies(m: usize, n: usize, k: usize) -> bool {
    k <= MAX_ROWS && m * n >= LARGE
}

/// Rows of C computed together by `at_b`: each of B's chunks loaded once for 4 rows.
const C_ROWS: usize = 4;

/// C's rows `first..first + G` (in `rows`, G rows of n) = A^T B: A's columns `first..` (A is
/// [k, m]) times B's rows, each value's multiply-adds in the order of B's rows; written with
/// non-temporal stores when `streaming`.
#[inline(always)]
fn at_b_rows<const G: usize>(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    first: usize,
    rows: &mut [f32],
    streaming: bool,
) {
    let chunks = n / LANES;
    let scale: [[f32; MAX_ROWS]; G] = std::array::from_fn(|g| {
        std::array::from_fn(|r| if r < k { a[r * m + first + g] } else { 0.0 })
    });
    for q in 0..chunks {
        let mut acc = [[0.0f32; LANES]; G];
        for r in 0..k {
            let bv: &[f32; LANES] = b[r * n + q * LANES..][..LANES]
                .try_into()
                .expect("LANES values");
            for g in 0..G {
                for l in 0..LANES {
                    acc[g][l] = scale[g][r].mul_add(bv[l], acc[g][l]);
                }
            }
        }
        for (g, values) in acc.iter().enumerate() {
            write_lanes(&mut rows[g * n + q * LANES..][..LANES], values, streaming);
        }
    }
    for j in chunks * LANES..n {
        for (g, s) in scale.iter().enumerate() {
            let mut acc = 0.0f32;
            for (r, &s) in s.iter().enumerate().take(k) {
                acc = s.mul_add(b[r * n + j], acc);
            }
            rows[g * n + j] = acc;
        }
    }
}

/// `dst` = `values`, with non-temporal stores when `streaming` (where `simd::stream_store` can).
#[inline(always)]
fn write_lanes(dst: &mut [f32], values: &[f32; LANES], streaming: bool) {
    if !(streaming && simd::stream_store(dst, values)) {
        dst.copy_from_slice(values);
    }
}

/// C's rows `first..first + rows.len() / n`.
#[inline(always)]
fn at_b_task_generic(
    a: &[f32],
    b: &[f32],
    dims: (usize, usize, usize),
    first: usize,
    rows: &mut [f32],
    streaming: bool,
) {
    let n = dims.1;
    let count = rows.len() / n;
    let whole = count / C_ROWS * C_ROWS;
    for (g, group) in rows[..whole * n].chunks_exact_mut(C_ROWS * n).enumerate() {
        at_b_rows::<C_ROWS>(a, b, dims, first + g * C_ROWS, group, streaming);
    }
    for (g, row) in rows[whole * n..].chunks_exact_mut(n).enumerate() {
        at_b_rows::<1>(a, b, dims, first + whole + g, row, streaming);
    }
    if streaming {
        // This thread's non-temporal stores before the task's completion, which the caller
        // waits for before it reads C.
        simd::store_fence();
    }
}

crate::simd::dispatch_simd! {
    /// `at_b_task_generic`, for the widest vector unit the CPU has.
    fn at_b_task(a: &[f32], b: &[f32], dims: (usize, usize, usize), first: usize, rows: &mut [f32], streaming: bool) => at_b_task_generic
}

/// C [m, n] = A^T B for A [k, m] and B [k, n], all row-major, for a short inner dimension
/// (`at_b_applies`): the weight gradient of a linear layer (dY^T X). C is written once, with
/// non-temporal stores where it is over `streaming_bytes` (`Tuning::streaming_bytes`). In
/// `Precision::Bf16`, A and B are rounded to bf16 first (`bf16::round`): their products are
/// exact in f32 and summed in f32.
pub fn at_b(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    streaming_bytes: usize,
    precision: Precision,
) {
    assert!(
        k <= MAX_ROWS && a.len() >= k * m && b.len() >= k * n && c.len() >= m * n,
        "at_b operand lengths"
    );
    if n == 0 {
        return;
    }
    let (a, b) = (
        operand(&a[..k * m], precision),
        operand(&b[..k * n], precision),
    );
    let streaming = m * n * 4 > streaming_bytes;
    // Rows per task: several tasks a thread, in groups of C_ROWS.
    let threads = rayon::current_num_threads().max(1);
    let per_task = m.div_ceil(4 * threads).next_multiple_of(C_ROWS);
    c[..m * n]
        .par_chunks_mut(per_task * n)
        .enumerate()
        .for_each(|(t, rows)| at_b_task(&a, &b, (m, n, k), t * per_task, rows, streaming));
}

/// Whether `a_b` takes C [m, n] = A B for A [m, k], B [k, n]: a linear layer's input gradient
/// (dY W) at batch 1-3, where reading the weight is the time (at batch 8 the GEMM was level).
pub fn a_b_applies(m: usize, n: usize, k: usize) -> bool {
    m < BLOCK && k * n >= LARGE
}

/// Rows of B read at once: as many streams from memory per thread (as `lone_rows` reads fc6 in
/// the forward pass). `a_b_columns_generic` names them one by one.
const B_STREAMS: usize = 4;

/// C's columns `cols` (`acc` holds them: m rows of `cols.len()` values) = A B: each of B's rows
/// read once, in order, `B_STREAMS` at a time, and added into every row of C weighted by A; each
/// value's multiply-adds in the order of B's rows.
#[inline(always)]
fn a_b_columns_generic<E: Element>(
    a: &[f32],
    b: &[E],
    (m, n, k): (usize, usize, usize),
    cols: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    let width = cols.len();
    acc.fill(0.0);
    let b_row = |r: usize| &b[r * n + cols.start..][..width];
    let whole = k / B_STREAMS * B_STREAMS;
    for r0 in (0..whole).step_by(B_STREAMS) {
        let [b0, b1, b2, b3] = std::array::from_fn(|s| b_row(r0 + s));
        for (i, row) in acc.chunks_exact_mut(width).enumerate().take(m) {
            let [w0, w1, w2, w3] = std::array::from_fn(|s| a[i * k + r0 + s]);
            // Equal lengths, so that the loop compiles to whole vectors of FMAs.
            let lanes = row.iter_mut().zip(b0).zip(b1).zip(b2).zip(b3);
            for ((((c, b0), b1), b2), b3) in lanes {
                let [b0, b1, b2, b3] = [b0, b1, b2, b3].map(|b| b.value());
                *c = w3.mul_add(b3, w2.mul_add(b2, w1.mul_add(b1, w0.mul_add(b0, *c))));
            }
        }
    }
    for r in whole..k {
        let b = b_row(r);
        for (i, row) in acc.chunks_exact_mut(width).enumerate().take(m) {
            let w = a[i * k + r];
            for (c, b) in row.iter_mut().zip(b) {
                *c = w.mul_add(b.value(), *c);
            }
        }
    }
}

crate::simd::dispatch_simd! {
    /// `a_b_columns_generic`, for the widest vector unit the CPU has.
    fn a_b_columns(a: &[f32], b: &[f32], dims: (usize, usize, usize), cols: std::ops::Range<usize>, acc: &mut [f32]) => a_b_columns_generic
}

crate::simd::dispatch_simd! {
    /// `a_b_columns_generic` on B's values rounded to bf16 as they are read.
    fn a_b_columns_rounded(a: &[f32], b: &[Rounded], dims: (usize, usize, usize), cols: std::ops::Range<usize>, acc: &mut [f32]) => a_b_columns_generic
}

/// C [m, n] = A B for A [m, k] and B [k, n], all row-major, for few rows of A (`a_b_applies`): a
/// linear layer's input gradient dY W, where the weight B is read once from memory. The threads
/// split C's columns, so every value is one chain of multiply-adds in the order of B's rows,
/// whatever the thread count. In `Precision::Bf16`, A is rounded to bf16 first and B as it is
/// read (a weight that changes every step: converting it first would read it twice).
pub fn a_b(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    precision: Precision,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "a_b operand lengths"
    );
    if m == 0 || n == 0 {
        return;
    }
    let a = &operand(&a[..m * k], precision)[..];
    // A contiguous run of columns per thread: each reads a long run of every row of B.
    let threads = rayon::current_num_threads().max(1);
    let width = n.div_ceil(threads).next_multiple_of(LANES);
    let parts: Vec<(std::ops::Range<usize>, Memory)> = (0..n.div_ceil(width))
        .into_par_iter()
        .map(|t| {
            let cols = t * width..((t + 1) * width).min(n);
            let mut acc = Memory::uninit(m * cols.len());
            match precision {
                Precision::F32 => a_b_columns(a, b, (m, n, k), cols.clone(), &mut acc),
                Precision::Bf16 => {
                    // SAFETY: `Rounded` is a transparent f32.
                    let b = unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len()) };
                    a_b_columns_rounded(a, b, (m, n, k), cols.clone(), &mut acc)
                }
            }
            (cols, acc)
        })
        .collect();
    for (cols, acc) in parts {
        for (i, row) in acc.chunks_exact(cols.len()).enumerate() {
            c[i * n + cols.start..i * n + cols.end].copy_from_slice(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0; n];
        vgg_tensor::random::fill_normal(&mut v, seed, 0, 0.0, 1.0);
        v
    }

    /// The f64 product and a bound on an f32 chain of `k` multiply-adds: k + 1 ulps of the sum
    /// of magnitudes.
    fn reference(
        at: impl Fn(usize, usize) -> f32,
        bt: impl Fn(usize, usize) -> f32,
        (m, n, k): (usize, usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut want, mut bound) = (vec![0.0; m * n], vec![0.0; m * n]);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
                for l in 0..k {
                    let p = at(i, l) as f64 * bt(l, j) as f64;
                    sum += p;
                    magnitude += p.abs();
                }
                want[i * n + j] = sum;
                bound[i * n + j] = (k + 1) as f64 * f32::EPSILON as f64 * magnitude;
            }
        }
        (want, bound)
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    }

    /// `c` within `bound` of `want` value by value, and the same bits as the first result of the
    /// shape (`first`: on another thread count), which the first one becomes.
    fn check(
        c: Vec<f32>,
        (want, bound): (&[f64], &[f64]),
        first: &mut Option<Vec<f32>>,
        what: &str,
    ) {
        for (i, (&got, (&w, &e))) in c.iter().zip(want.iter().zip(bound)).enumerate() {
            assert!(
                (got as f64 - w).abs() <= e,
                "{what}, value {i}: {got} vs {w}"
            );
        }
        match first {
            None => *first = Some(c),
            Some(f) => assert_eq!(f, &c, "{what}"),
        }
    }

    #[test]
    fn a_b_matches_the_f64_product_on_any_thread_count() {
        // Rows of B past whole groups of 4 (k % 4), columns past whole vectors, one to three
        // rows of A, and fc7's input gradient's shape at batch 2.
        for &(m, n, k) in &[
            (1, 1, 1),
            (2, 37, 3),
            (3, 2100, 9),
            (1, 20000, 6),
            (2, 4096, 4096),
        ] {
            let (a, b) = (values(m * k, 5), values(k * n, 6));
            for precision in [Precision::F32, Precision::Bf16] {
                let round = |x: f32| match precision {
                    Precision::F32 => x,
                    Precision::Bf16 => crate::bf16::round(x),
                };
                let (want, bound) = reference(
                    |i, l| round(a[i * k + l]),
                    |l, j| round(b[l * n + j]),
                    (m, n, k),
                );
                let mut first: Option<Vec<f32>> = None;
                for threads in [1, 2, 3] {
                    let mut c = vec![f32::NAN; m * n];
                    pool(threads).install(|| a_b(&a, &b, (m, n, k), &mut c, precision));
                    let what = format!("{m}x{n}x{k} {precision:?} on {threads} threads");
                    check(c, (&want, &bound), &mut first, &what);
                }
            }
        }
    }

    #[test]
    fn at_b_matches_the_f64_product_streaming_or_not() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 37, 3),
            (9, 2100, 8),
            (70, 300, 16),
            (4, 20000, 1),
        ] {
            let (a, b) = (values(k * m, 3), values(k * n, 4));
            for rounded in [false, true] {
                let round = |x: f32| if rounded { crate::bf16::round(x) } else { x };
                let (want, bound) = reference(
                    |i, l| round(a[l * m + i]),
                    |l, j| round(b[l * n + j]),
                    (m, n, k),
                );
                let mut first: Option<Vec<f32>> = None;
                for (threads, streaming_bytes) in [(1, usize::MAX), (2, 0), (3, 0)] {
                    let mut c = vec![f32::NAN; m * n];
                    let precision = if rounded {
                        Precision::Bf16
                    } else {
                        Precision::F32
                    };
                    pool(threads)
                        .install(|| at_b(&a, &b, (m, n, k), &mut c, streaming_bytes, precision));
                    let what = format!("{m}x{n}x{k} rounded {rounded} on {threads} threads");
                    check(c, (&want, &bound), &mut first, &what);
                }
            }
        }
    }
}
