//! Times every VGG-16 convolution shape's forward, input gradient and weight gradient (batch 8
//! by default), median of 5 runs each; `im2col` as a second argument for the im2col path (`f6`
//! for the forward pass on Winograd F(6x6, 3x3) tiles where it applies), `small`
//! as a third for the layers of `vgg train`'s network instead (VGG-11 at width 1/4 on 32x32
//! digits, where per-call overhead rather than arithmetic shows), `quarter` for VGG-16's at width
//! 1/4 (few channels, large images), or shapes of one's own as cin:cout:size,...; `bf16`
//! anywhere for the bf16 math mode, `avx2` for our kernels on AVX2 (as `vgg --isa avx2`):
//!   cargo run --release -p vgg-ndarray --example conv_layers [batch] [auto|f6|im2col] [small|quarter|16:32:16,...] [bf16] [avx2]

use std::time::Instant;

use vgg_ndarray::{ConvAlgorithm, CpuBackend, CpuConfig, Isa, Precision};
use vgg_tensor::prelude::*;
use vgg_tensor::{Backend, Conv2dParams, ConvGeometry, Shape};

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    let convolution = match std::env::args().nth(2).as_deref() {
        Some("im2col") => ConvAlgorithm::Im2col,
        Some("f6") => ConvAlgorithm::WinogradF6,
        _ => ConvAlgorithm::Auto,
    };
    let precision = if std::env::args().any(|a| a == "bf16") {
        Precision::Bf16
    } else {
        Precision::F32
    };
    let isa = std::env::args()
        .any(|a| a == "avx2")
        .then_some(Isa::Avx2)
        .or(CpuConfig::detect(0).isa);
    let b = CpuBackend::with_config(CpuConfig {
        convolution,
        precision,
        isa,
        ..CpuConfig::detect(0)
    })
    .expect("a CPU backend");
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let vgg16 = [
        ("conv1_2", 64, 64, 224),
        ("conv2_1", 64, 128, 112),
        ("conv2_2", 128, 128, 112),
        ("conv3_1", 128, 256, 56),
        ("conv3_2", 256, 256, 56),
        ("conv4_1", 256, 512, 28),
        ("conv4_2", 512, 512, 28),
        ("conv5_2", 512, 512, 14),
    ];
    let small = [
        ("conv1_1", 1, 16, 32),
        ("conv2_1", 16, 32, 16),
        ("conv3_1", 32, 64, 8),
        ("conv3_2", 64, 64, 8),
        ("conv4_1", 64, 128, 4),
        ("conv4_2", 128, 128, 4),
        ("conv5_1", 128, 128, 2),
    ];
    // VGG-16 at width 1/4, where few channels meet large images.
    let quarter = [
        ("conv1_2", 16, 16, 224),
        ("conv2_1", 16, 32, 112),
        ("conv2_2", 32, 32, 112),
        ("conv3_1", 32, 64, 56),
        ("conv3_2", 64, 64, 56),
        ("conv4_1", 64, 128, 28),
        ("conv5_2", 128, 128, 14),
    ];
    // Or any shapes, as cin:cout:size[,cin:cout:size...].
    let given: Vec<(&str, usize, usize, usize)> = std::env::args()
        .nth(3)
        .filter(|a| a.contains(':'))
        .map(|a| {
            a.split(',')
                .map(|l| {
                    let v: Vec<usize> =
                        l.split(':').map(|n| n.parse().expect("a number")).collect();
                    ("given", v[0], v[1], v[2])
                })
                .collect()
        })
        .unwrap_or_default();
    let layers: &[(&str, usize, usize, usize)] = match std::env::args().nth(3).as_deref() {
        Some("small") => &small,
        Some("quarter") => &quarter,
        Some(_) if !given.is_empty() => &given,
        _ => &vgg16,
    };
    println!("batch {batch}, {}", b.name());
    println!(
        "layer     forward ms  input-grad ms  weight-grad ms   (GFLOP/s of the direct method)"
    );
    b.clone().execute(|| {
        for &(name, cin, cout, size) in layers {
            let xs = Shape::from([batch, cin, size, size]);
            let ws = Shape::from([cout, cin, 3, 3]);
            let g = ConvGeometry::new(&xs, &ws, p).unwrap();
            let x = b.random_normal(&xs, 0.0, 1.0, 1).unwrap();
            let w = b.random_normal(&ws, 0.0, 0.05, 2).unwrap();
            let bias = b.zeros(&Shape::from([cout])).unwrap();
            let dy = b.random_normal(&g.output_shape(), 0.0, 1.0, 3).unwrap();
            let fwd = median_ms(|| drop(b.conv2d_bias_act(&x, &w, &bias, p, true).unwrap()));
            let dx = median_ms(|| drop(b.conv2d_backward_input(&dy, &w, &xs, p).unwrap()));
            let dw = median_ms(|| drop(b.conv2d_backward_weight(&x, &dy, &ws, p).unwrap()));
            let gflop = 2.0 * g.macs() as f64 / 1e9;
            println!(
                "{name:8} {fwd:10.2} {dx:14.2} {dw:15.2}   ({:.0} / {:.0} / {:.0})",
                gflop / fwd * 1e3,
                gflop / dx * 1e3,
                gflop / dw * 1e3
            );
        }
    });
}
