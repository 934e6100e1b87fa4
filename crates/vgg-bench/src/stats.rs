//! Statistics of step times.

use serde::{Deserialize, Serialize};

/// Mean and population standard deviation (the reference's: sqrt(E\[t^2\] - E\[t\]^2), computed in two
/// passes for accuracy), and order statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of samples.
    pub steps: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation (n in the denominator, as the reference).
    pub sd: f64,
    /// Median, linear interpolation between order statistics.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// 90th percentile, linear interpolation between order statistics.
    pub p90: f64,
}

impl Stats {
    /// The statistics of `samples` (all zero for no samples).
    pub fn of(samples: &[f64]) -> Stats {
        if samples.is_empty() {
            return Stats {
                steps: 0,
                mean: 0.0,
                sd: 0.0,
                median: 0.0,
                min: 0.0,
                max: 0.0,
                p90: 0.0,
            };
        }
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let variance = samples.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / n;
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Stats {
            steps: samples.len(),
            mean,
            sd: variance.sqrt(),
            median: quantile(&sorted, 0.5),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            p90: quantile(&sorted, 0.9),
        }
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_known_samples() {
        let s = Stats::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((s.mean, s.median, s.min, s.max), (2.5, 2.5, 1.0, 4.0));
        assert!((s.sd - 1.25f64.sqrt()).abs() < 1e-12);
        assert!((s.p90 - 3.7).abs() < 1e-12);
        // The reference's formula gives the same.
        let reference = (30.0 / 4.0 - 2.5f64 * 2.5).sqrt();
        assert!((s.sd - reference).abs() < 1e-12);
        assert_eq!(Stats::of(&[]).steps, 0);
    }
}
