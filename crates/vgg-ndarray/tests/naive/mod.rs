//! Naive loop implementations in f64, written for clarity: the references the backend is tested
//! against. Shapes are (n, c, h, w) for images and (o, c, kh, kw) for weights.

#![allow(dead_code, clippy::too_many_arguments)]

pub type Dims4 = (usize, usize, usize, usize);

fn at(d: Dims4, n: usize, c: usize, h: usize, w: usize) -> usize {
    ((n * d.1 + c) * d.2 + h) * d.3 + w
}

pub fn out_len(len: usize, k: usize, s: usize, p: usize) -> usize {
    (len + 2 * p - k) / s + 1
}

/// The input position that output `o` reads through kernel tap `k`, if inside.
fn src(o: usize, k: usize, s: usize, p: usize, len: usize) -> Option<usize> {
    let i = (o * s + k) as isize - p as isize;
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

pub fn conv(x: &[f64], xd: Dims4, w: &[f64], wd: Dims4, s: usize, p: usize) -> (Vec<f64>, Dims4) {
    let yd = (
        xd.0,
        wd.0,
        out_len(xd.2, wd.2, s, p),
        out_len(xd.3, wd.3, s, p),
    );
    let mut y = vec![0.0; yd.0 * yd.1 * yd.2 * yd.3];
    for n in 0..yd.0 {
        for o in 0..yd.1 {
            for oh in 0..yd.2 {
                for ow in 0..yd.3 {
                    let mut acc = 0.0;
                    for c in 0..xd.1 {
                        for ky in 0..wd.2 {
                            for kx in 0..wd.3 {
                                if let (Some(ih), Some(iw)) =
                                    (src(oh, ky, s, p, xd.2), src(ow, kx, s, p, xd.3))
                                {
                                    acc += x[at(xd, n, c, ih, iw)] * w[at(wd, o, c, ky, kx)];
                                }
                            }
                        }
                    }
                    y[at(yd, n, o, oh, ow)] = acc;
                }
            }
        }
    }
    (y, yd)
}

pub fn conv_backward_input(
    dy: &[f64],
    yd: Dims4,
    w: &[f64],
    wd: Dims4,
    xd: Dims4,
    s: usize,
    p: usize,
) -> Vec<f64> {
    let mut dx = vec![0.0; xd.0 * xd.1 * xd.2 * xd.3];
    for n in 0..yd.0 {
        for o in 0..yd.1 {
            for oh in 0..yd.2 {
                for ow in 0..yd.3 {
                    for c in 0..xd.1 {
                        for ky in 0..wd.2 {
                            for kx in 0..wd.3 {
                                if let (Some(ih), Some(iw)) =
                                    (src(oh, ky, s, p, xd.2), src(ow, kx, s, p, xd.3))
                                {
                                    dx[at(xd, n, c, ih, iw)] +=
                                        dy[at(yd, n, o, oh, ow)] * w[at(wd, o, c, ky, kx)];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

pub fn conv_backward_weight(
    x: &[f64],
    xd: Dims4,
    dy: &[f64],
    yd: Dims4,
    wd: Dims4,
    s: usize,
    p: usize,
) -> Vec<f64> {
    let mut dw = vec![0.0; wd.0 * wd.1 * wd.2 * wd.3];
    for n in 0..yd.0 {
        for o in 0..yd.1 {
            for oh in 0..yd.2 {
                for ow in 0..yd.3 {
                    for c in 0..xd.1 {
                        for ky in 0..wd.2 {
                            for kx in 0..wd.3 {
                                if let (Some(ih), Some(iw)) =
                                    (src(oh, ky, s, p, xd.2), src(ow, kx, s, p, xd.3))
                                {
                                    dw[at(wd, o, c, ky, kx)] +=
                                        dy[at(yd, n, o, oh, ow)] * x[at(xd, n, c, ih, iw)];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    dw
}

/// Max-pool; returns the output and, per output, the flat input index of its (first) maximum.
pub fn max_pool(x: &[f64], xd: Dims4, k: usize, s: usize) -> (Vec<f64>, Vec<usize>, Dims4) {
    let yd = (xd.0, xd.1, out_len(xd.2, k, s, 0), out_len(xd.3, k, s, 0));
    let mut y = Vec::new();
    let mut arg = Vec::new();
    for n in 0..yd.0 {
        for c in 0..yd.1 {
            for oh in 0..yd.2 {
                for ow in 0..yd.3 {
                    let mut best = (f64::NEG_INFINITY, 0);
                    for ky in 0..k {
                        for kx in 0..k {
                            let i = at(xd, n, c, oh * s + ky, ow * s + kx);
                            if x[i] > best.0 {
                                best = (x[i], i);
                            }
                        }
                    }
                    y.push(best.0);
                    arg.push(best.1);
                }
            }
        }
    }
    (y, arg, yd)
}

pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
        }
    }
    c
}

pub fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

/// Central differences of a scalar function of `x`, in f64.
pub fn finite_difference(x: &[f64], eps: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let keep = x[i];
            x[i] = keep + eps;
            let plus = f(&x);
            x[i] = keep - eps;
            let minus = f(&x);
            x[i] = keep;
            (plus - minus) / (2.0 * eps)
        })
        .collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// `n` normal values around `mean` (sd 1), seeded: inputs for accuracy tests. Like images and
/// activations, and their gradients, their mean need not be zero, so that long sums grow.
pub fn data(n: usize, seed: u64, mean: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    vgg_tensor::random::fill_normal(&mut v, seed, 0, mean, 1.0);
    v
}

/// ||got - want|| / ||want||.
pub fn norm_relative(got: &[f32], want: &[f64]) -> f64 {
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    (diff / norm).sqrt()
}
