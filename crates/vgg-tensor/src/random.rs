//! Seeded random numbers that depend only on (seed, index): the same values on any thread
//! count and any backend, since element i never depends on how the work was split.

/// SplitMix64's finaliser: a bijective mix of 64 bits.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 random bits for element `index` of stream `seed`.
#[inline]
pub fn bits(seed: u64, index: u64) -> u64 {
    mix(mix(seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// Uniform in [0, 1) with 24 bits, exactly representable in f32.
#[inline]
pub fn uniform01(seed: u64, index: u64) -> f32 {
    (bits(seed, index) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Standard normal by Box-Muller on two independent uniforms of element `index`.
#[inline]
pub fn standard_normal(seed: u64, index: u64) -> f32 {
    let b = bits(seed, index);
    // u1 in (0, 1] so the log is finite; u2 in [0, 1).
    let u1 = ((b >> 40) as f64 + 1.0) / (1u64 << 24) as f64;
    let u2 = ((b & 0xff_ffff) as f64) / (1u64 << 24) as f64;
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Fills `out` with element `offset + i` of the normal stream (mean, std).
pub fn fill_normal(out: &mut [f32], seed: u64, offset: u64, mean: f32, std: f32) {
    for (i, v) in out.iter_mut().enumerate() {
        *v = mean + std * standard_normal(seed, offset.wrapping_add(i as u64));
    }
}

/// Fills `out` with element `offset + i` of the uniform stream on [low, high).
pub fn fill_uniform(out: &mut [f32], seed: u64, offset: u64, low: f32, high: f32) {
    for (i, v) in out.iter_mut().enumerate() {
        *v = low + (high - low) * uniform01(seed, offset.wrapping_add(i as u64));
    }
}

/// Whether dropout keeps element `index` (probability `keep_prob`).
#[inline]
pub fn dropout_keeps(seed: u64, index: u64, keep_prob: f32) -> bool {
    uniform01(seed, index) < keep_prob
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_right() {
        let n = 200_000;
        let mut v = vec![0.0; n];
        fill_normal(&mut v, 7, 0, 1.0, 2.0);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.02, "{var}");
        fill_uniform(&mut v, 7, 0, -1.0, 3.0);
        assert!(v.iter().all(|&x| (-1.0..3.0).contains(&x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
    }

    #[test]
    fn split_work_gives_the_same_values() {
        let mut whole = vec![0.0; 100];
        fill_normal(&mut whole, 3, 0, 0.0, 1.0);
        let mut parts = vec![0.0; 100];
        let (a, b) = parts.split_at_mut(37);
        fill_normal(b, 3, 37, 0.0, 1.0);
        fill_normal(a, 3, 0, 0.0, 1.0);
        assert_eq!(whole, parts);
        let mut other = vec![0.0; 100];
        fill_normal(&mut other, 4, 0, 0.0, 1.0);
        assert_ne!(whole, other);
    }

    #[test]
    fn dropout_keeps_about_keep_prob() {
        let kept = (0..100_000).filter(|&i| dropout_keeps(1, i, 0.3)).count();
        assert!((29_000..31_000).contains(&kept), "{kept}");
    }
}
