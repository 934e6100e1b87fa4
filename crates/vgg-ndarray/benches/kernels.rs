//! Kernel throughput at VGG-16's shapes, batch 8. Throughput is reported in elements/s where one
//! element is one FLOP (1 MAC = 2 FLOPs), so "Gelem/s" reads as GFLOP/s.
//!
//! `cargo bench -p vgg-ndarray --bench kernels` (add `-- conv` etc. to filter).
// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;
use vgg_tensor::{Conv2dParams, ConvGeometry, Pool2dParams, Shape};

const BATCH: usize = 8;

fn backend() -> CpuBackend {
    // Every core, as the CLI does by default.
    CpuBackend::new(0).unwrap()
}

fn gemm_reference(c: &mut Criterion) {
    let b = backend();
    let n = 2048;
    let x = b.random_normal(&Shape::from([n, n]), 0.0, 1.0, 1).unwrap();
    let y = b.random_normal(&Shape::from([n, n]), 0.0, 1.0, 2).unwrap();
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    g.bench_function("2048x2048x2048", |bench| {
        bench.iter(|| b.matmul(&x, &y, false, false).unwrap())
    });
    g.finish();
}

fn convs(c: &mut Criterion) {
    let b = backend();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    // (name, in channels, out channels, size)
    let layers = [
        ("conv1_2", 64, 64, 224),
        ("conv3_2", 256, 256, 56),
        ("conv5_2", 512, 512, 14),
    ];
    let mut g = c.benchmark_group("conv");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for (name, cin, cout, size) in layers {
        let xs = Shape::from([BATCH, cin, size, size]);
        let ws = Shape::from([cout, cin, 3, 3]);
        let geometry = ConvGeometry::new(&xs, &ws, p).unwrap();
        let x = b.random_normal(&xs, 0.0, 1.0, 1).unwrap();
        let w = b.random_normal(&ws, 0.0, 0.05, 2).unwrap();
        let dy = b
            .random_normal(&geometry.output_shape(), 0.0, 1.0, 3)
            .unwrap();
        g.throughput(Throughput::Elements(2 * geometry.macs()));
        g.bench_function(BenchmarkId::new("forward", name), |bench| {
            bench.iter(|| b.conv2d(&x, &w, p).unwrap())
        });
        g.bench_function(BenchmarkId::new("input_grad", name), |bench| {
            bench.iter(|| b.conv2d_backward_input(&dy, &w, &xs, p).unwrap())
        });
        g.bench_function(BenchmarkId::new("weight_grad", name), |bench| {
            bench.iter(|| b.conv2d_backward_weight(&x, &dy, &ws, p).unwrap())
        });
    }
    g.finish();
}

fn pool_and_fc(c: &mut Criterion) {
    let b = backend();
    let mut g = c.benchmark_group("other");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    let xs = Shape::from([BATCH, 64, 224, 224]);
    let x = b.random_normal(&xs, 0.0, 1.0, 1).unwrap();
    let pool = Pool2dParams {
        kernel: 2,
        stride: 2,
    };
    g.throughput(Throughput::Bytes((xs.elements() * 4) as u64));
    g.bench_function("max_pool/pool1", |bench| {
        bench.iter(|| b.max_pool2d(&x, pool).unwrap())
    });
    let (y, idx) = b.max_pool2d(&x, pool).unwrap();
    g.bench_function("max_pool_backward/pool1", |bench| {
        bench.iter(|| b.max_pool2d_backward(&y, &idx, &xs).unwrap())
    });
    // fc6: [8, 25088] x [4096, 25088]^T, as a linear layer computes it.
    let a = b
        .random_normal(&Shape::from([BATCH, 25088]), 0.0, 1.0, 1)
        .unwrap();
    let w = b
        .random_normal(&Shape::from([4096, 25088]), 0.0, 0.01, 2)
        .unwrap();
    g.throughput(Throughput::Elements(2 * (BATCH * 25088 * 4096) as u64));
    g.bench_function("fc6/forward", |bench| {
        bench.iter(|| b.matmul(&a, &w, false, true).unwrap())
    });
    g.finish();
}

criterion_group!(benches, gemm_reference, convs, pool_and_fc);
criterion_main!(benches);
