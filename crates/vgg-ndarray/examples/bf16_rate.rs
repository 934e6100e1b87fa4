//! The matrix product's rate on every unit this CPU has, f32 and bf16, at the shapes VGG-16's
//! im2col convolutions give at batch 8 (conv4, conv3, conv1_2 as output channels x inner
//! dimension x pixels) and a square one, best of 4 runs each on 2 threads: the measurement behind
//! `Bf16Unit::Avx512Bf16`. `cargo run --release -p vgg-ndarray --example bf16_rate`.

use std::time::Instant;

use vgg_ndarray::gemm::{sgemm, Mat, MatMut};
use vgg_ndarray::{bf16, Bf16Unit};
use vgg_tensor::random;

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut values = vec![0.0; n];
    random::fill_normal(&mut values, seed, 0, 0.0, 1.0);
    values
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("thread pool");
    let mut units = vec![None];
    units.extend(Bf16Unit::present_units().into_iter().map(Some));
    for (m, k, n) in [
        (512, 4608, 1568),
        (256, 2304, 6272),
        (64, 576, 25088),
        (2048, 2048, 2048),
    ] {
        let (a, b) = (normal(m * k, 1), normal(k * n, 2));
        let mut c = vec![0.0f32; m * n];
        for unit in &units {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let dst = MatMut {
                    data: &mut c,
                    offset: 0,
                    rows: m,
                    cols: n,
                    row_stride: n,
                };
                let (lhs, rhs) = (Mat::row_major(&a, m, k), Mat::row_major(&b, k, n));
                let start = Instant::now();
                pool.install(|| match unit {
                    None => sgemm(dst, lhs, rhs, false, 2),
                    Some(unit) => bf16::gemm(dst, lhs, rhs, false, 2, *unit),
                });
                best = best.min(start.elapsed().as_secs_f64());
            }
            let name = unit.map_or("f32", |u| u.name());
            let rate = 2.0 * (m * k * n) as f64 / best / 1e9;
            println!("{m:5} x {k:5} x {n:5}  {name:12} {rate:7.1} GFLOP/s");
        }
    }
}
