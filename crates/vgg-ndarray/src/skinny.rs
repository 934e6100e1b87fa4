//! A linear layer's forward on a small batch: A [m, k] times B^T with m <= `MAX_ROWS`. It is bound
//! by reading the weight B once, which gemm 0.19 does poorly for so few rows (fc6 at batch 8:
//! 53 ms there, 35 ms here). Work is split over B's rows, so B is read exactly once in total.
//! (The input gradient, A B, stays with the GEMM: a column-blocked kernel measured 4x slower.)

use rayon::prelude::*;

/// Largest row count handled here.
pub const MAX_ROWS: usize = 16;
const LANES: usize = 16;

/// Dot product with 16 independent partial sums, which the compiler keeps in vector registers.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// C^T rows for a block of B's rows.
#[inline(always)]
fn block_generic(a: &[f32], b: &[f32], m: usize, k: usize, ct: &mut [f32]) {
    for (ct_row, b_row) in ct.chunks_exact_mut(m).zip(b.chunks_exact(k)) {
        for (i, out) in ct_row.iter_mut().enumerate() {
            *out = dot(&a[i * k..(i + 1) * k], b_row);
        }
    }
}

crate::simd::dispatch_simd! {
    /// `block_generic` compiled for the widest vector unit the CPU has.
    fn block(a: &[f32], b: &[f32], m: usize, k: usize, ct: &mut [f32]) => block_generic
}

/// C [m, n] = A [m, k] B^T, B given as [n, k] row-major (a linear layer's forward).
pub fn a_bt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, c: &mut [f32]) {
    const ROWS_PER_TASK: usize = 32;
    // Each task computes a block of C's columns: C^T rows, gathered afterwards.
    let mut ct = vec![0.0f32; n * m];
    ct.par_chunks_mut(ROWS_PER_TASK * m)
        .zip(b.par_chunks(ROWS_PER_TASK * k))
        .for_each(|(ct, b)| block(a, b, m, k, ct));
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

    #[test]
    fn matches_naive_loops() {
        for (m, n, k) in [(1, 1, 1), (3, 70, 37), (8, 1100, 33), (16, 5, 2000)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..n * k)
                .map(|i| ((i * 13) % 7) as f32 * 0.5 - 1.5)
                .collect();
            let mut c = vec![f32::NAN; m * n];
            a_bt(&a, &b, m, n, k, &mut c);
            for (got, want) in c.iter().zip(naive(&a, &b, m, n, k)) {
                assert!(
                    (*got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{m}x{n}x{k}"
                );
            }
        }
    }
}
