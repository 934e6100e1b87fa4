//! Gradients sent in 16 bits: half the bytes of an f32 allreduce, for links that are the
//! bottleneck (VGG-16's 528 MiB per step).
//!
//! The allreduce is done as a reduce-scatter and an all-gather (the two halves of a ring
//! allreduce, and its traffic): each rank's buffer is cut into one segment per rank, every
//! segment is sent in 16 bits to the rank that owns it, the owner decodes the ranks' pieces and
//! sums them in f32 in rank order, encodes the sum in 16 bits once, and every rank gathers every
//! owner's sum. So each value is rounded twice (once on its way in, once as a sum), the same on
//! every rank and whatever the network's timing.
//!
//! fp16 has 5 exponent bits: gradients of 1e-8 would vanish and sums over 65504 overflow. Each
//! piece therefore carries its own power-of-two scale, chosen so its largest magnitude lands
//! near 2^14: the "loss scale" that fp16 training needs, per piece and exact (a power of two
//! changes no mantissa), with no extra exchange to agree on it. bf16 keeps f32's exponent range
//! and is sent unscaled.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

/// Values converted at a time: a buffer of them stays in the first-level cache.
const CHUNK: usize = 2048;

/// How gradients travel between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GradientCompression {
    /// bfloat16: 8 bits of mantissa, f32's range.
    Bf16,
    /// IEEE half precision: 11 bits of mantissa, scaled per piece into its range.
    Fp16,
}

impl GradientCompression {
    /// The format's name: "bf16", "fp16".
    pub fn name(self) -> &'static str {
        match self {
            GradientCompression::Bf16 => "bf16",
            GradientCompression::Fp16 => "fp16",
        }
    }

    /// `values` in the format, into `bits` (of the same length).
    fn encode(self, values: &[f32], bits: &mut [u16]) {
        match self {
            GradientCompression::Bf16 => bits
                .reinterpret_cast_mut::<bf16>()
                .convert_from_f32_slice(values),
            GradientCompression::Fp16 => bits
                .reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(values),
        }
    }

    /// `bits` in the format as f32, into `values` (of the same length).
    fn decode(self, bits: &[u16], values: &mut [f32]) {
        match self {
            GradientCompression::Bf16 => {
                bits.reinterpret_cast::<bf16>().convert_to_f32_slice(values)
            }
            GradientCompression::Fp16 => {
                bits.reinterpret_cast::<f16>().convert_to_f32_slice(values)
            }
        }
    }

    /// Appends `values` as one piece of `1 + width` 16-bit words: its scale's exponent (fp16:
    /// the largest magnitude lands in [2^14, 2^15); bf16: 0), then the scaled values, padded
    /// with zeros to `width`.
    pub fn encode_piece(self, values: &[f32], width: usize, out: &mut Vec<u16>) {
        debug_assert!(values.len() <= width);
        let largest = values
            .iter()
            .map(|v| v.abs())
            .filter(|v| v.is_finite())
            .fold(0.0f32, f32::max);
        let exponent = match self {
            GradientCompression::Fp16 if largest > 0.0 => {
                (14 - largest.log2().floor() as i32).clamp(-126, 126)
            }
            // bf16 has f32's range: scaling would only push small values out of it.
            _ => 0,
        };
        let scale = power_of_two(exponent);
        let start = out.len();
        out.resize(start + 1 + width, 0);
        out[start] = exponent as i16 as u16;
        let bits = &mut out[start + 1..start + 1 + values.len()];
        if exponent == 0 {
            self.encode(values, bits);
            return;
        }
        // Scaled through a small buffer that stays in cache, then converted a slice at a time
        // (half's slice conversions use the CPU's F16C instructions where it has them).
        let mut scaled = [0.0f32; CHUNK];
        for (values, bits) in values.chunks(CHUNK).zip(bits.chunks_mut(CHUNK)) {
            let scaled = &mut scaled[..values.len()];
            scaled
                .iter_mut()
                .zip(values)
                .for_each(|(s, &v)| *s = v * scale);
            self.encode(scaled, bits);
        }
    }

    /// Adds the values of one piece made by [`encode_piece`](Self::encode_piece) to `sum` (as
    /// many as `sum` holds).
    pub fn add_piece(self, piece: &[u16], sum: &mut [f32]) {
        let Some((&exponent, values)) = piece.split_first() else {
            return;
        };
        let unscale = power_of_two(-i32::from(exponent as i16));
        let mut decoded = [0.0f32; CHUNK];
        for (sum, bits) in sum.chunks_mut(CHUNK).zip(values.chunks(CHUNK)) {
            let n = sum.len().min(bits.len());
            let decoded = &mut decoded[..n];
            self.decode(&bits[..n], decoded);
            if exponent == 0 {
                sum.iter_mut()
                    .zip(decoded.iter())
                    .for_each(|(s, &d)| *s += d);
            } else {
                sum.iter_mut()
                    .zip(decoded.iter())
                    .for_each(|(s, &d)| *s += d * unscale);
            }
        }
    }

    /// The sum over ranks that the compressed allreduce gives, from every rank's whole buffer
    /// (in rank order): for communicators that hold all the buffers at once (threads), and as
    /// the reference the MPI path is tested against.
    pub fn reduce_all(self, buffers: &[&[f32]], ranks: usize) -> Vec<f32> {
        let len = buffers.first().map_or(0, |b| b.len());
        let width = segment_width(len, ranks);
        let mut result = vec![0.0f32; len];
        for (segment, out) in result.chunks_mut(width.max(1)).enumerate() {
            let range = segment * width..segment * width + out.len();
            let mut sum = vec![0.0f32; out.len()];
            let mut piece = Vec::with_capacity(width + 1);
            for buffer in buffers {
                piece.clear();
                self.encode_piece(&buffer[range.clone()], width, &mut piece);
                self.add_piece(&piece, &mut sum);
            }
            piece.clear();
            self.encode_piece(&sum, width, &mut piece);
            self.add_piece(&piece, out);
        }
        result
    }
}

/// Values per segment when `len` values are shared among `ranks` owners (the last ones may
/// hold fewer, or none).
pub fn segment_width(len: usize, ranks: usize) -> usize {
    len.div_ceil(ranks.max(1))
}

/// 2^exponent for exponents in f32's normal range.
fn power_of_two(exponent: i32) -> f32 {
    f32::from_bits(((exponent + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(format: GradientCompression, values: &[f32]) -> Vec<f32> {
        let mut piece = Vec::new();
        format.encode_piece(values, values.len() + 2, &mut piece);
        assert_eq!(piece.len(), values.len() + 3);
        let mut out = vec![0.0; values.len()];
        format.add_piece(&piece, &mut out);
        out
    }

    #[test]
    fn fp16_keeps_gradients_far_outside_its_range() {
        // Plain fp16 flushes 1e-9 to zero and turns 1e6 into infinity.
        for magnitude in [1e-9f32, 3e-6, 1.0, 1e6] {
            let values: Vec<f32> = (1..=50)
                .map(|i| magnitude * (i as f32 / 7.0 - 3.0))
                .collect();
            let back = round_trip(GradientCompression::Fp16, &values);
            let largest = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (v, b) in values.iter().zip(&back) {
                // 11 bits of mantissa, relative to the value or to the piece's scale.
                assert!(
                    (v - b).abs() <= v.abs() * 2.0f32.powi(-11) + largest * 2.0f32.powi(-24),
                    "{v} {b}"
                );
            }
        }
    }

    #[test]
    fn bf16_rounds_to_eight_bits_of_mantissa() {
        let values = [1.0f32 + 2.0f32.powi(-9), -3.0e-30, 7.0e30, 0.0];
        let back = round_trip(GradientCompression::Bf16, &values);
        assert_eq!(
            back,
            [
                1.0,
                bf16::from_f32(-3.0e-30).to_f32(),
                bf16::from_f32(7.0e30).to_f32(),
                0.0
            ]
        );
    }

    #[test]
    fn the_sum_is_the_ranks_sum_to_the_formats_precision() {
        let ranks = 3;
        let buffers: Vec<Vec<f32>> = (0..ranks)
            .map(|r| {
                (0..10)
                    .map(|i| (i as f32 - 4.5) * 1e-4 * (r + 1) as f32)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = buffers.iter().map(Vec::as_slice).collect();
        for format in [GradientCompression::Bf16, GradientCompression::Fp16] {
            let sum = format.reduce_all(&refs, ranks);
            assert_eq!(sum.len(), 10);
            let bits = if format == GradientCompression::Bf16 {
                8
            } else {
                11
            };
            for (i, s) in sum.iter().enumerate() {
                let exact: f32 = buffers.iter().map(|b| b[i]).sum();
                assert!(
                    (s - exact).abs() <= 6e-3 * 2.0f32.powi(-bits) * 4.0,
                    "{format:?} {i}: {s} {exact}"
                );
                assert!(*s != 0.0 || exact.abs() < 1e-9);
            }
        }
    }

    #[test]
    fn segments_cover_the_buffer() {
        assert_eq!(segment_width(10, 3), 4);
        assert_eq!(segment_width(0, 2), 0);
        assert_eq!(segment_width(5, 0), 5);
    }
}
