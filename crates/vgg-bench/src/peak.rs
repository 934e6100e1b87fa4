//! The backend's own ceilings, which a network's achieved rates are read against: its
//! matrix-product rate (the compute roof) and its memory bandwidth (the memory roof).

use std::time::Instant;

use serde::{Deserialize, Serialize};
use vgg_tensor::{Backend, Shape};

use crate::BenchError;

/// Single-precision n x n x n products on the benchmark's backend and threads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MatmulPeak {
    /// The side of the square matrices measured.
    pub n: usize,
    /// The best of the timed products, in 10^9 FLOP per second (2 n^3 FLOPs each).
    pub gflops_per_second: f64,
    /// Timed products at that size.
    pub repetitions: usize,
}

/// Smallest and largest sides tried: the side doubles until one product takes long enough to
/// time well (100 ms), so a small or a debug build stays quick and a fast device gets a large one.
const FIRST_SIDE: usize = 256;
const LAST_SIDE: usize = 4096;
const LONG_ENOUGH_S: f64 = 0.1;
const REPETITIONS: usize = 5;

/// Measures [`MatmulPeak`] on `backend`: each product is synchronised before its clock stops.
pub fn measure_matmul_peak<B: Backend>(backend: &B) -> Result<MatmulPeak, BenchError> {
    let mut n = FIRST_SIDE;
    loop {
        let shape = Shape::from([n, n]);
        let a = backend.random_normal(&shape, 0.0, 1.0, 1)?;
        let b = backend.random_normal(&shape, 0.0, 1.0, 2)?;
        let product = || -> Result<f64, BenchError> {
            let start = Instant::now();
            let c = backend.matmul(&a, &b, false, false)?;
            backend.synchronize()?;
            let seconds = start.elapsed().as_secs_f64();
            drop(c);
            Ok(seconds)
        };
        product()?; // warm-up: packing buffers, kernel load, thread start
        let first = product()?;
        if first < LONG_ENOUGH_S && n < LAST_SIDE {
            n *= 2;
            continue;
        }
        let mut best = first;
        for _ in 1..REPETITIONS {
            best = best.min(product()?);
        }
        let flops = 2.0 * (n as f64).powi(3);
        return Ok(MatmulPeak {
            n,
            gflops_per_second: flops / best.max(f64::MIN_POSITIVE) / 1e9,
            repetitions: REPETITIONS,
        });
    }
}

/// The backend's memory bandwidth: `y += a x` over vectors far larger than any cache, as
/// STREAM's daxpy-like kernels measure it (12 bytes an element: x and y read, y written).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MemoryBandwidth {
    /// Bytes of each vector.
    pub vector_bytes: u64,
    /// The best of the timed passes, in 10^9 bytes per second.
    pub gb_per_second: f64,
    /// Timed passes.
    pub repetitions: usize,
}

/// Elements of each vector: 128 MiB, beyond the last-level cache of the machines we run on.
const BANDWIDTH_ELEMENTS: usize = 1 << 25;

/// Measures [`MemoryBandwidth`] on `backend`, each pass synchronised before its clock stops.
pub fn measure_memory_bandwidth<B: Backend>(backend: &B) -> Result<MemoryBandwidth, BenchError> {
    let shape = Shape::from([BANDWIDTH_ELEMENTS]);
    let x = backend.random_normal(&shape, 0.0, 1.0, 1)?;
    let mut y = backend.random_normal(&shape, 0.0, 1.0, 2)?;
    let mut pass = || -> Result<f64, BenchError> {
        let start = Instant::now();
        backend.axpy(&mut y, 1e-3, &x)?;
        backend.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    };
    pass()?; // warm-up: the pages are touched, the threads started
    let mut best = f64::INFINITY;
    for _ in 0..REPETITIONS {
        best = best.min(pass()?);
    }
    let bytes = 12.0 * BANDWIDTH_ELEMENTS as f64;
    Ok(MemoryBandwidth {
        vector_bytes: 4 * BANDWIDTH_ELEMENTS as u64,
        gb_per_second: bytes / best.max(f64::MIN_POSITIVE) / 1e9,
        repetitions: REPETITIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_ndarray::CpuBackend;

    #[test]
    fn the_peak_is_a_positive_rate_at_a_measured_side() {
        let peak = measure_matmul_peak(&CpuBackend::new(1).unwrap()).unwrap();
        assert!((FIRST_SIDE..=LAST_SIDE).contains(&peak.n));
        assert!(peak.n.is_power_of_two());
        assert!(peak.gflops_per_second.is_finite() && peak.gflops_per_second > 0.0);
        assert_eq!(peak.repetitions, REPETITIONS);
    }

    #[test]
    fn the_bandwidth_is_a_positive_rate_over_vectors_beyond_the_caches() {
        let b = measure_memory_bandwidth(&CpuBackend::new(1).unwrap()).unwrap();
        assert_eq!(b.vector_bytes, 128 << 20);
        assert!(b.gb_per_second.is_finite() && b.gb_per_second > 0.0);
        assert_eq!(b.repetitions, REPETITIONS);
    }
}
