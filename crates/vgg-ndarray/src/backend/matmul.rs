//! `Matmul`: matrix products (the GEMM crate, and the skinny kernel for few rows).

use vgg_tensor::{matmul_dims, Matmul, Result, Shape};

use crate::arena::{Memory, Pool};
use crate::gemm::{product, Mat, MatMut};

use super::{CpuBackend, CpuTensor};
use crate::bf16::amx;
use crate::{bf16, linear_grad, skinny, CHUNK};
use rayon::prelude::*;

impl Matmul for CpuBackend {
    fn matmul(&self, a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool) -> Result<CpuTensor> {
        self.product_in(Pool::Transient, a, b, ta, tb)
    }

    /// Placed in the arena's region for gradients: fc6's 411 MB weight gradient, made at the
    /// start of backward, would otherwise sit among the activations (VGG-16 batch-32
    /// forward-backward: the arena's pages 2,320 MB -> 1,428 + 471 MiB, peak RSS 2.34 -> 2.04
    /// GiB).
    fn matmul_gradient(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        ta: bool,
        tb: bool,
    ) -> Result<CpuTensor> {
        self.product_in(Pool::Gradients, a, b, ta, tb)
    }
}

impl CpuBackend {
    /// op(a) x op(b), the result in `pool`'s region.
    fn product_in(
        &self,
        pool: Pool,
        a: &CpuTensor,
        b: &CpuTensor,
        ta: bool,
        tb: bool,
    ) -> Result<CpuTensor> {
        let (m, n, k) = matmul_dims(&a.shape, &b.shape, ta, tb)?;
        let (ar, ac) = a.shape.matrix("matmul")?;
        let (br, bc) = b.shape.matrix("matmul")?;
        let lhs = Mat::row_major(a.as_slice(), ar, ac);
        let rhs = Mat::row_major(b.as_slice(), br, bc);
        let lhs = if ta { lhs.t() } else { lhs };
        let rhs = if tb { rhs.t() } else { rhs };
        Ok(self.build_in(pool, Shape::from([m, n]), |c| {
            let dst = MatMut {
                data: c,
                offset: 0,
                rows: m,
                cols: n,
                row_stride: n,
            };
            // A linear layer's forward (x W^T) reads a large weight; on a small batch, that read
            // is the time.
            let linear = !ta && tb && k > 0;
            // The weight converted to bf16 where it stays the same from call to call
            // (inference: kept from the second call on), half the bytes to stream; otherwise
            // (training) converted as it is read. Kept in rows of bf16 for the skinny kernel
            // where it runs: on the f32 units, and in the bf16 mode for 1-3 rows whatever the
            // unit, where the weight's stream is the time and its row streams read it at the
            // memory's rate (fc6 at batch 1 on AMX: 15.6-16.1 ms through the tiles, 10.5-10.8
            // here; at batch 8 its 4-row blocks took 21-23 against the tiles' 18). Else kept in
            // the tiles' layout for their GEMM (AMX, AVX512_BF16).
            let bf16_rows = linear
                && self.tuning.bf16_weight_rows
                && (m < skinny::BLOCK
                    || self
                        .tuning
                        .bf16
                        .is_some_and(|unit| !unit.packs_tiles() && m <= skinny::MAX_ROWS));
            match self.tuning.bf16 {
                unit if bf16_rows => {
                    let key = ("linear weights in bf16", n, k, unit);
                    let kept = b.buf.derived(key, true, |keep| {
                        if !keep {
                            return Memory::Heap(Vec::new());
                        }
                        let mut words = Memory::lasting((n * k).div_ceil(2));
                        bf16_words(b.as_slice(), &mut words);
                        words
                    });
                    if kept.is_empty() {
                        skinny::a_bt_rounded(a.as_slice(), b.as_slice(), m, n, k, c)
                    } else {
                        let weight = &bf16::halves(bf16::words_of(&kept))[..n * k];
                        skinny::a_bt_bf16(a.as_slice(), weight, m, n, k, c)
                    }
                }
                None if linear && m <= skinny::MAX_ROWS => {
                    skinny::a_bt(a.as_slice(), b.as_slice(), m, n, k, c)
                }
                Some(unit) if linear && unit.packs_tiles() => {
                    let key = ("linear weights packed", n, k, Some(unit));
                    let kept = b.buf.derived(key, true, |keep| {
                        if !keep {
                            return Memory::Heap(Vec::new());
                        }
                        let mut words = Memory::lasting(amx::packed_rhs_len(k, n));
                        amx::pack_rhs(rhs, &mut words);
                        words
                    });
                    if kept.is_empty() {
                        product(dst, lhs, rhs, false, self.threads, &self.tuning)
                    } else {
                        let lhs = bf16::pack_lhs(unit, lhs, false).into_words();
                        let rhs = amx::Rhs::Packed {
                            words: &kept,
                            rows: k,
                            cols: n,
                        };
                        amx::gemm(dst, &lhs, m, k, rhs, false, self.threads, unit)
                    }
                }
                // A linear layer's weight gradient (dY^T X) at a small batch: a large result
                // written once.
                _ if ta && !tb && linear_grad::at_b_applies(m, n, k) => {
                    let (a, b) = (a.as_slice(), b.as_slice());
                    let (streaming, precision) =
                        (self.tuning.streaming_bytes, self.tuning.precision());
                    linear_grad::at_b(a, b, (m, n, k), c, streaming, precision)
                }
                // A linear layer's input gradient (dY W) at batch 1-3: the weight read once, at
                // the memory's rate (fc6 at batch 1 on a Zen 5: 20 ms by the GEMM, 10 here; in
                // bf16 on Emerald Rapids' AVX512_BF16 the tiles took 105-113 ms).
                _ if !ta && !tb && linear_grad::a_b_applies(m, n, k) => {
                    let (a, b) = (a.as_slice(), b.as_slice());
                    linear_grad::a_b(a, b, (m, n, k), c, self.tuning.precision())
                }
                _ => product(dst, lhs, rhs, false, self.threads, &self.tuning),
            }
        }))
    }
}

/// `values` as bf16 (`bf16::bits`), two to a word of `words`, in order (`bf16::halves`).
fn bf16_words(values: &[f32], words: &mut [f32]) {
    bf16::words_mut(words)
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(2 * CHUNK))
        .for_each(|(words, values)| bf16::pairs(values, words));
}
