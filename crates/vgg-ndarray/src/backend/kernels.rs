//! Reductions and masks shared by the fused kernels: fixed-order f64 sums (the same result on any
//! thread count), the ReLU mask with its plane sums, dropout.

use rayon::prelude::*;
use vgg_tensor::random;

use crate::CHUNK;

/// Sum of one plane in f64, over four interleaved accumulators: a fixed order (the same sum
/// wherever it is taken), and additions that do not each wait for the one before.
pub(crate) fn plane_sum(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut quads = x.chunks_exact(4);
    for q in &mut quads {
        for (a, &v) in acc.iter_mut().zip(q) {
            *a += v as f64;
        }
    }
    let tail: f64 = quads.remainder().iter().map(|&v| v as f64).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// dz = dy where y > 0, else 0 (NaN included), and each plane's sum, taken while the plane is in
/// cache (as `channel_bias_grad` sums). `y` None: dz holds y and is overwritten in place.
pub(crate) fn relu_mask_planes(
    dz: &mut [f32],
    dy: &[f32],
    y: Option<&[f32]>,
    plane: usize,
    plane_sums: &mut [f64],
) {
    dz.par_chunks_mut(plane)
        .zip(dy.par_chunks(plane))
        .zip(plane_sums.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((dz, dy), sum))| {
            match y {
                Some(y) => {
                    let y = &y[i * plane..i * plane + dz.len()];
                    for ((z, &d), &y) in dz.iter_mut().zip(dy).zip(y) {
                        *z = if y > 0.0 { d } else { 0.0 };
                    }
                }
                None => {
                    for (z, &d) in dz.iter_mut().zip(dy) {
                        *z = if *z > 0.0 { d } else { 0.0 };
                    }
                }
            }
            *sum = plane_sum(dz);
        });
}

/// `db[ch]`: the sum over images of the plane sums (`[n, c]`) of channel `ch`, in image order.
pub(crate) fn per_channel(plane_sums: &[f64], n: usize, c: usize, db: &mut [f32]) {
    for (ch, db) in db.iter_mut().enumerate() {
        *db = (0..n).map(|img| plane_sums[img * c + ch]).sum::<f64>() as f32;
    }
}

/// Sum of f(x) in f64, chunk by chunk in a fixed order.
pub(crate) fn sum_f64(x: &[f32], f: impl Fn(f32) -> f64 + Sync) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| f(v)).sum::<f64>())
        .collect();
    partial.iter().sum()
}

/// Dropout: x/keep where element i is kept, 0 where dropped.
pub(crate) fn dropout_apply(x: &[f32], keep_prob: f32, seed: u64, out: &mut [f32]) {
    let scale = 1.0 / keep_prob;
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (o, x))| {
            let base = (c * CHUNK) as u64;
            for (i, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                *o = if random::dropout_keeps(seed, base + i as u64, keep_prob) {
                    x * scale
                } else {
                    0.0
                };
            }
        });
}
