//! Forward-convolution throughput against the column tile size, the measurement behind
//! `Tuning::im2col_tile_bytes` (this machine's value marked): `cargo run --release -p vgg-ndarray
//! --example tile_sweep`.

use std::time::Instant;

use vgg_ndarray::{conv, ConvAlgorithm, Tuning};
use vgg_tensor::{random, Conv2dParams, ConvGeometry, Shape};

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    for (channels, size) in [(64, 224), (128, 112), (512, 14)] {
        let xs = Shape::from([4, channels, size, size]);
        let ws = Shape::from([channels, channels, 3, 3]);
        let g = ConvGeometry::new(
            &xs,
            &ws,
            Conv2dParams {
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
        let mut x = vec![0.0; xs.elements()];
        random::fill_normal(&mut x, 1, 0, 0.0, 1.0);
        let mut w = vec![0.0; ws.elements()];
        random::fill_normal(&mut w, 2, 0, 0.0, 1.0);
        let mut y = vec![0.0; g.output_shape().elements()];
        let detected = Tuning::detect(threads);
        for tile in [256 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20, 32 << 20] {
            // The im2col path, whatever the Winograd one would do.
            let tuning = Tuning {
                im2col_tile_bytes: tile,
                convolution: ConvAlgorithm::Im2col,
                ..detected
            };
            let start = Instant::now();
            for _ in 0..3 {
                pool.install(|| conv::forward(&x, &w, &g, &tuning, &mut y));
            }
            let seconds = start.elapsed().as_secs_f64() / 3.0;
            let gflops = 2.0 * g.macs() as f64 / seconds / 1e9;
            let mark = if tile == detected.im2col_tile_bytes {
                "  (this machine's)"
            } else {
                ""
            };
            println!(
                "{channels:>3} channels {size:>3}x{size:<3} tile {:>6} KiB: {gflops:.1} GFLOP/s{mark}",
                tile >> 10
            );
        }
    }
}
