//! The NCCL exchange against the host exchange's results. Without a GPU and NCCL only the
//! refusal runs; `scripts/gpu-check.sh` runs the rest (the two-rank test where the machine has two
//! GPUs: NCCL allows one rank per GPU).

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use vgg_cuda::{CudaBackend, CudaOptions};
use vgg_dist::{
    Communicator, ExchangeOptions, GradientBuckets, GradientExchange, LocalGroup, Solo,
};
use vgg_nccl::{nccl_version, NcclError, NcclExchange};
use vgg_tensor::prelude::*;

/// Parameters in backward's order, in two buckets of a 1 KiB limit.
fn params() -> Vec<(String, Shape)> {
    vec![
        ("fc.bias".into(), Shape::from([10])),
        ("fc.weight".into(), Shape::from([10, 40])),
        ("conv.bias".into(), Shape::from([4])),
        ("conv.weight".into(), Shape::from([4, 1, 3, 3])),
    ]
}

const OVERLAP: ExchangeOptions = ExchangeOptions {
    overlap: true,
    compression: None,
};

/// Two steps of rank `rank`'s gradients (value `rank + 1 + index`, so that each element differs)
/// through `exchange`, `skip` getting none; the second step's averages, downloaded.
fn two_steps(
    backend: &CudaBackend,
    exchange: &NcclExchange,
    rank: usize,
    weight: f32,
    skip: Option<&str>,
) -> HashMap<String, Vec<f32>> {
    let layout = GradientBuckets::new(&params(), 1024);
    assert_eq!(layout.len(), 2);
    let mut last = HashMap::new();
    for _ in 0..2 {
        let mut reducer = exchange.reducer(&layout, weight, OVERLAP).unwrap();
        for (name, shape) in params() {
            if Some(name.as_str()) == skip {
                continue;
            }
            let values: Vec<f32> = (0..shape.elements())
                .map(|i| (rank + 1) as f32 + i as f32)
                .collect();
            let g = backend.upload(&shape, &values).unwrap();
            reducer.add(backend, &name, &g).unwrap();
        }
        let (grads, times) = reducer.finish(backend).unwrap();
        assert!(times.total >= 0.0 && times.exposed >= 0.0);
        last = grads
            .into_iter()
            .map(|(n, t)| (n, backend.download(&t).unwrap()))
            .collect();
    }
    last
}

/// Where NCCL cannot be loaded, the error names the library and how to provide it; never a panic.
#[test]
fn without_nccl_the_error_says_what_to_install() {
    match nccl_version() {
        Ok(version) => assert!(version.starts_with("2."), "{version}"),
        Err(e) => {
            assert!(matches!(e, NcclError::Unavailable { .. }));
            let text = e.to_string();
            assert!(
                text.contains("libnccl.so") && text.contains("LD_LIBRARY_PATH"),
                "{text}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU and NCCL"]
fn one_rank_averages_on_the_device() {
    let backend = CudaBackend::new(CudaOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let exchange = NcclExchange::new(&backend, &Solo, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", GradientExchange::describe(&exchange));
    let grads = two_steps(&backend, &exchange, 0, 0.25, Some("conv.bias"));
    assert_eq!(grads.len(), 4);
    for (name, shape) in params() {
        let g = &grads[&name];
        assert_eq!(g.len(), shape.elements(), "{name}");
        for (i, &v) in g.iter().enumerate() {
            let want = if name == "conv.bias" {
                0.0
            } else {
                0.25 * (1.0 + i as f32)
            };
            assert_eq!(v, want, "{name}[{i}]");
        }
    }
    // Compression is the host exchange's: refused here with a reason.
    let layout = GradientBuckets::new(&params(), 1024);
    let compressed = ExchangeOptions {
        overlap: true,
        compression: Some(vgg_dist::GradientCompression::Bf16),
    };
    let e = exchange
        .reducer(&layout, 1.0, compressed)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("host buffers"), "{e}");
}

#[test]
#[ignore = "needs two CUDA GPUs and NCCL"]
fn two_ranks_on_two_gpus_sum_weighted_gradients() {
    let weights = [0.75f32, 0.25];
    let handles: Vec<_> = LocalGroup::new(2, Duration::from_secs(60))
        .into_iter()
        .map(|comm| {
            thread::spawn(move || {
                let r = comm.rank();
                let backend = CudaBackend::new(CudaOptions {
                    ordinal: r,
                    ..CudaOptions::default()
                })
                .unwrap_or_else(|e| panic!("{e}"));
                let exchange = NcclExchange::new(&backend, &comm, Duration::from_secs(60))
                    .unwrap_or_else(|e| panic!("{e}"));
                two_steps(&backend, &exchange, r, weights[r], None)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for grads in &results {
        for (name, shape) in params() {
            for (i, &v) in grads[&name].iter().enumerate() {
                let want: f32 = weights
                    .iter()
                    .enumerate()
                    .map(|(r, w)| w * ((r + 1) as f32 + i as f32))
                    .sum();
                assert!(
                    (v - want).abs() <= 1e-5 * want.abs(),
                    "{name}[{i}] of {shape}: {v} vs {want}"
                );
            }
        }
    }
}
