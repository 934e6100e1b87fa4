//! `Matmul`: matrix products (the GEMM crate, and the skinny kernel for few rows).

use vgg_tensor::{matmul_dims, Matmul, Result, Shape};

use crate::arena::Memory;
use crate::gemm::{product, Mat, MatMut};

use super::{CpuBackend, CpuTensor};
use crate::bf16::amx;
use crate::config::Bf16Unit;
use crate::{bf16, skinny, CHUNK};
use rayon::prelude::*;

impl Matmul for CpuBackend {
    fn matmul(&self, a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool) -> Result<CpuTensor> {
        let (m, n, k) = matmul_dims(&a.shape, &b.shape, ta, tb)?;
        let (ar, ac) = a.shape.matrix("matmul")?;
        let (br, bc) = b.shape.matrix("matmul")?;
        let lhs = Mat::row_major(a.as_slice(), ar, ac);
        let rhs = Mat::row_major(b.as_slice(), br, bc);
        let lhs = if ta { lhs.t() } else { lhs };
        let rhs = if tb { rhs.t() } else { rhs };
        Ok(self.build(Shape::from([m, n]), |c| {
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
            match self.tuning.bf16 {
                None if linear && m <= skinny::MAX_ROWS => {
                    skinny::a_bt(a.as_slice(), b.as_slice(), m, n, k, c)
                }
                Some(unit) if linear => {
                    // The weight converted to bf16 where it stays the same from call to call
                    // (inference: kept from the second call on), half the bytes to stream;
                    // otherwise (training) converted as it is read.
                    let kept = b.buf.derived((n, k, Some(unit)), true, |keep| {
                        if !keep {
                            Memory::Heap(Vec::new())
                        } else if unit == Bf16Unit::Amx {
                            let mut words = Memory::lasting(amx::packed_rhs_len(k, n));
                            amx::pack_rhs(rhs, &mut words);
                            words
                        } else {
                            bf16_words(b.as_slice())
                        }
                    });
                    if kept.is_empty() {
                        if m <= skinny::MAX_ROWS {
                            return skinny::a_bt_rounded(a.as_slice(), b.as_slice(), m, n, k, c);
                        }
                        return product(dst, lhs, rhs, false, self.threads, &self.tuning);
                    }
                    match unit {
                        Bf16Unit::Amx => {
                            let lhs = bf16::pack_lhs(unit, lhs, false).into_words();
                            let rhs = amx::Rhs::Packed {
                                words: &kept,
                                rows: k,
                                cols: n,
                            };
                            amx::gemm(dst, &lhs, m, k, rhs, false, self.threads)
                        }
                        Bf16Unit::F32Units if m <= skinny::MAX_ROWS => {
                            let weight = &as_bf16(&kept)[..n * k];
                            skinny::a_bt_bf16(a.as_slice(), weight, m, n, k, c)
                        }
                        Bf16Unit::F32Units => {
                            product(dst, lhs, rhs, false, self.threads, &self.tuning)
                        }
                    }
                }
                _ => product(dst, lhs, rhs, false, self.threads, &self.tuning),
            }
        }))
    }
}

/// `values` as bf16 (`bf16::bits`), two to an f32 word of lasting memory.
fn bf16_words(values: &[f32]) -> Memory {
    let mut words = Memory::lasting(values.len().div_ceil(2));
    words
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(2 * CHUNK))
        .for_each(|(words, values)| {
            for (word, pair) in words.iter_mut().zip(values.chunks(2)) {
                // The first value's bytes first in memory, whatever the byte order (`as_bf16`).
                let half = |v: Option<&f32>| (v.map_or(0, |&v| bf16::bits(v)) as u16).to_ne_bytes();
                let (first, second) = (half(pair.first()), half(pair.get(1)));
                *word = f32::from_ne_bytes([first[0], first[1], second[0], second[1]]);
            }
        });
    words
}

/// The bf16 values `bf16_words` stored.
fn as_bf16(words: &[f32]) -> &[u16] {
    // SAFETY: f32 has the size of two u16 and a stricter alignment; every bit pattern is a
    // valid u16; the borrow keeps the words alive and shared.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u16>(), words.len() * 2) }
}
