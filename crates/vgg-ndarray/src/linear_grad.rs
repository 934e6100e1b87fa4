//! A linear layer's weight gradient at a small batch, dW = dY^T X (`at_b`), where the time is
//! writing the result: fc6's is 411 MB for 8 values summed per entry at batch 8. The GEMM took
//! 31 ms at batch 8 and 50 at batch 1 (every line of the result read before it is written);
//! written once here, with non-temporal stores, 26 and 16 ms (`examples/fc_sweep`).
//!
//! Each result value is one chain of fused multiply-adds in the order of the batch, whichever
//! thread computes it and however the work is split, so results do not depend on the thread
//! count.
//!
//! Tried for the input gradient dX = dY W (a 411 MB read at batch 8) and dropped: a kernel
//! streaming W's rows into column blocks of dX took 35-40 ms at batch 8 and 30 at batch 1,
//! against the GEMM's 52 and 31-35 and the AMX GEMM's 27-30 (bf16), for 16-128 KiB blocks and
//! 4 or 8 rows of W a pass, with software prefetches or without.

use rayon::prelude::*;

use std::borrow::Cow;

use crate::config::Precision;
use crate::simd;
use crate::skinny::{LANES, MAX_ROWS};

/// Products whose result holds fewer values stay with the GEMM: below 4 MiB it lives in the
/// caches, and the small networks keep the arithmetic they were measured with.
pub const LARGE: usize = 1 << 20;

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
    let rounded = |values: &[f32]| {
        let mut values = values.to_vec();
        crate::bf16::round_slice(&mut values);
        values
    };
    let (a, b) = match precision {
        Precision::F32 => (Cow::Borrowed(&a[..k * m]), Cow::Borrowed(&b[..k * n])),
        Precision::Bf16 => (
            Cow::Owned(rounded(&a[..k * m])),
            Cow::Owned(rounded(&b[..k * n])),
        ),
    };
    let streaming = m * n * 4 > streaming_bytes;
    // Rows per task: several tasks a thread, in groups of C_ROWS.
    let threads = rayon::current_num_threads().max(1);
    let per_task = m.div_ceil(4 * threads).next_multiple_of(C_ROWS);
    c[..m * n]
        .par_chunks_mut(per_task * n)
        .enumerate()
        .for_each(|(t, rows)| at_b_task(&a, &b, (m, n, k), t * per_task, rows, streaming));
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
                    for (i, (&got, (&w, &e))) in c.iter().zip(want.iter().zip(&bound)).enumerate() {
                        assert!(
                            (got as f64 - w).abs() <= e,
                            "{m}x{n}x{k} rounded {rounded}, value {i}: {got} vs {w}"
                        );
                    }
                    match &first {
                        None => first = Some(c),
                        Some(f) => assert_eq!(f, &c, "{threads} threads"),
                    }
                }
            }
        }
    }
}
