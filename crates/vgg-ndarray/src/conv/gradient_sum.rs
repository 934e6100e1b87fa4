//! A weight gradient sums products over every output pixel of the batch: 100,352 of them for a
//! weight of VGG-16's conv1_1 at batch 2. Summed in one f32 running total (a GEMM accumulating
//! tile after tile into its output), the total grows large beside each new term, and the digits of
//! the terms are rounded away: three lost against PyTorch, measured. Here each GEMM covers a
//! bounded run of pixels in f32 ([`PIXELS_PER_PART`]), writing a fresh part, and the parts are
//! added in f64, one rounding at the end. The f64 pass costs one addition per gradient value per
//! part, against [`PIXELS_PER_PART`] multiply-adds per value in the GEMM.
//!
//! Where the parts are and how they are added never depends on the thread count: the parts come
//! from the geometry alone, and they are summed in [`REDUCTION_LANES`] lanes (contiguous runs of
//! parts, each in order), added in lane order. So `--threads 1` and `--threads 4` give the same
//! bits, and a training run the same weights; more threads than lanes go to each lane's GEMMs.

use rayon::prelude::*;

use crate::arena::{Memory, Pool};

/// The most output pixels one f32 GEMM sums over before its part joins the f64 total.
pub const PIXELS_PER_PART: usize = 4096;

/// How many runs of parts a weight gradient is summed in, whatever the thread count: two, as the
/// two cores of the machines this is tuned on, so that they lose no parallelism and hold no more
/// partial sums than before.
pub const REDUCTION_LANES: usize = 2;

/// The lanes for `parts` parts: at most [`REDUCTION_LANES`], at least one.
pub fn lanes(parts: usize) -> usize {
    parts.clamp(1, REDUCTION_LANES)
}

/// Parts [start, end) of lane `lane` of `lanes`: contiguous, in order, as even as they can be.
pub fn lane_parts(lane: usize, lanes: usize, parts: usize) -> std::ops::Range<usize> {
    lane * parts / lanes..(lane + 1) * parts / lanes
}

/// Threads for each lane's GEMMs: the backend's threads shared among the lanes. The GEMM's own
/// results do not depend on its thread count (it splits rows and columns, never the sum).
pub fn gemm_threads(threads: usize, lanes: usize) -> usize {
    (threads / lanes.max(1)).max(1)
}

/// f64 values in the arena: a weight gradient's running total. From the allocator, conv5's
/// (2.4M values, 19 MB) came as fresh pages on every call, faulted in one by one: the first weight
/// gradient after the classifier's took twice its siblings' time at batch 1 (docs/performance.md).
struct Totals {
    /// Twice as many f32 values and one more, so that an 8-byte-aligned run of `len` f64 fits
    /// (arena blocks are page-aligned; small ones come from the allocator, 4-byte-aligned).
    memory: Memory,
    len: usize,
}

impl Totals {
    /// `len` values, unspecified until written.
    fn uninit(len: usize) -> Totals {
        Totals {
            memory: Memory::uninit(2 * len + 1),
            len,
        }
    }

    fn values(&self) -> &[f64] {
        // SAFETY: every bit pattern is a valid f64, and the aligned middle of 2 len + 1 f32
        // values holds at least len f64 values.
        let (_, aligned, _) = unsafe { self.memory.align_to::<f64>() };
        &aligned[..self.len]
    }

    fn values_mut(&mut self) -> &mut [f64] {
        // SAFETY: as in `values`.
        let (_, aligned, _) = unsafe { self.memory.align_to_mut::<f64>() };
        &mut aligned[..self.len]
    }
}

/// One worker's running weight gradient: the part the next GEMM writes and, from the second part
/// on, the f64 total (a worker with one part never needs it).
pub struct GradientSum {
    /// In the parameters' gradients' region of the arena: where a worker's one part is the
    /// whole gradient, it is the result as it is.
    part: Memory,
    total: Option<Totals>,
    parts: usize,
}

impl GradientSum {
    /// A zero total of `len` values.
    pub fn new(len: usize) -> GradientSum {
        GradientSum {
            part: Memory::uninit_in(len, Pool::Gradients),
            total: None,
            parts: 0,
        }
    }

    /// The buffer the next part's GEMM overwrites (accumulate false).
    pub fn part(&mut self) -> &mut [f32] {
        if self.parts == 1 && self.total.is_none() {
            // The first part is about to be overwritten: it starts the total.
            add_or_start(&mut self.total, &self.part, |&p| f64::from(p));
        }
        &mut self.part
    }

    /// Adds the part just written to the total.
    pub fn add_part(&mut self) {
        self.parts += 1;
        if let Some(total) = &mut self.total {
            total
                .values_mut()
                .iter_mut()
                .zip(self.part.iter())
                .for_each(|(t, &p)| *t += f64::from(p));
        }
    }

    /// The workers' totals added, rounded once to f32, in the parameters' gradients' region.
    pub(crate) fn finish(sums: Vec<GradientSum>) -> Memory {
        let len = sums.first().map_or(0, |s| s.part.len());
        if sums.len() == 1 && sums[0].total.is_none() {
            // One worker, at most one part: the GEMM's own f32 result.
            let GradientSum {
                mut part, parts, ..
            } = sums.into_iter().next().expect("one worker");
            if parts == 0 {
                part.fill(0.0);
            }
            return part;
        }
        let mut total: Option<Totals> = None;
        for s in sums {
            match (s.total, &total) {
                (Some(first), None) => total = Some(first),
                (Some(other), Some(_)) => add_or_start(&mut total, other.values(), |&v| v),
                // A worker with one part: the part itself joins the total.
                (None, _) if s.parts > 0 => add_or_start(&mut total, &s.part, |&p| f64::from(p)),
                (None, _) => {}
            }
        }
        // Made once the workers' parts are given back.
        let mut dw = Memory::uninit_in(len, Pool::Gradients);
        match total {
            Some(total) => dw
                .par_iter_mut()
                .zip(total.values().par_iter())
                .for_each(|(d, &t)| *d = t as f32),
            None => dw.fill(0.0),
        }
        dw
    }
}

/// `total += values`, each widened to f64 by `widen`; where there is no total yet, it starts as
/// `values` widened.
fn add_or_start<T: Sync>(
    total: &mut Option<Totals>,
    values: &[T],
    widen: impl Fn(&T) -> f64 + Sync + Send,
) {
    match total {
        Some(total) => total
            .values_mut()
            .par_iter_mut()
            .zip(values.par_iter())
            .for_each(|(t, v)| *t += widen(v)),
        None => {
            let mut start = Totals::uninit(values.len());
            start
                .values_mut()
                .par_iter_mut()
                .zip(values.par_iter())
                .for_each(|(t, v)| *t = widen(v));
            *total = Some(start);
        }
    }
}

/// `len` pixels as runs of at most [`PIXELS_PER_PART`], as even as they can be.
pub fn runs(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let parts = len.div_ceil(PIXELS_PER_PART).max(1);
    (0..parts).map(move |i| i * len / parts..(i + 1) * len / parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_every_pixel_once_within_the_bound() {
        for len in [0, 1, 4095, 4096, 4097, 50_176, 100_352] {
            let runs: Vec<_> = runs(len).collect();
            assert_eq!(runs.first().map_or(0, |r| r.start), 0);
            assert_eq!(runs.last().map_or(0, |r| r.end), len);
            for pair in runs.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            assert!(runs.iter().all(|r| r.len() <= PIXELS_PER_PART), "{len}");
        }
    }

    #[test]
    fn one_part_is_the_gemms_result_and_no_part_is_zero() {
        let mut one = GradientSum::new(3);
        one.part().copy_from_slice(&[1.0, -2.0, 0.5]);
        one.add_part();
        assert_eq!(GradientSum::finish(vec![one])[..], [1.0, -2.0, 0.5]);
        assert_eq!(
            GradientSum::finish(vec![GradientSum::new(2)])[..],
            [0.0, 0.0]
        );
        let mut a = GradientSum::new(1);
        a.part()[0] = 3.0;
        a.add_part();
        assert_eq!(GradientSum::finish(vec![a, GradientSum::new(1)])[..], [3.0]);
    }

    #[test]
    fn parts_add_in_f64() {
        let mut a = GradientSum::new(2);
        let mut b = GradientSum::new(2);
        // 1 + 1e-8 is 1 in f32; the f64 total keeps it until the one rounding at the end.
        for _ in 0..1000 {
            a.part().copy_from_slice(&[1e-8, 1.0]);
            a.add_part();
        }
        b.part().copy_from_slice(&[1.0, 0.0]);
        b.add_part();
        let dw = GradientSum::finish(vec![a, b]);
        assert!((dw[0] - 1.00001).abs() < 2e-7, "{}", dw[0]);
        assert_eq!(dw[1], 1000.0);
        // Where an f32 total would have kept none of it.
        assert_eq!(1.0f32 + 1e-8, 1.0);
    }
}
