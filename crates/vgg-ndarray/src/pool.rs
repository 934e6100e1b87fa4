//! Max-pooling with the argmax captured in the same pass, and its backward.

use rayon::prelude::*;
use vgg_tensor::PoolGeometry;

/// Fills `y` and, per output, the index of its maximum within its input plane.
pub fn forward(x: &[f32], g: &PoolGeometry, y: &mut [f32]) -> Vec<u32> {
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    let mut idx = vec![0u32; y.len()];
    y.par_chunks_mut(out_plane)
        .zip(idx.par_chunks_mut(out_plane))
        .zip(x.par_chunks(in_plane))
        .for_each(|((y, idx), plane)| {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let (mut best, mut best_at) = (f32::NEG_INFINITY, usize::MAX);
                    for ky in 0..g.kernel {
                        let row = (oh * g.stride + ky) * g.in_w;
                        for kx in 0..g.kernel {
                            let at = row + ow * g.stride + kx;
                            let v = plane[at];
                            // `>` keeps the first maximum; NaN wins so that it propagates.
                            if v > best || best_at == usize::MAX || v.is_nan() && !best.is_nan() {
                                best = v;
                                best_at = at;
                            }
                        }
                    }
                    y[oh * g.out_w + ow] = best;
                    idx[oh * g.out_w + ow] = best_at as u32;
                }
            }
        });
    idx
}

/// dx: each output gradient added at its maximum's position.
pub fn backward(dy: &[f32], idx: &[u32], g: &PoolGeometry, dx: &mut [f32]) {
    let in_plane = g.in_h * g.in_w;
    let out_plane = g.out_h * g.out_w;
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(idx.par_chunks(out_plane)))
        .for_each(|(dx, (dy, idx))| {
            dx.fill(0.0);
            for (&d, &i) in dy.iter().zip(idx) {
                dx[i as usize] += d;
            }
        });
}
