//! A linear layer's two gradient products at VGG's classifier sizes, best of 4 runs each, by
//! every kernel that could take them: the measurement behind `linear_grad` and AMX's blockings
//! for a thin left operand or a one-tile inner dimension. `cargo run --release -p vgg-ndarray
//! --example fc_sweep` (the AMX rows only where the CPU has AMX).

use std::time::Instant;

use vgg_ndarray::gemm::{sgemm, Mat, MatMut};
use vgg_ndarray::{bf16, linear_grad, Bf16Unit, Precision};
use vgg_tensor::random;

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut values = vec![0.0; n];
    random::fill_normal(&mut values, seed, 0, 0.0, 1.0);
    values
}

fn time(name: &str, mut run: impl FnMut()) {
    run();
    let mut best = f64::MAX;
    for _ in 0..4 {
        let start = Instant::now();
        run();
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!("{name:36} {:8.2} ms", best * 1e3);
}

fn row_major(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_> {
    MatMut {
        data,
        offset: 0,
        rows,
        cols,
        row_stride: cols,
    }
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let units = Bf16Unit::present_units();
    let streaming = 16 << 20;
    pool.install(|| {
        for (batch, outputs, inputs) in [
            (1, 4096, 25088),
            (8, 4096, 25088),
            (32, 4096, 25088),
            (8, 4096, 4096),
        ] {
            let w = normal(outputs * inputs, 1);
            let x = normal(batch * inputs, 2);
            let dy = normal(batch * outputs, 3);
            let mut dx = vec![0.0; batch * inputs];
            let mut dw = vec![0.0; outputs * inputs];
            println!("batch {batch}, {outputs} x {inputs} weight ({threads} threads)");
            let (dy_m, w_m) = (
                Mat::row_major(&dy, batch, outputs),
                Mat::row_major(&w, outputs, inputs),
            );
            time("dX = dY W, f32 GEMM", || {
                sgemm(row_major(&mut dx, batch, inputs), dy_m, w_m, false, threads)
            });
            for precision in [Precision::F32, Precision::Bf16] {
                time(&format!("dX = dY W, a_b in {}", precision.name()), || {
                    linear_grad::a_b(&dy, &w, (batch, inputs, outputs), &mut dx, precision)
                });
            }
            for &unit in &units {
                time(&format!("dX = dY W, bf16 on {unit:?}"), || {
                    bf16::gemm(
                        row_major(&mut dx, batch, inputs),
                        dy_m,
                        w_m,
                        false,
                        threads,
                        unit,
                    )
                });
            }
            let (dy_t, x_m) = (
                Mat::row_major(&dy, batch, outputs).t(),
                Mat::row_major(&x, batch, inputs),
            );
            time("dW = dY^T X, f32 GEMM", || {
                sgemm(
                    row_major(&mut dw, outputs, inputs),
                    dy_t,
                    x_m,
                    false,
                    threads,
                )
            });
            for &unit in &units {
                time(&format!("dW = dY^T X, bf16 on {unit:?}"), || {
                    bf16::gemm(
                        row_major(&mut dw, outputs, inputs),
                        dy_t,
                        x_m,
                        false,
                        threads,
                        unit,
                    )
                });
            }
            if linear_grad::at_b_applies(outputs, inputs, batch) {
                let dims = (outputs, inputs, batch);
                time("dW = dY^T X, at_b", || {
                    linear_grad::at_b(&dy, &x, dims, &mut dw, streaming, Precision::F32)
                });
                time("dW = dY^T X, at_b, ordinary stores", || {
                    linear_grad::at_b(&dy, &x, dims, &mut dw, usize::MAX, Precision::F32)
                });
                time("dW = dY^T X, at_b in bf16", || {
                    linear_grad::at_b(&dy, &x, dims, &mut dw, streaming, Precision::Bf16)
                });
            }
        }
    });
}
