//! The skinny kernel's rows of A that do not fill a group of 4 (`skinny::BLOCK`), when A has
//! fewer than 4 rows (a linear layer's forward at batch 1-3): each row of A is multiplied with
//! `ROW_STREAMS` rows of B at once, so that B, the weights, streams from memory as several
//! streams per thread.
//!
//! In a module of its own: the same loop inside `skinny`'s 4-row block kernel, or beside it in
//! that module, made LLVM spill the block kernel's accumulators to the stack (fc6 at batch 8:
//! 20 ms became 73-90; `perf annotate` shows the spills), although its source was unchanged.

use crate::skinny::{dot, Element, Rounded, K_STEP, LANES};

/// Rows of B read at once by a lone row of A (batch 1-3): a stream per row of B keeps the memory
/// busy (fc6 at batch 1: 18-20 ms with one stream per thread, 13 ms with four, on AVX-512 and
/// AVX2 alike; 4 x 16 lanes are 8 of AVX2's 16 registers).
const ROW_STREAMS: usize = 4;

/// One A row . B rows j..j+JB-1 over the 16-value chunks `chunks` of k, 16 lanes at a time, A's
/// chunk loaded once for them. The same 16 lanes in the same order, fused, as `dots`.
#[inline(always)]
fn dots_one_row<const JB: usize, E: Element>(
    a: &[f32],
    b: [&[E]; JB],
    chunks: std::ops::Range<usize>,
) -> [f32; JB] {
    let mut acc = [[0.0f32; LANES]; JB];
    for q in chunks {
        let av: &[f32; LANES] = a[q * LANES..(q + 1) * LANES]
            .try_into()
            .expect("LANES values");
        for j in 0..JB {
            let lanes: &[E; LANES] = b[j][q * LANES..(q + 1) * LANES]
                .try_into()
                .expect("LANES values");
            for l in 0..LANES {
                acc[j][l] = av[l].mul_add(lanes[l].value(), acc[j][l]);
            }
        }
    }
    acc.map(|lanes| lanes.iter().sum::<f32>())
}

/// ct[j * m + i] = A row i . B row j for A of fewer than 4 rows (batch 1-3), `ROW_STREAMS` rows of
/// B at a time. Its own function: the same loop inside `block_generic` cost the 4-row blocks
/// their registers (fc6 at batch 8: 21 ms became 77-90).
#[inline(always)]
fn lone_rows_generic<E: Element>(a: &[f32], b: &[E], m: usize, k: usize, ct: &mut [f32]) {
    ct.fill(0.0);
    let n = ct.len() / m;
    let chunks = k / LANES;
    let b_row = |j: usize| &b[j * k..(j + 1) * k];
    for q0 in (0..chunks).step_by(K_STEP / LANES) {
        let pass = q0..(q0 + K_STEP / LANES).min(chunks);
        for j0 in (0..n).step_by(ROW_STREAMS) {
            for i in 0..m {
                let a_row = &a[i * k..(i + 1) * k];
                if j0 + ROW_STREAMS <= n {
                    let sums = dots_one_row::<ROW_STREAMS, E>(
                        a_row,
                        std::array::from_fn(|j| b_row(j0 + j)),
                        pass.clone(),
                    );
                    for (j, &v) in sums.iter().enumerate() {
                        ct[(j0 + j) * m + i] += v;
                    }
                } else {
                    let range = pass.start * LANES..pass.end * LANES;
                    for j in j0..n {
                        ct[j * m + i] += dot(a_row, b_row(j), range.clone());
                    }
                }
            }
        }
    }
    // The last k % 16 values.
    for j in 0..n {
        for i in 0..m {
            ct[j * m + i] += dot(&a[i * k..(i + 1) * k], b_row(j), chunks * LANES..k);
        }
    }
}

crate::simd::dispatch_simd! {
    /// `lone_rows_generic` for the widest vector unit the CPU has.
    pub(crate) fn lone_rows(a: &[f32], b: &[f32], m: usize, k: usize, ct: &mut [f32]) => lone_rows_generic::<f32>
}

crate::simd::dispatch_simd! {
    /// `lone_rows` for bf16 B.
    pub(crate) fn lone_rows_bf16(a: &[f32], b: &[u16], m: usize, k: usize, ct: &mut [f32]) => lone_rows_generic::<u16>
}

crate::simd::dispatch_simd! {
    /// `lone_rows` for B rounded as it is read.
    pub(crate) fn lone_rows_rounded(a: &[f32], b: &[Rounded], m: usize, k: usize, ct: &mut [f32]) => lone_rows_generic::<Rounded>
}
