//! A model of a data-parallel step on N workers, for predicting scaling past the machines at
//! hand (docs/scaling.md). A step is compute, then the part of the gradient allreduce that
//! backward could not hide, then the optimiser step. The allreduce is a ring: each worker sends
//! and receives 2(N-1)/N of the gradient bytes, plus 2(N-1) link latencies.

/// What one worker's step costs, and the network between workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepModel {
    /// Seconds of forward and backward on one worker (measured).
    pub compute: f64,
    /// Seconds of backward that remain after the first bucket is ready: the time communication
    /// can hide behind (0: no overlap possible).
    pub overlappable: f64,
    /// Seconds of the optimiser step.
    pub optimizer: f64,
    /// Gradient bytes each worker contributes (f32: 4 per parameter).
    pub gradient_bytes: f64,
    /// Link bandwidth in bits per second.
    pub link_bits_per_second: f64,
    /// Seconds of one message's latency on the link.
    pub latency: f64,
}

/// How the gradients travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// Buckets sent during backward (false: one allreduce after it).
    pub overlap: bool,
    /// Gradients compressed to 16 bits on the wire (half the bytes).
    pub fp16: bool,
}

impl StepModel {
    /// Seconds of a ring allreduce of the gradients over `workers`.
    pub fn allreduce_seconds(&self, workers: usize, fp16: bool) -> f64 {
        if workers <= 1 {
            return 0.0;
        }
        let n = workers as f64;
        let bytes = if fp16 {
            self.gradient_bytes / 2.0
        } else {
            self.gradient_bytes
        };
        2.0 * (n - 1.0) / n * bytes * 8.0 / self.link_bits_per_second
            + 2.0 * (n - 1.0) * self.latency
    }

    /// Seconds of the allreduce that the step waits for.
    pub fn exposed_seconds(&self, workers: usize, exchange: Exchange) -> f64 {
        let reduce = self.allreduce_seconds(workers, exchange.fp16);
        if exchange.overlap {
            (reduce - self.overlappable).max(0.0)
        } else {
            reduce
        }
    }

    /// Seconds of one step on each of `workers`.
    pub fn step_seconds(&self, workers: usize, exchange: Exchange) -> f64 {
        self.compute + self.exposed_seconds(workers, exchange) + self.optimizer
    }

    /// One worker's step time over the step time on `workers` (same batch per worker): the share
    /// of linear speed-up the job reaches.
    pub fn efficiency(&self, workers: usize, exchange: Exchange) -> f64 {
        self.step_seconds(1, exchange) / self.step_seconds(workers, exchange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vgg16(compute: f64, overlappable: f64, gbit: f64) -> StepModel {
        StepModel {
            compute,
            overlappable,
            optimizer: 0.0,
            gradient_bytes: 553_430_176.0,
            link_bits_per_second: gbit * 1e9,
            latency: 0.0,
        }
    }

    const PLAIN: Exchange = Exchange {
        overlap: false,
        fp16: false,
    };

    #[test]
    fn a_ring_sends_twice_the_gradients_at_scale() {
        let m = vgg16(1.0, 0.0, 10.0);
        assert_eq!(m.allreduce_seconds(1, false), 0.0);
        // Two workers: each sends half of the bytes twice, i.e. the bytes once.
        assert!((m.allreduce_seconds(2, false) - 553_430_176.0 * 8.0 / 1e10).abs() < 1e-12);
        // Many workers: nearly twice the bytes; fp16 halves it.
        let big = m.allreduce_seconds(512, false);
        assert!(
            (big - 2.0 * 511.0 / 512.0 * 0.442_744_140_8).abs() < 1e-9,
            "{big}"
        );
        assert!((m.allreduce_seconds(512, true) - big / 2.0).abs() < 1e-12);
    }

    #[test]
    fn overlap_hides_what_backward_leaves_room_for() {
        let m = vgg16(1.0, 0.5, 100.0);
        let overlap = Exchange {
            overlap: true,
            fp16: false,
        };
        let reduce = m.allreduce_seconds(8, false);
        assert_eq!(m.exposed_seconds(8, PLAIN), reduce);
        assert_eq!(m.exposed_seconds(8, overlap), 0.0, "{reduce} fits in 0.5 s");
        let slow = vgg16(1.0, 0.5, 10.0);
        let r = slow.allreduce_seconds(8, false);
        assert!((slow.exposed_seconds(8, overlap) - (r - 0.5)).abs() < 1e-12);
        assert_eq!(m.efficiency(1, PLAIN), 1.0);
        assert!(slow.efficiency(8, PLAIN) < slow.efficiency(8, overlap));
        assert!((slow.efficiency(8, PLAIN) - 1.0 / (1.0 + r)).abs() < 1e-12);
    }
}
