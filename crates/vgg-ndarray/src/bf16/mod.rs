//! The bf16 math mode (`Precision::Bf16`): matrix products of operands rounded to bfloat16, their
//! products (exact in f32: 8 x 8 significant bits) summed in f32. Tensors stay f32; only the
//! products' operands lose digits, as under PyTorch's autocast or OpenVINO's bf16 inference.
//!
//! Three units compute them (`Bf16Unit`): AMX's tiles where the CPU has them (`amx.rs`),
//! AVX512_BF16's `vdpbf16ps` on the same packed operands where it has that (`vectors.rs`), and
//! elsewhere the f32 GEMM on rounded copies, which gives the same products on any CPU; they
//! differ only in the order of the f32 sums.

pub mod amx;
pub mod direct;
pub mod vectors;

use crate::arena::Memory;
use crate::config::Bf16Unit;
use crate::gemm::{sgemm, Mat, MatMut};

/// `x` rounded to the nearest bfloat16 (ties to even), as f32. As the hardware's conversion
/// (`vcvtneps2bf16`): subnormal inputs become zeros of their sign, NaN stays NaN, and values
/// past bf16's largest round to infinity.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    f32::from_bits(bits(x) << 16)
}

/// The bfloat16 nearest `x` (see `round`), as its 16 bits in the low half. Branch-free, so that
/// loops over it vectorise.
#[inline(always)]
pub fn bits(x: f32) -> u32 {
    let b = x.to_bits();
    let magnitude = b & 0x7fff_ffff;
    let nearest = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    // NaN: keep the sign and make sure a payload bit survives the truncation.
    let nan = (b >> 16) | 0x0040;
    let signed_zero = (b >> 16) & 0x8000;
    let finite = if magnitude < 0x0080_0000 {
        signed_zero
    } else {
        nearest
    };
    if magnitude > 0x7f80_0000 {
        nan
    } else {
        finite
    }
}

/// `out[i]` = the bf16 of `low[i]` in the low half and of `high[i]` (0 past its end) in the high
/// half: two rows of a matrix interleaved as the AMX and `vdpbf16ps` instructions take them.
#[inline(always)]
pub(crate) fn interleave_generic(low: &[f32], high: &[f32], out: &mut [u32]) {
    let (out, rest) = out.split_at_mut(high.len().min(out.len()));
    for ((o, &l), &h) in out.iter_mut().zip(low).zip(high) {
        *o = bits(l) | bits(h) << 16;
    }
    for (o, &l) in rest.iter_mut().zip(&low[out.len()..]) {
        *o = bits(l);
    }
}

crate::simd::dispatch_simd! {
    /// `interleave_generic`, for the widest vector unit the CPU has.
    pub(crate) fn interleave(low: &[f32], high: &[f32], out: &mut [u32]) => interleave_generic
}

/// `out[w]` = the bf16 of `values[2w]` low and of `values[2w + 1]` (0 past the end) high.
#[inline(always)]
pub(crate) fn pairs_generic(values: &[f32], out: &mut [u32]) {
    let whole = values.len() / 2;
    for (o, pair) in out.iter_mut().zip(values.chunks_exact(2)) {
        *o = bits(pair[0]) | bits(pair[1]) << 16;
    }
    if values.len() % 2 == 1 && out.len() > whole {
        out[whole] = bits(values[values.len() - 1]);
    }
}

crate::simd::dispatch_simd! {
    /// `pairs_generic`, for the widest vector unit the CPU has.
    pub(crate) fn pairs(values: &[f32], out: &mut [u32]) => pairs_generic
}

// The packed layouts hold two bf16 in one 32-bit word, the first in the low half, and read the
// words as 16-bit halves in memory order: the first half first, as on x86 (little-endian).

/// f32 storage seen as the 32-bit words it holds.
pub(crate) fn words_of(values: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is valid for
    // both.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u32>(), values.len()) }
}

/// f32 storage seen as the 32-bit words it holds, to write.
pub(crate) fn words_mut(values: &mut [f32]) -> &mut [u32] {
    // SAFETY: as `words_of`; the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u32>(), values.len()) }
}

/// 32-bit words seen as their 16-bit halves (the low half first in memory: little-endian).
pub(crate) fn halves(words: &[u32]) -> &[u16] {
    // SAFETY: u32 has the size of two u16 and a stricter alignment; every bit pattern is valid
    // for both.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u16>(), words.len() * 2) }
}

/// `halves`, to write.
pub(crate) fn halves_mut(words: &mut [u32]) -> &mut [u16] {
    // SAFETY: as `halves`; the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u16>(), words.len() * 2) }
}

/// `values` rounded in place (`round`).
pub fn round_slice(values: &mut [f32]) {
    for v in values {
        *v = round(*v);
    }
}

/// A copy of `values`, rounded (`round`).
pub fn rounded(values: &[f32]) -> Vec<f32> {
    let mut copy = values.to_vec();
    round_slice(&mut copy);
    copy
}

/// A matrix product's left operand prepared once for many products (a convolution's weights):
/// in `Bf16Unit::Amx`'s tile layout, or rounded and row-major for `Bf16Unit::F32Units`. Its
/// storage is f32 words either way (AMX's hold two bf16 each), so it can be kept where f32
/// values are (`Buffer::derived`).
pub struct PackedLhs<S> {
    unit: Bf16Unit,
    rows: usize,
    cols: usize,
    data: S,
}

/// f32 words a `PackedLhs` of `rows` x `cols` takes on `unit`.
pub fn packed_lhs_len(unit: Bf16Unit, rows: usize, cols: usize) -> usize {
    match unit {
        Bf16Unit::Amx | Bf16Unit::Avx512Bf16 => amx::packed_lhs_len(rows, cols),
        Bf16Unit::F32Units => rows * cols,
    }
}

/// `lhs` prepared for products on `unit`, in memory that lasts (`Memory::new`).
pub(crate) fn pack_lhs(unit: Bf16Unit, lhs: Mat<'_>, lasting: bool) -> PackedLhs<Memory> {
    let mut data = Memory::new(packed_lhs_len(unit, lhs.rows, lhs.cols), lasting);
    match unit {
        Bf16Unit::Amx | Bf16Unit::Avx512Bf16 => amx::pack_lhs(lhs, &mut data),
        Bf16Unit::F32Units => {
            for i in 0..lhs.rows {
                for (j, o) in data[i * lhs.cols..(i + 1) * lhs.cols]
                    .iter_mut()
                    .enumerate()
                {
                    *o = round(lhs.data[lhs.offset + i * lhs.row_stride + j * lhs.col_stride]);
                }
            }
        }
    }
    PackedLhs {
        unit,
        rows: lhs.rows,
        cols: lhs.cols,
        data,
    }
}

impl<S> PackedLhs<S> {
    /// The packed words.
    pub fn into_words(self) -> S {
        self.data
    }
}

impl<'a> PackedLhs<&'a [f32]> {
    /// The words of a `rows` x `cols` operand packed for `unit` earlier (`pack_lhs`'s
    /// `into_words`, kept between calls).
    pub(crate) fn of_words(unit: Bf16Unit, rows: usize, cols: usize, words: &'a [f32]) -> Self {
        assert_eq!(
            words.len(),
            packed_lhs_len(unit, rows, cols),
            "packed left operand length"
        );
        PackedLhs {
            unit,
            rows,
            cols,
            data: words,
        }
    }
}

/// dst = lhs x rhs (or += with `accumulate`) in bf16 products on `unit`.
pub fn gemm(
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    threads: usize,
    unit: Bf16Unit,
) {
    if lhs.rows == 0 || lhs.cols == 0 || rhs.cols == 0 {
        return sgemm(dst, lhs, rhs, accumulate, threads);
    }
    let packed = pack_lhs(unit, lhs, false);
    gemm_packed(dst, &packed, rhs, accumulate, threads)
}

/// `gemm` with the left operand already prepared (`pack_lhs`).
pub fn gemm_packed<S: std::ops::Deref<Target = [f32]>>(
    dst: MatMut<'_>,
    lhs: &PackedLhs<S>,
    rhs: Mat<'_>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k) = (lhs.rows, lhs.cols);
    assert_eq!(
        (dst.rows, rhs.rows, dst.cols),
        (m, k, rhs.cols),
        "bf16 gemm operand shapes"
    );
    match lhs.unit {
        Bf16Unit::Amx | Bf16Unit::Avx512Bf16 => amx::gemm(
            dst,
            &lhs.data,
            m,
            k,
            amx::Rhs::Matrix(rhs),
            accumulate,
            threads,
            lhs.unit,
        ),
        Bf16Unit::F32Units => {
            let n = rhs.cols;
            let mut b = Memory::uninit(k * n);
            for r in 0..k {
                for (j, o) in b[r * n..(r + 1) * n].iter_mut().enumerate() {
                    *o = round(rhs.data[rhs.offset + r * rhs.row_stride + j * rhs.col_stride]);
                }
            }
            sgemm(
                dst,
                Mat::row_major(&lhs.data, m, k),
                Mat::row_major(&b, k, n),
                accumulate,
                threads,
            )
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

    /// An m x n row-major matrix as `fill` writes it.
    fn written(m: usize, n: usize, fill: impl FnOnce(MatMut<'_>)) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        fill(MatMut {
            data: &mut out,
            offset: 0,
            rows: m,
            cols: n,
            row_stride: n,
        });
        out
    }

    /// The units this machine has that multiply the packed tiles.
    fn tile_units() -> Vec<Bf16Unit> {
        Bf16Unit::present_units()
            .into_iter()
            .filter(|unit| unit.packs_tiles())
            .collect()
    }

    /// Every product of the rounded operands is exact in f32, so the only error against an f64
    /// sum of the same products is the f32 summation's: bounded by k ulps of the sum of
    /// magnitudes (loose: actual sums do far better).
    #[test]
    fn products_are_the_rounded_operands_summed_in_f32_on_every_unit() {
        // Shapes on and off the tiles' multiples (16 rows, 32 inner, 32 columns), an inner
        // dimension of several passes (512), views transposed on either side, and accumulation;
        // each of AMX's blockings: one 32-row block over several passes of 128 and blocks of
        // 1024 columns (8 x 300 x 2100), one inner tile over blocks of 4096 (40 x 20 x 4200).
        for &(m, k, n) in &[
            (1, 1, 1),
            (16, 32, 32),
            (33, 70, 45),
            (64, 27, 300),
            (40, 1100, 70),
            (8, 300, 2100),
            (40, 20, 4200),
        ] {
            for (ta, tb, accumulate) in [
                (false, false, false),
                (true, false, true),
                (false, true, false),
                (true, true, true),
            ] {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let lhs = if ta {
                    Mat::row_major(&a, k, m).t()
                } else {
                    Mat::row_major(&a, m, k)
                };
                let rhs = if tb {
                    Mat::row_major(&b, n, k).t()
                } else {
                    Mat::row_major(&b, k, n)
                };
                let at = |x: Mat<'_>, i: usize, j: usize| {
                    x.data[x.offset + i * x.row_stride + j * x.col_stride]
                };
                let start = values(m * n, 3);
                let (mut want, mut bound) = (vec![0.0f64; m * n], vec![0.0f64; m * n]);
                for i in 0..m {
                    for j in 0..n {
                        let mut sum = if accumulate {
                            start[i * n + j] as f64
                        } else {
                            0.0
                        };
                        let mut magnitude = sum.abs();
                        for l in 0..k {
                            let p = round(at(lhs, i, l)) as f64 * round(at(rhs, l, j)) as f64;
                            sum += p;
                            magnitude += p.abs();
                        }
                        want[i * n + j] = sum;
                        bound[i * n + j] = (k + 1) as f64 * f32::EPSILON as f64 * magnitude;
                    }
                }
                for unit in Bf16Unit::present_units() {
                    for threads in [1, 3] {
                        // A destination wider than the product, to catch writes past its columns.
                        let stride = n + 3;
                        let mut out = vec![f32::NAN; m * stride];
                        for i in 0..m {
                            out[i * stride..i * stride + n]
                                .copy_from_slice(&start[i * n..(i + 1) * n]);
                        }
                        let dst = MatMut {
                            data: &mut out,
                            offset: 0,
                            rows: m,
                            cols: n,
                            row_stride: stride,
                        };
                        gemm(dst, lhs, rhs, accumulate, threads, unit);
                        for i in 0..m {
                            for j in 0..n {
                                let got = out[i * stride + j] as f64;
                                assert!(
                                    (got - want[i * n + j]).abs() <= bound[i * n + j],
                                    "{unit:?} {m}x{k}x{n} ta {ta} tb {tb} acc {accumulate}: ({i}, {j}) {got} vs {}",
                                    want[i * n + j]
                                );
                            }
                            assert!(
                                out[i * stride + n..(i + 1) * stride]
                                    .iter()
                                    .all(|v| v.is_nan()),
                                "wrote past the columns"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Where the CPU has AMX or AVX512_BF16, their sums and the f32 units' differ only in their
    /// order: within a few f32 ulps of the sum of magnitudes. Shapes off every tile multiple, and
    /// one row (a linear layer at batch 1), accumulating and not.
    #[test]
    fn the_tile_units_agree_with_the_f32_units() {
        let units = tile_units();
        if units.is_empty() {
            // Nothing asks for them here: the mode falls back to the f32 units, checked above.
            assert_eq!(
                Bf16Unit::within(crate::config::Isa::detected()),
                Bf16Unit::F32Units
            );
            return;
        }
        for (m, k, n) in [(70, 600, 90), (1, 100, 40), (33, 64, 32), (40, 31, 17)] {
            for accumulate in [false, true] {
                let (a, b) = (values(m * k, 4), values(k * n, 5));
                let start = values(m * n, 6);
                let run = |unit| {
                    let mut out = start.clone();
                    let dst = MatMut {
                        data: &mut out,
                        offset: 0,
                        rows: m,
                        cols: n,
                        row_stride: n,
                    };
                    let (lhs, rhs) = (Mat::row_major(&a, m, k), Mat::row_major(&b, k, n));
                    gemm(dst, lhs, rhs, accumulate, 2, unit);
                    out
                };
                let f32_units = run(Bf16Unit::F32Units);
                for &unit in &units {
                    let tiles = run(unit);
                    let worst = tiles
                        .iter()
                        .zip(&f32_units)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0f32, f32::max);
                    // Sums of k products of two N(0, 1): magnitudes near 0.64 k; a few ulps.
                    assert!(
                        worst <= 8.0 * f32::EPSILON * k as f32,
                        "{} and f32 units differ by {worst} ({m} x {k} x {n})",
                        unit.name()
                    );
                    assert!(worst > 0.0 || tiles == f32_units || k < 64);
                }
            }
        }
    }

    #[test]
    fn a_packed_right_operand_gives_the_same_products() {
        let units = tile_units();
        if units.is_empty() {
            assert_eq!(
                Bf16Unit::within(crate::config::Isa::detected()),
                Bf16Unit::F32Units
            );
            return;
        }
        for unit in units {
            let (m, k, n) = (5, 1030, 300);
            let (a, w) = (values(m * k, 6), values(n * k, 7));
            let rhs = Mat::row_major(&w, n, k).t();
            let lhs = pack_lhs(unit, Mat::row_major(&a, m, k), false);
            let mut packed = vec![0.0; amx::packed_rhs_len(k, n)];
            amx::pack_rhs(rhs, &mut packed);
            let run = |rhs| {
                written(m, n, |dst| {
                    amx::gemm(dst, &lhs.data, m, k, rhs, false, 2, unit)
                })
            };
            assert_eq!(
                run(amx::Rhs::Matrix(rhs)),
                run(amx::Rhs::Packed {
                    words: &packed,
                    rows: k,
                    cols: n
                })
            );
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_like_the_hardware() {
        assert_eq!(round(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even one, 1.
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round(-3.0), -3.0);
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(f32::MAX), f32::INFINITY);
        assert!(round(f32::NAN).is_nan());
        assert!(
            round(f32::from_bits(0x7f80_0001)).is_nan(),
            "a NaN with a low payload"
        );
        assert_eq!(round(1e-40).to_bits(), 0);
        assert_eq!(round(-1e-40).to_bits(), 0x8000_0000);
        for x in [0.1f32, 2.5e3, 1234.5678, -7.77e-20] {
            let r = round(x);
            assert!((r - x).abs() <= x.abs() / 256.0, "{x} -> {r}");
            assert_eq!(r.to_bits() & 0xffff, 0);
        }
    }
}
