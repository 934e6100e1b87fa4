//! The data-parallel benchmark on ranks as threads: it averages through the exchange it is given,
//! one reducer per step, each rank weighted by its share of the job's images.

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

mod common;

use common::tiny;
use vgg_bench::{Bench, ParallelOptions};
use vgg_dist::{
    Communicator, ExchangeOptions, GradientBuckets, GradientExchange, GradientReducer,
    HostExchange, LocalGroup,
};
use vgg_tensor::reference::ReferenceBackend;

/// A backend's own exchange as the benchmark sees one: the host exchange, noting each step's
/// weight and options.
struct Noting<'a> {
    host: HostExchange<'a>,
    asked: Mutex<Vec<(f32, ExchangeOptions)>>,
}

impl GradientExchange<ReferenceBackend> for Noting<'_> {
    fn describe(&self) -> String {
        "noting".into()
    }

    fn reducer<'s>(
        &'s self,
        layout: &'s GradientBuckets,
        weight: f32,
        options: ExchangeOptions,
    ) -> vgg_dist::Result<Box<dyn GradientReducer<ReferenceBackend> + 's>> {
        self.asked.lock().unwrap().push((weight, options));
        self.host.reducer(layout, weight, options)
    }
}

#[test]
fn the_benchmark_averages_through_the_exchange_it_is_given() {
    let config = tiny();
    let options = ParallelOptions {
        bucket_bytes: 4096,
        overlap: true,
        compression: None,
        solo_baseline: false,
    };
    let handles: Vec<_> = LocalGroup::new(2, Duration::from_secs(60))
        .into_iter()
        .map(|comm| {
            let config = config.clone();
            thread::spawn(move || {
                let exchange = Noting {
                    host: HostExchange::new(&comm),
                    asked: Mutex::new(Vec::new()),
                };
                let mut bench = Bench::new(ReferenceBackend, config).unwrap();
                let report = bench
                    .run_data_parallel(&comm, Some(&exchange), options, &mut |_, _, _| {
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                (comm.rank(), report, exchange.asked.into_inner().unwrap())
            })
        })
        .collect();
    for handle in handles {
        let (rank, report, asked) = handle.join().unwrap();
        assert_eq!(report.communicator, "noting", "rank {rank}");
        assert_eq!(report.steps.len(), 3, "rank {rank}");
        assert!(report.buckets > 1, "rank {rank}: {}", report.buckets);
        // Burn-in and timed steps, each half of the job's images.
        assert_eq!(asked.len(), 4, "rank {rank}");
        for (weight, given) in asked {
            assert_eq!(weight, 0.5);
            assert_eq!(
                given,
                ExchangeOptions {
                    overlap: true,
                    compression: None
                }
            );
        }
        assert!(report.mean.overlapped_communication >= 0.0);
    }
}
